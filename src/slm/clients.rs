//! One HTTP client per thread that dispatches. A client's pooled connections
//! are driven by tasks on the runtime that opened them, and each actix worker
//! is a runtime on its own thread: a connection opened by one worker and
//! reused by another hands every chunk of the answer from one thread to the
//! other, a wake-up each way. With a client per thread, a turn's connection
//! to the model server lives on the thread that runs the turn.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

type Build = Box<dyn Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync>;

thread_local! {
    /// This thread's clients, each with a handle on the [`PerThread`] that made it.
    static CLIENTS: RefCell<Vec<(Weak<()>, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

pub struct PerThread {
    /// Identifies this set of clients on every thread; dropped, it lets the threads drop theirs.
    owner: Arc<()>,
    build: Build,
    /// For a thread that cannot keep one of its own (its thread-locals are being torn down).
    fallback: reqwest::Client,
}

impl PerThread {
    pub fn new(build: impl Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync + 'static) -> Result<Self, reqwest::Error> {
        let fallback = build()?;
        Ok(Self { owner: Arc::new(()), build: Box::new(build), fallback })
    }

    /// The calling thread's client, made on first use.
    pub fn get(&self) -> reqwest::Client {
        let mine = Arc::as_ptr(&self.owner);
        CLIENTS
            .try_with(|clients| {
                let mut clients = clients.borrow_mut();
                clients.retain(|(owner, _)| owner.strong_count() > 0);
                if let Some((_, client)) = clients.iter().find(|(owner, _)| owner.as_ptr() == mine) {
                    return client.clone();
                }
                let client = (self.build)().unwrap_or_else(|_| self.fallback.clone());
                clients.push((Arc::downgrade(&self.owner), client.clone()));
                client
            })
            .unwrap_or_else(|_| self.fallback.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_here() -> usize {
        CLIENTS.with(|c| c.borrow().len())
    }

    #[test]
    fn each_thread_keeps_one_client_per_owner_and_forgets_it_with_the_owner() {
        let clients = PerThread::new(|| reqwest::Client::builder().build()).unwrap();
        let before = count_here();
        let _ = clients.get();
        let _ = clients.get();
        assert_eq!(count_here(), before + 1, "a second call on the same thread reuses its client");
        let other = std::thread::scope(|s| s.spawn(|| (clients.get(), count_here())).join().unwrap());
        assert_eq!(other.1, 1, "another thread makes its own");
        drop(clients);
        let again = PerThread::new(|| reqwest::Client::builder().build()).unwrap();
        let _ = again.get();
        assert_eq!(count_here(), before + 1, "the dropped owner's client is let go when the thread next looks");
    }
}
