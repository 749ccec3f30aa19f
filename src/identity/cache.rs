//! A short-lived, bounded memory of authenticated keys, so that a request
//! need not read the database to learn who is calling. A revoked key stops
//! working on every instance within the memory's lifetime
//! (`identity.key_cache`); 0 turns the memory off. Keys are remembered by
//! their hash, never by the secret. Unknown (and revoked) keys are remembered
//! as unknown for the same lifetime in a memory of their own, so a client
//! that keeps sending a wrong key reaches the database once per lifetime, and
//! a caller guessing keys fills only that memory, never pushing a live key out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use super::domain::IdentityError;
use super::store::{KeyRecord, KeyStore};

/// How long a key found live is known as one that exists (see [`Recall::Vouched`]).
const VOUCHED_FOR: Duration = Duration::from_secs(24 * 3600);

/// What memory says of a key.
#[derive(Debug)]
pub enum Recall {
    /// Read live less than the memory's lifetime ago.
    Live(KeyRecord),
    /// Not known to the database less than the lifetime ago.
    Unknown,
    /// Live when last read (within a day), to be read again.
    Vouched,
    /// Not remembered at all.
    Unseen,
}

/// A database read of one key, shared by every request that waits for it.
type Lookup = Shared<BoxFuture<'static, Result<Option<KeyRecord>, Arc<IdentityError>>>>;

pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: KeyStore,
    memory: Mutex<Memory<KeyRecord>>,
    /// Hashes the database did not know, with when it was asked.
    unknown: Mutex<Memory<()>>,
    /// Hashes of keys found live within the last `VOUCHED_FOR`: not enough to let a request
    /// in (a revocation must still be seen), but enough to know a lookup of one is no guess.
    vouched: Mutex<Memory<()>>,
    /// Reads under way, by key hash. Each runs in a task of its own, which removes
    /// its entry when the read ends: a request whose client hangs up mid-read
    /// cannot leave a read behind that holds a pool connection and is never polled.
    reading: Mutex<HashMap<String, Lookup>>,
    /// When this instance last recorded each key's use (by key id; only keys found live get here).
    used: Mutex<HashMap<String, Instant>>,
}

impl KeyCache {
    pub fn new(store: KeyStore, ttl: Duration, capacity: usize) -> Self {
        let inner = Inner {
            store,
            memory: Mutex::new(Memory { ttl, capacity, entries: HashMap::new() }),
            unknown: Mutex::new(Memory { ttl, capacity, entries: HashMap::new() }),
            vouched: Mutex::new(Memory { ttl: VOUCHED_FOR, capacity, entries: HashMap::new() }),
            reading: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The live key whose secret hashes to `hash` (`ApiKey::hash_of`): from memory if it was
    /// read less than the lifetime ago.
    ///
    /// One read per key at a time: when a key in use expires from memory under load, the
    /// requests that miss it together share one database read, instead of each taking a
    /// connection from the pool the event writer also needs. The read runs to its end
    /// whatever happens to the requests waiting for it.
    pub async fn find_active_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, IdentityError> {
        if let Some(known) = self.remembered_hash(hash) {
            return Ok(known);
        }
        let lookup = lock(&self.inner.reading).entry(hash.to_owned()).or_insert_with(|| Inner::spawn_read(&self.inner, hash.to_owned())).clone();
        lookup.await.map_err(IdentityError::Shared)
    }

    /// Notes that `record`'s key was used: written to the store at most once per
    /// [`KeyStore::USE_RECORDED_EVERY`] per key, in a task of its own (the request does not wait).
    pub fn used(&self, record: &KeyRecord) {
        let now = Instant::now();
        {
            let mut used = lock(&self.inner.used);
            if used.get(&record.id).is_some_and(|at| now.duration_since(*at) < KeyStore::USE_RECORDED_EVERY) {
                return;
            }
            used.insert(record.id.clone(), now);
        }
        let (store, id) = (self.inner.store.clone(), record.id.clone());
        tokio::spawn(async move {
            if let Err(err) = store.used(&id, crate::db::now_ms()).await {
                tracing::warn!(key_id = %id, error = %err, "a key's last use could not be recorded");
            }
        });
    }

    /// What memory says of the key whose secret hashes to `hash`.
    pub fn recall(&self, hash: &str) -> Recall {
        match self.remembered_hash(hash) {
            Some(Some(record)) => Recall::Live(record),
            Some(None) => Recall::Unknown,
            None if lock(&self.inner.vouched).get(hash, Instant::now()).is_some() => Recall::Vouched,
            None => Recall::Unseen,
        }
    }

    fn remembered_hash(&self, hash: &str) -> Option<Option<KeyRecord>> {
        let now = Instant::now();
        if let Some(record) = lock(&self.inner.memory).get(hash, now) {
            return Some(Some(record));
        }
        lock(&self.inner.unknown).get(hash, now).map(|()| None)
    }
}

impl Inner {
    /// Starts the read of `hash` in a task of its own; what it found is remembered and
    /// its entry in `reading` removed when it ends, whoever still waits for it.
    fn spawn_read(inner: &Arc<Inner>, hash: String) -> Lookup {
        let inner = Arc::clone(inner);
        let task = tokio::spawn(async move {
            let found = inner.store.find_active_by_hash(&hash).await.map_err(Arc::new);
            match &found {
                Ok(Some(record)) => {
                    lock(&inner.memory).put(hash.clone(), record.clone(), Instant::now());
                    lock(&inner.vouched).put(hash.clone(), (), Instant::now());
                }
                Ok(None) => {
                    lock(&inner.unknown).put(hash.clone(), (), Instant::now());
                    // Revoked (or never live): no longer vouched for against the failed-auth bound.
                    lock(&inner.vouched).entries.remove(&hash);
                }
                Err(_) => {}
            }
            lock(&inner.reading).remove(&hash);
            found
        });
        async move { task.await.unwrap_or_else(|e| Err(Arc::new(IdentityError::LookupInterrupted(e)))) }.boxed().shared()
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
        KeyRecord { id: id.into(), tenant: "acme".into(), capabilities: "chat".into(), created_at: 0, revoked_at: None, last_used_at: None }
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
