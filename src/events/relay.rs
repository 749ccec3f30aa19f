//! The relay: publishes unpublished outbox rows, oldest first, through the
//! [`EventPublisher`] port, marks them published, and backs off (capped,
//! exponential) while the broker is unreachable. One relay per database holds
//! a lease at a time, so several instances never publish the same rows in the
//! normal case nor reorder a session. Without a publisher (embedded mode) it
//! only keeps the outbox gauges current.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::outbox::{OutboxRow, OutboxStore};
use crate::telemetry::{Metrics, TraceContext};

/// Publishes outbox rows to the broker.
pub trait EventPublisher: Send + Sync {
    /// Connects and creates missing topics.
    fn prepare(&self) -> BoxFuture<'_, Result<(), PublishError>>;
    /// Publishes rows in order; see [`Published`].
    fn publish<'a>(&'a self, rows: &'a [OutboxRow]) -> BoxFuture<'a, Published>;
    /// Whether the broker answers now, for readiness.
    fn ready(&self) -> BoxFuture<'_, Result<(), PublishError>>;
}

/// What a publish round did.
#[derive(Debug, Default)]
pub struct Published {
    /// Rows that are in the broker now (dead-lettered ones included): done.
    pub ids: Vec<i64>,
    /// Of those, rows the broker can never accept (over its size limit),
    /// published to their topic's dead-letter topic instead, with why.
    pub dead_lettered: Vec<(i64, String)>,
    /// What stopped the rest, if anything.
    pub error: Option<PublishError>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("broker refused: {0}")]
    Broker(String),
}

pub struct Relay {
    pub store: OutboxStore,
    pub publisher: Option<Arc<dyn EventPublisher>>,
    pub metrics: Arc<Metrics>,
    pub settings: super::OutboxSettings,
    /// After the stop, how long the relay goes on publishing what is pending
    /// (the writer's last commits included) before it releases its lease.
    pub drain: Duration,
    /// Woken by the writer after each commit.
    pub committed: Arc<Notify>,
}

const LEASE: &str = "outbox-relay";

impl Relay {
    pub async fn run(self, cancel: CancellationToken) {
        let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let mut backoff = Backoff::new(self.settings.poll_interval.get().min(Duration::from_millis(100)), self.settings.max_backoff.get());
        let mut state = RelayState { holder, prepared: false, lease_until: None };
        // The gauges have their own loop: a publish stuck on a dead broker must not freeze them.
        let gauges = async {
            loop {
                self.refresh_gauges().await;
                tokio::time::sleep(self.settings.poll_interval.get()).await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            () = gauges => {}
            () = self.publish_loop(&mut state, &mut backoff, &cancel) => {}
        }
        if let Some(publisher) = &self.publisher {
            let drained = tokio::time::timeout(self.drain, self.drain(publisher.as_ref(), &mut state)).await;
            if drained.is_err() {
                tracing::warn!("shutdown: events still pending stay in the outbox for the next start");
            }
            let _ = self.store.release_lease(LEASE, &state.holder).await;
        }
        self.refresh_gauges().await;
    }

    /// Publishes until the outbox stays empty for a moment (the writer's
    /// last commits land meanwhile) or a round fails.
    async fn drain(&self, publisher: &dyn EventPublisher, state: &mut RelayState) {
        loop {
            match self.step(publisher, state).await {
                Step::Published => {}
                Step::Failed => return,
                Step::Idle => {
                    if tokio::time::timeout(Duration::from_millis(100), self.committed.notified()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn publish_loop(&self, state: &mut RelayState, backoff: &mut Backoff, cancel: &CancellationToken) {
        loop {
            let wait = match &self.publisher {
                None => self.settings.poll_interval.get(),
                Some(publisher) => match self.step(publisher.as_ref(), state).await {
                    Step::Published => {
                        backoff.reset();
                        continue;
                    }
                    Step::Idle => {
                        backoff.reset();
                        self.settings.poll_interval.get()
                    }
                    Step::Failed => backoff.next(),
                },
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.committed.notified(), if self.publisher.is_some() && !backoff.active() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Holds the lease, renewing it once a third of it has passed rather than every round.
    async fn lease(&self, state: &mut RelayState) -> Result<bool, sqlx::Error> {
        let lease = self.settings.lease.get();
        if state.lease_until.is_some_and(|until| until > Instant::now() + lease * 2 / 3) {
            return Ok(true);
        }
        let taken_at = Instant::now();
        let held = self.store.acquire_lease(LEASE, &state.holder, lease.as_millis() as i64).await?;
        state.lease_until = held.then_some(taken_at + lease);
        Ok(held)
    }

    async fn step(&self, publisher: &dyn EventPublisher, state: &mut RelayState) -> Step {
        match self.lease(state).await {
            Ok(true) => {}
            Ok(false) => return Step::Idle,
            Err(err) => {
                tracing::warn!(error = %err, "relay could not take its lease");
                return Step::Failed;
            }
        }
        let prepared = &mut state.prepared;
        if !*prepared {
            if let Err(err) = publisher.prepare().await {
                self.metrics.publish_failure();
                tracing::warn!(error = %err, "broker not ready; events stay in the outbox");
                return Step::Failed;
            }
            *prepared = true;
        }
        let rows = match self.store.pending(i64::from(self.settings.batch_size.get())).await {
            Ok(rows) if rows.is_empty() => return Step::Idle,
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "relay could not read the outbox");
                return Step::Failed;
            }
        };
        let sent_at = std::time::SystemTime::now();
        let Published { ids: published, dead_lettered, error } = publisher.publish(&rows).await;
        for (id, reason) in &dead_lettered {
            let row = rows.iter().find(|r| r.id == *id);
            self.metrics.dead_lettered(row.map_or("", |r| r.topic.as_str()));
            tracing::error!(outbox_id = id, topic = row.map(|r| r.topic.as_str()), reason = %reason, "event the broker cannot accept sent to the dead-letter topic");
        }
        if !published.is_empty() {
            if let Err(err) = self.store.mark_published(&published).await {
                // They will be published again (at-least-once; consumers dedupe by event_id),
                // but not in a tight loop: back off like any other failure.
                tracing::warn!(error = %err, "could not mark published rows");
                return Step::Failed;
            }
            for row in rows.iter().filter(|r| published.contains(&r.id)) {
                self.metrics.published(&row.topic);
                publish_span(row, sent_at);
            }
        }
        match error {
            None => Step::Published,
            Some(err) => {
                self.metrics.publish_failure();
                tracing::warn!(error = %err, published = published.len(), pending = rows.len() - published.len(), "publish failed; backing off");
                *prepared = false;
                Step::Failed
            }
        }
    }

    async fn refresh_gauges(&self) {
        if let Ok((pending, oldest_ms)) = self.store.pending_stats().await {
            self.metrics.outbox(pending, oldest_ms.unwrap_or(0) as f64 / 1000.0);
        }
    }
}

struct RelayState {
    holder: String,
    prepared: bool,
    /// When the lease this relay holds lapses, if it holds one.
    lease_until: Option<Instant>,
}

enum Step {
    Published,
    Idle,
    Failed,
}

/// Capped exponential backoff.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Option<Duration>,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, next: None }
    }
    fn next(&mut self) -> Duration {
        let current = self.next.unwrap_or(self.initial);
        self.next = Some((current * 2).min(self.max));
        current
    }
    fn reset(&mut self) {
        self.next = None;
    }
    fn active(&self) -> bool {
        self.next.is_some()
    }
}

/// The span of one record's publish, a child of the hop whose `traceparent` the record carries.
fn publish_span(row: &OutboxRow, start: std::time::SystemTime) {
    if !crate::telemetry::spans::enabled() {
        return;
    }
    use opentelemetry::trace::SpanKind;
    use opentelemetry::KeyValue;
    let Some(parent) = row.headers.iter().find(|(name, _)| name == "traceparent").and_then(|(_, value)| TraceContext::parse(value)) else { return };
    let publish = parent.child();
    crate::telemetry::spans::record(crate::telemetry::spans::FinishedSpan {
        name: format!("publish {}", row.topic),
        kind: SpanKind::Producer,
        trace: &publish,
        span_id: &publish.span_id,
        parent_span_id: Some(&parent.span_id),
        start,
        end: std::time::SystemTime::now(),
        attributes: vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", row.topic.clone()),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.kafka.message.key", row.key.clone()),
        ],
        error: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let seen: Vec<u128> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(seen, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next().as_millis(), 100);
    }
}
