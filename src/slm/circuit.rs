//! One upstream's circuit breaker: after `failures` attempts in a row fail,
//! the upstream is left alone (open) for a cooldown; then one attempt is let
//! through (half-open) as a probe. A probe that succeeds closes the circuit;
//! one that fails opens it again for twice as long, up to `max_cooldown`.
//! State is per instance; times are tokio's, so tests can pause them.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub struct CircuitSettings {
    /// Failed attempts in a row that open the circuit.
    pub failures: u32,
    /// How long it stays open the first time.
    pub cooldown: Duration,
    /// The longest it stays open (the cooldown doubles up to this).
    pub max_cooldown: Duration,
}

/// What the breaker lets through, as reported in metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    /// One probe may go (or is under way).
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    /// The value of the `slm_upstream_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failed: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool, cooldown: Duration },
}

#[derive(Debug)]
pub struct Circuit {
    settings: CircuitSettings,
    inner: Mutex<Inner>,
}

impl Circuit {
    pub fn new(settings: CircuitSettings) -> Self {
        Self { settings, inner: Mutex::new(Inner::Closed { failed: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state now (an open circuit whose cooldown has passed reads half-open).
    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until, .. } if Instant::now() < until => CircuitState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether an attempt may go now; a half-open circuit lets one probe go at a time.
    pub fn allows(&self) -> bool {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until, cooldown } if Instant::now() >= until => {
                *inner = Inner::HalfOpen { probing: true, cooldown };
                true
            }
            Inner::Open { .. } => false,
            Inner::HalfOpen { probing: false, cooldown } => {
                *inner = Inner::HalfOpen { probing: true, cooldown };
                true
            }
            Inner::HalfOpen { probing: true, .. } => false,
        }
    }

    /// When an open circuit will let a probe through (`None` unless open).
    pub fn opens_again(&self) -> Option<Instant> {
        match *self.lock() {
            Inner::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// An attempt reached its first token (or ended well): the circuit closes.
    pub fn succeeded(&self) {
        *self.lock() = Inner::Closed { failed: 0 };
    }

    /// An attempt failed; returns whether this opened the circuit.
    pub fn failed(&self) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        match *inner {
            Inner::Closed { failed } if failed + 1 >= self.settings.failures => {
                *inner = Inner::Open { until: now + self.settings.cooldown, cooldown: self.settings.cooldown };
                true
            }
            Inner::Closed { failed } => {
                *inner = Inner::Closed { failed: failed + 1 };
                false
            }
            Inner::HalfOpen { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(self.settings.max_cooldown);
                *inner = Inner::Open { until: now + cooldown, cooldown };
                true
            }
            // An attempt let through before the circuit opened, failing late.
            Inner::Open { .. } => false,
        }
    }

    /// An attempt ended before it could show anything (the client left): a
    /// probe's place is given back without a verdict.
    pub fn abandoned(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { cooldown, .. } = *inner {
            *inner = Inner::HalfOpen { probing: false, cooldown };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> Circuit {
        Circuit::new(CircuitSettings { failures: 3, cooldown: Duration::from_secs(5), max_cooldown: Duration::from_secs(12) })
    }

    /// A circuit its three failures in a row just opened.
    fn opened() -> Circuit {
        let circuit = circuit();
        for _ in 0..3 {
            circuit.failed();
        }
        circuit
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_a_success_between_resets_the_count() {
        let circuit = circuit();
        assert!(!circuit.failed() && !circuit.failed());
        circuit.succeeded();
        assert!(!circuit.failed() && !circuit.failed());
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert!(circuit.failed(), "the third failure in a row opens it");
        assert_eq!(circuit.state(), CircuitState::Open);
        assert!(!circuit.allows());
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_one_probe_goes_and_its_success_closes_the_circuit() {
        let circuit = opened();
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(!circuit.allows(), "still cooling down");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        assert!(circuit.allows(), "the probe");
        assert!(!circuit.allows(), "one probe at a time");
        circuit.succeeded();
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert!(circuit.allows() && circuit.allows());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_twice_as_long_up_to_the_maximum() {
        let circuit = opened();
        for cooldown in [10_000, 12_000, 12_000] {
            tokio::time::advance(circuit.opens_again().unwrap() - Instant::now()).await;
            assert!(circuit.allows());
            assert!(circuit.failed(), "the failed probe opens it again");
            assert_eq!(circuit.opens_again().unwrap() - Instant::now(), Duration::from_millis(cooldown));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_one_go() {
        let circuit = opened();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(circuit.allows());
        circuit.abandoned();
        assert!(circuit.allows(), "the probe's place was given back");
    }
}
