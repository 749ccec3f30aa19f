//! The limit store in this process, for a single instance: the same GCRAs and
//! stream slots as the Redis store, in mutexes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{Counted, LimitError, LimitStore, TenantLimits};

#[derive(Default)]
pub struct MemoryLimits {
    /// tenant → theoretical arrival time of its next request.
    arrivals: Mutex<HashMap<String, Instant>>,
    /// tenant → theoretical arrival time of its next token.
    tokens: Mutex<HashMap<String, Instant>>,
    /// tenant → open stream ids.
    streams: Mutex<HashMap<String, HashSet<String>>>,
}

/// GCRA: `cost` units, one per `interval`, `burst` at once; the wait if
/// any, and the theoretical arrival time after them (unchanged if refused).
pub fn gcra(tat: Option<Instant>, now: Instant, interval: Duration, burst: u32, cost: u32) -> (Option<Duration>, Instant) {
    let tat = tat.map_or(now, |t| t.max(now));
    let allowed_from = (tat + interval * cost).checked_sub(interval * burst).unwrap_or(now);
    if allowed_from > now {
        return (Some(allowed_from - now), tat);
    }
    (None, tat + interval * cost)
}

impl LimitStore for MemoryLimits {
    fn count<'a>(&'a self, tenant: &'a str, id: &'a str, limits: TenantLimits, tokens: u32, _lease: Duration) -> BoxFuture<'a, Result<Counted, LimitError>> {
        Box::pin(async move {
            let poisoned = || LimitError("poisoned".into());
            let now = Instant::now();
            // All three are checked before any is taken: a refused turn costs nothing.
            let mut arrivals = self.arrivals.lock().map_err(|_| poisoned())?;
            let mut token_arrivals = self.tokens.lock().map_err(|_| poisoned())?;
            let mut streams = self.streams.lock().map_err(|_| poisoned())?;
            let mut rate_next = None;
            if limits.requests_per_second > 0.0 {
                let interval = Duration::from_secs_f64(1.0 / limits.requests_per_second);
                match gcra(arrivals.get(tenant).copied(), now, interval, limits.burst, 1) {
                    (Some(wait), _) => return Ok(Counted::Rate(wait)),
                    (None, next) => rate_next = Some(next),
                }
            }
            let mut tokens_next = None;
            if limits.tokens_per_minute > 0 && tokens > 0 {
                let interval = Duration::from_secs_f64(limits.token_interval_ms() / 1000.0);
                match gcra(token_arrivals.get(tenant).copied(), now, interval, limits.tokens_per_minute, tokens) {
                    (Some(wait), _) => return Ok(Counted::Tokens(wait)),
                    (None, next) => tokens_next = Some(next),
                }
            }
            let open = streams.entry(tenant.to_owned()).or_default();
            if limits.max_concurrent_streams > 0 && open.len() >= limits.max_concurrent_streams as usize {
                return Ok(Counted::Streams);
            }
            if let Some(next) = rate_next {
                arrivals.insert(tenant.to_owned(), next);
            }
            if let Some(next) = tokens_next {
                token_arrivals.insert(tenant.to_owned(), next);
            }
            if limits.max_concurrent_streams == 0 {
                return Ok(Counted::Admitted { slot: false });
            }
            open.insert(id.to_owned());
            Ok(Counted::Admitted { slot: true })
        })
    }

    fn release(&self, tenant: String, limits: TenantLimits, slot: Option<String>, tokens: i64) -> BoxFuture<'static, ()> {
        if let (Some(id), Ok(mut streams)) = (slot, self.streams.lock()) {
            if let Some(open) = streams.get_mut(&tenant) {
                open.remove(&id);
            }
        }
        if let (Ok(mut arrivals), true) = (self.tokens.lock(), limits.tokens_per_minute > 0 && tokens != 0) {
            let now = Instant::now();
            let tat = arrivals.get(&tenant).copied().map_or(now, |t| t.max(now));
            let by = Duration::from_secs_f64(limits.token_interval_ms() / 1000.0) * tokens.unsigned_abs().min(u64::from(u32::MAX)) as u32;
            let moved = if tokens >= 0 { tat + by } else { tat.checked_sub(by).unwrap_or(now).max(now) };
            arrivals.insert(tenant, moved);
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_are_paced_at_the_rate() {
        let start = Instant::now();
        let mut tat = None;
        let half = Duration::from_millis(500);
        for _ in 0..3 {
            let (wait, next) = gcra(tat, start, half, 3, 1);
            assert_eq!(wait, None, "the burst of three passes at once");
            tat = Some(next);
        }
        let (wait, next) = gcra(tat, start, half, 3, 1);
        assert_eq!(wait, Some(half), "the fourth waits one interval");
        let (wait, _) = gcra(Some(next), start + half, half, 3, 1);
        assert_eq!(wait, None, "and passes once it has");
    }

    #[tokio::test]
    async fn tokens_per_minute_refuse_a_turn_until_the_minute_has_room_and_usage_settles_the_reservation() {
        let store = MemoryLimits::default();
        let limits = TenantLimits { max_concurrent_streams: 0, requests_per_second: 0.0, burst: 1, tokens_per_minute: 600 };
        let turn = |tokens: u32| store.count("t", "x", limits, tokens, Duration::from_secs(60));
        assert_eq!(turn(400).await.unwrap(), Counted::Admitted { slot: false });
        let Counted::Tokens(wait) = turn(400).await.unwrap() else { panic!("600 a minute: 400 more must wait") };
        // 200 of the next 400 are there: the other 200 come at 10 a second.
        assert!(wait > Duration::from_millis(19_000) && wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(turn(200).await.unwrap(), Counted::Admitted { slot: false }, "a refused turn took nothing");
        store.release("t".into(), limits, None, -300).await;
        assert_eq!(turn(300).await.unwrap(), Counted::Admitted { slot: false }, "the unused 300 came back");
        assert!(matches!(turn(10).await.unwrap(), Counted::Tokens(_)));
    }

    #[tokio::test]
    async fn only_limit_streams_open_at_once_and_a_closed_one_frees_its_slot() {
        let store = MemoryLimits::default();
        let two = TenantLimits { max_concurrent_streams: 2, requests_per_second: 0.0, burst: 1, tokens_per_minute: 0 };
        let open = |tenant: &'static str, id: &'static str| store.count(tenant, id, two, 0, Duration::from_secs(60));
        assert_eq!(open("t", "a").await.unwrap(), Counted::Admitted { slot: true });
        assert_eq!(open("t", "b").await.unwrap(), Counted::Admitted { slot: true });
        assert_eq!(open("t", "c").await.unwrap(), Counted::Streams);
        assert_eq!(open("u", "c").await.unwrap(), Counted::Admitted { slot: true }, "tenants are apart");
        store.release("t".into(), two, Some("a".into()), 0).await;
        assert_eq!(open("t", "c").await.unwrap(), Counted::Admitted { slot: true });
    }
}
