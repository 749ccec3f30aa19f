//! Training mode against the real Redis: the lock store's behaviour (both
//! adapters), the admin API, its audit trail, the effect on conversation
//! events, Redis outages and two Steward processes sharing one Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use steward::durations::NonZeroDuration;
use steward::identity::Capability;
use steward::training::{Acquired, InMemoryLockStore, LockRequest, LockStore, Owned, RedisLockStore};

use crate::helpers::{assert_error, spawn_app_with, unique, Storage, TestApp};

pub fn redis_url() -> String {
    std::env::var("STEWARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

mod lock_store {
    //! One behaviour suite, run against the in-process and the Redis adapter.
    use super::*;

    async fn memory() -> Arc<dyn LockStore> {
        Arc::new(InMemoryLockStore::default())
    }

    async fn redis() -> Arc<dyn LockStore> {
        let store = RedisLockStore::connect(&redis_url(), &format!("{}:", unique("steward-test-")), Duration::from_millis(500)).unwrap();
        for _ in 0..50 {
            if store.ping().await.is_ok() {
                return Arc::new(store);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("Redis not reachable at {}", redis_url());
    }

    const TTL: Duration = Duration::from_secs(30);

    async fn acquire_is_exclusive_and_fencing_increases(store: Arc<dyn LockStore>) {
        let Acquired::Acquired(first) =
            store.acquire(LockRequest { tenant: "t", owner: "alice", reason: "eval", token: "tok-a", ttl: TTL, floor: 0 }).await.unwrap()
        else {
            panic!("not acquired")
        };
        let Acquired::Held(held) = store.acquire(LockRequest { tenant: "t", owner: "bob", reason: "other", token: "tok-b", ttl: TTL, floor: 0 }).await.unwrap()
        else {
            panic!("second acquire won")
        };
        assert_eq!((held.owner.as_str(), held.fencing_token), ("alice", first.fencing_token));
        assert!(
            matches!(
                store.acquire(LockRequest { tenant: "other-tenant", owner: "bob", reason: "x", token: "tok-c", ttl: TTL, floor: 0 }).await.unwrap(),
                Acquired::Acquired(_)
            ),
            "tenants are independent"
        );
        assert!(matches!(store.release("t", "tok-a").await.unwrap(), Owned::Done(_)));
        let Acquired::Acquired(second) =
            store.acquire(LockRequest { tenant: "t", owner: "bob", reason: "again", token: "tok-d", ttl: TTL, floor: 0 }).await.unwrap()
        else {
            panic!("not acquired")
        };
        assert!(second.fencing_token > first.fencing_token);
    }

    async fn only_the_holder_renews_or_releases(store: Arc<dyn LockStore>) {
        store.acquire(LockRequest { tenant: "t", owner: "alice", reason: "eval", token: "tok-a", ttl: TTL, floor: 0 }).await.unwrap();
        let Owned::NotOwner(Some(current)) = store.renew("t", "wrong", TTL).await.unwrap() else { panic!("renewed with a wrong token") };
        assert_eq!(current.owner, "alice");
        assert!(matches!(store.release("t", "wrong").await.unwrap(), Owned::NotOwner(Some(_))));
        let Owned::Done(renewed) = store.renew("t", "tok-a", Duration::from_secs(60)).await.unwrap() else { panic!("holder could not renew") };
        assert!(renewed.ttl_ms > 30_000);
        assert!(matches!(store.release("t", "tok-a").await.unwrap(), Owned::Done(_)));
        assert_eq!(store.status("t").await.unwrap(), None);
        assert!(matches!(store.release("t", "tok-a").await.unwrap(), Owned::NotOwner(None)), "a released token is stale");
    }

    async fn a_lapsed_lock_is_claimed_exactly_once(store: Arc<dyn LockStore>) {
        store.acquire(LockRequest { tenant: "t", owner: "alice", reason: "short", token: "tok-a", ttl: Duration::from_millis(150), floor: 0 }).await.unwrap();
        store.acquire(LockRequest { tenant: "u", owner: "bob", reason: "released", token: "tok-b", ttl: Duration::from_millis(150), floor: 0 }).await.unwrap();
        store.release("u", "tok-b").await.unwrap();
        assert!(store.claim_expired().await.unwrap().is_empty(), "nothing lapsed yet");
        tokio::time::sleep(Duration::from_millis(300)).await;

        let (a, b) = tokio::join!(store.claim_expired(), store.claim_expired());
        let claimed: Vec<_> = a.unwrap().into_iter().chain(b.unwrap()).collect();

        assert_eq!(claimed.len(), 1, "one claim in all, and none for the released lock: {claimed:?}");
        assert_eq!((claimed[0].tenant.as_str(), claimed[0].owner.as_str(), claimed[0].reason.as_str()), ("t", "alice", "short"));
        assert_eq!(store.status("t").await.unwrap(), None);
        assert!(store.claim_expired().await.unwrap().is_empty());
        assert_eq!(store.tenants().await.unwrap(), ["t", "u"]);
    }

    async fn a_token_is_taken_above_the_floor_and_never_goes_back(store: Arc<dyn LockStore>) {
        let Acquired::Acquired(first) =
            store.acquire(LockRequest { tenant: "t", owner: "alice", reason: "eval", token: "tok-a", ttl: TTL, floor: 41 }).await.unwrap()
        else {
            panic!("not acquired")
        };
        assert_eq!(first.fencing_token, 42, "above the floor the database remembers");
        store.release("t", "tok-a").await.unwrap();
        let Acquired::Acquired(second) =
            store.acquire(LockRequest { tenant: "t", owner: "bob", reason: "again", token: "tok-b", ttl: TTL, floor: 0 }).await.unwrap()
        else {
            panic!("not acquired")
        };
        assert_eq!(second.fencing_token, 43, "the store keeps counting from there");
    }

    macro_rules! on_both_stores {
        ($($name:ident),* $(,)?) => {
            mod in_memory { $( #[tokio::test] async fn $name() { super::$name(super::memory().await).await } )* }
            mod in_redis { $( #[tokio::test] async fn $name() { super::$name(super::redis().await).await } )* }
        };
    }

    on_both_stores!(
        acquire_is_exclusive_and_fencing_increases,
        only_the_holder_renews_or_releases,
        a_lapsed_lock_is_claimed_exactly_once,
        a_token_is_taken_above_the_floor_and_never_goes_back,
    );
}

async fn app_with_redis(redis: &str) -> TestApp {
    let redis = redis.to_owned();
    spawn_app_with(Storage::Sqlite, move |s| {
        s.redis.url = steward::config::Secret::new(redis);
        s.redis.key_prefix = format!("{}:", unique("steward-test-"));
        s.training.expiry_check = NonZeroDuration::from_millis(100);
    })
    .await
}

async fn admin_key(app: &TestApp, tenant: &str) -> String {
    app.key(tenant, &[Capability::Chat, Capability::TrainingAdmin]).await
}

/// The `training.audit/v1` schema.
pub fn audit_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(crate::helpers::manifest_dir().join("schemas/training.audit.v1.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn audit_types(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| r["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn enable_renew_disable_with_wrong_tokens_refused_and_audited_and_fencing_increasing() {
    let app = app_with_redis(&redis_url()).await;
    let tenant = unique("tenant-");
    let (alice, bob) = (admin_key(&app, &tenant).await, admin_key(&app, &tenant).await);

    let enabled: Value = app.post("/v1/training/enable", Some(&alice), &json!({ "ttl_seconds": 60, "reason": "eval run" })).await.json().await.unwrap();
    assert_eq!(enabled["state"], "enabled");
    let token = enabled["lock_token"].as_str().unwrap().to_owned();
    let held =
        assert_error(app.post("/v1/training/enable", Some(&bob), &json!({ "ttl_seconds": 60, "reason": "mine" })).await, 409, "training_lock_held").await;
    assert!(held["message"].as_str().unwrap().contains(enabled["owner"].as_str().unwrap()), "{held}");
    assert_error(app.post("/v1/training/renew", Some(&bob), &json!({ "lock_token": "forged", "ttl_seconds": 60 })).await, 409, "training_lock_not_owner").await;
    assert_error(app.post("/v1/training/disable", Some(&bob), &json!({ "lock_token": "forged" })).await, 409, "training_lock_not_owner").await;
    let renewed = app.post("/v1/training/renew", Some(&alice), &json!({ "lock_token": token, "ttl_seconds": 120 })).await;
    assert_eq!(renewed.status(), 200);
    let status: Value = app.get_with("/v1/training/status", &bob).await.json().await.unwrap();
    assert_eq!((status["state"].as_str(), status["fencing_token"].as_u64()), (Some("enabled"), enabled["fencing_token"].as_u64()));
    assert!(status.get("lock_token").is_none(), "status never reveals the token");
    assert_eq!(app.post("/v1/training/disable", Some(&alice), &json!({ "lock_token": token })).await.status(), 200);
    let again: Value = app.post("/v1/training/enable", Some(&bob), &json!({ "ttl_seconds": 7200, "reason": "next" })).await.json().await.unwrap();

    assert!(again["fencing_token"].as_u64() > enabled["fencing_token"].as_u64());
    assert!(again["ttl_seconds"].as_f64().unwrap() <= app.settings.training.max_ttl.get().as_secs_f64(), "TTL clamped");
    let audit = app.outbox(&app.settings.kafka.training_topic).await;
    assert_eq!(
        audit_types(&audit),
        // Bob's three refusals within a minute are one record (the others are counted, below).
        ["training.enabled", "training.denied", "training.renewed", "training.disabled", "training.enabled"]
    );
    let validator = audit_validator();
    for record in &audit {
        assert!(validator.is_valid(record), "{record:#}");
        assert_eq!(record["tenant"], tenant.as_str());
    }
    assert_eq!(audit[1]["lock_owner"], enabled["owner"]);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(&format!("training_mode_transitions_total{{tenant=\"{tenant}\",action=\"denied\"}} 3")), "{metrics}");
    assert!(metrics.contains(&format!("training_mode_state{{tenant=\"{tenant}\"}} 1")), "{metrics}");
}

#[tokio::test]
async fn a_non_admin_is_403_and_audited_as_denied() {
    let app = app_with_redis(&redis_url()).await;
    let (tenant, chat_only) = app.chat_key().await;

    assert_error(app.post("/v1/training/enable", Some(&chat_only), &json!({ "ttl_seconds": 60, "reason": "sneaky" })).await, 403, "forbidden").await;
    assert_eq!(app.get_with("/v1/training/status", &chat_only).await.status(), 200, "chat keys may read status");

    let audit = app.outbox(&app.settings.kafka.training_topic).await;
    assert_eq!(audit_types(&audit), ["training.denied"]);
    assert_eq!(audit[0]["tenant"], tenant.as_str());
    assert!(audit[0]["actor"].as_str().unwrap().starts_with("key_"));
}

#[tokio::test]
async fn turns_of_a_tenant_in_training_mode_are_marked_and_others_are_not() {
    let app = app_with_redis(&redis_url()).await;
    let tenant = unique("tenant-");
    let admin = admin_key(&app, &tenant).await;
    let (_, other) = app.chat_key().await;
    let enabled: Value = app.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 60, "reason": "capture" })).await.json().await.unwrap();

    let mine = app.chat(&admin, &json!({ "message": "Hi", "max_tokens": 3 })).await;
    let theirs = app.chat(&other, &json!({ "message": "Hi", "max_tokens": 3 })).await;

    let events = app.outbox(&app.settings.kafka.conversation_topic).await;
    let of = |sse: &crate::helpers::Sse| -> Vec<Value> { events.iter().filter(|e| e["session_id"] == sse.header("x-session-id")).cloned().collect() };
    let (mine, theirs) = (of(&mine), of(&theirs));
    assert_eq!(mine.len(), 3);
    for e in &mine {
        assert_eq!((e["training_mode"].as_bool(), e["training_fencing_token"].as_u64()), (Some(true), enabled["fencing_token"].as_u64()));
        assert_eq!(e["training_mode_source"], "lock_store");
    }
    for e in &theirs {
        assert_eq!((e["training_mode"].as_bool(), e["training_fencing_token"].as_u64()), (Some(false), None));
    }
}

/// A Redis server of this test's own, to stop and start.
pub struct PrivateRedis {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn start_on(port: u16) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH")
    }
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let redis = Self { child: Some(Self::start_on(port)), port };
        redis.wait().await;
        redis
    }
    async fn wait(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start");
    }
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::start_on(self.port));
        self.wait().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn with_redis_down_training_is_503_chat_works_unmarked_and_after_it_returns_empty_the_loss_is_audited_once_and_fencing_goes_on() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    // Chat goes on without Redis only where the operator chose to judge from a stale
    // copy of the active constitutions (failing closed is `registry::with_redis_gone…`).
    let app = spawn_app_with(Storage::Sqlite, move |s| {
        s.redis.url = steward::config::Secret::new(url);
        s.redis.key_prefix = format!("{}:", unique("steward-test-"));
        s.training.expiry_check = NonZeroDuration::from_millis(100);
        s.policy.fail_open = true;
    })
    .await;
    let tenant = unique("tenant-");
    let admin = admin_key(&app, &tenant).await;
    let before = app.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 60, "reason": "before" })).await;
    assert_eq!(before.status(), 200);
    let lost_token = before.json::<Value>().await.unwrap()["fencing_token"].as_u64().unwrap();

    redis.stop();
    tokio::time::sleep(app.settings.training.state_cache + Duration::from_millis(50)).await;

    assert_error(app.get_with("/v1/training/status", &admin).await, 503, "lock_store_unavailable").await;
    assert_error(app.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 60, "reason": "during" })).await, 503, "lock_store_unavailable").await;
    let sse = app.chat(&admin, &json!({ "message": "Still there?", "max_tokens": 3 })).await;
    assert_eq!(sse.names().last(), Some(&"done"), "chat keeps working");
    let events = app.outbox(&app.settings.kafka.conversation_topic).await;
    let turn: Vec<&Value> = events.iter().filter(|e| e["session_id"] == sse.header("x-session-id")).collect();
    assert!(turn.iter().all(|e| e["training_mode"].is_null() && e["training_mode_source"] == "lock_store_unavailable"), "{turn:#?}");
    // /readyz serves its last background check (every server.readiness_refresh).
    let mut ready = Value::Null;
    for _ in 0..50 {
        ready = app.get("/readyz").await.json().await.unwrap();
        if ready["checks"]["redis"]["status"] == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["checks"]["redis"]["status"], "down", "{ready}");

    redis.restart().await;

    let mut status = None;
    for _ in 0..100 {
        let response = app.get_with("/v1/training/status", &admin).await;
        if response.status() == 200 {
            status = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted server kept nothing (--save ""): the lock is gone, and Steward says so —
    // and records the loss, once, though no `disabled` or `expired` came.
    assert_eq!(status.expect("training service resumed without restarting Steward")["state"], "disabled");
    let topic = app.settings.kafka.training_topic.clone();
    let mut lost = Vec::new();
    for _ in 0..100 {
        lost = app.outbox(&topic).await.into_iter().filter(|r| r["tenant"] == tenant.as_str() && r["type"] == "training.lost").collect();
        if !lost.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lost.len(), 1, "training.lost recorded once");
    assert_eq!(lost[0]["fencing_token"], lost_token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = app.outbox(&topic).await;
    assert_eq!(records.iter().filter(|r| r["tenant"] == tenant.as_str() && r["type"] == "training.lost").count(), 1, "and only once");
    // Redis counts from 1 again; the next token is still above the lost one.
    let after = app.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 60, "reason": "after" })).await;
    assert_eq!(after.status(), 200);
    let token = after.json::<Value>().await.unwrap()["fencing_token"].as_u64().unwrap();
    assert!(token > lost_token, "fencing token {token} after the loss of {lost_token}");
}

#[tokio::test]
async fn a_turn_under_a_training_lock_older_than_the_newest_is_not_trusted_as_training_data() {
    // Two instances on one database and one Redis; the first trusts its view of the lock for a minute.
    let prefix = format!("{}:", unique("steward-test-"));
    let stale = {
        let prefix = prefix.clone();
        spawn_app_with(Storage::Sqlite, move |s| {
            s.redis.url = steward::config::Secret::new(redis_url());
            s.redis.key_prefix = prefix;
            s.training.state_cache = Duration::from_millis(60_000);
        })
        .await
    };
    let database = stale.settings.database.url.clone();
    let fresh = spawn_app_with(Storage::Sqlite, move |s| {
        s.redis.url = steward::config::Secret::new(redis_url());
        s.redis.key_prefix = prefix;
        s.database.url = database;
    })
    .await;
    let tenant = unique("tenant-");
    let admin = admin_key(&fresh, &tenant).await;
    let enabled: Value = fresh.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 60, "reason": "first" })).await.json().await.unwrap();
    let first = stale.chat(&admin, &json!({ "message": "Name a colour.", "max_tokens": 3 })).await;

    // The lock changes hands on the other instance; the first still holds the old one in view.
    let token = enabled["lock_token"].as_str().unwrap();
    assert_eq!(fresh.post("/v1/training/disable", Some(&admin), &json!({ "lock_token": token })).await.status(), 200);
    let again: Value = fresh.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 60, "reason": "second" })).await.json().await.unwrap();
    let late = stale.chat(&admin, &json!({ "message": "Name a fruit.", "max_tokens": 3 })).await;

    let events = stale.outbox(&stale.settings.kafka.conversation_topic).await;
    let of = |sse: &crate::helpers::Sse| -> Vec<Value> { events.iter().filter(|e| e["session_id"] == sse.header("x-session-id")).cloned().collect() };
    assert!(of(&first)
        .iter()
        .all(|e| e["training_mode"] == true && e["training_fencing_token"] == enabled["fencing_token"] && e.get("training_fencing_rejected").is_none()));
    let late = of(&late);
    assert!(!late.is_empty());
    for event in &late {
        assert_eq!(event["training_fencing_token"], enabled["fencing_token"], "the stale view's token");
        assert_eq!((event["training_mode"].clone(), event["training_fencing_rejected"].clone()), (json!(false), json!(true)), "{event}");
    }
    assert!(again["fencing_token"].as_u64() > enabled["fencing_token"].as_u64());
}

#[tokio::test]
async fn an_expiry_claimed_by_an_instance_that_died_before_auditing_it_is_still_audited_once() {
    let prefix = format!("{}:", unique("steward-test-"));
    let app = {
        let prefix = prefix.clone();
        spawn_app_with(Storage::Sqlite, move |s| {
            s.redis.url = steward::config::Secret::new(redis_url());
            s.redis.key_prefix = prefix;
            // The app's watcher looks every 2 s; the dying instance below watches every 10 ms.
            s.training.expiry_check = NonZeroDuration::from_millis(2_000);
        })
        .await
    };
    // Another instance's lock store on the same Redis: it claims the lapse, then "dies" without auditing it.
    let dying = RedisLockStore::connect(&redis_url(), &prefix, Duration::from_millis(500)).unwrap();
    let mut claimed = None;
    for _ in 0..3 {
        let tenant = unique("lapsed-");
        let admin = admin_key(&app, &tenant).await;
        let enabled = app.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 1, "reason": "short" })).await;
        assert_eq!(enabled.status(), 200);
        let token = enabled.json::<Value>().await.unwrap()["fencing_token"].as_u64().unwrap();
        let due = Instant::now() + Duration::from_millis(990);
        tokio::time::sleep_until(due.into()).await;
        while Instant::now() < due + Duration::from_millis(1_500) {
            if let Some(lapse) = dying.claim_expired().await.unwrap().into_iter().find(|l| l.tenant == tenant) {
                claimed = Some((tenant.clone(), admin.clone(), lapse.fencing_token));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some((_, _, claimed_token)) = &claimed {
            assert_eq!(*claimed_token, token);
            break;
        }
        // The app's own watcher got there first (and audited it): try again with another tenant.
    }
    let (tenant, admin, token) = claimed.expect("the dying instance claimed a lapse in three tries");

    // The claim left Redis without the lock and nobody recorded its end; the ledger still holds it.
    let mut expired = Vec::new();
    for _ in 0..400 {
        expired = app
            .outbox(&app.settings.kafka.training_topic)
            .await
            .into_iter()
            .filter(|r| r["tenant"] == tenant.as_str() && r["type"] == "training.expired")
            .collect();
        if !expired.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expired.len(), 1, "the unaudited expiry is audited by a surviving instance");
    assert_eq!(expired[0]["fencing_token"], token);
    assert_eq!(expired[0]["actor"], "steward:lock-watcher");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let records = app.outbox(&app.settings.kafka.training_topic).await;
    assert_eq!(records.iter().filter(|r| r["tenant"] == tenant.as_str() && r["type"] == "training.expired").count(), 1, "and only once");
    let status = app.get_with("/v1/training/status", &admin).await.json::<Value>().await.unwrap();
    assert_eq!(status["state"], "disabled");
}
