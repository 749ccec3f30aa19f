//! A bounded exact-text cache of embeddings, shared by every judge in the
//! process: repeated prompts, and the constitution's exemplars when a
//! moderator is built again, skip the model.
//!
//! Two generations instead of a full LRU: lookups check the current map, then
//! the previous one (promoting a hit); when the current map is full it becomes
//! the previous one. Entries used within the last `capacity / 2` insertions
//! always survive, and every operation is O(1).
//!
//! Texts are kept by their SHA-256, never whole: an entry costs the same 32
//! bytes of key however long the text, so the cache's memory is bounded in
//! bytes by its capacity (a text as long as the input bound allows no longer
//! takes a thousand times an ordinary one's room).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// What an entry is kept under: the text's SHA-256.
type Key = [u8; 32];

fn key_of(text: &str) -> Key {
    Sha256::digest(text.as_bytes()).into()
}

/// One embedding, shared without copying.
pub type Vector = Arc<[f32]>;

#[derive(Debug)]
pub struct EmbeddingCache {
    half: usize,
    maps: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<Key, Vector>,
    previous: HashMap<Key, Vector>,
}

impl EmbeddingCache {
    /// A cache holding at least `capacity / 2` and at most `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self { half: capacity / 2, maps: Mutex::new(Generations::default()) }
    }

    /// How many insertions an entry is sure to survive (0: the cache is off).
    pub fn sure_to_survive(&self) -> usize {
        self.half
    }

    pub fn get(&self, text: &str) -> Option<Vector> {
        if self.half == 0 {
            return None;
        }
        let key = key_of(text);
        let mut maps = self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(v) = maps.current.get(&key) {
            return Some(v.clone());
        }
        let v = maps.previous.remove(&key)?;
        maps.insert(key, v.clone(), self.half);
        Some(v)
    }

    pub fn insert(&self, text: &str, vector: Vector) {
        if self.half == 0 {
            return;
        }
        let key = key_of(text);
        let mut maps = self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        maps.insert(key, vector, self.half);
    }
}

impl Generations {
    fn insert(&mut self, key: Key, vector: Vector, half: usize) {
        if self.current.len() >= half {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, vector);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: f32) -> Vector {
        Arc::from(vec![x])
    }

    #[test]
    fn recently_used_entries_survive_and_old_ones_go() {
        let cache = EmbeddingCache::new(4);
        cache.insert("a", v(1.0));
        cache.insert("b", v(2.0));
        cache.insert("c", v(3.0)); // a, b become the previous generation
        assert_eq!(cache.get("a").as_deref(), Some(&[1.0][..])); // promoted
        cache.insert("d", v(4.0)); // current {c, a} was full: it becomes previous
        cache.insert("e", v(5.0));
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some());
        assert!(EmbeddingCache::new(0).get("a").is_none());
    }
}
