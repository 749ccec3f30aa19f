//! Repeated `training.denied` records folded into one per key and window:
//! any key can be refused by the training routes, and each refusal would
//! otherwise be a durable, chained record — a way to flood the audit trail.
//! The first denial of a key in a window (`WINDOW`) is recorded; the rest in
//! that window are only counted (every denial, recorded or folded, counts in
//! `training_mode_transitions_total{action="denied"}`), and the
//! key's next record says how many were folded (`folded`). Keys are
//! authenticated before they can be denied, so the memory grows with the
//! keys that exist, never with what a caller makes up; it is pruned past
//! `REMEMBERED` keys all the same.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);
const REMEMBERED: usize = 10_000;

/// What to do with a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Record it, saying how many of this key's denials were folded since its last record.
    Record { folded: u32 },
    /// Count it only: this key's denial was recorded less than a window ago.
    Fold,
}

#[derive(Default)]
pub struct Denials {
    /// key id → (when its last record was written, denials folded since).
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Denials {
    pub fn check(&self, key_id: &str) -> Denial {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((recorded, folded)) = seen.get_mut(key_id) {
            if now.duration_since(*recorded) < WINDOW {
                *folded = folded.saturating_add(1);
                return Denial::Fold;
            }
            let folded = std::mem::take(folded);
            *recorded = now;
            return Denial::Record { folded };
        }
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (recorded, folded)| now.duration_since(*recorded) < WINDOW || *folded > 0);
            if seen.len() >= REMEMBERED {
                seen.clear();
            }
        }
        seen.insert(key_id.to_owned(), (now, 0));
        Denial::Record { folded: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_record_per_key_and_window_and_the_next_says_how_many_were_folded() {
        let denials = Denials::default();
        assert_eq!(denials.check("key_a"), Denial::Record { folded: 0 });
        for _ in 0..500 {
            assert_eq!(denials.check("key_a"), Denial::Fold);
        }
        assert_eq!(denials.check("key_b"), Denial::Record { folded: 0 }, "keys are counted apart");
        tokio::time::advance(WINDOW).await;
        assert_eq!(denials.check("key_a"), Denial::Record { folded: 500 });
        assert_eq!(denials.check("key_a"), Denial::Fold);
    }
}
