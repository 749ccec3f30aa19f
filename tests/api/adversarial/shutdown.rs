//! Shutdown while the database fails: the writer keeps retrying until the
//! drain deadline instead of dropping events on its first error.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{spawn_stoppable_app_with, Storage};

#[tokio::test]
async fn events_whose_write_still_fails_when_shutdown_stops_the_writer_are_stored_if_the_database_recovers_within_the_drain() {
    // Running turns get 2 s; then they are stopped, and the writer gets 2 s more (the drain).
    let (app, stop) = spawn_stoppable_app_with(Storage::Postgres, |s| s.server.shutdown_grace = Duration::from_millis(2000)).await;
    let (_, key) = app.chat_key().await;
    // Every outbox write fails as a serialization failure would (SQLSTATE 40001: worth retrying).
    for statement in [
        "CREATE FUNCTION fail_outbox() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'try again' USING ERRCODE = '40001'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION fail_outbox()",
    ] {
        sqlx::query(statement).execute(app.db.pool()).await.unwrap();
    }
    // Two turns run to their end and wait for their commit, which keeps failing.
    let turns: Vec<_> = ["Name a colour.", "Name a fruit."]
        .into_iter()
        .map(|m| {
            let request = app.http.post(format!("{}/v1/chat/stream", app.address)).bearer_auth(&key).json(&json!({ "message": m, "max_tokens": 3 }));
            tokio::spawn(async move { request.send().await.unwrap().text().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Shutdown: the turns' grace ends at 2 s; they are stopped, and once their responses have
    // ended the writer is stopped too, while writes still fail. The database recovers 300 ms later.
    let recover = async {
        for turn in turns {
            let _ = turn.await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("DROP TRIGGER fail_outbox ON outbox").execute(app.db.pool()).await.unwrap();
    };
    let ((), ()) = tokio::join!(stop.now(), recover);

    let stored: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY id").fetch_all(app.db.pool()).await.unwrap();
    let count = |kind: &str| stored.iter().filter(|t| *t == kind).count();
    assert_eq!(count("turn.received"), 2, "{stored:?}");
    let ends = count("turn.completed") + count("turn.cancelled") + count("turn.failed");
    assert_eq!(ends, 2, "each turn's end is stored: {stored:?}");
}
