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
}

impl TraceContext {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_hex(version) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let valid = |s: &str, len| s.len() == len && is_hex(s) && s.bytes().any(|b| b != b'0');
        if !valid(trace_id, 32) || !valid(span_id, 16) || flags.len() != 2 || !is_hex(flags) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self { trace_id: trace_id.to_owned(), span_id: span_id.to_owned(), sampled: flags & 1 == 1, tracestate: None })
    }

    /// A new root trace.
    pub fn new_root() -> Self {
        Self { trace_id: random_hex::<16>(), span_id: random_hex::<8>(), sampled: true, tracestate: None }
    }

    /// Continues the incoming trace if valid, else starts one; either way with a
    /// fresh span id for this hop.
    pub fn from_incoming(header: Option<&str>) -> Self {
        match header.and_then(Self::parse) {
            Some(parent) => parent.child(),
            None => Self::new_root(),
        }
    }

    /// Same trace, new span.
    pub fn child(&self) -> Self {
        Self { trace_id: self.trace_id.clone(), span_id: random_hex::<8>(), sampled: self.sampled, tracestate: self.tracestate.clone() }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, if self.sampled { "01" } else { "00" })
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
        assert_eq!(TraceContext::parse(&child.header()), Some(child));
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
        let ctx = TraceContext::from_incoming(Some("garbage"));
        assert_eq!(ctx.trace_id.len(), 32);
        assert!(TraceContext::parse(&ctx.header()).is_some());
    }
}
