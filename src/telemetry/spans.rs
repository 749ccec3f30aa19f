//! Spans exported over OTLP/HTTP (`telemetry.otlp_endpoint`; off when
//! empty). A span is recorded once its hop is over, with the ids of the
//! turn's [`TraceContext`] — the ids every log line, model request and Kafka
//! record of the turn already carry — so the exported tree is the one those
//! headers describe. Without an endpoint nothing is built: the functions
//! that make a span ask [`enabled`] first, so a turn pays no allocation for
//! spans nobody exports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::TraceContext;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter's provider, shut down (flushed) when Steward stops.
pub struct SpanExport {
    provider: SdkTracerProvider,
}

impl SpanExport {
    /// Exports to `endpoint` (e.g. `http://127.0.0.1:4318/v1/traces`) in
    /// batches; the global tracer records from now on.
    pub fn start(endpoint: &str, service: &str) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        global::set_tracer_provider(provider.clone());
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self { provider })
    }

    /// Sends what is still buffered.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "spans not all exported at shutdown");
        }
    }
}

/// A finished hop of a turn.
pub struct FinishedSpan<'a> {
    pub name: String,
    pub kind: SpanKind,
    /// The turn's trace; `span_id` is this hop's id.
    pub trace: &'a TraceContext,
    pub span_id: &'a str,
    /// The hop it ran under (`None`: a root).
    pub parent_span_id: Option<&'a str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// An error description, when the hop failed.
    pub error: Option<String>,
}

/// Records `span` with the global tracer (callers check [`enabled`] before building one).
pub fn record(span: FinishedSpan<'_>) {
    if !enabled() {
        return;
    }
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&span.trace.trace_id), SpanId::from_hex(span.span_id)) else { return };
    let parent = match span.parent_span_id.map(SpanId::from_hex) {
        Some(Ok(parent)) => {
            let flags = if span.trace.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let state = span.trace.tracestate.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
            Context::new().with_remote_span_context(SpanContext::new(trace_id, parent, flags, true, state))
        }
        _ => Context::new(),
    };
    let tracer = global::tracer("steward");
    let builder = tracer
        .span_builder(span.name)
        .with_kind(span.kind)
        .with_trace_id(trace_id)
        .with_span_id(span_id)
        .with_start_time(span.start)
        .with_attributes(span.attributes);
    let mut started = tracer.build_with_context(builder, &parent);
    if let Some(error) = span.error {
        opentelemetry::trace::Span::set_status(&mut started, Status::error(error));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut started, span.end);
}
