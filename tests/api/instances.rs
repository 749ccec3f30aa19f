//! Two real Steward processes (the `steward` binary) sharing one Redis and
//! one PostgreSQL database, as behind a load balancer.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Row;
use steward::db::Database;
use steward::identity::{Capability, KeyStore, TenantId};
use steward::policy::{PolicyHeaders, TurnRef, Verdict};
use steward::slm::GenerationParams;

use crate::helpers::{manifest_dir, postgres_database, slm_url, unique, Signer, SIGNING_KEY};
use crate::training::redis_url;

pub struct Instance {
    child: Child,
    pub address: String,
}

impl Instance {
    pub async fn start(database_url: &str, key_prefix: &str) -> Self {
        Self::start_with(database_url, key_prefix, &[]).await
    }

    /// An instance with more settings (`STEWARD_…` variables).
    pub async fn start_with(database_url: &str, key_prefix: &str, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_steward"))
            .arg("serve")
            .current_dir(manifest_dir())
            .env("STEWARD_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("STEWARD_DATABASE__URL", database_url)
            .env("STEWARD_REDIS__URL", redis_url())
            .env("STEWARD_REDIS__KEY_PREFIX", key_prefix)
            .env("STEWARD_SLM__BASE_URL", slm_url())
            .env("STEWARD_POLICY__SIGNING_KEY", SIGNING_KEY)
            .env("STEWARD_TRAINING__EXPIRY_CHECK", "100ms")
            .env("STEWARD_TELEMETRY__LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the steward binary");
        // Owned before waiting, so a failed start still kills the process.
        let instance = Self { child, address: format!("http://127.0.0.1:{port}") };
        for _ in 0..200 {
            if reqwest::get(format!("{}/healthz", instance.address)).await.is_ok_and(|r| r.status() == 200) {
                return instance;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("steward did not start on {}", instance.address);
    }

    /// The process id, to read its memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as an orchestrator stopping the container does.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Waits for the process to exit; its status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < within, "steward still running {within:?} after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new().post(format!("{}{path}", self.address)).bearer_auth(key).json(body).send().await.unwrap()
    }

    pub async fn post_with(&self, path: &str, key: &str, body: &Value, policy: &PolicyHeaders) -> reqwest::Response {
        let mut request = reqwest::Client::new().post(format!("{}{path}", self.address)).bearer_auth(key).json(body);
        for (name, value) in
            [("x-constitution-hash", &policy.constitution_hash), ("x-policy-verdict", &policy.verdict), ("x-policy-signature", &policy.signature)]
        {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        request.send().await.unwrap()
    }

    async fn status(&self, key: &str) -> Value {
        reqwest::Client::new().get(format!("{}/v1/training/status", self.address)).bearer_auth(key).send().await.unwrap().json().await.unwrap()
    }

    /// Waits until this instance's gauge for `tenant` reads `value`.
    async fn gauge_reads(&self, tenant: &str, value: u8) {
        let line = format!("training_mode_state{{tenant=\"{tenant}\"}} {value}\n");
        for _ in 0..100 {
            let metrics = reqwest::get(format!("{}/metrics", self.address)).await.unwrap().text().await.unwrap();
            if metrics.contains(&line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} never reported {line}", self.address);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL database of this test's own, migrated, for the instances to share: (URL, handle).
pub async fn shared_database() -> (String, Database) {
    let url = postgres_database().await;
    let db = Database::connect(&url, 2).await.unwrap();
    db.migrate().await.unwrap();
    (url, db)
}

async fn expired_records(db: &Database, tenant: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE event_type = 'training.expired' AND record_key = $1")
        .bind(tenant)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

#[tokio::test]
async fn two_instances_share_one_lock_one_status_one_gauge_and_audit_an_expiry_once() {
    let (url, db) = shared_database().await;
    let tenant = unique("tenant-");
    let keys = KeyStore::new(db.clone());
    let caps = [Capability::Chat, Capability::TrainingAdmin];
    let (_, alice) = keys.create(&TenantId::parse(&tenant).unwrap(), &caps).await.unwrap();
    let (_, bob) = keys.create(&TenantId::parse(&tenant).unwrap(), &caps).await.unwrap();
    let (alice, bob) = (alice.expose().to_owned(), bob.expose().to_owned());
    let prefix = format!("{}:", unique("steward-test-"));
    let (a, b) = tokio::join!(Instance::start(&url, &prefix), Instance::start(&url, &prefix));

    let enable = json!({ "ttl_seconds": 60, "reason": "race" });
    let (first, second) = tokio::join!(a.post("/v1/training/enable", &alice, &enable), b.post("/v1/training/enable", &bob, &enable));

    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "exactly one enable wins");
    let alice_won = first.status() == 200;
    let winner: Value = if alice_won { first.json().await.unwrap() } else { second.json().await.unwrap() };
    let (seen_a, seen_b) = (a.status(&alice).await, b.status(&bob).await);
    // The same lock: the remaining TTL differs only by the time between the two reads.
    for field in ["state", "owner", "fencing_token", "reason"] {
        assert_eq!(seen_a[field], seen_b[field], "both instances report the same {field}");
    }
    let expiry = |v: &Value| chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    assert!((expiry(&seen_a) - expiry(&seen_b)).num_milliseconds().abs() < 100);
    assert_eq!((seen_a["owner"].clone(), seen_a["fencing_token"].clone()), (winner["owner"].clone(), winner["fencing_token"].clone()));
    a.gauge_reads(&tenant, 1).await;
    b.gauge_reads(&tenant, 1).await;

    let token = winner["lock_token"].as_str().unwrap();
    let (holder_key, other) = if alice_won { (&alice, &b) } else { (&bob, &a) };
    assert_eq!(other.post("/v1/training/disable", holder_key, &json!({ "lock_token": token })).await.status(), 200, "any instance can release");
    a.gauge_reads(&tenant, 0).await;
    b.gauge_reads(&tenant, 0).await;

    let short: Value = a.post("/v1/training/enable", &alice, &json!({ "ttl_seconds": 1, "reason": "left to lapse" })).await.json().await.unwrap();
    assert!(short["fencing_token"].as_u64() > winner["fencing_token"].as_u64());
    for _ in 0..100 {
        if expired_records(&db, &tenant).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await; // several more check rounds on both instances
    assert_eq!(expired_records(&db, &tenant).await, 1, "training.expired audited exactly once");
    assert_eq!(a.status(&alice).await["state"], "disabled");
    b.gauge_reads(&tenant, 0).await;
}

#[tokio::test]
async fn forged_expired_tampered_and_replayed_verdicts_are_refused_with_their_codes_on_either_instance() {
    let (url, db) = shared_database().await;
    let tenant = unique("tenant-");
    let (_, key) = KeyStore::new(db.clone()).create(&TenantId::parse(&tenant).unwrap(), &[Capability::Chat]).await.unwrap();
    let key = key.expose().to_owned();
    let prefix = format!("{}:", unique("steward-test-"));
    let (a, b) = tokio::join!(Instance::start(&url, &prefix), Instance::start(&url, &prefix));

    let policy = Signer::of(&manifest_dir().join("config/constitution.toml"));
    let (session_id, turn_id, message) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string(), "Say hi.");
    let params = GenerationParams { max_tokens: 6, ..GenerationParams::default() };
    let turn = TurnRef { tenant: &tenant, session_id: &session_id, turn_id: &turn_id, message, params, stop: &[] };
    let genuine = policy.sign(turn, Verdict::Allow).headers();
    let body = json!({ "session_id": session_id, "turn_id": turn_id, "message": message, "max_tokens": 6 });
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 5;
    let tampered = |change: &dyn Fn(&mut PolicyHeaders)| {
        let mut headers = genuine.clone();
        change(&mut headers);
        headers
    };
    let forged = tampered(&|h| h.signature = Some(format!("t=9999999999,v1={}", "ab".repeat(32))));
    let expired = policy.sign_until(turn, Verdict::Allow, past).headers();
    let verdict = tampered(&|h| h.verdict = Some("refuse:S1".into()));
    let hash = tampered(&|h| h.constitution_hash = Some(format!("sha256:{}", "0".repeat(64))));
    let longer = json!({ "session_id": session_id, "turn_id": turn_id, "message": message, "max_tokens": 60 });
    let cases: [(&str, &Instance, &Value, &PolicyHeaders, u16, &str); 5] = [
        ("forged signature", &a, &body, &forged, 403, "policy_verdict_invalid"),
        ("expired signature", &b, &body, &expired, 403, "policy_verdict_expired"),
        ("tampered verdict", &a, &body, &verdict, 403, "policy_verdict_invalid"),
        ("tampered hash", &b, &body, &hash, 409, "constitution_mismatch"),
        ("tampered parameters", &a, &longer, &genuine, 403, "policy_verdict_invalid"),
    ];
    for (case, instance, body, headers, status, code) in cases {
        let response = instance.post_with("/v1/conversation/step", &key, body, headers).await;
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(response.json::<Value>().await.unwrap()["code"], code, "{case}");
    }

    // None of them burnt the turn: the genuine verdict runs once, on A, and is refused on B.
    assert_eq!(a.post_with("/v1/conversation/step", &key, &body, &genuine).await.status(), 200);
    let replayed = b.post_with("/v1/conversation/step", &key, &body, &genuine).await;
    assert_eq!(replayed.status(), 403);
    assert_eq!(replayed.json::<Value>().await.unwrap()["code"], "policy_verdict_replayed");
    let turns: i64 = sqlx::query("SELECT COUNT(*) AS n FROM turns WHERE id = $1").bind(&turn_id).fetch_one(db.pool()).await.unwrap().try_get("n").unwrap();
    assert_eq!(turns, 1, "the turn ran once");
}
