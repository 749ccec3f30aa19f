//! Attacks on the constitution routes: an activation whose record cannot be
//! written, and dry-run windows that overflow.

use serde_json::{json, Value};
use steward::identity::Capability;

use crate::constitution::candidate_with_phrase;
use crate::helpers::{assert_error, spawn_app, spawn_app_with, unique, Storage};

#[tokio::test]
async fn a_constitution_whose_audit_record_cannot_be_written_never_becomes_active() {
    let app = spawn_app_with(Storage::Postgres, |_| {}).await;
    let tenant = unique("tenant-");
    let (chat, admin) = (app.key(&tenant, &[Capability::Chat]).await, app.key(&tenant, &[Capability::PolicyAdmin]).await);
    let (document, _) = candidate_with_phrase(&app, "tell me a riddle");
    let before: Value = app.get_with("/v1/policy/constitution", &chat).await.json().await.unwrap();
    // The database refuses policy.audit rows (a working database rejecting a statement: not retried forever).
    for statement in [
        "CREATE FUNCTION refuse_policy_audit() RETURNS trigger AS $$ BEGIN IF NEW.topic = 'policy.audit' THEN RAISE EXCEPTION 'no audit'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_policy_audit BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_policy_audit()",
    ] {
        sqlx::query(statement).execute(app.db.pool()).await.unwrap();
    }
    let put = || app.http.put(format!("{}/v1/policy/constitution", app.address)).bearer_auth(&admin).body(document.clone()).send();

    assert_error(put().await.unwrap(), 500, "internal").await;

    let after: Value = app.get_with("/v1/policy/constitution", &chat).await.json().await.unwrap();
    assert_eq!(after["hash"], before["hash"], "the unrecorded constitution is not active");
    let turn = app.chat(&chat, &json!({ "message": "Tell me a riddle.", "max_tokens": 2 })).await;
    assert_eq!(turn.first("session")["constitution_hash"], before["hash"]);
    // Once records can be written again, the same request is made, and recorded.
    sqlx::query("DROP TRIGGER refuse_policy_audit ON outbox").execute(app.db.pool()).await.unwrap();
    let made: Value = put().await.unwrap().json().await.unwrap();
    assert_eq!(made["changed"], true, "{made}");
    let types: Vec<String> =
        app.outbox("policy.audit").await.iter().filter(|r| r["tenant"] == tenant.as_str()).map(|r| r["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types, ["policy.activation_requested", "policy.activated"]);
}

#[tokio::test]
async fn a_dry_run_window_too_long_to_count_is_a_400_naming_the_maximum() {
    let app = spawn_app().await;
    let admin = app.key(&unique("tenant-"), &[Capability::PolicyAdmin]).await;
    let document = std::fs::read_to_string(&app.settings.policy.constitution).unwrap();
    for since in ["300000000000000d", "18446744073709551615s", "3651d"] {
        let response = app.post("/v1/policy/constitution/dry-run", Some(&admin), &json!({ "document": document, "since": since })).await;
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(body["message"].as_str().unwrap().contains("at most 3650d"), "{body}");
    }
}

#[tokio::test]
async fn a_dry_run_writes_nothing_to_disk_and_an_activation_keeps_its_exemplars() {
    // A model directory of its own (links to the model's files), to see what is written there.
    let models = tempfile::tempdir().unwrap();
    let shared = crate::helpers::manifest_dir().join(".models/all-minilm-l6-v2");
    for entry in std::fs::read_dir(&shared).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("exemplars-") {
            std::os::unix::fs::symlink(&path, models.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let dir = models.path().to_owned();
    let app = spawn_app_with(Storage::Sqlite, move |s| s.moderation.model_dir = dir).await;
    let written = || std::fs::read_dir(models.path()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("exemplars-")).count();
    let at_start = written();
    let admin = app.key(&unique("tenant-"), &[Capability::PolicyAdmin]).await;
    let (document, _) = candidate_with_phrase(&app, "a phrase only this test uses");
    let mut candidate: toml::Table = document.parse().unwrap();
    let example = format!("an example only this test uses {}", unique(""));
    // Judged by its examples (no trained classifier named), so there is something to embed and keep.
    candidate["semantic"].as_table_mut().unwrap().remove("classifier");
    candidate["categories"].as_array_mut().unwrap()[0].as_table_mut().unwrap()["examples"].as_array_mut().unwrap().push(example.into());
    let document = toml::to_string(&candidate).unwrap();

    let dry = app.post("/v1/policy/constitution/dry-run", Some(&admin), &json!({ "document": document })).await;

    assert_eq!(dry.status(), 200);
    assert_eq!(written(), at_start, "the dry run wrote nothing");
    let put = app.http.put(format!("{}/v1/policy/constitution", app.address)).bearer_auth(&admin).body(document).send().await.unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(written(), at_start + 1, "an activation keeps its embedded examples for the next start");
}
