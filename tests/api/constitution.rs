//! Trying a constitution before activating it: `steward constitution dry-run`
//! (the real binary) over turns recorded by real conversations.

use std::process::Command;

use serde_json::{json, Value};

use steward::identity::Capability;

use crate::helpers::{assert_error, manifest_dir, spawn_app, unique, TestApp, SIGNING_KEY};

fn dry_run(app: &TestApp, candidate: &std::path::Path, tenant: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["constitution", "dry-run"])
        .arg(candidate)
        .args(["--tenant", tenant, "--since", "1h"])
        .current_dir(manifest_dir())
        .env("STEWARD_DATABASE__URL", app.settings.database.url.expose())
        .env("STEWARD_POLICY__SIGNING_KEY", SIGNING_KEY)
        .env("STEWARD_TELEMETRY__LOG_LEVEL", "warn")
        .output()
        .expect("run steward constitution dry-run");
    assert!(out.status.success(), "dry-run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2/2 judged"), "progress is shown: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// The configured constitution with `phrase` added to its first category: (TOML text, that category's code).
pub(crate) fn candidate_with_phrase(app: &TestApp, phrase: &str) -> (String, String) {
    let mut doc: toml::Table = std::fs::read_to_string(&app.settings.policy.constitution).unwrap().parse().unwrap();
    let first = doc["categories"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
    let code = first["code"].as_str().unwrap().to_owned();
    first["phrases"].as_array_mut().unwrap().push(phrase.into());
    (toml::to_string(&doc).unwrap(), code)
}

#[tokio::test]
async fn a_dry_run_reports_the_turns_a_new_phrase_would_refuse_and_changes_nothing() {
    let app = spawn_app().await;
    let (tenant, key) = app.chat_key().await;
    let greeted = app.chat(&key, &json!({ "message": "Say hello to me.", "max_tokens": 8, "temperature": 0 })).await;
    let poem = app.chat(&key, &json!({ "message": "Write a short poem about the sea.", "max_tokens": 8, "temperature": 0 })).await;
    assert_eq!(greeted.first("session")["policy_verdict"], "allow");
    assert_eq!(poem.first("session")["policy_verdict"], "allow");
    let greeted_turn = greeted.first("session")["turn_id"].as_str().unwrap().to_owned();

    // Under the document the turns were judged by, nothing changes.
    let same = dry_run(&app, &app.settings.policy.constitution, &tenant);
    assert_eq!(same["report"]["turns"], 2);
    assert_eq!(same["report"]["judged"], 2);
    assert_eq!(same["report"]["samples"], json!([]), "{same}");

    // A candidate with one more phrase, which the first request contains.
    let (document, code) = candidate_with_phrase(&app, "hello to me");
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, document).unwrap();
    let turns_before = app.store.turns(&greeted.first("session")["session_id"].as_str().unwrap().parse().unwrap()).await.unwrap();

    let changed = dry_run(&app, &candidate, &tenant);

    let report = &changed["report"];
    assert_eq!(report["allow_to_refuse"][&code], 1, "{changed}");
    assert_eq!(report["refuse_to_allow"], json!({}));
    let sample = &report["samples"][0];
    assert_eq!(sample["turn_id"], greeted_turn);
    assert_eq!(sample["trace_id"], greeted.first("session")["trace_id"]);
    assert_eq!((sample["from"].as_str(), sample["to"].as_str()), (Some("allow"), Some(format!("refuse:{code}").as_str())));
    assert_ne!(changed["candidate"]["hash"], same["candidate"]["hash"]);
    let turns_after = app.store.turns(&greeted.first("session")["session_id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    assert_eq!(turns_before, turns_after, "read-only");
}

#[tokio::test]
async fn the_dry_run_endpoint_judges_only_the_callers_tenant_and_needs_policy_admin() {
    let app = spawn_app().await;
    let (tenant, chat) = app.chat_key().await;
    let admin = app.key(&tenant, &[Capability::PolicyAdmin]).await;
    let greeted = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 8, "temperature": 0 })).await;
    // Another tenant's turn with the same words, which this tenant's admin must not see.
    let (_, other) = app.chat_key().await;
    app.chat(&other, &json!({ "message": "Say hello to me.", "max_tokens": 8, "temperature": 0 })).await;
    let (document, code) = candidate_with_phrase(&app, "hello to me");
    let url = format!("{}/v1/policy/constitution/dry-run", app.address);
    let post = |key: &str, body: Value| app.http.post(&url).bearer_auth(key).json(&body).send();

    assert_error(post(&chat, json!({ "document": document })).await.unwrap(), 403, "forbidden").await;
    assert_error(post(&admin, json!({ "document": "name = 1" })).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(&admin, json!({ "document": document, "since": "3w" })).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(&admin, json!({ "document": document, "limit": 5000 })).await.unwrap(), 400, "invalid_request").await;

    let response = post(&admin, json!({ "document": document, "since": "1h" })).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["report"]["turns"], 1, "only the caller's own tenant: {body}");
    assert_eq!(body["report"]["allow_to_refuse"][&code], 1);
    assert_eq!(body["report"]["samples"][0]["turn_id"], greeted.first("session")["turn_id"]);
}

#[tokio::test]
async fn the_active_constitution_is_served_by_itself_and_by_its_hash_with_its_text_only_for_policy_readers() {
    let app = spawn_app().await;
    let tenant = unique("tenant-");
    let key = app.key(&tenant, &[Capability::Chat]).await;
    let reader = app.key(&tenant, &[Capability::PolicyRead]).await;
    let get = |path: String, key: &str| app.http.get(format!("{}{path}", app.address)).bearer_auth(key).send();
    let hash = steward::policy::Constitution::load(&app.settings.policy.constitution).unwrap().hash();

    let active: Value = get("/v1/policy/constitution".into(), &key).await.unwrap().json().await.unwrap();
    assert_eq!(active["hash"], hash.as_str());
    assert!(active["name"].is_string() && active["version"].is_string(), "{active}");
    assert!(active.get("document").is_none(), "a chat key is not handed the phrase list: {active}");
    let full: Value = get("/v1/policy/constitution".into(), &reader).await.unwrap().json().await.unwrap();
    assert_eq!(full["document"], std::fs::read_to_string(&app.settings.policy.constitution).unwrap());
    let same: Value = get(format!("/v1/policy/constitutions/{hash}"), &reader).await.unwrap().json().await.unwrap();
    assert_eq!(same, full);

    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_error(get(format!("/v1/policy/constitutions/{unknown}"), &key).await.unwrap(), 404, "not_found").await;
    assert_error(get("/v1/policy/constitutions/not-a-hash".into(), &key).await.unwrap(), 400, "invalid_request").await;
    let anonymous = app.http.get(format!("{}/v1/policy/constitution", app.address)).send().await.unwrap();
    assert_error(anonymous, 401, "unauthenticated").await;
}

#[tokio::test]
async fn put_activates_a_constitution_for_the_callers_tenant_only_without_a_restart() {
    let app = spawn_app().await;
    let (tenant, chat) = app.chat_key().await;
    let admin = app.key(&tenant, &[Capability::PolicyAdmin]).await;
    let (_, other) = app.chat_key().await;
    let (document, code) = candidate_with_phrase(&app, "tell me a riddle");
    let put = |key: &str, body: String| app.http.put(format!("{}/v1/policy/constitution", app.address)).bearer_auth(key).body(body).send();

    assert_error(put(&chat, document.clone()).await.unwrap(), 403, "forbidden").await;
    assert_error(put(&admin, "name = 1".into()).await.unwrap(), 400, "invalid_request").await;
    // A document naming a classifier this instance does not have is the caller's 400, not every turn's failure.
    let unknown = document.replacen("[semantic]\n", &format!("[semantic]\nclassifier = \"sha256:{}\"\n", "0".repeat(64)), 1);
    assert!(steward::policy::Constitution::from_toml_str(&unknown).unwrap().semantic.classifier.is_some());
    assert_error(put(&admin, unknown).await.unwrap(), 400, "invalid_request").await;
    let before = app.chat(&chat, &json!({ "message": "Tell me a riddle.", "max_tokens": 2 })).await;
    assert_eq!(before.first("session")["policy_verdict"], "allow");

    let response = put(&admin, document.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let activated: Value = response.json().await.unwrap();
    assert_eq!((activated["tenant"].as_str(), activated["changed"].as_bool()), (Some(tenant.as_str()), Some(true)));

    let refused = app.chat(&chat, &json!({ "message": "Tell me a riddle.", "max_tokens": 2 })).await;
    assert_eq!(refused.first("session")["constitution_hash"], activated["hash"]);
    assert_eq!(refused.first("refusal")["code"], code.as_str());
    let elsewhere = app.chat(&other, &json!({ "message": "Tell me a riddle.", "max_tokens": 2 })).await;
    assert_eq!(elsewhere.first("session")["policy_verdict"], "allow", "other tenants keep the default");
    let again: Value = put(&admin, document).await.unwrap().json().await.unwrap();
    assert_eq!(again["changed"], false);
    let audit = app.outbox("policy.audit").await;
    let types: Vec<&str> = audit.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["policy.seeded", "policy.activation_requested", "policy.activated"], "one change, asked then made: {audit:#?}");
    assert_eq!(audit[2]["tenant"], tenant.as_str());
    // The document is the tenant's: another tenant that learns its hash is told nothing.
    let by_hash = format!("/v1/policy/constitutions/{}", activated["hash"].as_str().unwrap());
    assert_error(app.get_with(&by_hash, &other).await, 404, "not_found").await;
    let own: Value = app.get_with(&by_hash, &admin).await.json().await.unwrap();
    assert!(own["document"].as_str().is_some_and(|d| d.contains("riddle")), "{own}");
}
