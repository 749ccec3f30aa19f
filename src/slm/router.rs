//! Several model servers behind one [`ModelClient`]: each attempt goes to
//! the healthy upstream with the fewest requests under way for its weight
//! (ties shared by smooth weighted round-robin, as nginx does), and an
//! attempt that fails before any of the answer reached the client
//! ([`ModelRequest::released`]) — connect error, 5xx or 429, a broken or
//! unreadable answer, no first token by the upstream's deadline — moves the
//! turn to another upstream, at most `max_attempts` in all. Once text has
//! reached the client, an error ends the turn as with one server. Each
//! upstream has a [`Circuit`]; the stream reports every attempt
//! ([`ModelEvent::Attempt`]) and every failover ([`ModelEvent::Failover`]) so
//! the turn's record names the server that answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::catalog::ModelCatalog;
use super::circuit::{Circuit, CircuitSettings, CircuitState};
use super::{Deadline, ModelClient, ModelEvent, ModelRequest, ModelStream, SlmError};
use crate::telemetry::{OneUpstream, UpstreamMetrics};

/// One model server as the router sees it.
pub struct Upstream {
    pub name: Arc<str>,
    client: Arc<dyn ModelClient>,
    weight: u32,
    /// Requests it takes at once (0 = no bound); a full upstream is chosen last.
    max_concurrent: usize,
    outstanding: AtomicUsize,
    circuit: Circuit,
    metrics: OneUpstream,
}

impl Upstream {
    pub fn new(name: &str, client: Arc<dyn ModelClient>, weight: u32, max_concurrent: usize, circuit: CircuitSettings, metrics: &UpstreamMetrics) -> Self {
        let (circuit, metrics) = (Circuit::new(circuit), metrics.of(name));
        metrics.state(circuit.state().gauge());
        Self { name: name.into(), client, weight: weight.max(1), max_concurrent, outstanding: AtomicUsize::new(0), circuit, metrics }
    }

    fn full(&self) -> bool {
        self.max_concurrent > 0 && self.outstanding.load(Ordering::Relaxed) >= self.max_concurrent
    }

    /// Requests under way per unit of weight, compared without division.
    fn lighter_than(&self, other: &Self) -> std::cmp::Ordering {
        let (mine, theirs) = (self.outstanding.load(Ordering::Relaxed) as u64, other.outstanding.load(Ordering::Relaxed) as u64);
        (mine * u64::from(other.weight)).cmp(&(theirs * u64::from(self.weight)))
    }
}

/// An upstream's health, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub name: String,
    pub state: CircuitState,
    pub outstanding: usize,
}

pub struct Router {
    upstreams: Vec<Upstream>,
    /// Which upstreams serve each model name.
    catalog: Arc<ModelCatalog>,
    /// Smooth weighted round-robin's running weights, one per upstream.
    current: Mutex<Vec<i64>>,
    max_attempts: usize,
}

/// Why an attempt failed (a reason to try another server while nothing reached the client), or `None` when the
/// failure is the request's own (a 4xx other than 429) or the whole turn's
/// deadline passed: then no other server is tried.
fn failover_reason(err: &SlmError) -> Option<&'static str> {
    match err {
        SlmError::Unavailable(_) => Some("connect_error"),
        SlmError::Status { status: 429, .. } => Some("status_429"),
        SlmError::Status { status, .. } if *status >= 500 => Some("status_5xx"),
        SlmError::Status { .. } => None,
        SlmError::Timeout(Deadline::Total) => None,
        SlmError::Timeout(_) => Some("first_token_deadline"),
        SlmError::Stream(_) | SlmError::Protocol(_) => Some("stream_error"),
        SlmError::NoUpstream => None,
    }
}

/// The `slm_upstream_requests` outcome of an attempt that failed.
fn outcome_of(err: &SlmError) -> &'static str {
    match err {
        SlmError::Status { .. } if failover_reason(err).is_none() => "status_4xx",
        SlmError::Timeout(Deadline::Total) => "total_deadline",
        SlmError::Timeout(Deadline::Idle) => "idle_deadline",
        _ => failover_reason(err).unwrap_or("stream_error"),
    }
}

/// An attempt under way: counted as outstanding until dropped; dropped
/// unsettled (the client left first), it gives a probe's place back.
struct Attempt<'a> {
    upstream: &'a Upstream,
    started: Instant,
    settled: bool,
}

impl<'a> Attempt<'a> {
    fn start(upstream: &'a Upstream) -> Self {
        upstream.outstanding.fetch_add(1, Ordering::Relaxed);
        Self { upstream, started: Instant::now(), settled: false }
    }

    /// The attempt showed content (or ended well without any): the upstream is healthy.
    fn succeeded(&mut self) {
        if !std::mem::replace(&mut self.settled, true) {
            self.upstream.circuit.succeeded();
            self.upstream.metrics.attempt("ok", Some(self.started.elapsed()));
            self.upstream.metrics.state(self.upstream.circuit.state().gauge());
        }
    }

    fn failed(&mut self, err: &SlmError) {
        let before = std::mem::replace(&mut self.settled, true);
        let outcome = outcome_of(err);
        // The request's own fault says nothing of the upstream's health.
        if outcome != "status_4xx" {
            self.upstream.circuit.failed();
        }
        self.upstream.metrics.attempt(outcome, (!before).then(|| self.started.elapsed()));
        self.upstream.metrics.state(self.upstream.circuit.state().gauge());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.upstream.outstanding.fetch_sub(1, Ordering::Relaxed);
        if !self.settled {
            self.upstream.circuit.abandoned();
            self.upstream.metrics.attempt("cancelled", None);
        }
    }
}

impl Router {
    /// A router over `upstreams`, which serve the models of `catalog` (its indices are into `upstreams`).
    pub fn new(upstreams: Vec<Upstream>, catalog: Arc<ModelCatalog>, max_attempts: usize) -> Arc<Self> {
        let current = Mutex::new(vec![0; upstreams.len()]);
        Arc::new(Self { max_attempts: max_attempts.max(1), upstreams, catalog, current })
    }

    /// The upstream for the next attempt at `model`, never one already
    /// `tried`: the lightest of its upstreams whose circuit lets an attempt
    /// through (full ones last), ties shared by weight. When every circuit is
    /// open, the first attempt goes to the one that reopens soonest rather
    /// than to none.
    fn pick(&self, model: &str, tried: &[usize]) -> Option<usize> {
        let serving = self.catalog.upstreams_of(model);
        let mut candidates: Vec<usize> =
            serving.iter().copied().filter(|i| !tried.contains(i) && self.upstreams[*i].circuit.state() != CircuitState::Open).collect();
        let lightest = |i: &usize, j: &usize| {
            let (a, b) = (&self.upstreams[*i], &self.upstreams[*j]);
            a.full().cmp(&b.full()).then_with(|| a.lighter_than(b))
        };
        while let Some(best) = candidates.iter().copied().min_by(lightest) {
            let ties: Vec<usize> = candidates.iter().copied().filter(|i| lightest(i, &best).is_eq()).collect();
            let chosen = self.share(&ties).unwrap_or(best);
            if self.upstreams[chosen].circuit.allows() {
                return Some(chosen);
            }
            // A half-open upstream whose probe is already under way.
            candidates.retain(|i| *i != chosen);
        }
        if !tried.is_empty() {
            return None;
        }
        serving.iter().copied().min_by_key(|i| self.upstreams[*i].circuit.opens_again())
    }

    /// Smooth weighted round-robin among `ties`.
    fn share(&self, ties: &[usize]) -> Option<usize> {
        if ties.len() == 1 {
            return ties.first().copied();
        }
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let total: i64 = ties.iter().map(|i| i64::from(self.upstreams[*i].weight)).sum();
        for i in ties {
            current[*i] += i64::from(self.upstreams[*i].weight);
        }
        let chosen = *ties.iter().max_by_key(|i| (current[**i], std::cmp::Reverse(**i)))?;
        current[chosen] -= total;
        Some(chosen)
    }

    /// The model names and the upstreams serving each.
    pub fn catalog(&self) -> Arc<ModelCatalog> {
        self.catalog.clone()
    }

    /// Each upstream's circuit and load now.
    pub fn health(&self) -> Vec<UpstreamHealth> {
        self.upstreams
            .iter()
            .map(|u| UpstreamHealth { name: u.name.to_string(), state: u.circuit.state(), outstanding: u.outstanding.load(Ordering::Relaxed) })
            .collect()
    }
}

impl ModelClient for Arc<Router> {
    fn stream(&self, request: ModelRequest) -> ModelStream {
        let router = self.clone();
        Box::pin(async_stream::stream! {
            let mut tried: Vec<usize> = Vec::new();
            let (model, released) = (request.model.clone(), request.released.clone());
            // The last possible attempt takes the request itself: only a turn that may fail over copies it.
            let possible = router.max_attempts.min(router.catalog.upstreams_of(&model).len());
            let mut request = Some(request);
            let Some(mut index) = router.pick(&model, &tried) else {
                yield Err(SlmError::NoUpstream);
                return;
            };
            loop {
                tried.push(index);
                let attempt_number = tried.len() as u32;
                let upstream = &router.upstreams[index];
                yield Ok(ModelEvent::Attempt { upstream: upstream.name.clone(), attempt: attempt_number });
                let this = if tried.len() >= possible { request.take() } else { request.clone() };
                let Some(this) = this else {
                    yield Err(SlmError::NoUpstream);
                    return;
                };
                let mut attempt = Attempt::start(upstream);
                let mut answer = upstream.client.stream(this);
                let mut content = false;
                let failed = loop {
                    match answer.next().await {
                        None => {
                            attempt.succeeded();
                            return;
                        }
                        Some(Ok(event)) => {
                            if !content && event.is_answer() {
                                content = true;
                                attempt.succeeded();
                            }
                            yield Ok(event);
                        }
                        Some(Err(err)) => {
                            attempt.failed(&err);
                            break err;
                        }
                    }
                };
                // Another server is tried only before any of the answer reached the client, for a
                // server's fault, within the attempts.
                let released = released.load(std::sync::atomic::Ordering::Acquire);
                let next = match failover_reason(&failed) {
                    Some(reason) if !released && tried.len() < possible => router.pick(&model, &tried).map(|next| (reason, next)),
                    _ => None,
                };
                let Some((reason, next)) = next else {
                    yield Err(failed);
                    return;
                };
                tracing::warn!(upstream = %upstream.name, attempt = attempt_number, reason, error = %failed, "model server failed before any of the answer reached the client; trying another");
                yield Ok(ModelEvent::Failover { upstream: upstream.name.clone(), attempt: attempt_number, reason });
                index = next;
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), SlmError>> {
        Box::pin(async move {
            // Ready while any upstream answers; the first error stands for all when none does.
            let mut first_error = None;
            for (_, result) in self.checks().await {
                match result {
                    Ok(()) => return Ok(()),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            Err(first_error.unwrap_or(SlmError::NoUpstream))
        })
    }
}

impl Router {
    /// Each upstream's health and whether it answers now (asked at once).
    pub async fn checks(&self) -> Vec<(UpstreamHealth, Result<(), SlmError>)> {
        let answers = futures_util::future::join_all(self.upstreams.iter().map(|u| u.client.ready())).await;
        self.health().into_iter().zip(answers).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry::Metrics;

    /// Upstreams of these weights (the real HTTP adapter, never asked here: the choice alone is under test).
    fn router(weights: &[u32]) -> Arc<Router> {
        let circuit = CircuitSettings { failures: 1, cooldown: Duration::from_secs(5), max_cooldown: Duration::from_secs(60) };
        let timeouts = crate::slm::Timeouts {
            connect: Duration::from_secs(1),
            first_token: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(1),
        };
        let client = |i: usize| -> Arc<dyn ModelClient> {
            Arc::new(crate::slm::HttpModelClient::new(&format!("http://127.0.0.1:9/u{i}/v1"), "m", timeouts, None).unwrap())
        };
        let metrics = Metrics::new().upstreams();
        let upstreams = weights.iter().enumerate().map(|(i, w)| Upstream::new(&format!("u{i}"), client(i), *w, 2, circuit, &metrics)).collect();
        let catalog = ModelCatalog::new(vec![("m".into(), (0..weights.len()).collect()), ("second".into(), vec![1])], Default::default());
        Router::new(upstreams, Arc::new(catalog), 3)
    }

    #[test]
    fn idle_upstreams_share_attempts_by_weight_interleaved() {
        let router = router(&[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| router.pick("m", &[]).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0], "3:1, spread out rather than bunched");
    }

    #[test]
    fn the_upstream_with_fewer_requests_under_way_for_its_weight_goes_first_and_a_full_one_last() {
        let router = router(&[1, 1]);
        router.upstreams[0].outstanding.store(1, Ordering::Relaxed);
        assert_eq!(router.pick("m", &[]), Some(1));
        router.upstreams[1].outstanding.store(2, Ordering::Relaxed);
        assert_eq!(router.pick("m", &[]), Some(0), "u1 is full (2 of 2), u0 has room");
        assert_eq!(router.pick("m", &[0]), Some(1), "a full upstream still beats none");
    }

    #[test]
    fn a_model_goes_only_to_its_own_upstreams() {
        let router = router(&[5, 1]);
        assert!((0..4).all(|_| router.pick("second", &[]) == Some(1)));
        assert_eq!(router.pick("second", &[1]), None, "no other upstream serves it");
        assert_eq!(router.pick("unknown", &[]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_is_skipped_and_with_every_circuit_open_the_first_attempt_goes_to_the_soonest_to_reopen() {
        let router = router(&[1, 1]);
        router.upstreams[0].circuit.failed();
        assert_eq!((router.pick("m", &[]), router.pick("m", &[]), router.pick("m", &[1])), (Some(1), Some(1), None));
        tokio::time::advance(Duration::from_secs(1)).await;
        router.upstreams[1].circuit.failed();
        assert_eq!(router.pick("m", &[]), Some(0), "u0 reopens first");
        assert_eq!(router.pick("m", &[0]), None, "a failover goes only to a server that may be tried");
    }

    #[test]
    fn failover_follows_server_faults_and_never_the_requests_own() {
        assert_eq!(failover_reason(&SlmError::Status { status: 503, body: String::new() }), Some("status_5xx"));
        assert_eq!(failover_reason(&SlmError::Status { status: 429, body: String::new() }), Some("status_429"));
        assert_eq!(failover_reason(&SlmError::Status { status: 400, body: String::new() }), None);
        assert_eq!(failover_reason(&SlmError::Timeout(Deadline::FirstToken)), Some("first_token_deadline"));
        assert_eq!(failover_reason(&SlmError::Timeout(Deadline::Total)), None);
    }
}
