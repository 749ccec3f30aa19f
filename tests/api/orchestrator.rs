//! The orchestrator's own endpoints and their policy-header checks.

use serde_json::{json, Value};
use steward::durations::NonZeroDuration;
use steward::policy::{PolicyHeaders, TurnRef, Verdict};
use steward::slm::GenerationParams;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, Storage, TestApp};

const MESSAGE: &str = "Say hi.";

pub(crate) struct Turn {
    tenant: String,
    key: String,
    session_id: String,
    turn_id: String,
}

pub(crate) async fn new_turn(app: &TestApp) -> Turn {
    let (tenant, key) = app.chat_key().await;
    Turn { tenant, key, session_id: uuid::Uuid::now_v7().to_string(), turn_id: uuid::Uuid::now_v7().to_string() }
}

impl Turn {
    pub(crate) fn turn_ref(&self) -> TurnRef<'_> {
        // The body's `max_tokens: 6`, as the orchestrator resolves it.
        let params = GenerationParams { max_tokens: 6, ..GenerationParams::default() };
        TurnRef { tenant: &self.tenant, session_id: &self.session_id, turn_id: &self.turn_id, message: MESSAGE, params, stop: &[] }
    }
    fn body(&self) -> Value {
        json!({ "session_id": self.session_id, "turn_id": self.turn_id, "message": MESSAGE, "max_tokens": 6 })
    }
}

pub(crate) async fn step(app: &TestApp, turn: &Turn, headers: &PolicyHeaders, path: &str) -> reqwest::Response {
    let mut req = app.http.post(format!("{}{path}", app.address)).bearer_auth(&turn.key).json(&turn.body());
    for (name, value) in
        [("x-constitution-hash", &headers.constitution_hash), ("x-policy-verdict", &headers.verdict), ("x-policy-signature", &headers.signature)]
    {
        if let Some(value) = value {
            req = req.header(name, value);
        }
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn step_with_a_valid_signed_verdict_returns_the_whole_reply() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();

    let response = step(&app, &turn, &headers, "/v1/conversation/step").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-constitution-hash"], headers.constitution_hash.as_deref().unwrap());
    let body: Value = response.json().await.unwrap();
    assert!(!body["content"].as_str().unwrap().is_empty(), "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    assert_eq!(app.store.turns(&turn.session_id.parse().unwrap()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn stream_with_a_valid_signed_verdict_streams_deltas_then_done() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();

    let response = step(&app, &turn, &headers, "/v1/conversation/stream").await;

    assert_eq!(response.status(), 200);
    let sse = crate::helpers::read_sse(response).await;
    assert_eq!(sse.names().last(), Some(&"done"));
    assert!(!sse.text().is_empty());
}

#[tokio::test]
async fn missing_policy_headers_are_400() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let mut headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();
    headers.signature = None;
    let body = assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 400, "policy_headers_missing").await;
    assert!(body["message"].as_str().unwrap().contains("x-policy-signature"));
    assert_error(step(&app, &turn, &PolicyHeaders::default(), "/v1/conversation/stream").await, 400, "policy_headers_missing").await;
}

#[tokio::test]
async fn a_wrong_constitution_hash_is_409() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let mut headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();
    headers.constitution_hash = Some(format!("sha256:{}", "0".repeat(64)));
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 409, "constitution_mismatch").await;
}

#[tokio::test]
async fn a_forged_signature_is_403() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let mut headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();
    let sig = headers.signature.take().unwrap();
    let forged = format!("{}{}", &sig[..sig.len() - 1], if sig.ends_with('0') { '1' } else { '0' });
    headers.signature = Some(forged);
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_verdict_invalid").await;
}

#[tokio::test]
async fn a_verdict_signed_for_another_turn_is_403() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let other = TurnRef { turn_id: "another-turn", ..turn.turn_ref() };
    let headers = app.policy().sign(other, Verdict::Allow).headers();
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_verdict_invalid").await;
}

#[tokio::test]
async fn a_verdict_signed_for_another_message_is_403() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let headers = app.policy().sign(TurnRef { message: "Something harmless.", ..turn.turn_ref() }, Verdict::Allow).headers();
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_verdict_invalid").await;
}

#[tokio::test]
async fn an_expired_signature_is_403() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 5;
    let headers = app.policy().sign_until(turn.turn_ref(), Verdict::Allow, past).headers();
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_verdict_expired").await;
}

#[tokio::test]
async fn a_refuse_verdict_is_never_dispatched() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let headers = app.policy().sign(turn.turn_ref(), Verdict::Refuse(vec!["S1".into()])).headers();
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_refused").await;
    assert!(app.store.turns(&turn.session_id.parse().unwrap()).await.unwrap().is_empty());
}

#[tokio::test]
async fn orchestrator_endpoints_require_a_key() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let response = app.post("/v1/conversation/step", None, &turn.body()).await;
    assert_error(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_verdict_is_good_for_one_dispatch() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    let headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();

    assert_eq!(step(&app, &turn, &headers, "/v1/conversation/step").await.status(), 200);
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_verdict_replayed").await;
    assert_error(step(&app, &turn, &headers, "/v1/conversation/stream").await, 403, "policy_verdict_replayed").await;
    assert_eq!(app.store.turns(&turn.session_id.parse().unwrap()).await.unwrap().len(), 1, "the replays ran nothing");
}

#[tokio::test]
async fn a_verdict_signed_for_other_generation_parameters_is_403() {
    let app = spawn_app().await;
    let turn = new_turn(&app).await;
    // The body asks for 6 tokens; the verdict was signed for 64.
    let params = GenerationParams { max_tokens: 64, ..turn.turn_ref().params };
    let headers = app.policy().sign(TurnRef { params, ..turn.turn_ref() }, Verdict::Allow).headers();
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 403, "policy_verdict_invalid").await;
    // The rejected attempt claimed nothing: the genuine verdict still works.
    let genuine = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();
    assert_eq!(step(&app, &turn, &genuine, "/v1/conversation/step").await.status(), 200);
}

#[tokio::test]
async fn an_unreachable_verdict_ledger_is_503_and_dispatches_nothing() {
    // Nothing listens on this port, so the Redis ledger cannot record the claim.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = spawn_app_with(Storage::Sqlite, move |s| {
        s.redis.url = steward::config::Secret::new(format!("redis://127.0.0.1:{port}"));
        s.redis.command_timeout = NonZeroDuration::from_millis(300);
    })
    .await;
    let turn = new_turn(&app).await;
    let headers = app.policy().sign(turn.turn_ref(), Verdict::Allow).headers();
    assert_error(step(&app, &turn, &headers, "/v1/conversation/step").await, 503, "policy_registry_unavailable").await;
    assert!(app.store.turns(&turn.session_id.parse().unwrap()).await.unwrap().is_empty());
}
