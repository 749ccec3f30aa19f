//! The tracing subscriber: JSON lines whose span fields (`trace_id`,
//! `span_id`, `session_id`, `tenant`) are flattened next to the event's own.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber; a second call is a no-op.
pub fn init_logging(format: &str, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if format == "pretty" {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false).with_writer(std::io::stderr)).try_init()
    };
    // Already initialised (tests spawn many apps in one process): keep the first.
    let _ = result;
}
