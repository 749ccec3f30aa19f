//! Bring your own guard: a second, real Steward answering OpenAI's moderation
//! API as the guard, and a real model server that hangs as one.

use std::time::Duration;

use serde_json::{json, Value};
use steward::config::{GuardFailure, GuardKindSetting, GuardSettings, Secret};
use steward::durations::NonZeroDuration;
use steward::identity::Capability;

use crate::helpers::{assert_error, spawn_app_with, unique, Storage, TestApp};
use crate::moderation::PrivateModelServer;

/// A Steward whose constitution also refuses `phrase` (under its first category), to act as a guard.
async fn guard_steward(phrase: &str) -> (TestApp, String, tempfile::TempDir) {
    let mut doc: toml::Table = std::fs::read_to_string(crate::helpers::manifest_dir().join("config/constitution.toml")).unwrap().parse().unwrap();
    doc["categories"].as_array_mut().unwrap()[0].as_table_mut().unwrap()["phrases"].as_array_mut().unwrap().push(phrase.into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guard-constitution.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    let app = spawn_app_with(Storage::Sqlite, |s| s.policy.constitution = path).await;
    let key = app.key(&unique("guard-"), &[Capability::Moderate]).await;
    (app, key, dir)
}

/// `guard`'s `/v1/moderations` as the guard, with its key.
fn steward_as_guard(guard: &TestApp, key: String) -> GuardSettings {
    GuardSettings { api_key: Secret::new(key), ..guard_settings(GuardKindSetting::ModerationApi, format!("{}/v1", guard.address), "steward-guard") }
}

fn guard_settings(kind: GuardKindSetting, base_url: String, model: &str) -> GuardSettings {
    GuardSettings { kind, base_url, model: model.into(), timeout: NonZeroDuration::from_millis(600), ..GuardSettings::default() }
}

#[tokio::test]
async fn a_guard_speaking_openais_moderation_api_refuses_what_the_constitution_alone_allows_and_the_record_names_it() {
    let (guard, guard_key, _dir) = guard_steward("purple elephant dance").await;
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.moderation.guard = steward_as_guard(&guard, guard_key);
    })
    .await;
    let (_, key) = app.chat_key().await;

    let refused = app.chat(&key, &json!({ "message": "Teach me the purple elephant dance." })).await;
    assert_eq!(refused.first("refusal")["code"], "S1", "{:?}", refused.names());
    assert_eq!(refused.first("done")["finish_reason"], "refused");
    let allowed = app.chat(&key, &json!({ "message": "Write a haiku about rivers.", "max_tokens": 4 })).await;
    assert_eq!(allowed.first("done")["finish_reason"], "length", "{:?}", allowed.names());

    let events = app.outbox("conversation.events").await;
    let refusal = events.iter().find(|e| e["session_id"] == refused.header("x-session-id") && e["type"] == "turn.refused").unwrap();
    assert_eq!((refusal["data"]["stage"].as_str(), refusal["data"]["layer"].as_str()), (Some("input"), Some("guard")));
    assert_eq!(refusal["data"]["guard_model"], "steward-guard");
    assert!(refusal["data"]["guard_config"].as_str().unwrap().starts_with("sha256:"), "{refusal}");
    // The guard was really asked, once per turn, and recorded its own check.
    let checks: Vec<Value> = guard.outbox("conversation.events").await.into_iter().filter(|e| e["type"] == "moderation.checked").collect();
    // The refused turn's input, then the allowed turn's input and its answer.
    assert_eq!(checks.iter().map(|c| c["policy_verdict"].as_str().unwrap()).collect::<Vec<_>>(), ["refuse:S1", "allow", "allow"]);
}

#[tokio::test]
async fn a_guard_that_does_not_answer_in_time_refuses_the_turn_or_for_a_tenant_failing_open_lets_it_through_and_says_so() {
    let hung = PrivateModelServer::start().await;
    hung.pause();
    let open = unique("tenant-");
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.moderation.guard = GuardSettings {
            on_failure: GuardFailure::Closed,
            on_failure_tenants: [(open.clone(), GuardFailure::Open)].into(),
            ..guard_settings(GuardKindSetting::Chat, format!("http://127.0.0.1:{}/v1", hung.port), "llama-guard-3-1b")
        };
    })
    .await;
    let (_, closed_key) = app.chat_key().await;
    let open_key = app.key(&open, &[Capability::Chat]).await;

    let started = std::time::Instant::now();
    assert_error(app.post("/v1/chat/stream", Some(&closed_key), &json!({ "message": "Write a haiku about rivers." })).await, 503, "guard_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(5), "refused at the guard's deadline, not later");

    let through = app.chat(&open_key, &json!({ "message": "Write a haiku about rivers.", "max_tokens": 4 })).await;
    assert_eq!(through.first("done")["finish_reason"], "length", "{:?}", through.names());
    let events: Vec<Value> = app.outbox("conversation.events").await.into_iter().filter(|e| e["session_id"] == through.header("x-session-id")).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // Unguarded on input and on its answer, each said once.
    assert_eq!(types, ["turn.received", "turn.guard_skipped", "turn.dispatched", "turn.guard_skipped", "turn.completed"]);
    assert_eq!((events[1]["data"]["reason"].as_str(), events[1]["data"]["guard_model"].as_str()), (Some("timeout"), Some("llama-guard-3-1b")));
    assert_eq!((events[1]["data"]["stage"].as_str(), events[3]["data"]["stage"].as_str()), (Some("input"), Some("output")));
    hung.resume();
}

#[tokio::test]
async fn the_guard_judges_the_answers_sentences_and_cuts_the_one_it_refuses() {
    let (guard, guard_key, _dir) = guard_steward("purple elephant dance").await;
    let model = crate::scripted_server::scripted(crate::scripted_server::Script::Answer(vec![
        "Here is the purple ",
        "elephant dance. ",
        "Step left, then right. ",
        "Bow at the end.",
    ]))
    .await;
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.slm.base_url = model;
        s.moderation.guard = steward_as_guard(&guard, guard_key);
    })
    .await;
    let (_, key) = app.chat_key().await;

    let sse = app.chat(&key, &json!({ "message": "Tell me a story." })).await;
    assert_eq!(sse.first("refusal")["code"], "S1", "{:?}", sse.names());
    assert_eq!(sse.first("done")["finish_reason"], "refused");
    assert!(!sse.text().contains("Bow at the end"), "nothing after the refused sentence's judgement: {:?}", sse.text());
    let events = app.outbox("conversation.events").await;
    let refusal = events.iter().find(|e| e["session_id"] == sse.header("x-session-id") && e["type"] == "turn.refused").unwrap();
    assert_eq!((refusal["data"]["stage"].as_str(), refusal["data"]["layer"].as_str()), (Some("output"), Some("guard")), "{refusal}");
    assert_eq!(refusal["data"]["guard_model"], "steward-guard");
}

/// SmolLM2 is not a guard model: asked the guard's question it repeats the
/// category list, which Steward cannot read as a decision. Served as the
/// guard, it runs the whole path — the prompt, the call, the reading of the
/// answer — into each tenant's failure mode, under overlapped dispatch.
#[tokio::test]
async fn the_projects_small_model_served_as_a_chat_guard_runs_the_whole_path_into_each_tenants_failure_mode() {
    let open = unique("tenant-");
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.moderation.dispatch = steward::config::DispatchMode::Overlapped;
        s.moderation.guard = GuardSettings {
            timeout: NonZeroDuration::from_secs(20),
            on_failure_tenants: [(open.clone(), GuardFailure::Open)].into(),
            ..guard_settings(GuardKindSetting::Chat, crate::helpers::slm_url(), "smollm2-135m-instruct")
        };
    })
    .await;
    let (_, closed_key) = app.chat_key().await;
    let open_key = app.key(&open, &[Capability::Chat]).await;

    // Failing closed: the answer the model began meanwhile is never released.
    assert_error(app.post("/v1/chat/stream", Some(&closed_key), &json!({ "message": "Write a haiku about rivers." })).await, 503, "guard_unavailable").await;

    let through = app.chat(&open_key, &json!({ "message": "Write a haiku about rivers.", "max_tokens": 8 })).await;
    assert_eq!(through.first("done")["finish_reason"], "length", "{:?}", through.names());
    let events: Vec<Value> = app.outbox("conversation.events").await.into_iter().filter(|e| e["session_id"] == through.header("x-session-id")).collect();
    let skipped: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "turn.guard_skipped")
        .map(|e| (e["data"]["stage"].as_str().unwrap(), e["data"]["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped, [("input", "unreadable_answer"), ("output", "unreadable_answer")], "{events:?}");
    let dispatched = events.iter().find(|e| e["type"] == "turn.dispatched").unwrap();
    assert_eq!(dispatched["data"]["dispatch"], "overlapped");
}
