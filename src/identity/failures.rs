//! A bound on failed authentications per client address: one that sent more
//! than `max` unknown keys within a minute is refused (429 `rate_limited`)
//! before its key is looked up, until its minute is over — a flood of
//! guessed keys never reaches the database. Counted in this process (each
//! instance bounds what reaches it); behind a load balancer the address is
//! the balancer's unless it passes the client's own through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond, those whose minute is over are forgotten.
const REMEMBERED: usize = 100_000;

pub struct AuthFailures {
    max: u32,
    /// address → (start of its minute, failures in it).
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthFailures {
    /// At most `max` failures per address and minute; 0 = no bound.
    pub fn new(max: u32) -> Self {
        Self { max, seen: Mutex::new(HashMap::new()) }
    }

    /// How long `ip` must wait, if it is over its failures.
    pub fn check(&self, ip: IpAddr) -> Option<Duration> {
        let seen = self.seen.lock().ok()?;
        let (start, count) = *seen.get(&ip)?;
        let elapsed = start.elapsed();
        (self.max > 0 && count >= self.max && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    /// Counts one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let Ok(mut seen) = self.seen.lock() else { return };
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let now = Instant::now();
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_failures_waits_and_others_do_not() {
        let failures = AuthFailures::new(3);
        let (flooder, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..2 {
            failures.failed(flooder);
        }
        assert_eq!(failures.check(flooder), None, "two failures are under the bound");
        failures.failed(flooder);
        let wait = failures.check(flooder).expect("the third reaches it");
        assert!(wait > Duration::from_secs(59) && wait <= WINDOW);
        assert_eq!(failures.check(other), None);
    }
}
