//! Group commit into the outbox. [`EventLog`] is the handle the chat path
//! uses; one background task drains everything queued since its last commit
//! into a single transaction, so a busy instance pays one commit for many
//! turns. Jobs are written in the order they were queued, so acknowledging a
//! job means every earlier job is durable too.
//!
//! Events nobody awaits (`emit`) do not wake the writer each: they wait in a
//! side queue, which the next awaited job (`emit_durable`) carries ahead of
//! its own items, or which the writer, woken once when the side queue stops
//! being empty, takes after a short linger.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::outbox::{OutboxStore, Pending};
use crate::error::{Code, ErrorCode};
use crate::telemetry::Metrics;

/// Most items committed in one transaction.
const MAX_BATCH: usize = 1000;
/// Jobs waiting for the writer before `emit` waits for room.
const QUEUE: usize = 10_000;
/// How long the writer waits for more work when nobody waits for what is
/// queued (`emit`, not `emit_durable`): a turn's first events then share the
/// commit of its last one instead of paying a commit (an fsync) each.
const LINGER: Duration = Duration::from_millis(5);

struct Job {
    items: Vec<Pending>,
    ack: Option<oneshot::Sender<Result<(), EventsError>>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EventsError {
    #[error("the event writer has stopped")]
    Stopped,
    #[error("events could not be stored: {0}")]
    Store(String),
    /// A guarded write found its condition gone (e.g. another instance
    /// claimed the same thing first): nothing of the job was stored.
    #[error("a guarded write found its condition gone; nothing was stored")]
    Conflict,
}

impl ErrorCode for EventsError {
    fn code(&self) -> Code {
        Code::Internal
    }
}

/// Items the side queue holds before `emit` sends through the channel
/// instead (and waits for room there, as before).
const SIDE_MAX: usize = 1000;

/// Events nobody awaits, waiting for the next job or the writer's linger.
#[derive(Default)]
struct Side {
    items: std::sync::Mutex<Vec<Pending>>,
    /// Told when the side queue stops being empty.
    filled: Notify,
}

impl Side {
    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Queues events for the outbox.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<Job>,
    side: Arc<Side>,
    /// The writer's tracker, which shutdown waits for.
    tracker: tokio_util::task::TaskTracker,
}

impl EventLog {
    /// Queues events; they are written with the next commit.
    pub async fn emit(&self, items: Vec<Pending>) -> Result<(), EventsError> {
        if self.tx.is_closed() {
            return Err(EventsError::Stopped);
        }
        let overflow = {
            let mut side = self.side.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if side.len() + items.len() > SIDE_MAX {
                Some(items)
            } else {
                let was_empty = side.is_empty();
                side.extend(items);
                if was_empty {
                    self.side.filled.notify_one();
                }
                None
            }
        };
        match overflow {
            None => Ok(()),
            Some(items) => self.send(items, None).await,
        }
    }

    /// Sends a job through the channel, carrying the side queue ahead of its
    /// items: taken and sent under the side queue's lock while the channel has
    /// room, so no event emitted later can be written ahead of them.
    async fn send(&self, items: Vec<Pending>, ack: Option<oneshot::Sender<Result<(), EventsError>>>) -> Result<(), EventsError> {
        match self.try_send_carrying(items, ack) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EventsError::Stopped),
            Err(mpsc::error::TrySendError::Full(job)) => self.tx.send(job).await.map_err(|_| EventsError::Stopped),
        }
    }

    /// Tries to send `items` as a job, the side queue's items ahead of them
    /// (taken under its lock, so the order holds; see [`EventLog::send`]).
    fn try_send_carrying(&self, items: Vec<Pending>, ack: Option<oneshot::Sender<Result<(), EventsError>>>) -> Result<(), mpsc::error::TrySendError<Job>> {
        let mut side = self.side.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = std::mem::take(&mut *side);
        all.extend(items);
        self.tx.try_send(Job { items: all, ack })
    }

    /// Queues events without waiting, for code that cannot wait (a `Drop`):
    /// at once while the queue has room, else from a task of the writer's
    /// tracker, which shutdown waits for.
    pub fn queue(&self, items: Vec<Pending>) {
        // The side queue goes first, as in `send`: a turn's earlier events may wait there.
        match self.try_send_carrying(items, None) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                let tx = self.tx.clone();
                self.tracker.spawn(async move {
                    if tx.send(job).await.is_err() {
                        tracing::error!("events queued as the writer stopped were not stored");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::error!("events queued after the writer stopped were not stored"),
        }
    }

    /// Queues events and waits until they — and everything queued before — are committed.
    pub async fn emit_durable(&self, items: Vec<Pending>) -> Result<(), EventsError> {
        let (ack, done) = oneshot::channel();
        self.send(items, Some(ack)).await?;
        done.await.map_err(|_| EventsError::Stopped)?
    }

    /// Starts the writer; `committed` is notified after each commit (the relay listens).
    /// Once `cancel` fires it writes what is queued, retrying a failed write for up to
    /// `drain` more; what is still unwritten then is logged as lost.
    pub fn start(
        store: OutboxStore,
        committed: Arc<Notify>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        drain: Duration,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let gives_up_at = Arc::new(std::sync::OnceLock::new());
        // The drain deadline runs from when shutdown began, whatever the writer is doing then.
        tracker.spawn({
            let (cancel, gives_up_at) = (cancel.clone(), gives_up_at.clone());
            async move {
                cancel.cancelled().await;
                let _ = gives_up_at.set(tokio::time::Instant::now() + drain);
            }
        });
        let side = Arc::new(Side::default());
        let writer = Writer { store, metrics, cancel, drain, gives_up_at };
        tracker.spawn(write_loop(writer, rx, side.clone(), committed));
        Self { tx, side, tracker: tracker.clone() }
    }
}

/// What the writer task holds.
struct Writer {
    store: OutboxStore,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// How long after `cancel` a failing write is still retried.
    drain: Duration,
    /// `drain` after `cancel` fired.
    gives_up_at: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

async fn write_loop(writer: Writer, mut rx: mpsc::Receiver<Job>, side: Arc<Side>, committed: Arc<Notify>) {
    let cancel = writer.cancel.clone();
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            // Events nobody awaits: linger for more (or for a job that carries them), then take them.
            () = side.filled.notified() => tokio::select! {
                job = rx.recv() => job,
                () = tokio::time::sleep(LINGER) => Some(Job { items: side.take(), ack: None }),
                () = cancel.cancelled() => Some(Job { items: side.take(), ack: None }),
            },
            // On shutdown, stop taking new work but drain what is queued.
            () = cancel.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else {
            // Closed and drained: what the side queue still holds is written last.
            let rest = side.take();
            if !rest.is_empty() {
                let items: Vec<&Pending> = rest.iter().collect();
                let result = writer.write_with_retry(&items).await;
                finish(Vec::new(), result, &committed);
            }
            return;
        };
        let mut jobs = vec![first];
        gather(&mut rx, &mut jobs, &cancel).await;
        // What was emitted meanwhile rides along, after every job already gathered.
        let later = side.take();
        if !later.is_empty() {
            jobs.push(Job { items: later, ack: None });
        }
        if jobs.iter().all(|j| j.items.is_empty()) {
            continue;
        }
        // The group borrows its jobs' items: nothing is copied to write them.
        let items: Vec<&Pending> = jobs.iter().flat_map(|j| j.items.iter()).collect();
        let result = writer.write_with_retry(&items).await;
        // Past the drain deadline a failure is the database's, not one job's: no job is tried again.
        if result.is_ok() || jobs.len() == 1 || writer.past_deadline_at(tokio::time::Instant::now()) {
            finish(jobs, result, &committed);
            continue;
        }
        // The group could not be written though the database answers: one job is at
        // fault. Write the jobs one by one, so only that job fails.
        for job in jobs {
            let items: Vec<&Pending> = job.items.iter().collect();
            let result = writer.write_with_retry(&items).await;
            finish(vec![job], result, &committed);
        }
    }
}

/// Adds what is queued to `jobs`, lingering while no job is awaited.
async fn gather(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, cancel: &CancellationToken) {
    let mut count: usize = jobs.iter().map(|j| j.items.len()).sum();
    let mut awaited = jobs.iter().any(|j| j.ack.is_some());
    let until = tokio::time::Instant::now() + LINGER;
    while count < MAX_BATCH {
        let job = match rx.try_recv() {
            Ok(job) => job,
            // Nothing queued: stop, or linger while nobody awaits what is gathered.
            Err(_) if awaited || cancel.is_cancelled() => break,
            Err(_) => tokio::select! {
                job = tokio::time::timeout_at(until, rx.recv()) => match job {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                },
                () = cancel.cancelled() => break,
            },
        };
        count += job.items.len();
        awaited |= job.ack.is_some();
        jobs.push(job);
    }
}

fn finish(jobs: Vec<Job>, result: Result<(), EventsError>, committed: &Notify) {
    if result.is_ok() {
        committed.notify_one();
    }
    for job in jobs {
        if let Some(ack) = job.ack {
            let _ = ack.send(result.clone());
        }
    }
}

impl Writer {
    /// Resolves when a failing write is to be given up: `drain` after shutdown began.
    async fn given_up(&self) {
        self.cancel.cancelled().await;
        let at = *self.gives_up_at.get_or_init(|| tokio::time::Instant::now() + self.drain);
        tokio::time::sleep_until(at).await;
    }

    /// Whether shutdown's drain deadline had passed at `when`.
    fn past_deadline_at(&self, when: tokio::time::Instant) -> bool {
        self.gives_up_at.get().is_some_and(|at| when >= *at)
    }

    /// A database outage must delay events, not lose them: retry with capped
    /// backoff until the write succeeds, or until the drain deadline once Steward
    /// is shutting down ([`Self::given_up`]). Meanwhile the queue
    /// fills and `emit` waits, which slows the chat path instead of dropping its
    /// trail. Only a statement that a working database keeps rejecting — not a
    /// pool timeout, a lost connection or a busy database — can never succeed,
    /// and is given up (and logged) after a few tries.
    async fn write_with_retry(&self, items: &[&Pending]) -> Result<(), EventsError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(20);
        let mut attempts = 0;
        loop {
            match self.store.append(items).await {
                Ok(()) => return Ok(()),
                // A guarded write's condition is gone ([`TxWrite`]s say so with `RowNotFound`): trying again changes nothing.
                Err(sqlx::Error::RowNotFound) => return Err(EventsError::Conflict),
                Err(err) if attempts >= 2 && !transient(&err) && self.store.reachable().await => {
                    tracing::error!(error = %crate::error::error_chain(&err), items = items.len(), "outbox write rejected by a working database; not stored");
                    return Err(EventsError::Store(err.to_string()));
                }
                Err(err) => {
                    attempts += 1;
                    self.metrics.outbox_write_retry(failure(&err));
                    tracing::warn!(error = %crate::error::error_chain(&err), items = items.len(), retry_in_ms = delay.as_millis() as u64, "outbox write failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.given_up() => {
                            // One last try at the deadline (the database may be back since the last
                            // one), unless this write began past it and has had its one try.
                            if attempts == 1 && self.past_deadline_at(started) {
                                tracing::error!(error = %crate::error::error_chain(&err), items = items.len(), "shut down with events not stored: the database failed past the drain deadline");
                                return Err(EventsError::Store(err.to_string()));
                            }
                            let Err(err) = self.store.append(items).await else { return Ok(()) };
                            tracing::error!(error = %crate::error::error_chain(&err), items = items.len(), drain_ms = self.drain.as_millis() as u64, "shut down with events not stored: the database failed until the drain deadline");
                            return Err(EventsError::Store(err.to_string()));
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// What failed, for `outbox_write_retries_total{error}`.
fn failure(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::Database(db) if db.code().is_some_and(|code| busy_or_unreachable(&code)) => "busy",
        err if transient(err) => "connection",
        _ => "rejected",
    }
}

/// Whether a failed write may succeed when tried again: the database could
/// not be reached, had no connection to spare, or was busy — as opposed to a
/// statement it rejects.
fn transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| busy_or_unreachable(&code)),
        _ => false,
    }
}

/// A PostgreSQL SQLSTATE (five characters) of a connection exception (08),
/// transaction rollback (40: serialization failure, deadlock), insufficient
/// resources (53), operator intervention (57: shutdown) or lock not
/// available (55P03); or a SQLite result code of `SQLITE_BUSY` or
/// `SQLITE_LOCKED` (extended codes keep the primary one in the low byte).
fn busy_or_unreachable(code: &str) -> bool {
    if code.len() == 5 {
        return ["08", "40", "53", "57"].iter().any(|class| code.starts_with(class)) || code == "55P03";
    }
    code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_starved_or_busy_database_is_retried_and_a_rejected_statement_is_not() {
        assert!(transient(&sqlx::Error::PoolTimedOut));
        assert!(transient(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        for code in ["08006", "40001", "40P01", "53300", "57P01", "55P03", "5", "517", "6", "262"] {
            assert!(busy_or_unreachable(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "19", "2067", "1"] {
            assert!(!busy_or_unreachable(code), "{code}");
        }
        assert!(!transient(&sqlx::Error::RowNotFound));
    }
}
