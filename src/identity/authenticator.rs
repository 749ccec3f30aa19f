//! Authentication of every route that takes a key (HTTP extractor, WebSocket
//! handshake and turns, `/readyz`, `/metrics`): the key looked up through the
//! [`KeyCache`], under the failed-authentication bound of the client address,
//! then counted against its key's request rate ([`KeyPace`]).
//!
//! The order is what keeps the bound from refusing a valid key: memory is
//! asked first, so a key read live within `identity.key_cache` is accepted,
//! and one read live within the last day is looked up, whatever its address
//! has sent; only a key this instance has never seen live, from an address
//! over its bound, is refused (429) without a lookup.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;

use super::cache::{KeyCache, Recall};
use super::caller::Caller;
use super::client::TrustedProxies;
use super::domain::{ApiKey, IdentityError};
use super::failures::AuthFailures;
use super::pace::KeyPace;
use crate::error::{ApiError, Code};
use crate::telemetry::Metrics;

pub struct Authenticator {
    keys: KeyCache,
    failures: AuthFailures,
    pace: KeyPace,
    proxies: TrustedProxies,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(keys: KeyCache, failures: AuthFailures, pace: KeyPace, proxies: TrustedProxies, metrics: Arc<Metrics>) -> Self {
        Self { keys, failures, pace, proxies, metrics }
    }

    /// The address `req` is counted under.
    pub fn client_of(&self, req: &HttpRequest) -> Option<IpAddr> {
        self.proxies.client_of(req)
    }

    /// The caller holding `key`, sent from `client`.
    pub async fn authenticate(&self, client: Option<IpAddr>, key: Option<&str>) -> Result<Caller, ApiError> {
        // Hashed once, for memory and the lookup alike.
        self.authenticate_hash(client, &ApiKey::hash_of(key.ok_or(IdentityError::MissingKey)?)).await
    }

    /// The caller holding the key whose SHA-256 is `hash` (a console session
    /// keeps the hash of the key it was opened with, never the key).
    pub async fn authenticate_hash(&self, client: Option<IpAddr>, hash: &str) -> Result<Caller, ApiError> {
        let record = match self.keys.recall(hash) {
            Recall::Live(record) => Some(record),
            Recall::Unknown => None,
            Recall::Vouched => self.keys.find_active_by_hash(hash).await?,
            Recall::Unseen => {
                if let Some(wait) = client.and_then(|ip| self.failures.check(ip)) {
                    self.metrics.rate_limited("failed_auth");
                    return Err(ApiError::new(Code::RateLimited, "too many failed authentications from this address").with_retry_after(wait));
                }
                self.keys.find_active_by_hash(hash).await?
            }
        };
        let Some(record) = record else {
            if let Some(ip) = client {
                self.failures.failed(ip);
            }
            return Err(IdentityError::UnknownKey.into());
        };
        if let Some(wait) = self.pace.take(&record.id) {
            self.metrics.rate_limited("key_requests");
            return Err(ApiError::new(Code::RateLimited, "too many requests with this key").with_retry_after(wait));
        }
        self.keys.used(&record);
        Ok(Caller::from_record(record)?)
    }
}
