//! A bound on requests per key, on every authenticated route (chat turns
//! have their tenant's limits besides, in [`crate::limits`]): a GCRA per key
//! in this process, `identity.requests_per_second_per_key` with a burst of
//! `identity.burst_per_key`. Only authenticated keys are counted, so the
//! memory grows with the keys that exist, not with what callers make up.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::gcra;

pub struct KeyPace {
    /// Time between requests at the sustained rate; zero = no bound.
    interval: Duration,
    burst: u32,
    /// key id → its theoretical arrival time.
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl KeyPace {
    /// `per_second` requests per key (0 = no bound), `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let interval = if per_second > 0.0 { Duration::from_secs_f64(1.0 / per_second) } else { Duration::ZERO };
        Self { interval, burst: burst.max(1), arrivals: Mutex::new(HashMap::new()) }
    }

    /// Counts one request of `key_id`; how long to wait if it is over its rate.
    pub fn take(&self, key_id: &str) -> Option<Duration> {
        if self.interval.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        // Tokio's clock, so a test can pause it.
        let (wait, next) = gcra(arrivals.get(key_id).map(|t| t.into_std()), now.into_std(), self.interval, self.burst, 1);
        if wait.is_none() {
            let next = Instant::from_std(next);
            // A key seen before is updated in place: no allocation on the request path.
            match arrivals.get_mut(key_id) {
                Some(tat) => *tat = next,
                None => {
                    arrivals.insert(key_id.to_owned(), next);
                }
            }
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_gets_its_burst_then_its_rate_and_other_keys_are_apart() {
        let pace = KeyPace::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(pace.take("key_a"), None);
        }
        let wait = pace.take("key_a").expect("over the burst");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(pace.take("key_b"), None);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(pace.take("key_a"), None, "one more after an interval");
        assert!(KeyPace::new(0.0, 1).take("key_a").is_none(), "0 = no bound");
    }
}
