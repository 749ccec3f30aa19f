//! The storage suite, run against both SQLite and PostgreSQL.

use steward::db::Database;
use steward::identity::{Capability, KeyStore, TenantId};
use steward::ids::{SessionId, TurnId};
use steward::orchestrator::{ConversationStore, FinishReason, Judged, Refusals, SessionState, TurnFilter, TurnRecord};

use crate::helpers::{postgres_database, unique};

/// A fresh, empty database of `kind` (its directory, for SQLite, lives as long as the handle).
async fn empty_database(kind: &str) -> (Database, Option<tempfile::TempDir>) {
    let (url, dir) = if kind == "postgres" {
        (postgres_database().await, None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()), Some(dir))
    };
    (Database::connect(&url, 2).await.unwrap(), dir)
}

async fn database(kind: &str) -> (Database, Option<tempfile::TempDir>) {
    let (db, dir) = empty_database(kind).await;
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
        output_code: None,
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

async fn turns_are_found_and_counted_by_the_category_they_were_refused_on_at_either_stage(kind: &str) {
    let (db, _dir) = database(kind).await;
    let store = ConversationStore::new(db);
    let tenant = unique("t-");
    let session = SessionId::mint();
    let on_input = TurnRecord { policy_verdict: "refuse:S1,S9".into(), assistant_message: String::new(), ..turn(&tenant, &session, 1, FinishReason::Refused) };
    let on_output = TurnRecord { output_code: Some("S9".into()), ..turn(&tenant, &session, 2, FinishReason::Refused) };
    store.record(&on_input).await.unwrap();
    store.record(&on_output).await.unwrap();
    store.record(&turn(&tenant, &session, 3, FinishReason::Stop)).await.unwrap();

    let found = |code: &str| {
        let filter = TurnFilter { tenant: Some(tenant.clone()), code: Some(code.into()), verdict: Some(Judged::Refused), limit: 10, ..TurnFilter::default() };
        let store = store.clone();
        async move { store.search(&filter).await.unwrap().into_iter().map(|t| t.turn_id).collect::<Vec<_>>() }
    };
    assert_eq!(found("S9").await, [on_output.turn_id.clone(), on_input.turn_id.clone()]);
    assert_eq!(found("S1").await, std::slice::from_ref(&on_input.turn_id));
    assert!(found("S2").await.is_empty());
    assert_eq!(store.turn(&on_output.turn_id).await.unwrap().unwrap().output_code.as_deref(), Some("S9"));

    let counted = store.refusals(Some(&tenant), 0).await.unwrap();
    assert_eq!(counted, [Refusals { code: "S1".into(), on_input: 1, on_output: 0 }, Refusals { code: "S9".into(), on_input: 1, on_output: 1 }]);
}

/// Migration 0009 fills in the output code of turns stored before it from
/// their own `turn.refused` event: the database is migrated to 0008, a cut
/// turn and its event are written as that version wrote them, then the rest runs.
async fn a_turn_cut_before_the_output_code_was_stored_gets_it_from_its_event(kind: &str) {
    let (db, _dir) = empty_database(kind).await;
    let mut migrator = if kind == "postgres" { sqlx::migrate!("./migrations/postgres") } else { sqlx::migrate!("./migrations/sqlite") };
    let all = migrator.migrations.clone();
    migrator.migrations = all.iter().filter(|m| m.version <= 8).cloned().collect::<Vec<_>>().into();
    migrator.run(db.pool()).await.unwrap();

    let (session, cut, kept) = (SessionId::mint(), TurnId::mint(), TurnId::mint());
    sqlx::query("INSERT INTO sessions (id, tenant, created_at) VALUES ($1, 'acme', 1)").bind(session.as_str()).execute(db.pool()).await.unwrap();
    for (id, finish) in [(&cut, "refused"), (&kept, "stop")] {
        sqlx::query(
            "INSERT INTO turns (id, session_id, tenant, user_message, assistant_message, finish_reason, policy_verdict, constitution_hash, \
             trace_id, created_at, completed_at, preamble) VALUES ($1, $2, 'acme', 'q', 'a', $3, 'allow', 'sha256:x', 't', 1, 1, '[]')",
        )
        .bind(id.as_str())
        .bind(session.as_str())
        .bind(finish)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let refused = serde_json::json!({
        "type": "turn.refused", "turn_id": cut.as_str(), "session_id": session.as_str(),
        "data": { "stage": "output", "categories": [{ "code": "S9", "category": "indiscriminate_weapons" }], "layer": "lexicon" }
    });
    sqlx::query(
        "INSERT INTO outbox (topic, record_key, session_id, event_type, payload, headers, created_at) VALUES ('conv', $1, $1, 'turn.refused', $2, '{}', 1)",
    )
    .bind(session.as_str())
    .bind(refused.to_string())
    .execute(db.pool())
    .await
    .unwrap();

    db.migrate().await.unwrap();
    let store = ConversationStore::new(db);
    assert_eq!(store.turn(&cut).await.unwrap().unwrap().output_code.as_deref(), Some("S9"));
    assert_eq!(store.turn(&kept).await.unwrap().unwrap().output_code, None);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name("sqlite").await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name("postgres").await } )* }
    };
}

on_both_backends!(
    keys_are_found_by_secret_until_revoked,
    history_replays_answered_turns_in_order,
    a_session_belongs_to_one_tenant,
    turns_are_found_and_counted_by_the_category_they_were_refused_on_at_either_stage,
    a_turn_cut_before_the_output_code_was_stored_gets_it_from_its_event,
);
