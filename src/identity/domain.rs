//! Identity newtypes: tenants, capabilities and API keys, each with `parse`.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Code, ErrorCode};

/// A tenant name: 1–64 of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let ok = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::InvalidTenant(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Chat,
    TrainingAdmin,
    /// Constitution tools: activation, the dry run, and the documents' full text.
    PolicyAdmin,
    /// The full text of the tenant's constitutions (its phrases and examples), without changing them.
    PolicyRead,
    /// Operations: readiness details, and `/metrics` where it is guarded; every tenant in the console.
    Ops,
    /// Reading the record: the console's turns, their events and the check of their chain, for the key's tenant.
    Audit,
    /// `POST /v1/moderations`: texts judged by the tenant's constitution, without a turn.
    Moderate,
}

impl Capability {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        match s.trim() {
            "chat" => Ok(Self::Chat),
            "training:admin" => Ok(Self::TrainingAdmin),
            "policy:admin" => Ok(Self::PolicyAdmin),
            "policy:read" => Ok(Self::PolicyRead),
            "ops" => Ok(Self::Ops),
            "audit" => Ok(Self::Audit),
            "moderate" => Ok(Self::Moderate),
            other => Err(IdentityError::UnknownCapability(other.to_owned())),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::TrainingAdmin => "training:admin",
            Self::PolicyAdmin => "policy:admin",
            Self::PolicyRead => "policy:read",
            Self::Ops => "ops",
            Self::Audit => "audit",
            Self::Moderate => "moderate",
        }
    }
    /// Parses a comma-separated list, rejecting an empty one.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, IdentityError> {
        let mut caps = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let cap = Self::parse(part)?;
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        if caps.is_empty() {
            return Err(IdentityError::UnknownCapability(String::new()));
        }
        Ok(caps)
    }
    pub fn join(caps: &[Self]) -> String {
        caps.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// A freshly minted API key: `stw_` + 48 hex chars (192 random bits).
pub struct ApiKey(String);

impl ApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("stw_{}", hex::encode(bytes)))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The stored form. Keys carry 192 random bits, so a plain SHA-256 suffices.
    pub fn hash_of(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("missing or malformed Authorization header; expected `Bearer <api key>`")]
    MissingKey,
    #[error("unknown or revoked API key")]
    UnknownKey,
    #[error("this API key lacks the `{0}` capability")]
    MissingCapability(&'static str),
    #[error("invalid tenant `{0}`: use 1-64 of A-Z a-z 0-9 _ . -")]
    InvalidTenant(String),
    #[error("unknown capability `{0}`: expected chat, training:admin, policy:admin, policy:read or ops")]
    UnknownCapability(String),
    #[error("no API key with id `{0}`")]
    NoSuchKey(String),
    #[error("identity store failed")]
    Store(#[source] sqlx::Error),
    /// The task reading a key ended without an answer (the runtime is shutting down).
    #[error("the key lookup was interrupted")]
    LookupInterrupted(#[source] tokio::task::JoinError),
    /// A failed read shared by the requests that waited for it.
    #[error(transparent)]
    Shared(std::sync::Arc<IdentityError>),
}

impl ErrorCode for IdentityError {
    fn code(&self) -> Code {
        match self {
            Self::MissingKey | Self::UnknownKey => Code::Unauthenticated,
            Self::MissingCapability(_) => Code::Forbidden,
            Self::InvalidTenant(_) | Self::UnknownCapability(_) => Code::InvalidRequest,
            Self::NoSuchKey(_) => Code::NotFound,
            Self::Store(_) | Self::LookupInterrupted(_) => Code::Internal,
            Self::Shared(inner) => inner.code(),
        }
    }
}
