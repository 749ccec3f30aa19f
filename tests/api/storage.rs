//! The storage suite, run against both SQLite and PostgreSQL.

use steward::db::Database;
use steward::identity::{Capability, KeyStore, TenantId};
use steward::ids::{SessionId, TurnId};
use steward::orchestrator::{ConversationStore, FinishReason, SessionState, TurnRecord};

use crate::helpers::{postgres_database, unique};

async fn database(kind: &str) -> (Database, Option<tempfile::TempDir>) {
    let (url, dir) = if kind == "postgres" {
        (postgres_database().await, None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()), Some(dir))
    };
    let db = Database::connect(&url, 2).await.unwrap();
    db.migrate().await.unwrap();
    (db, dir)
}

fn turn(tenant: &str, session: &SessionId, n: i64, finish: FinishReason) -> TurnRecord {
    TurnRecord {
        turn_id: TurnId::mint(),
        session_id: session.clone(),
        tenant: tenant.into(),
        user_message: format!("question {n}"),
        preamble: "[]".into(),
        assistant_message: format!("answer {n}"),
        finish_reason: finish,
        policy_verdict: "allow".into(),
        constitution_hash: format!("sha256:{}", "a".repeat(64)),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        prompt_tokens: Some(10),
        completion_tokens: Some(3),
        created_at: n,
    }
}

async fn keys_are_found_by_secret_until_revoked(kind: &str) {
    let (db, _dir) = database(kind).await;
    let keys = KeyStore::new(db);
    let tenant = TenantId::parse(&unique("t-")).unwrap();
    let (record, key) = keys.create(&tenant, &[Capability::Chat, Capability::TrainingAdmin]).await.unwrap();

    let found = keys.find_active(key.expose()).await.unwrap().expect("key found");
    assert_eq!((found.id.as_str(), found.capabilities.as_str()), (record.id.as_str(), "chat,training:admin"));
    assert!(keys.find_active("stw_wrong").await.unwrap().is_none());

    keys.revoke(&record.id).await.unwrap();
    assert!(keys.find_active(key.expose()).await.unwrap().is_none());
    assert!(keys.list().await.unwrap().iter().any(|k| k.id == record.id && k.revoked_at.is_some()));
    assert!(keys.revoke("key_missing").await.is_err());
}

async fn history_replays_answered_turns_in_order(kind: &str) {
    let (db, _dir) = database(kind).await;
    let store = ConversationStore::new(db);
    let session = SessionId::mint();
    assert_eq!(store.session_state("acme", &session).await.unwrap(), SessionState::New);

    use FinishReason::{Cancelled, Length, Refused, Stop};
    for (n, finish) in [(1, Stop), (2, Refused), (3, Length), (4, Cancelled), (5, Stop)] {
        store.record(&turn("acme", &session, n, finish)).await.unwrap();
    }

    let history = store.history("acme", &session, 10).await.unwrap();
    let contents: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["question 1", "answer 1", "question 3", "answer 3", "question 5", "answer 5"]);
    let last_two = store.history("acme", &session, 2).await.unwrap();
    assert_eq!(last_two.first().map(|m| m.content.as_str()), Some("question 3"));
    assert_eq!(store.turns(&session).await.unwrap().len(), 5);
}

async fn a_session_belongs_to_one_tenant(kind: &str) {
    let (db, _dir) = database(kind).await;
    let store = ConversationStore::new(db);
    let session = SessionId::mint();
    store.record(&turn("tenant-a", &session, 1, FinishReason::Stop)).await.unwrap();

    assert_eq!(store.session_state("tenant-a", &session).await.unwrap(), SessionState::Owned);
    assert_eq!(store.session_state("tenant-b", &session).await.unwrap(), SessionState::Foreign);
    // Even a direct write cannot attach a turn to another tenant's session.
    store.record(&turn("tenant-b", &session, 2, FinishReason::Stop)).await.unwrap();
    assert_eq!(store.turns(&session).await.unwrap().len(), 1);
    assert!(store.history("tenant-b", &session, 10).await.unwrap().is_empty());
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name("sqlite").await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name("postgres").await } )* }
    };
}

on_both_backends!(keys_are_found_by_secret_until_revoked, history_replays_answered_turns_in_order, a_session_belongs_to_one_tenant);
