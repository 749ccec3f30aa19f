//! Signed checkpoints against the real broker and the real binary: `audit
//! verify --public-key` finds what the hash chains alone cannot — a session
//! whose last events were removed, a deleted session, a forged but
//! well-chained event — and names each; the audit topics are chained and
//! checkpointed the same way.

use serde_json::{json, Value};
use steward::durations::NonZeroDuration;
use steward::identity::Capability;

use crate::broker::{consume, produce_copy, shared_broker, wait_for, Consumed, PrivateBroker};
use crate::events::app_with_broker;
use crate::helpers::{manifest_dir, unique, Storage};

/// A 32-byte seed in base64, as `steward keys audit-generate` prints (a test key, not a secret).
const SECRET: &str = "c3Rld2FyZC10ZXN0cy1jaGVja3BvaW50LXNlZWQtMzI=";

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

/// An app relaying to `broker` on `topic` (of `partitions`), checkpointing every 200 ms to `<topic>.checkpoints`.
async fn checkpointed_app(broker: &str, topic: &str, partitions: i32) -> (crate::helpers::TestApp, String) {
    let checkpoints = format!("{topic}.checkpoints");
    let to = checkpoints.clone();
    let app = app_with_broker(Storage::Sqlite, broker, topic, move |s| {
        s.events.checkpoint_key = steward::config::Secret::new(SECRET);
        s.events.checkpoint_interval = NonZeroDuration::from_millis(200);
        s.kafka.checkpoint_topic = to;
        s.kafka.partitions = partitions;
    })
    .await;
    (app, checkpoints)
}

/// `audit verify --public-key` (the key `keys audit-public` prints) of `topic` against the
/// checkpoints on `checkpoints` signed for `signed_for`.
async fn verify_signed(broker: &str, topic: &str, checkpoints: &str, signed_for: &str) -> (bool, String) {
    let (ok, public_key) = steward(&["keys", "audit-public"]).await;
    assert!(ok);
    let args = [
        "audit",
        "verify",
        "--brokers",
        broker,
        "--topic",
        topic,
        "--public-key",
        public_key.trim(),
        "--checkpoint-topic",
        checkpoints,
        "--checkpointed-as",
        signed_for,
    ];
    steward(&args).await
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
    let (app, checkpoints) = checkpointed_app(&shared_broker(), &topic, 2).await;
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
    let verify = |copy: String| {
        let (topic, checkpoints) = (topic.clone(), checkpoints.clone());
        async move { verify_signed(&shared_broker(), &copy, &checkpoints, &topic).await }
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
    let (_, public_key) = steward(&["keys", "audit-public"]).await;
    assert!(consume(&shared_broker(), &checkpoints).await.iter().all(|c| c.value["public_key"] == public_key.trim()));
}

#[tokio::test]
async fn training_and_policy_audit_records_are_chained_and_checkpointed_so_a_removed_record_is_found() {
    let topic = unique("conversation.events.");
    let (app, checkpoints) = checkpointed_app(&shared_broker(), &topic, 2).await;
    let tenant = unique("audit-");
    let admin = app.key(&tenant, &[Capability::TrainingAdmin]).await;
    let enable = json!({ "ttl_seconds": 60, "reason": "chained" });
    let enabled = app.post("/v1/training/enable", Some(&admin), &enable).await;
    assert_eq!(enabled.status(), 200);
    let lock_token = enabled.json::<Value>().await.unwrap()["lock_token"].clone();
    assert_eq!(app.post("/v1/training/disable", Some(&admin), &json!({ "lock_token": lock_token })).await.status(), 200);
    assert_eq!(app.post("/v1/training/enable", Some(&admin), &enable).await.status(), 200);
    let (training, policy) = (app.settings.kafka.training_topic.clone(), app.settings.kafka.policy_topic.clone());
    let records = wait_for(&shared_broker(), &training, 20, |r| r.len() >= 3).await;
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(manifest_dir().join("schemas/training.audit.v1.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut prev = steward::events::ZERO_HASH.to_owned();
    for (i, r) in records.iter().enumerate() {
        assert!(validator.is_valid(&r.value), "{:#}", r.value);
        assert_eq!((r.value["chain"].as_str(), r.value["seq"].as_i64()), (Some(tenant.as_str()), Some(i as i64 + 1)));
        assert_eq!(r.value["prev_hash"], prev.as_str());
        prev = steward::events::event_hash(&r.value);
    }
    // Both audit topics' heads come under signed checkpoints: the training chain at 3, the seeded default at 1.
    let covers = |cps: &[Consumed], of: &str, chain: &str, seq: i64| {
        cps.iter()
            .filter(|c| c.value["topic"] == of)
            .flat_map(|c| c.value["heads"].as_array().cloned().unwrap_or_default())
            .any(|h| h["chain"] == chain && h["seq"] == seq)
    };
    wait_for(&shared_broker(), &checkpoints, 20, |cps| covers(cps, &training, &tenant, 3) && covers(cps, &policy, "*", 1)).await;
    let verify = |copy: String, signed_for: String| {
        let checkpoints = checkpoints.clone();
        async move { verify_signed(&shared_broker(), &copy, &checkpoints, &signed_for).await }
    };
    for audit_topic in [&training, &policy] {
        let (ok, report) = verify(audit_topic.clone(), audit_topic.clone()).await;
        assert!(ok, "{audit_topic} verifies: {report}");
    }
    let (_, report) = verify(training.clone(), training.clone()).await;
    assert_eq!(report_of(&report, &tenant)["events"], 3, "{report}");

    // The last `training.enable` taken away: a well-formed chain, short of its checkpoint.
    let copy = unique("doctored.training.");
    produce_copy(&shared_broker(), &copy, &records[..2]).await;
    let (chains_alone, _) = steward(&["audit", "verify", "--brokers", &shared_broker(), "--topic", &copy]).await;
    assert!(chains_alone, "the chain alone finds nothing wrong");
    let (ok, report) = verify(copy, training.clone()).await;
    assert!(!ok, "{report}");
    assert_eq!(report_of(&report, &tenant)["problems"][0]["kind"], "truncated", "{report}");
}

fn window_of(report: &str) -> Value {
    report.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|l| l.get("window").cloned()).unwrap_or_else(|| panic!("no window: {report}"))
}

#[tokio::test]
async fn after_retention_took_older_records_audit_verify_checks_what_is_retained_and_says_from_when() {
    let mut broker = PrivateBroker::start().await;
    let topic = unique("conversation.events.");
    // One partition: tansu reports a partition that retention emptied as if it had never held a
    // record (its latest offset is read from the last record), which no verifier can tell from an
    // untouched one; with the newer sessions beside the older ones, the partition keeps records.
    let (app, checkpoints) = checkpointed_app(&broker.address(), &topic, 1).await;
    let (tenant, key) = app.chat_key().await;
    let mut chains = Vec::new();
    let mut cutoff = 0;
    for (i, message) in ["Name a colour.", "Name a fruit.", "Name a tree.", "Name a river."].into_iter().enumerate() {
        if i == 2 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            cutoff = chrono::Utc::now().timestamp_millis();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let sse = app.chat(&key, &json!({ "message": message, "max_tokens": 3 })).await;
        chains.push(format!("{tenant}:{}", sse.header("x-session-id")));
    }
    let records = wait_for(&broker.address(), &topic, 20, |r| r.len() >= 12).await;
    let last = |chain: &str| records.iter().filter(|r| r.key == chain).max_by_key(|r| r.value["seq"].as_i64()).unwrap().clone();
    wait_for(&broker.address(), &checkpoints, 20, |cps| {
        chains.iter().all(|chain| {
            cps.iter()
                .flat_map(|c| c.value["heads"].as_array().cloned().unwrap_or_default())
                .any(|h| h["chain"] == chain.as_str() && h["seq"] == last(chain).value["seq"])
        })
    })
    .await;
    drop(app);
    let address = broker.address();
    let verify = || verify_signed(&address, &topic, &checkpoints, &topic);
    let (ok, report) = verify().await;
    assert!(ok, "{report}");
    assert_eq!(window_of(&report)["complete"], true, "{report}");

    // Retention takes the first two sessions' events; their checkpoints are kept (they are small).
    let deleted = broker.apply_retention(&topic, cutoff).await;
    assert_eq!(deleted, 6, "three events of each of the two older sessions");
    let (ok, report) = verify().await;

    assert!(ok, "what is retained verifies, and the sessions retention took are not called deleted: {report}");
    let window = window_of(&report);
    assert_eq!(window["complete"], false, "{report}");
    assert!(window["retained_from_ms"].as_i64().unwrap() >= cutoff, "{window}");
    assert_eq!(window["outside"], 2, "the two older sessions' checkpoints are outside the window: {window}");
    for chain in &chains[2..] {
        assert_eq!(report_of(&report, chain)["status"], "intact", "{report}");
    }

    // Within the window, an event removed from the broker's storage is still found.
    let victim = records.iter().find(|r| r.key == chains[2] && r.value["seq"] == 2).unwrap().clone();
    let client = crate::broker::client(&broker.address()).await;
    let pc = client.partition_client(&topic, victim.partition, rskafka::client::partition::UnknownTopicHandling::Error).await.unwrap();
    let earliest = pc.get_offset(rskafka::client::partition::OffsetAt::Earliest).await.unwrap();
    let (fetched, _) = pc.fetch_records(earliest, 1..10_000_000, 100).await.unwrap();
    let at = fetched.iter().find(|r| r.record.value.as_deref() == Some(victim.raw.as_slice())).expect("the victim is retained").offset;
    assert_eq!(broker.delete_record(&topic, victim.partition, at).await, 1);
    let (ok, report) = verify().await;
    assert!(!ok, "{report}");
    assert_eq!(report_of(&report, &chains[2])["problems"][0]["kind"], "missing", "{report}");
    assert_eq!(report_of(&report, &chains[3])["status"], "intact", "{report}");
}
