//! The `policy.audit/v1` record: one per change of an active constitution
//! (an activation, or the configured file seeding an empty registry), put in
//! the outbox and published to the `policy.audit` topic (key: the tenant, or
//! `*` for the default).
//!
//! [`activate_recorded`] is the one way an activation is made: its request is
//! durable in the trail before the registry switches, so no constitution is
//! ever live without a record of it.

use serde_json::json;

use super::constitution::{Constitution, ConstitutionHash};
use super::registry::{Activation, Scope};
use crate::events::{Pending, Via};
use crate::telemetry::TraceContext;

pub const AUDIT_SCHEMA: &str = "policy.audit/v1";

/// The Kafka key of a default-scope record (no tenant id can be `*`).
const DEFAULT_KEY: &str = "*";

/// What kind of change a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditType {
    /// An activation is about to be made (written before the registry switches).
    ActivationRequested,
    /// An operator or tenant admin made a constitution active.
    Activated,
    /// The configured file became the default of an empty registry.
    Seeded,
}

impl AuditType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ActivationRequested => "policy.activation_requested",
            Self::Activated => "policy.activated",
            Self::Seeded => "policy.seeded",
        }
    }
}

/// One change, as recorded.
#[derive(Debug)]
pub struct AuditEntry<'a> {
    pub kind: AuditType,
    pub scope: &'a Scope,
    /// The API key id, `steward:cli`, or `steward:seed`.
    pub actor: &'a str,
    pub constitution: &'a Constitution,
    pub hash: &'a ConstitutionHash,
    pub activation: &'a Activation,
    pub trace: &'a TraceContext,
    pub via: Via,
}

/// An activation's outcome as told to whoever asked for it (the PUT's body,
/// the command's output).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// The active constitution's hash now.
    pub hash: String,
    pub name: String,
    pub version: String,
    /// The tenant it is active for; null for the default.
    pub tenant: Option<String>,
    /// The hash the scope had before.
    pub previous_hash: Option<String>,
    /// The registry's version after the activation.
    pub registry_version: u64,
    /// False when the hash was already active (nothing moved, nothing recorded).
    pub changed: bool,
}

impl AuditEntry<'_> {
    pub fn outcome(&self) -> Outcome {
        Outcome {
            hash: self.hash.to_string(),
            name: self.constitution.name.clone(),
            version: self.constitution.version.clone(),
            tenant: self.scope.tenant().map(str::to_owned),
            previous_hash: self.activation.previous.as_ref().map(ConstitutionHash::to_string),
            registry_version: self.activation.version,
            changed: self.activation.changed,
        }
    }

    /// The outbox item for `topic`.
    pub fn pending(&self, topic: &str) -> Pending {
        let kind = self.kind.as_str();
        let tenant = self.scope.tenant();
        let record = json!({
            "schema": AUDIT_SCHEMA,
            "event_id": uuid::Uuid::now_v7().to_string(),
            "type": kind,
            "scope": if tenant.is_some() { "tenant" } else { "default" },
            "tenant": tenant,
            "actor": self.actor,
            "previous_hash": self.activation.previous.as_ref().map(ConstitutionHash::as_str),
            "hash": self.hash.as_str(),
            "name": self.constitution.name,
            "version": self.constitution.version,
            "registry_version": self.activation.version,
            "occurred_at": crate::db::rfc3339(crate::db::now_ms()),
            "trace_id": self.trace.trace_id,
            "via": self.via.as_str(),
        });
        Pending::audit(topic, tenant.unwrap_or(DEFAULT_KEY), kind, record, self.trace)
    }
}

/// An activation to make: `text` (whose hash is `hash`) in `scope`, asked by `actor`.
pub struct ActivationRequest<'a> {
    pub scope: &'a Scope,
    pub actor: &'a str,
    pub constitution: &'a Constitution,
    pub hash: &'a ConstitutionHash,
    pub text: &'a str,
    pub trace: &'a TraceContext,
    pub via: Via,
}

impl ActivationRequest<'_> {
    /// The record of this activation as `kind`, with what the registry said of it.
    pub fn entry<'a>(&'a self, kind: AuditType, activation: &'a Activation) -> AuditEntry<'a> {
        let Self { scope, actor, constitution, hash, text: _, trace, via } = *self;
        AuditEntry { kind, scope, actor, constitution, hash, activation, trace, via }
    }
}

/// Why an activation was not made.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The request could not be recorded, so the registry was not touched.
    #[error("the activation could not be recorded, so it was not made")]
    Unrecorded(#[source] crate::events::EventsError),
    #[error(transparent)]
    Registry(#[from] super::registry::RegistryError),
}

impl crate::error::ErrorCode for ActivationError {
    fn code(&self) -> crate::error::Code {
        match self {
            Self::Unrecorded(err) => err.code(),
            Self::Registry(err) => err.code(),
        }
    }
}

/// Makes `request` active, recorded: a hash already active in the scope changes
/// nothing and records nothing; otherwise `policy.activation_requested` is made
/// durable through `record` (on `topic`) first (if that fails, nothing is switched), then the
/// registry switches, then `policy.activated` confirms it. If the confirmation
/// cannot be stored the constitution is live and its request is on record; the
/// failure is logged. Returns what the registry changed.
pub async fn activate_recorded<F, Fut>(
    registry: &dyn super::registry::ConstitutionRegistry,
    request: &ActivationRequest<'_>,
    topic: &str,
    record: F,
) -> Result<Activation, ActivationError>
where
    F: Fn(Pending) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::events::EventsError>>,
{
    let (scope, hash) = (request.scope, request.hash);
    let before = registry.active().await?;
    let previous = match scope {
        Scope::Default => before.default.clone(),
        Scope::Tenant(tenant) => before.tenants.get(tenant).cloned(),
    };
    if previous.as_ref() == Some(hash) {
        return Ok(Activation { previous, version: before.version, changed: false });
    }
    let requested = Activation { previous, version: before.version, changed: false };
    record(request.entry(AuditType::ActivationRequested, &requested).pending(topic)).await.map_err(ActivationError::Unrecorded)?;
    let activation = registry.activate(scope, hash, request.text).await?;
    if activation.changed {
        if let Err(err) = record(request.entry(AuditType::Activated, &activation).pending(topic)).await {
            tracing::error!(error = %err, hash = %hash, "a constitution is active and its request recorded, but the confirmation could not be stored");
        }
    }
    Ok(activation)
}
