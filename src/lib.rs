//! Steward: a governed chat runtime.
//!
//! A chat turn flows gateway → identity → input moderation → policy (signed
//! verdict + constitution hash) → orchestrator → language model (streamed) →
//! output moderation → client. Modules:
//!
//! - [`gateway`]: `/v1/chat/stream` (SSE, or a WebSocket) and the
//!   OpenAI-compatible `/v1/chat/completions`.
//! - [`socket`]: turns over a WebSocket, for the gateway and the orchestrator.
//! - [`identity`]: API keys → tenant + capabilities.
//! - [`ids`]: a session's and a turn's identifiers.
//! - [`limits`]: per-tenant concurrent streams and request rate (Redis or in process).
//! - [`moderation`]: normalisation, the phrase lexicon, the semantic layer
//!   (an embedding model in process), the streaming output guard, and their
//!   evaluation on labelled data.
//! - [`policy`]: the constitution registry (the active constitution per
//!   tenant, in Redis or in process), signed verdicts good once, dry runs.
//! - [`orchestrator`]: runs an allowed turn; also served over HTTP.
//! - [`slm`]: the OpenAI-compatible streaming model client.
//! - [`events`]: the outbox, its relay to Kafka and the audit of the trail.
//! - [`training`]: the training-mode lock (Redis or in process) and its audit.
//! - [`telemetry`]: JSON logs, W3C trace context, OTLP spans, Prometheus metrics.
//! - [`readiness`]: the dependencies' state, checked in the background for `/readyz`.
//! - [`console`]: the browser console at `/console` for operators and auditors.
//! - [`app`]: wires adapters into services and services into routes.

pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod durations;
pub mod error;
pub mod events;
pub mod gateway;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod moderation;
pub mod openapi;
pub mod ops;
pub mod orchestrator;
pub mod policy;
pub mod readiness;
#[cfg(feature = "redis")]
mod redis_client;
pub mod responses;
pub mod slm;
pub mod socket;
pub mod telemetry;
pub mod training;
pub mod web;
