//! Several model servers behind one Steward: real llama.cpp servers of their
//! own, shared by weight, killed under load, hung before their first token,
//! back again after their cooldown, and each serving the model names mapped to it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use steward::config::{ModelSettings, UpstreamSettings};
use steward::durations::NonZeroDuration;
use steward::identity::Capability;

use crate::helpers::{assert_error, spawn_app_with, Storage, TestApp};
use crate::moderation::PrivateModelServer;

fn upstream(name: &str, server: &PrivateModelServer, weight: u32) -> UpstreamSettings {
    UpstreamSettings { base_url: format!("http://127.0.0.1:{}/v1", server.port), weight: weight.try_into().unwrap(), ..upstream_settings_named(name) }
}

/// A Steward over `upstreams`, without a bound of its own on model calls.
async fn app_over(upstreams: Vec<UpstreamSettings>, adjust: impl FnOnce(&mut steward::config::Settings)) -> TestApp {
    spawn_app_with(Storage::Sqlite, |s| {
        s.slm.upstreams = upstreams;
        s.slm.max_concurrent = 0;
        adjust(s);
    })
    .await
}

/// Each session's conversation events, oldest first.
async fn trails(app: &TestApp) -> BTreeMap<String, Vec<Value>> {
    let mut trails: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in app.outbox("conversation.events").await {
        trails.entry(event["session_id"].as_str().unwrap().to_owned()).or_default().push(event);
    }
    trails
}

/// The upstreams a session's attempts went to, in order.
fn attempts(trail: &[Value]) -> Vec<String> {
    trail.iter().filter(|e| e["type"] == "turn.dispatched").map(|e| e["data"]["upstream"].as_str().unwrap_or("?").to_owned()).collect()
}

#[tokio::test]
async fn idle_upstreams_take_turns_in_proportion_to_their_weights() {
    let (a, b) = tokio::join!(PrivateModelServer::start(), PrivateModelServer::start());
    let app = app_over(vec![upstream("a", &a, 3), upstream("b", &b, 1)], |_| {}).await;
    let (_, key) = app.chat_key().await;
    for _ in 0..8 {
        let sse = app.chat(&key, &json!({ "message": "Say hi.", "max_tokens": 2 })).await;
        assert_eq!(sse.first("done")["finish_reason"], "length");
    }
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for trail in trails(&app).await.values() {
        for upstream in attempts(trail) {
            *count.entry(upstream).or_default() += 1;
        }
    }
    assert_eq!(count, BTreeMap::from([("a".to_owned(), 6), ("b".to_owned(), 2)]), "3:1 of 8 turns, one at a time");
}

#[tokio::test]
async fn a_model_server_killed_under_load_costs_no_turn_that_had_not_streamed_a_token() {
    let (mut a, b) = tokio::join!(PrivateModelServer::start(), PrivateModelServer::start());
    let app = app_over(vec![upstream("a", &a, 1), upstream("b", &b, 1)], |_| {}).await;
    let (_, key) = app.chat_key().await;

    // 16 turns at once over two one-slot servers: each streams one answer and queues the rest.
    let turns = futures_util::future::join_all((0..16).map(|i| {
        let (app, key) = (&app, &key);
        async move { app.chat(key, &json!({ "message": format!("Tell me about rivers and the sea, part {i}."), "max_tokens": 48, "temperature": 0 })).await }
    }));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        a.crash().await;
    };
    let (turns, ()) = tokio::join!(turns, kill);

    let trails = trails(&app).await;
    let (mut completed, mut cut, mut failed_over) = (0, 0, 0);
    for sse in &turns {
        let trail = &trails[sse.header("x-session-id")];
        let finish = sse.first("done")["finish_reason"].as_str().unwrap().to_owned();
        if trail.iter().any(|e| e["type"] == "turn.upstream_failed") {
            failed_over += 1;
            assert_eq!(attempts(trail), ["a", "b"], "moved from the killed server to the other");
        }
        if finish == "error" {
            // Only a turn whose answer had begun reaching its client may fail: it cannot move then.
            assert!(!sse.text().is_empty(), "a turn that had streamed nothing failed: {:?}", sse.names());
            assert_eq!(attempts(trail).last().map(String::as_str), Some("a"));
            cut += 1;
        } else {
            assert!(finish == "length" || finish == "stop", "{:?}", sse.names());
            completed += 1;
        }
    }
    println!("killed under load: {completed} turns completed ({failed_over} of them moved to the other server), {cut} cut mid-answer");
    assert_eq!(completed + cut, 16);
    assert!(cut <= 1, "a one-slot server streams one answer at a time: at most one is cut");
    assert!(failed_over >= 1, "the turns queued at the killed server moved");
}

#[tokio::test]
async fn a_hung_server_is_skipped_within_its_first_token_deadline_then_left_alone_until_it_answers_a_probe() {
    let (a, b) = tokio::join!(PrivateModelServer::start(), PrivateModelServer::start());
    let hung_deadline = Duration::from_millis(800);
    let a_settings = UpstreamSettings { first_token_timeout: NonZeroDuration::new(hung_deadline), ..upstream("a", &a, 1) };
    let app = app_over(vec![a_settings, upstream("b", &b, 1)], |s| {
        s.slm.circuit_failures = 1.try_into().unwrap();
        s.slm.circuit_cooldown = NonZeroDuration::from_millis(1_500);
    })
    .await;
    let (_, key) = app.chat_key().await;
    let chat = |message: &'static str| {
        let (app, key) = (&app, key.clone());
        async move {
            let started = Instant::now();
            let sse = app.chat(&key, &json!({ "message": message, "max_tokens": 4 })).await;
            // Answered to the end, within max_tokens or before (a short greeting stops by itself).
            let finish = sse.first("done")["finish_reason"].clone();
            assert!(finish == "length" || finish == "stop", "{:?}", sse.names());
            (attempts(&trails(app).await[sse.header("x-session-id")]), started.elapsed())
        }
    };

    a.pause();
    let (first, took) = chat("Say hi.").await;
    assert_eq!(first, ["a", "b"], "the first turn went to a, hung, and moved to b");
    assert!(took >= hung_deadline && took < hung_deadline + Duration::from_secs(5), "skipped at a's deadline: {took:?}");
    let trail = trails(&app).await;
    let failed = trail.values().flatten().find(|e| e["type"] == "turn.upstream_failed").unwrap();
    assert_eq!((failed["data"]["upstream"].as_str(), failed["data"]["reason"].as_str()), (Some("a"), Some("first_token_deadline")));

    // a's circuit is open: while it cools down, turns go straight to b.
    for _ in 0..2 {
        assert_eq!(chat("Say hello.").await.0, ["b"]);
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("slm_upstream_state{upstream=\"a\"} 2"), "a open: {metrics}");

    // Back: after the cooldown a turn probes a (the next or the one after, as
    // the weights share them), and a's answer closes its circuit.
    a.resume();
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let next_two = [chat("Say hey.").await.0, chat("Say hey.").await.0];
    assert!(next_two.contains(&vec!["a".to_owned()]), "the probe went to a, alone: {next_two:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("slm_upstream_state{upstream=\"a\"} 0"), "a closed again: {metrics}");
    assert!(metrics.contains("slm_upstream_requests_total{upstream=\"a\",outcome=\"first_token_deadline\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_turn_goes_to_the_servers_of_the_model_it_names_and_a_model_unknown_or_not_allowed_is_refused_by_name() {
    let (a, b) = tokio::join!(PrivateModelServer::start(), PrivateModelServer::start());
    let limited = crate::helpers::unique("tenant-");
    let models = vec![ModelSettings { name: "small".into(), upstreams: vec!["a".into()] }, ModelSettings { name: "large".into(), upstreams: vec!["b".into()] }];
    let app = app_over(vec![upstream("a", &a, 1), upstream("b", &b, 1)], |s| {
        s.slm.models = models;
        s.slm.tenant_models = HashMap::from([(limited.clone(), vec!["small".to_owned()])]);
    })
    .await;
    let (_, anyone) = app.chat_key().await;
    let limited_key = app.key(&limited, &[Capability::Chat]).await;

    let on = |sse: &crate::helpers::Sse, trails: &BTreeMap<String, Vec<Value>>| attempts(&trails[sse.header("x-session-id")]);
    let default = app.chat(&anyone, &json!({ "message": "Say hi.", "max_tokens": 2 })).await;
    let large = app.chat(&anyone, &json!({ "message": "Say hi.", "max_tokens": 2, "model": "large" })).await;
    let trails = trails(&app).await;
    assert_eq!((on(&default, &trails), on(&large, &trails)), (vec!["a".to_owned()], vec!["b".to_owned()]), "small (the first) on a, large on b");
    let dispatched = trails[large.header("x-session-id")].iter().find(|e| e["type"] == "turn.dispatched").unwrap().clone();
    assert_eq!(dispatched["data"]["model"], "large");

    assert_error(app.post("/v1/chat/stream", Some(&anyone), &json!({ "message": "Hi", "model": "gpt-4o" })).await, 400, "unknown_model").await;
    assert_error(app.post("/v1/chat/stream", Some(&limited_key), &json!({ "message": "Hi", "model": "large" })).await, 403, "model_not_allowed").await;

    // The OpenAI facade answers in OpenAI's shape, naming the parameter, and echoes the model that answered.
    let completion = |model: &str| json!({ "model": model, "messages": [{ "role": "user", "content": "Say hi." }], "max_tokens": 2 });
    let refused = app.post("/v1/chat/completions", Some(&limited_key), &completion("large")).await;
    assert_eq!(refused.status(), 403);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!((refused["error"]["code"].as_str(), refused["error"]["param"].as_str()), (Some("model_not_allowed"), Some("model")), "{refused}");
    let answered: Value = app.post("/v1/chat/completions", Some(&limited_key), &completion("small")).await.json().await.unwrap();
    assert_eq!(answered["model"], "small", "{answered}");
}

/// The first words of an answer may be held back by the output guard (they
/// could still become a listed phrase). A server that dies then has sent
/// content, but none of it reached the client: the turn moves, and what the
/// dead server said is dropped.
#[tokio::test]
async fn a_server_that_dies_while_its_first_words_are_held_back_costs_the_client_nothing() {
    use crate::scripted_server::{scripted, Script};
    let dying = scripted(Script::DropAfter(vec!["How to ", "kill "])).await;
    let healthy = scripted(Script::Answer(vec!["Rivers ", "run ", "to the sea."])).await;
    let upstream_at = |name: &str, url: String| UpstreamSettings { base_url: url, ..upstream_settings_named(name) };
    let app = app_over(vec![upstream_at("a", dying), upstream_at("b", healthy)], |_| {}).await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me about rivers." })).await;
    assert_eq!(sse.text(), "Rivers run to the sea.", "only the second server's answer: {:?}", sse.names());
    assert_eq!(sse.first("done")["finish_reason"], "stop");
    assert_eq!(attempts(&trails(&app).await[sse.header("x-session-id")]), ["a", "b"]);
}

/// An upstream named `name` with every other setting at its default (its URL set by the caller).
fn upstream_settings_named(name: &str) -> UpstreamSettings {
    UpstreamSettings {
        name: name.into(),
        base_url: String::new(),
        model: None,
        weight: 1.try_into().unwrap(),
        max_concurrent: 0,
        api_key_env: None,
        connect_timeout: None,
        first_token_timeout: None,
    }
}
