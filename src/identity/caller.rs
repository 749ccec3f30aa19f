//! The authenticated caller of a request, as an actix extractor.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use super::cache::KeyCache;
use super::domain::{Capability, IdentityError, TenantId};
use super::failures::AuthFailures;
use crate::error::{ApiError, Code};

/// Who is calling: the key's tenant and capabilities.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub tenant: TenantId,
    pub capabilities: Vec<Capability>,
}

impl Caller {
    /// Fails with 403 `forbidden` unless the key carries `cap`.
    pub fn require(&self, cap: Capability) -> Result<(), IdentityError> {
        if self.capabilities.contains(&cap) {
            Ok(())
        } else {
            Err(IdentityError::MissingCapability(cap.as_str()))
        }
    }

    /// The caller holding `key` (e.g. one a WebSocket client sent in a message).
    pub async fn from_key(keys: &KeyCache, key: &str) -> Result<Self, IdentityError> {
        Self::authenticate(keys, Some(key.to_owned())).await
    }

    async fn authenticate(keys: &KeyCache, bearer: Option<String>) -> Result<Self, IdentityError> {
        let key = bearer.ok_or(IdentityError::MissingKey)?;
        let record = keys.find_active(&key).await?.ok_or(IdentityError::UnknownKey)?;
        let tenant = TenantId::parse(&record.tenant)?;
        let capabilities = Capability::parse_list(&record.capabilities)?;
        Ok(Self { key_id: record.id, tenant, capabilities })
    }
}

/// The key of an `Authorization: Bearer <key>` header.
pub fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| key.to_owned())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let keys = req.app_data::<web::Data<KeyCache>>().cloned();
        // An address that sent too many unknown keys is refused before its key is looked up.
        let failures = req.app_data::<web::Data<AuthFailures>>().cloned().zip(req.peer_addr().map(|a| a.ip()));
        let metrics = req.app_data::<web::Data<crate::telemetry::Metrics>>().cloned();
        let bearer = bearer(req);
        Box::pin(async move {
            let keys = keys.ok_or_else(|| ApiError::new(Code::Internal, "identity is not configured"))?;
            if let Some(wait) = failures.as_ref().and_then(|(failures, ip)| failures.check(*ip)) {
                if let Some(metrics) = metrics {
                    metrics.rate_limited("failed_auth");
                }
                return Err(ApiError::new(Code::RateLimited, "too many failed authentications from this address").with_retry_after(wait));
            }
            let result = Self::authenticate(&keys, bearer).await;
            if let (Err(IdentityError::UnknownKey), Some((failures, ip))) = (&result, &failures) {
                failures.failed(*ip);
            }
            Ok(result?)
        })
    }
}
