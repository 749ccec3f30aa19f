//! Micro-batching of the transformer: texts judged at the same moment on
//! different threads share one forward pass. No window is waited for: a
//! thread that finds no pass running runs one at once, for everything queued
//! by then; texts that arrive meanwhile queue for the next pass. A lone text
//! costs what it did, and under load one pass serves many (a pass over 16
//! texts costs far less than 16 passes).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::encoder::{normalize, Encoder};
use super::SemanticError;

/// Most texts in one pass: with windows of at most 128 tokens, a pass's
/// activations stay within what `TOKENS_PER_PASS` allows the bulk paths.
const MOST_ROWS: usize = 64;

#[derive(Debug, Default)]
pub struct Batcher {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Texts waiting for a pass, oldest first.
    queue: Vec<(u64, Vec<u32>)>,
    /// Results not yet collected by their threads (an error as its message).
    done: HashMap<u64, Result<Vec<f32>, String>>,
    running: bool,
    next: u64,
    /// Passes run and texts they served, for the figures.
    passes: u64,
    texts: u64,
}

impl Batcher {
    /// [`Encoder::features`] of `ids` (a text that fits one window), computed
    /// in a pass shared with whatever other threads asked for meanwhile.
    pub fn features(&self, encoder: &Encoder, ids: Vec<u32>) -> Result<Vec<f32>, SemanticError> {
        let mut state = self.lock();
        let ticket = state.next;
        state.next += 1;
        state.queue.push((ticket, ids));
        loop {
            if let Some(result) = state.done.remove(&ticket) {
                return result.map_err(SemanticError::Model);
            }
            if state.running {
                state = self.finished.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if !state.queue.iter().any(|(t, _)| *t == ticket) {
                // Taken by a pass that ended without results: it panicked.
                return Err(SemanticError::Model("the shared forward pass failed".into()));
            }
            // No pass is running: this thread runs one for everything queued.
            let take = state.queue.len().min(MOST_ROWS);
            let batch: Vec<(u64, Vec<u32>)> = state.queue.drain(..take).collect();
            state.running = true;
            drop(state);
            let unwinding = Running(self);
            let ids: Vec<&[u32]> = batch.iter().map(|(_, ids)| ids.as_slice()).collect();
            let result = encoder.features_together(&ids);
            // Returned normally: the results go in before the waiting threads are woken.
            std::mem::forget(unwinding);
            state = self.lock();
            state.running = false;
            state.passes += 1;
            state.texts += batch.len() as u64;
            match result {
                Ok(Some(vectors)) => batch.iter().zip(vectors).for_each(|((t, _), mut v)| {
                    // As `Encoder::features` finishes a text.
                    normalize(&mut v);
                    state.done.insert(*t, Ok(v));
                }),
                Ok(None) => batch.iter().for_each(|(t, _)| {
                    state.done.insert(*t, Err("a text does not fit one window".into()));
                }),
                Err(err) => batch.iter().for_each(|(t, _)| {
                    state.done.insert(*t, Err(err.to_string()));
                }),
            }
            self.finished.notify_all();
        }
    }

    /// (passes run, texts they served) so far.
    pub fn passes(&self) -> (u64, u64) {
        let state = self.lock();
        (state.passes, state.texts)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pass in progress, dropped only if it panics: the next may start, and
/// the threads whose texts it held learn that it failed.
struct Running<'a>(&'a Batcher);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().running = false;
        self.0.finished.notify_all();
    }
}
