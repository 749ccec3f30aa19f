//! The limit store in this process, for a single instance: the same GCRA and
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
    fn count<'a>(&'a self, tenant: &'a str, id: &'a str, limits: TenantLimits, _lease: Duration) -> BoxFuture<'a, Result<Counted, LimitError>> {
        Box::pin(async move {
            if limits.requests_per_second > 0.0 {
                let mut arrivals = self.arrivals.lock().map_err(|_| LimitError("poisoned".into()))?;
                let (wait, tat) = gcra(arrivals.get(tenant).copied(), Instant::now(), limits.requests_per_second, limits.burst);
                arrivals.insert(tenant.to_owned(), tat);
                if let Some(wait) = wait {
                    return Ok(Counted::Rate(wait));
                }
            }
            if limits.max_concurrent_streams == 0 {
                return Ok(Counted::Admitted { slot: false });
            }
            let mut streams = self.streams.lock().map_err(|_| LimitError("poisoned".into()))?;
            let open = streams.entry(tenant.to_owned()).or_default();
            if open.len() >= limits.max_concurrent_streams as usize {
                return Ok(Counted::Streams);
            }
            open.insert(id.to_owned());
            Ok(Counted::Admitted { slot: true })
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
        let two = TenantLimits { max_concurrent_streams: 2, requests_per_second: 0.0, burst: 1 };
        let open = |tenant: &'static str, id: &'static str| store.count(tenant, id, two, Duration::from_secs(60));
        assert_eq!(open("t", "a").await.unwrap(), Counted::Admitted { slot: true });
        assert_eq!(open("t", "b").await.unwrap(), Counted::Admitted { slot: true });
        assert_eq!(open("t", "c").await.unwrap(), Counted::Streams);
        assert_eq!(open("u", "c").await.unwrap(), Counted::Admitted { slot: true }, "tenants are apart");
        store.close("t".into(), "a".into()).await;
        assert_eq!(open("t", "c").await.unwrap(), Counted::Admitted { slot: true });
    }
}
