//! Signed checkpoints against the real broker and the real binary: `audit
//! verify --public-key` finds what the hash chains alone cannot — a session
//! whose last events were removed, a deleted session, a forged but
//! well-chained event — and names each.

use serde_json::{json, Value};

use crate::broker::{consume, produce_copy, shared_broker, wait_for, Consumed};
use crate::events::app_with_broker;
use crate::helpers::{manifest_dir, unique, Storage};

const SECRET: &str = "a checkpoint secret for the tests";

async fn steward(args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(args)
        .env("STEWARD_EVENTS__CHECKPOINT_KEY", SECRET)
        .current_dir(manifest_dir())
        .output()
        .await
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn report_of(report: &str, chain: &str) -> Value {
    report
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["session"] == chain)
        .unwrap_or_else(|| panic!("no report of {chain}: {report}"))
}

#[tokio::test]
async fn audit_verify_with_the_public_key_names_a_truncated_a_deleted_and_a_forged_session() {
    let topic = unique("conversation.events.");
    let checkpoints = format!("{topic}.checkpoints");
    let app = {
        let checkpoints = checkpoints.clone();
        app_with_broker(Storage::Sqlite, &shared_broker(), &topic, move |s| {
            s.events.checkpoint_key = steward::config::Secret::new(SECRET);
            s.events.checkpoint_interval_ms = 200;
            s.kafka.checkpoint_topic = checkpoints;
        })
        .await
    };
    let (tenant, key) = app.chat_key().await;
    let mut chains = Vec::new();
    for message in ["Name a colour.", "Name a fruit.", "Name a tree."] {
        let sse = app.chat(&key, &json!({ "message": message, "max_tokens": 3 })).await;
        chains.push(format!("{tenant}:{}", sse.header("x-session-id")));
    }
    let records = wait_for(&shared_broker(), &topic, 20, |r| r.len() >= 9).await;
    let last_seq = |chain: &str| records.iter().filter(|r| r.key == chain).map(|r| r.value["seq"].as_i64().unwrap()).max().unwrap();
    // Every session's last event is under a checkpoint.
    wait_for(&shared_broker(), &checkpoints, 20, |cps| {
        chains.iter().all(|chain| {
            cps.iter()
                .flat_map(|c| c.value["heads"].as_array().cloned().unwrap_or_default())
                .any(|h| h["chain"] == chain.as_str() && h["seq"] == last_seq(chain))
        })
    })
    .await;
    let (ok, public_key) = steward(&["keys", "audit-public"]).await;
    assert!(ok);
    let public_key = public_key.trim().to_owned();
    let verify = |copy: String| {
        let (topic, checkpoints, public_key) = (topic.clone(), checkpoints.clone(), public_key.clone());
        async move {
            let broker = shared_broker();
            let args = [
                "audit",
                "verify",
                "--brokers",
                &broker,
                "--topic",
                &copy,
                "--public-key",
                &public_key,
                "--checkpoint-topic",
                &checkpoints,
                "--checkpointed-as",
                &topic,
            ];
            steward(&args).await
        }
    };

    let (ok, report) = verify(topic.clone()).await;
    assert!(ok, "the untouched topic verifies: {report}");

    // A copy with the first session's last event removed, the second session gone and the
    // third's last event rewritten: each is still a well-formed chain.
    let doctored: Vec<Consumed> = records
        .iter()
        .filter(|r| !(r.key == chains[0] && r.value["seq"] == last_seq(&chains[0])) && r.key != chains[1])
        .cloned()
        .map(|mut r| {
            if r.key == chains[2] && r.value["seq"] == last_seq(&chains[2]) {
                r.value["data"]["finish_reason"] = json!("length");
                r.value["data"]["usage"] = json!({ "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 });
                r.raw = serde_json::to_vec(&r.value).unwrap();
            }
            r
        })
        .collect();
    let copy = unique("doctored.");
    produce_copy(&shared_broker(), &copy, &doctored).await;
    let (chains_alone, _) = steward(&["audit", "verify", "--brokers", &shared_broker(), "--topic", &copy]).await;
    assert!(chains_alone, "the hash chains alone find nothing wrong");

    let (ok, report) = verify(copy).await;

    assert!(!ok, "{report}");
    for (chain, kind) in chains.iter().zip(["truncated", "deleted", "forged"]) {
        let session = report_of(&report, chain);
        assert_eq!(session["status"], "broken", "{session}");
        assert_eq!(session["problems"][0]["kind"], kind, "{session}");
    }
    assert!(consume(&shared_broker(), &checkpoints).await.iter().all(|c| c.value["public_key"] == public_key.as_str()));
}
