//! Telemetry: JSON logs, W3C trace context, OTLP spans and Prometheus metrics.
//!
//! [`init_logging`] installs the subscriber (once, before configuration is
//! validated, so configuration errors are logged); [`TraceContext`] carries the
//! `traceparent` end to end; [`Metrics`] owns the registry behind `/metrics`.

mod logging;
mod metrics;
pub mod spans;
mod trace;
pub mod turn_spans;

pub use logging::init_logging;
pub use metrics::{Metrics, OneUpstream, RequestOutcome, StreamMetrics, UpstreamMetrics};
pub use trace::TraceContext;
