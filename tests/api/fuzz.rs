//! schemathesis against a live instance and its own `/openapi.json`: every
//! operation, generated requests (coverage, fuzzing and stateful phases,
//! bounded in examples), and three checks — no 5xx, no status code the
//! document does not list, no response (SSE events included) off its
//! documented schema. Turns are capped at 8 tokens so the real model server
//! answers them quickly. The seed is fixed so CI repeats one known run
//! (`STEWARD_FUZZ_SEED` picks another).

use steward::identity::Capability;

use crate::helpers::{spawn_app_with, unique, Storage};

#[tokio::test]
async fn schemathesis_finds_no_server_error_no_undocumented_status_and_no_response_off_the_schema() {
    let schemathesis = std::env::var("STEWARD_TEST_SCHEMATHESIS").unwrap_or_else(|_| ".venv-fuzz/bin/schemathesis".into());
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.slm.max_tokens_limit = 8;
        s.slm.default_max_tokens = 8;
    })
    .await;
    let key = app.key(&unique("fuzz-"), &[Capability::Chat, Capability::Moderate, Capability::TrainingAdmin, Capability::PolicyAdmin, Capability::Ops]).await;
    let seed = std::env::var("STEWARD_FUZZ_SEED").unwrap_or_else(|_| "20261127".into());
    let run = tokio::process::Command::new(&schemathesis)
        .args(["run", &format!("{}/openapi.json", app.address), "-H", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,response_schema_conformance"])
        // One worker: with two threads, Hypothesis's caches now and then race and schemathesis
        // reports an internal "inconsistent results" error that is not the API's.
        .args(["--max-examples", "20", "--workers", "1", "--request-timeout", "30", "--seed", &seed, "--no-color"])
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within five minutes")
        .unwrap_or_else(|e| panic!("run {schemathesis} (STEWARD_TEST_SCHEMATHESIS; scripts/test.sh installs it): {e}"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis found failures:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("passed"), "{report}");
}
