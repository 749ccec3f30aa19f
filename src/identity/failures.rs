//! A bound on failed authentications per client address (see
//! [`super::client`] for which address that is): one that sent more than
//! `max` unknown keys within a minute has its next keys looked up only when
//! memory already vouches for them, until its minute is over — a flood of
//! guessed keys never reaches the database, and a key in use is never refused.
//!
//! Counted in this process, in a table of fixed size (`SLOTS` addresses, four
//! to a bucket, 32 bytes each: 2 MiB): a check or a count is O(1) under one short lock,
//! and no number of addresses makes it grow. A new address takes its bucket's
//! expired or least-counted slot, so an attacker with many addresses can at
//! worst make the bound forget some of them early; it never refuses anyone more.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::client::counted_as;

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses counted at once (a power of two).
const SLOTS: usize = 1 << 16;
const WAYS: usize = 4;

#[derive(Clone, Copy)]
struct Slot {
    /// The address counted here (see [`counted_as`]); 0 when free.
    address: u128,
    /// Start of its minute, in ms since the table was made.
    start_ms: u64,
    failures: u32,
}

pub struct AuthFailures {
    max: u32,
    epoch: Instant,
    /// Seeded per process, so which addresses share a bucket cannot be aimed at.
    hasher: RandomState,
    slots: Mutex<Vec<Slot>>,
}

impl AuthFailures {
    /// At most `max` failures per address and minute; 0 = no bound (and no table).
    pub fn new(max: u32) -> Self {
        let slots = if max == 0 { Vec::new() } else { vec![Slot { address: 0, start_ms: 0, failures: 0 }; SLOTS] };
        Self { max, epoch: Instant::now(), hasher: RandomState::new(), slots: Mutex::new(slots) }
    }

    /// How long `ip` must wait, if it is over its failures.
    pub fn check(&self, ip: IpAddr) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let (address, now) = (counted_as(ip), self.now_ms());
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots[self.bucket(address)].iter().find(|s| s.address == address)?;
        let elapsed = Duration::from_millis(now.saturating_sub(slot.start_ms));
        (slot.failures >= self.max && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    /// Counts one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let (address, now) = (counted_as(ip), self.now_ms());
        let live = |s: &Slot| s.address != 0 && now.saturating_sub(s.start_ms) < WINDOW.as_millis() as u64;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let range = self.bucket(address);
        let bucket = &mut slots[range];
        let index = match bucket.iter().position(|s| s.address == address) {
            Some(i) => i,
            // A free or expired slot, else the one with the fewest failures.
            None => bucket.iter().position(|s| !live(s)).unwrap_or_else(|| (0..WAYS).min_by_key(|i| bucket[*i].failures).unwrap_or(0)),
        };
        let slot = &mut bucket[index];
        if slot.address != address || !live(slot) {
            *slot = Slot { address, start_ms: now, failures: 0 };
        }
        slot.failures = slot.failures.saturating_add(1);
    }

    fn bucket(&self, address: u128) -> std::ops::Range<usize> {
        let start = (self.hasher.hash_one(address) as usize & (SLOTS / WAYS - 1)) * WAYS;
        start..start + WAYS
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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

    #[test]
    fn a_million_addresses_never_grow_the_table_and_a_flooder_stays_counted() {
        let failures = AuthFailures::new(3);
        let flooder: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..50 {
            failures.failed(flooder);
        }
        for i in 0..1_000_000u32 {
            failures.failed(IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) << 64)));
        }
        assert_eq!(failures.slots.lock().unwrap().len(), SLOTS, "fixed size");
        assert!(failures.check(flooder).is_some(), "its many failures keep its slot against one-failure addresses");
        assert!(failures.check("2001:db8::2".parse().unwrap()).is_some(), "the same /64");
    }
}
