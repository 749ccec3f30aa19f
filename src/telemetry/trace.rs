//! W3C trace context (`traceparent`): parse an incoming one or start a trace,
//! and derive the child span id sent to the next hop.

use rand::RngCore;

/// A trace id and the current span id, both lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
    /// The incoming `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
    /// The span this one continues (the caller's, for a request's first hop).
    pub parent_span_id: Option<String>,
}

impl TraceContext {
    /// Reads `traceparent` (and `tracestate`) with OpenTelemetry's W3C
    /// propagator: `00-<32 hex>-<16 hex>-<2 hex>`, all-zero ids invalid.
    pub fn parse(header: &str) -> Option<Self> {
        Self::extract(header, None)
    }

    fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        // The propagator left-pads short ids; W3C wants them exactly 32 and 16 digits long.
        let mut fields = traceparent.trim().split('-').skip(1);
        if fields.next().map(str::len) != Some(32) || fields.next().map(str::len) != Some(16) {
            return None;
        }
        let mut carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent.trim().to_owned())]);
        if let Some(state) = tracestate {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        let context = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        let span = context.span().span_context().clone();
        if !span.is_valid() {
            return None;
        }
        let state = span.trace_state().header();
        Some(Self {
            trace_id: span.trace_id().to_string(),
            span_id: span.span_id().to_string(),
            sampled: span.is_sampled(),
            tracestate: (!state.is_empty()).then_some(state),
            parent_span_id: None,
        })
    }

    /// A new root trace.
    pub fn new_root() -> Self {
        Self { trace_id: random_hex::<16>(), span_id: random_hex::<8>(), sampled: true, tracestate: None, parent_span_id: None }
    }

    /// Continues the incoming trace (and its `tracestate`) if valid, else
    /// starts one; either way with a fresh span id for this hop.
    pub fn from_incoming(header: Option<&str>, tracestate: Option<&str>) -> Self {
        match header.and_then(|h| Self::extract(h, tracestate)) {
            Some(parent) => parent.child(),
            None => Self::new_root(),
        }
    }

    /// Same trace, new span.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_hex::<8>(),
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
            parent_span_id: Some(self.span_id.clone()),
        }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, if self.sampled { "01" } else { "00" })
    }
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    loop {
        rand::thread_rng().fill_bytes(&mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return hex::encode(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_traceparent_and_keeps_the_trace_id_in_children() {
        let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(ctx.sampled);
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        let parsed = TraceContext::parse(&child.header()).unwrap();
        assert_eq!((parsed.trace_id, parsed.span_id), (child.trace_id, child.span_id));
        assert_eq!(child.parent_span_id.as_deref(), Some(ctx.span_id.as_str()));
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn starts_a_new_trace_when_the_incoming_one_is_invalid() {
        let ctx = TraceContext::from_incoming(Some("garbage"), None);
        assert_eq!(ctx.trace_id.len(), 32);
        assert!(TraceContext::parse(&ctx.header()).is_some());
    }
}
