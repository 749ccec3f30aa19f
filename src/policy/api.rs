//! The policy routes:
//! - `GET /v1/policy/constitution`: the document the caller's turns are judged
//!   under, with its hash (any key);
//! - `GET /v1/policy/constitutions/{hash}`: a known document by its hash;
//! - `POST /v1/policy/constitution/dry-run` (capability `policy:admin`): what a
//!   candidate constitution would change on the caller's own tenant's stored
//!   turns; the same dry run as `steward constitution dry-run`, bounded per
//!   request.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::dry_run::{dry_run, parse_window, PastTurn};
use super::{Constitution, ConstitutionHash};
use crate::config::Settings;
use crate::error::{ApiError, Code};
use crate::identity::{Caller, Capability};
use crate::orchestrator::{ConversationStore, OrchestratorError};

/// What the policy routes need: the active document, the settings a
/// candidate's moderator is built with, and the stored turns.
pub struct PolicyApi {
    pub active: ActiveDocument,
    pub settings: Arc<Settings>,
    pub store: ConversationStore,
}

/// The constitution every turn is judged under, as loaded at start, with
/// its hash computed once.
pub struct ActiveDocument {
    constitution: Constitution,
    hash: ConstitutionHash,
    /// The file's text, as written (comments included).
    text: String,
}

impl ActiveDocument {
    pub fn new(constitution: Constitution, text: String) -> Self {
        Self { hash: constitution.hash(), constitution, text }
    }
}

/// Most turns one request judges (about 13 s with every layer on, on 2 cores);
/// the command line has no such bound.
const MAX_TURNS: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRunBody {
    /// The candidate constitution, as TOML text.
    document: String,
    /// How far back: `90s`, `30m`, `24h` (the default), `7d`.
    since: Option<String>,
    /// At most this many turns, newest first (default and most: 1000).
    limit: Option<i64>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/policy/constitution", web::get().to(active))
        .route("/v1/policy/constitutions/{hash}", web::get().to(by_hash))
        .route("/v1/policy/constitution/dry-run", web::post().to(dry_run_route));
}

fn document(active: &ActiveDocument) -> HttpResponse {
    let c = &active.constitution;
    HttpResponse::Ok().json(json!({ "hash": active.hash.as_str(), "name": c.name, "version": c.version, "document": active.text }))
}

async fn active(_caller: Caller, api: web::Data<PolicyApi>) -> HttpResponse {
    document(&api.active)
}

async fn by_hash(_caller: Caller, hash: web::Path<String>, api: web::Data<PolicyApi>) -> Result<HttpResponse, ApiError> {
    let hash = ConstitutionHash::parse(&hash).map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;
    if hash != api.active.hash {
        return Err(ApiError::new(Code::NotFound, format!("no constitution with hash {hash} is known here")));
    }
    Ok(document(&api.active))
}

async fn dry_run_route(caller: Caller, body: web::Json<DryRunBody>, api: web::Data<PolicyApi>) -> Result<HttpResponse, ApiError> {
    caller.require(Capability::PolicyAdmin)?;
    let body = body.into_inner();
    let window = parse_window(body.since.as_deref().unwrap_or("24h")).map_err(|m| ApiError::new(Code::InvalidRequest, m))?;
    let limit = body.limit.unwrap_or(MAX_TURNS);
    if !(1..=MAX_TURNS).contains(&limit) {
        return Err(ApiError::new(Code::InvalidRequest, format!("limit must be between 1 and {MAX_TURNS}")));
    }
    let candidate = Constitution::from_toml_str(&body.document)
        .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the document is not a valid constitution: {e}")))?;
    let (hash, name, version) = (candidate.hash(), candidate.name.clone(), candidate.version.clone());
    // Building the moderator embeds the candidate's examples: CPU work, off the worker thread.
    let settings = api.settings.clone();
    let moderator =
        web::block(move || crate::app::moderator(&settings, &candidate)).await.map_err(|e| ApiError::new(Code::Internal, e.to_string()))?.map_err(|e| {
            tracing::error!(error = %e, "the candidate's moderator could not be built");
            ApiError::new(Code::Internal, "the candidate could not be loaded")
        })?;
    let since_ms = crate::db::now_ms() - window.as_millis() as i64;
    let stored = api.store.window(Some(caller.tenant.as_str()), since_ms, limit).await.map_err(OrchestratorError::Store)?;
    let turns: Vec<PastTurn> = stored.into_iter().map(PastTurn::from).collect();
    let report = dry_run(&moderator, &turns, |_| {}).await.map_err(|e| {
        tracing::error!(error = %e, "dry run failed");
        ApiError::new(Code::Internal, "moderation failed")
    })?;
    tracing::info!(tenant = %caller.tenant, candidate = %hash, turns = report.turns, "constitution dry run");
    Ok(HttpResponse::Ok().json(json!({ "candidate": { "name": name, "version": version, "hash": hash.as_str() }, "report": report })))
}
