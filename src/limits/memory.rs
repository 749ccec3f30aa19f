//! The limit store in this process, for a single instance: the same GCRA and
//! stream slots as the Redis store, in a mutex.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{LimitError, LimitStore};

#[derive(Default)]
pub struct MemoryLimits {
    /// tenant → theoretical arrival time of its next request.
    arrivals: Mutex<HashMap<String, Instant>>,
    /// tenant → open stream ids.
    streams: Mutex<HashMap<String, HashSet<String>>>,
}

/// GCRA: one request per `interval`, `burst` at once; the wait, if any.
pub(super) fn gcra(tat: Option<Instant>, now: Instant, per_second: f64, burst: u32) -> (Option<Duration>, Instant) {
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let tat = tat.map_or(now, |t| t.max(now));
    let allowed_from = (tat + interval).checked_sub(interval * burst).unwrap_or(now);
    if allowed_from > now {
        return (Some(allowed_from - now), tat);
    }
    (None, tat + interval)
}

impl LimitStore for MemoryLimits {
    fn take<'a>(&'a self, tenant: &'a str, per_second: f64, burst: u32) -> BoxFuture<'a, Result<Option<Duration>, LimitError>> {
        Box::pin(async move {
            let mut arrivals = self.arrivals.lock().map_err(|_| LimitError("poisoned".into()))?;
            let (wait, tat) = gcra(arrivals.get(tenant).copied(), Instant::now(), per_second, burst);
            arrivals.insert(tenant.to_owned(), tat);
            Ok(wait)
        })
    }

    fn open<'a>(&'a self, tenant: &'a str, id: &'a str, limit: u32, _lease: Duration) -> BoxFuture<'a, Result<bool, LimitError>> {
        Box::pin(async move {
            let mut streams = self.streams.lock().map_err(|_| LimitError("poisoned".into()))?;
            let open = streams.entry(tenant.to_owned()).or_default();
            if open.len() >= limit as usize {
                return Ok(false);
            }
            open.insert(id.to_owned());
            Ok(true)
        })
    }

    fn close(&self, tenant: String, id: String) -> BoxFuture<'static, ()> {
        if let Ok(mut streams) = self.streams.lock() {
            if let Some(open) = streams.get_mut(&tenant) {
                open.remove(&id);
            }
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
        for _ in 0..3 {
            let (wait, next) = gcra(tat, start, 2.0, 3);
            assert_eq!(wait, None, "the burst of three passes at once");
            tat = Some(next);
        }
        let (wait, next) = gcra(tat, start, 2.0, 3);
        assert_eq!(wait, Some(Duration::from_millis(500)), "the fourth waits one interval");
        let (wait, _) = gcra(Some(next), start + Duration::from_millis(500), 2.0, 3);
        assert_eq!(wait, None, "and passes once it has");
    }

    #[tokio::test]
    async fn only_limit_streams_open_at_once_and_a_closed_one_frees_its_slot() {
        let store = MemoryLimits::default();
        assert!(store.open("t", "a", 2, Duration::from_secs(60)).await.unwrap());
        assert!(store.open("t", "b", 2, Duration::from_secs(60)).await.unwrap());
        assert!(!store.open("t", "c", 2, Duration::from_secs(60)).await.unwrap());
        assert!(store.open("u", "c", 2, Duration::from_secs(60)).await.unwrap(), "tenants are apart");
        store.close("t".into(), "a".into()).await;
        assert!(store.open("t", "c", 2, Duration::from_secs(60)).await.unwrap());
    }
}
