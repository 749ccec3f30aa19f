//! Prometheus metrics. Names are contracts (DESIGN.md): change them only on purpose.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    tenant: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModerationLabels {
    stage: &'static str,
    category: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcomeLabels {
    upstream: String,
    outcome: &'static str,
}

/// The model servers' metrics, as the router (`crate::slm::Router`) reports them.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    state: Family<UpstreamLabels, Gauge>,
    requests: Family<UpstreamOutcomeLabels, Counter>,
    attempt: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
}

impl UpstreamMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self { state: Family::default(), requests: Family::default(), attempt: Family::new_with_constructor(latency_histogram) };
        registry.register("slm_upstream_state", "Each model server's circuit: 0 closed, 1 half-open (probing), 2 open (left alone)", metrics.state.clone());
        registry.register(
            "slm_upstream_requests",
            "Attempts at each model server by outcome: ok, connect_error, status_5xx, status_429, status_4xx, first_token_deadline, stream_error, cancelled",
            metrics.requests.clone(),
        );
        registry.register(
            "slm_upstream_attempt_seconds",
            "From an attempt's start to its first content, or to its failure before any",
            metrics.attempt.clone(),
        );
        metrics
    }

    /// One upstream's handles, looked up once: a turn's attempt then costs
    /// atomic adds, not label lookups and allocations.
    pub fn of(&self, upstream: &str) -> OneUpstream {
        let labels = UpstreamLabels { upstream: upstream.to_owned() };
        OneUpstream {
            state: self.state.get_or_create(&labels).clone(),
            ok: self.requests.get_or_create(&UpstreamOutcomeLabels { upstream: upstream.to_owned(), outcome: "ok" }).clone(),
            attempt: self.attempt.get_or_create(&labels).clone(),
            requests: self.requests.clone(),
            name: upstream.to_owned(),
        }
    }
}

/// One upstream's metrics ([`UpstreamMetrics::of`]).
#[derive(Debug, Clone)]
pub struct OneUpstream {
    state: Gauge,
    ok: Counter,
    attempt: Histogram,
    /// For the outcomes other than `ok` (rare: looked up when they happen).
    requests: Family<UpstreamOutcomeLabels, Counter>,
    name: String,
}

impl OneUpstream {
    /// The circuit's state, as the `slm_upstream_state` gauge's value.
    pub fn state(&self, value: i64) {
        self.state.set(value);
    }

    /// An attempt ended its first phase: its outcome, and how long it took to show it.
    pub fn attempt(&self, outcome: &'static str, elapsed: Option<Duration>) {
        if outcome == "ok" {
            self.ok.inc();
        } else {
            self.requests.get_or_create(&UpstreamOutcomeLabels { upstream: self.name.clone(), outcome }).inc();
        }
        if let Some(elapsed) = elapsed {
            self.attempt.observe(elapsed.as_secs_f64());
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// How a request ended, for `orchestrator_requests_total{decision}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Allowed and answered (also when the client went away mid-answer).
    Allow,
    /// Refused by input or output moderation.
    Refuse,
    /// Rejected before dispatch: unknown session, bad input.
    Rejected,
    /// Rejected by the policy check, labelled with its code
    /// (`constitution_mismatch`, `policy_verdict_replayed`, …).
    Policy(crate::error::Code),
    /// The model or the store failed.
    Error,
}

impl RequestOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Refuse => "refuse",
            Self::Rejected => "rejected",
            Self::Policy(code) => code.name(),
            Self::Error => "error",
        }
    }
}

/// The registry and every metric Steward exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    ttft: HistogramFamily,
    tokens: Family<RouteLabels, Counter>,
    moderation: Family<ModerationLabels, Counter>,
    moderation_time: Family<StageLabels, Histogram, fn() -> Histogram>,
    outbox_pending: Gauge,
    outbox_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    publish_failures: Counter,
    published: Family<TopicLabels, Counter>,
    dead_lettered: Family<TopicLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    limits_store_failures: Counter,
    outbox_write_retries: Family<RetryLabels, Counter>,
    training_state: Family<TenantLabels, Gauge>,
    training_transitions: Family<TransitionLabels, Counter>,
    inter_token: HistogramFamily,
    active_streams: Family<RouteLabels, Gauge>,
    interruptions: Family<InterruptionLabels, Counter>,
    lock_store_failures: Counter,
    upstreams: UpstreamMetrics,
    openai_ignored: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterruptionLabels {
    route: &'static str,
    reason: &'static str,
}

/// The live-stream handles a running turn holds, so that counting a chunk is
/// an atomic add, not a label lookup.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    pub deltas: Counter,
    pub inter_token: Histogram,
    active: Gauge,
}

impl StreamMetrics {
    /// Counts the stream as active until [`StreamMetrics::ended`].
    fn started(self) -> Self {
        self.active.inc();
        self
    }

    pub fn ended(&self) {
        self.active.dec();
    }
}

/// 50 µs to about 1.6 s: a cached or static-stage judgement takes microseconds, the transformer milliseconds.
fn moderation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let ttft: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let tokens = Family::<RouteLabels, Counter>::default();
        let moderation = Family::<ModerationLabels, Counter>::default();
        registry.register("orchestrator_requests", "Chat and conversation requests by route and decision", requests.clone());
        registry.register("orchestrator_request_duration_seconds", "Request duration, to the end of the stream", duration.clone());
        registry.register("steward_time_to_first_token_seconds", "From request arrival to the first streamed content", ttft.clone());
        registry.register("steward_stream_deltas", "Content chunks streamed to clients", tokens.clone());
        registry.register("moderation_decisions", "Moderation refusals by stage and category", moderation.clone());
        let moderation_time: Family<StageLabels, Histogram, fn() -> Histogram> = Family::new_with_constructor(moderation_histogram);
        registry.register(
            "moderation_check_duration_seconds",
            "Time to judge a turn's messages (input, every layer), a piece of its answer (output), one call to the operator's guard (guard), or a POST /v1/moderations (moderations)",
            moderation_time.clone(),
        );
        let outbox_pending = Gauge::default();
        let outbox_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let publish_failures = Counter::default();
        let published = Family::<TopicLabels, Counter>::default();
        registry.register("outbox_pending_events", "Events stored but not yet published", outbox_pending.clone());
        registry.register("outbox_oldest_pending_seconds", "Age of the oldest unpublished event", outbox_oldest.clone());
        registry.register("kafka_publish_failures", "Failed attempts to publish to the broker", publish_failures.clone());
        registry.register("kafka_published_events", "Events published to the broker, by topic", published.clone());
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 rate_limited, by limit: streams or rate (a tenant's), failed_auth (an address's)",
            rate_limited.clone(),
        );
        let limits_store_failures = Counter::default();
        registry.register(
            "limits_store_failures",
            "Turns admitted without their tenant's limits: the limit store was unavailable",
            limits_store_failures.clone(),
        );
        let outbox_write_retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "outbox_write_retries",
            "Outbox writes tried again, by what failed (pool_timeout, connection, busy, rejected): events wait, they are not lost",
            outbox_write_retries.clone(),
        );
        let dead_lettered = Family::<TopicLabels, Counter>::default();
        registry.register(
            "kafka_dead_lettered_events",
            "Events the broker cannot accept (over its size limit), sent to <topic>.dlq instead, by original topic",
            dead_lettered.clone(),
        );
        let training_state = Family::<TenantLabels, Gauge>::default();
        let training_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register("training_mode_state", "1 while the tenant's training lock is held, read from the lock store", training_state.clone());
        registry.register("training_mode_transitions", "Training lock transitions by tenant and action", training_transitions.clone());
        let inter_token: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register("steward_inter_token_seconds", "Time between consecutive content chunks of a streamed answer", inter_token.clone());
        let active_streams = Family::<RouteLabels, Gauge>::default();
        registry.register("steward_active_streams", "Turns streaming an answer now", active_streams.clone());
        let interruptions = Family::<InterruptionLabels, Counter>::default();
        registry.register(
            "steward_turn_interruptions",
            "Turns ended before the model finished: client_disconnected, cancel_requested, client_too_slow, first_token_deadline, idle_deadline, total_deadline, model_unavailable, model_error",
            interruptions.clone(),
        );
        let lock_store_failures = Counter::default();
        registry.register("training_lock_store_failures", "Failed reads of the training lock store", lock_store_failures.clone());
        let upstreams = UpstreamMetrics::register(&mut registry);
        let openai_ignored = Counter::default();
        registry.register(
            "openai_ignored_parameters",
            "Unknown request fields the OpenAI facade ignored for lenient tenants (openai.lenient); their names are in the log",
            openai_ignored.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            moderation,
            moderation_time,
            outbox_pending,
            outbox_oldest,
            publish_failures,
            published,
            dead_lettered,
            rate_limited,
            limits_store_failures,
            outbox_write_retries,
            training_state,
            training_transitions,
            inter_token,
            active_streams,
            interruptions,
            lock_store_failures,
            upstreams,
            openai_ignored,
        }
    }

    /// The OpenAI facade ignored `count` unknown fields of a lenient tenant's request.
    pub fn openai_ignored_parameters(&self, count: usize) {
        self.openai_ignored.inc_by(count as u64);
    }

    /// The model servers' metrics (for the router).
    pub fn upstreams(&self) -> UpstreamMetrics {
        self.upstreams.clone()
    }

    /// The handles of one streaming turn on `route`, counted active from now.
    pub fn stream(&self, route: &'static str) -> StreamMetrics {
        let labels = RouteLabels { route };
        StreamMetrics {
            deltas: self.tokens.get_or_create(&labels).clone(),
            inter_token: self.inter_token.get_or_create(&labels).clone(),
            active: self.active_streams.get_or_create(&labels).clone(),
        }
        .started()
    }

    /// A turn ended early; `reason` as listed in the metric's help.
    pub fn interrupted(&self, route: &'static str, reason: &'static str) {
        self.interruptions.get_or_create(&InterruptionLabels { route, reason }).inc();
    }

    pub fn lock_store_failure(&self) {
        self.lock_store_failures.inc();
    }

    pub fn request(&self, route: &'static str, outcome: RequestOutcome, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { route, decision: outcome.label() }).inc();
        self.duration.get_or_create(&RouteLabels { route }).observe(elapsed.as_secs_f64());
    }

    pub fn first_token(&self, route: &'static str, elapsed: Duration) {
        self.ttft.get_or_create(&RouteLabels { route }).observe(elapsed.as_secs_f64());
    }

    /// `stage` is `input` or `output`; `category` the snake_case name.
    pub fn moderation_refusal(&self, stage: &'static str, category: &str) {
        self.moderation.get_or_create(&ModerationLabels { stage, category: category.to_owned() }).inc();
    }

    pub fn moderation_check(&self, stage: &'static str, elapsed: Duration) {
        self.moderation_time.get_or_create(&StageLabels { stage }).observe(elapsed.as_secs_f64());
    }

    pub fn outbox(&self, pending: i64, oldest_seconds: f64) {
        self.outbox_pending.set(pending);
        self.outbox_oldest.set(oldest_seconds);
    }

    pub fn publish_failure(&self) {
        self.publish_failures.inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn limits_store_failure(&self) {
        self.limits_store_failures.inc();
    }

    /// An outbox write failed and is tried again; `error` says why.
    pub fn outbox_write_retry(&self, error: &'static str) {
        self.outbox_write_retries.get_or_create(&RetryLabels { error }).inc();
    }

    pub fn dead_lettered(&self, topic: &str) {
        self.dead_lettered.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc();
    }

    pub fn published(&self, topic: &str) {
        self.published.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc();
    }

    /// `None` removes the series: the state could not be read.
    pub fn training_state(&self, tenant: &str, enabled: Option<bool>) {
        let labels = TenantLabels { tenant: tenant.to_owned() };
        match enabled {
            Some(on) => {
                self.training_state.get_or_create(&labels).set(i64::from(on));
            }
            None => {
                self.training_state.remove(&labels);
            }
        }
    }

    pub fn training_transition(&self, tenant: &str, action: &'static str) {
        self.training_transitions.get_or_create(&TransitionLabels { tenant: tenant.to_owned(), action }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
