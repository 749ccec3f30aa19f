//! The policy routes:
//! - `GET /v1/policy/constitution`: the name, version and hash of the
//!   document the caller's turns are judged under (any key), and its text
//!   (phrases and examples: a map for evasion) for `policy:admin` or `policy:read`;
//! - `GET /v1/policy/constitutions/{hash}`: the same of a stored document, if
//!   it is the caller's tenant's: active for it, or one its turns were judged
//!   under (any other hash is 404, as if it were not stored);
//! - `PUT /v1/policy/constitution` (capability `policy:admin`; body the TOML
//!   document): makes it the caller's tenant's active constitution on every
//!   instance, recorded in `policy.audit`;
//! - `POST /v1/policy/constitution/dry-run` (capability `policy:admin`): what a
//!   candidate constitution would change on the caller's own tenant's stored
//!   turns; the same dry run as `steward constitution dry-run`, bounded per
//!   request.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::audit::{activate_recorded, ActivationRequest, AuditType};
use super::dry_run::{dry_run, parse_window, PastTurn};
use super::judges::{Judge, Judges};
use super::registry::Scope;
use super::{Constitution, ConstitutionHash, PolicyError};
use crate::config::ModerationSettings;
use crate::error::{ApiError, Code};
use crate::events::Via;
use crate::identity::{Caller, Capability};
use crate::orchestrator::{ConversationStore, OrchestratorError};

/// What the policy routes need: the instance's judges (and through them the
/// registry), where activations are recorded, the moderation settings a candidate's
/// moderator is built with, and the stored turns.
pub struct PolicyApi {
    pub judges: Arc<Judges>,
    pub auditor: crate::events::AuditTrail,
    pub moderation: Arc<ModerationSettings>,
    pub store: ConversationStore,
}

/// Most turns one request judges (about 13 s with every layer on, on 2 cores);
/// the command line has no such bound.
const MAX_TURNS: i64 = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DryRunBody {
    /// The candidate constitution, as TOML text.
    document: String,
    /// How far back: `90s`, `30m`, `24h` (the default), `7d`.
    #[schema(pattern = "^[0-9]+[smhd]$")]
    since: Option<String>,
    /// At most this many turns, newest first (default and most: 1000).
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A constitution and its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ConstitutionDocument<'a> {
    /// `sha256:<hex>` of the document's canonical form.
    hash: &'a str,
    name: &'a str,
    version: &'a str,
    /// The TOML document: only for a key with `policy:admin` or `policy:read`.
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a str>,
}

/// What a dry run judged.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DryRunReply<'a> {
    candidate: Candidate<'a>,
    report: super::dry_run::DryRunReport,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Candidate<'a> {
    name: &'a str,
    version: &'a str,
    hash: &'a str,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/policy/constitution", web::get().to(active))
        .route("/v1/policy/constitution", web::put().to(activate))
        .route("/v1/policy/constitutions/{hash}", web::get().to(by_hash))
        .route("/v1/policy/constitution/dry-run", web::post().to(dry_run_route));
}

/// The document as `caller` may see it: its text only with `policy:admin` or `policy:read`.
fn document(caller: &Caller, hash: &ConstitutionHash, constitution: &Constitution, text: &str) -> HttpResponse {
    let full = caller.capabilities.iter().any(|c| matches!(c, Capability::PolicyAdmin | Capability::PolicyRead));
    let document = full.then_some(text);
    HttpResponse::Ok().json(ConstitutionDocument { hash: hash.as_str(), name: &constitution.name, version: &constitution.version, document })
}

/// The constitution the caller's turns are judged under (the tenant's own, else the default): name, version, hash, and the text for policy:admin or policy:read
#[utoipa::path(get, path = "/v1/policy/constitution", tag = "policy", security(("bearer" = [])),
    responses(
        (status = 200, description = "the document", body = ConstitutionDocument),
        crate::responses::KeyErrors,
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn active(caller: Caller, api: web::Data<PolicyApi>) -> Result<HttpResponse, ApiError> {
    let judge = api.judges.current(caller.tenant.as_str()).map_err(PolicyError::from)?;
    Ok(document(&caller, &judge.hash, &judge.constitution, &judge.text))
}

/// One of the caller's tenant's constitutions (active, or one its turns were judged under) by its hash
#[utoipa::path(get, path = "/v1/policy/constitutions/{hash}", tag = "policy", security(("bearer" = [])),
    params(("hash" = String, Path, description = "`sha256:<hex>`")),
    responses(
        (status = 200, description = "the document", body = ConstitutionDocument),
        (status = 400, response = crate::responses::Problem),
        crate::responses::KeyErrors,
        (status = 404, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn by_hash(caller: Caller, hash: web::Path<String>, api: web::Data<PolicyApi>) -> Result<HttpResponse, ApiError> {
    let hash = ConstitutionHash::parse(&hash).map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;
    let (constitution, text) = api.document_of(caller.tenant.as_str(), &hash).await?;
    Ok(document(&caller, &hash, &constitution, &text))
}

impl PolicyApi {
    /// One of `tenant`'s constitutions (its active one, or one its turns were
    /// judged under) by its hash, with its text; 404 for any other.
    pub async fn document_of(&self, tenant: &str, hash: &ConstitutionHash) -> Result<(Constitution, String), ApiError> {
        let not_found = || ApiError::new(Code::NotFound, format!("no constitution with hash {hash} is stored for this tenant"));
        let active = self.judges.current(tenant).is_ok_and(|judge| judge.hash == *hash);
        if !active && !self.store.judged_under(tenant, hash.as_str()).await.map_err(OrchestratorError::Store)? {
            return Err(not_found());
        }
        if let Some(judge) = self.judges.get(hash) {
            return Ok((judge.constitution.clone(), judge.text.clone()));
        }
        let text = self.judges.registry().document(hash).await?.ok_or_else(not_found)?;
        let constitution = Constitution::from_toml_str(&text).map_err(|e| {
            tracing::error!(hash = %hash, error = %e, "a stored constitution does not parse");
            ApiError::new(Code::Internal, "the stored document is unreadable")
        })?;
        Ok((constitution, text))
    }
}

/// Make a constitution active for the caller's tenant, on every instance within policy.staleness; recorded in policy.audit
///
/// Capability policy:admin. The body is the TOML document. It is validated, stored by its hash and
/// made the tenant's active constitution; turns already running finish under the hash they
/// started with. Activating the hash that is already active changes nothing (changed: false, no
/// record). The default for tenants without their own is set by `steward constitution activate FILE`.
#[utoipa::path(put, path = "/v1/policy/constitution", tag = "policy", security(("bearer" = [])),
    request_body(description = "the constitution, as TOML", content((String = "application/toml"), (String = "text/plain"))),
    responses(
        (status = 200, description = "activated", body = super::audit::Outcome),
        (status = 400, response = crate::responses::Problem),
        crate::responses::KeyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 413, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub(crate) async fn activate(req: HttpRequest, caller: Caller, body: web::Bytes, api: web::Data<PolicyApi>) -> Result<HttpResponse, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::new(Code::InvalidRequest, "the body must be a UTF-8 TOML constitution"))?;
    let activated = api.activate(&caller, text, &crate::web::trace_of(&req), Via::Api).await?;
    Ok(HttpResponse::Ok().json(activated))
}

impl PolicyApi {
    /// Makes `text` the caller's tenant's constitution (policy:admin), recorded
    /// in `policy.audit` as asked `via`; this instance judges by it before returning.
    pub async fn activate(&self, caller: &Caller, text: &str, trace: &crate::telemetry::TraceContext, via: Via) -> Result<super::audit::Outcome, ApiError> {
        caller.require(Capability::PolicyAdmin)?;
        let constitution =
            Constitution::from_toml_str(text).map_err(|e| ApiError::new(Code::InvalidRequest, format!("the document is not a valid constitution: {e}")))?;
        let hash = constitution.hash();
        // Built before it is activated: a document no moderator can be made of is the caller's 400, not every turn's 503.
        let judge = build_judge(&self.moderation, constitution.clone(), text.to_owned(), false).await?;
        self.judges.adopt(judge);
        let scope = Scope::Tenant(caller.tenant.as_str().to_owned());
        let request = ActivationRequest { scope: &scope, actor: &caller.key_id, constitution: &constitution, hash: &hash, text, trace, via };
        let activation =
            activate_recorded(self.judges.registry().as_ref(), &request, &self.auditor.topic, |pending| self.auditor.events.emit_durable(vec![pending]))
                .await?;
        let entry = request.entry(AuditType::Activated, &activation);
        // This instance judges by it before answering (its judge is built); the others within the staleness bound.
        if let Err(err) = self.judges.refresh().await {
            tracing::warn!(error = %err, "activated, but this instance's copy could not be refreshed yet");
        }
        tracing::info!(tenant = %caller.tenant, actor = %caller.key_id, via = via.as_str(), hash = %hash,
            previous = ?activation.previous.as_ref().map(ConstitutionHash::as_str), registry_version = activation.version,
            changed = activation.changed, trace_id = %trace.trace_id, "constitution activated");
        Ok(entry.outcome())
    }
}

/// The judge of a document, built off the worker thread (it embeds the examples); `trial`
/// for a dry run, which writes nothing to disk.
async fn build_judge(settings: &Arc<ModerationSettings>, constitution: Constitution, text: String, trial: bool) -> Result<Arc<Judge>, ApiError> {
    if let (Some(digest), crate::config::SemanticSwitch::On) = (constitution.semantic.classifier, settings.semantic) {
        let file = settings.classifier_dir.join(crate::moderation::semantic::Head::file_name(&digest));
        if !file.is_file() {
            let message = format!("the constitution names classifier {digest}, which this instance does not have (moderation.classifier_dir)");
            return Err(ApiError::new(Code::InvalidRequest, message));
        }
    }
    let settings = settings.clone();
    let build = if trial { crate::moderation::candidate_moderator } else { crate::moderation::moderator };
    let built = web::block(move || build(&settings, &constitution).map(|moderator| (constitution, moderator)))
        .await
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    let (constitution, moderator) = built.map_err(|e| {
        tracing::error!(error = format!("{e:#}"), "a candidate constitution's moderator could not be built");
        ApiError::new(Code::Internal, "the document could not be loaded")
    })?;
    Ok(Arc::new(Judge { hash: constitution.hash(), constitution, text, moderator: Arc::new(moderator) }))
}

/// What a candidate constitution would change on the caller's tenant's stored turns (policy:admin); read-only
#[utoipa::path(post, path = "/v1/policy/constitution/dry-run", tag = "policy", request_body = DryRunBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "the report", body = DryRunReply),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
    ))]
pub(crate) async fn dry_run_route(caller: Caller, body: web::Json<DryRunBody>, api: web::Data<PolicyApi>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (candidate, report) = api.dry_run(&caller, body.document, body.since.as_deref().unwrap_or("24h"), body.limit.unwrap_or(MAX_TURNS)).await?;
    let (name, version) = (&candidate.constitution.name, &candidate.constitution.version);
    Ok(HttpResponse::Ok().json(DryRunReply { candidate: Candidate { name, version, hash: candidate.hash.as_str() }, report }))
}

impl PolicyApi {
    /// What `document` would change on the caller's tenant's turns of the last
    /// `since` (`30m`, `24h`, `7d`), at most `limit` of them (policy:admin);
    /// read-only: the candidate's judge is built in memory and dropped.
    pub async fn dry_run(&self, caller: &Caller, document: String, since: &str, limit: i64) -> Result<(Arc<Judge>, super::dry_run::DryRunReport), ApiError> {
        caller.require(Capability::PolicyAdmin)?;
        let window = parse_window(since).map_err(|m| ApiError::new(Code::InvalidRequest, m))?;
        if !(1..=MAX_TURNS).contains(&limit) {
            return Err(ApiError::new(Code::InvalidRequest, format!("limit must be between 1 and {MAX_TURNS}")));
        }
        let candidate = Constitution::from_toml_str(&document)
            .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the document is not a valid constitution: {e}")))?;
        // Building the moderator embeds the candidate's examples: CPU work, off the worker thread.
        let judge = build_judge(&self.moderation, candidate, document, true).await?;
        let since_ms = crate::db::now_ms() - window.as_millis() as i64;
        let stored = self.store.window(Some(caller.tenant.as_str()), since_ms, limit).await.map_err(OrchestratorError::Store)?;
        let turns: Vec<PastTurn> = stored.into_iter().map(PastTurn::try_from).collect::<Result<_, _>>().map_err(|e| {
            tracing::error!(error = %e, "dry run over an unreadable stored turn");
            ApiError::new(Code::Internal, "a stored turn's verdict is unreadable")
        })?;
        let report = dry_run(&judge.moderator, &turns, |_| {}).await?;
        tracing::info!(tenant = %caller.tenant, candidate = %judge.hash, turns = report.turns, "constitution dry run");
        Ok((judge, report))
    }
}
