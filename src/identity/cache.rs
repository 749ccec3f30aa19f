//! A short-lived, bounded memory of authenticated keys, so that a request
//! need not read the database to learn who is calling. A revoked key stops
//! working on every instance within the memory's lifetime
//! (`identity.key_cache_ms`); 0 turns the memory off. Keys are remembered by
//! their hash, never by the secret. Unknown (and revoked) keys are remembered
//! as unknown for the same lifetime in a memory of their own, so a client
//! that keeps sending a wrong key reaches the database once per lifetime, and
//! a caller guessing keys fills only that memory, never pushing a live key out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use super::domain::{ApiKey, IdentityError};
use super::store::{KeyRecord, KeyStore};

/// A database read of one key, shared by every request that waits for it.
type Lookup = Shared<BoxFuture<'static, Result<Option<KeyRecord>, Arc<IdentityError>>>>;

pub struct KeyCache {
    store: KeyStore,
    memory: Mutex<Memory<KeyRecord>>,
    /// Hashes the database did not know, with when it was asked.
    unknown: Mutex<Memory<()>>,
    /// Reads under way, by key hash.
    reading: Mutex<HashMap<String, Lookup>>,
}

impl KeyCache {
    pub fn new(store: KeyStore, ttl: Duration, capacity: usize) -> Self {
        Self {
            store,
            memory: Mutex::new(Memory { ttl, capacity, entries: HashMap::new() }),
            unknown: Mutex::new(Memory { ttl, capacity, entries: HashMap::new() }),
            reading: Mutex::new(HashMap::new()),
        }
    }

    /// The live key with this secret: from memory if it was read less than the lifetime ago.
    ///
    /// One read per key at a time: when a key in use expires from memory under load, the
    /// requests that miss it together share one database read, instead of each taking a
    /// connection from the pool the event writer also needs.
    pub async fn find_active(&self, key: &str) -> Result<Option<KeyRecord>, IdentityError> {
        let hash = ApiKey::hash_of(key);
        let now = Instant::now();
        if let Some(record) = self.memory().get(&hash, now) {
            return Ok(Some(record));
        }
        if lock(&self.unknown).get(&hash, now).is_some() {
            return Ok(None);
        }
        let lookup = lock(&self.reading)
            .entry(hash.clone())
            .or_insert_with(|| {
                let (store, hash) = (self.store.clone(), hash.clone());
                async move { store.find_active_by_hash(&hash).await.map_err(Arc::new) }.boxed().shared()
            })
            .clone();
        let found = lookup.await;
        lock(&self.reading).remove(&hash);
        let found = found.map_err(IdentityError::Shared)?;
        match &found {
            Some(record) => self.memory().put(hash, record.clone(), Instant::now()),
            None => lock(&self.unknown).put(hash, (), Instant::now()),
        }
        Ok(found)
    }

    fn memory(&self) -> MutexGuard<'_, Memory<KeyRecord>> {
        lock(&self.memory)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What was read by key hash, each with the time it was read.
struct Memory<V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, (Instant, V)>,
}

impl<V: Clone> Memory<V> {
    fn get(&self, hash: &str, now: Instant) -> Option<V> {
        let (read, record) = self.entries.get(hash)?;
        (now.saturating_duration_since(*read) < self.ttl).then(|| record.clone())
    }

    fn put(&mut self, hash: String, record: V, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries.retain(|_, (read, _)| now.saturating_duration_since(*read) < ttl);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(hash, (now, record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> KeyRecord {
        KeyRecord { id: id.into(), tenant: "acme".into(), capabilities: "chat".into(), created_at: 0, revoked_at: None }
    }

    fn memory(ttl_ms: u64, capacity: usize) -> Memory<KeyRecord> {
        Memory { ttl: Duration::from_millis(ttl_ms), capacity, entries: HashMap::new() }
    }

    #[test]
    fn a_key_is_remembered_for_less_than_its_lifetime() {
        let (mut memory, read) = (memory(1000, 16), Instant::now());
        memory.put("h".into(), record("key_a"), read);
        assert_eq!(memory.get("h", read + Duration::from_millis(999)).map(|r| r.id), Some("key_a".into()));
        assert!(memory.get("h", read + Duration::from_millis(1000)).is_none(), "read again (and a revocation seen) after the bound");
    }

    #[test]
    fn with_no_lifetime_nothing_is_remembered() {
        let (mut memory, now) = (memory(0, 16), Instant::now());
        memory.put("h".into(), record("key_a"), now);
        assert!(memory.get("h", now).is_none());
    }

    #[test]
    fn the_memory_never_holds_more_than_its_capacity() {
        let (mut memory, start) = (memory(60_000, 3), Instant::now());
        for i in 0..10 {
            memory.put(format!("h{i}"), record("key"), start + Duration::from_millis(i));
            assert!(memory.entries.len() <= 3);
        }
        assert!(memory.get("h9", start + Duration::from_millis(10)).is_some(), "the newest key is kept");
    }

    #[test]
    fn expired_keys_make_room_before_live_ones_are_dropped() {
        let (mut memory, start) = (memory(100, 2), Instant::now());
        memory.put("old".into(), record("key_old"), start);
        memory.put("live".into(), record("key_live"), start + Duration::from_millis(150));
        memory.put("new".into(), record("key_new"), start + Duration::from_millis(160));
        assert!(memory.get("live", start + Duration::from_millis(170)).is_some());
        assert!(memory.get("new", start + Duration::from_millis(170)).is_some());
        assert!(!memory.entries.contains_key("old"));
    }
}
