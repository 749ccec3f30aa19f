//! The authenticated caller of a request, as an actix extractor.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use super::authenticator::Authenticator;
use super::domain::{Capability, IdentityError, TenantId};
use super::store::KeyRecord;
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

    /// The caller a stored key names.
    pub fn from_record(record: KeyRecord) -> Result<Self, IdentityError> {
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
        let auth = req.app_data::<web::Data<Authenticator>>().cloned();
        let client = auth.as_ref().and_then(|auth| auth.client_of(req));
        let bearer = bearer(req);
        Box::pin(async move {
            let auth = auth.ok_or_else(|| ApiError::new(Code::Internal, "identity is not configured"))?;
            auth.authenticate(client, bearer.as_deref()).await
        })
    }
}
