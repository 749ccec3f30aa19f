//! Attacks on one-use verdicts: a replay in the verdict's last second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use steward::config::Secret;
use steward::policy::Verdict;

use crate::helpers::{assert_error, spawn_app_with, unique, Storage};
use crate::orchestrator::{new_turn, step};
use crate::training::redis_url;

#[tokio::test]
async fn a_verdict_replayed_in_its_last_second_is_refused_on_the_redis_ledger() {
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.redis.url = Secret::new(redis_url());
        s.redis.key_prefix = format!("{}:", unique("steward-test-"));
    })
    .await;
    let turn = new_turn(&app).await;
    // Early in a second, a verdict that expires at its end: accepted for the rest of it.
    let into_second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into_second))).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let headers = app.policy().sign_until(turn.turn_ref(), Verdict::Allow, now).headers();

    let first = step(&app, &turn, &headers, "/v1/conversation/stream").await;
    let replay = step(&app, &turn, &headers, "/v1/conversation/step").await;

    assert_eq!(first.status(), 200);
    let replayed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(replayed_at, now, "the replay came within the verdict's last second (else this run proves nothing)");
    assert_error(replay, 403, "policy_verdict_replayed").await;
}
