//! `POST /v1/moderations`: OpenAI's moderation API answered with Steward's
//! own judgement — every layer of the tenant's active constitution, as chat
//! input is judged — for apps that already call OpenAI's endpoint. Each
//! check is recorded as a `moderation.checked` event (never its text) in a
//! chain of its own, and counts against the tenant's limits like a turn.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::service::verdict_of;
use super::Gateway;
use crate::error::{ApiError, Code};
use crate::events::{RefusedCategory, TurnContext, TurnData};
use crate::identity::{Caller, Capability};
use crate::ids::{SessionId, TurnId};
use crate::moderation::guard::OPENAI_CATEGORIES;
use crate::moderation::{Decision, Hit};
use crate::policy::headers;

/// More texts than this in one request are refused.
const MAX_INPUTS: usize = 32;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ModerationRequest)]
pub struct ModerationBody {
    /// One text, or several judged each on its own.
    input: ModerationInput,
    /// Any name: Steward judges with the tenant's active constitution, which the reply's `model` names.
    model: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum ModerationInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ModerationResponse)]
struct ModerationReply {
    id: String,
    /// The constitution that judged: `steward:<name>@<version>`.
    model: String,
    results: Vec<ModerationResult>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModerationResult {
    flagged: bool,
    /// OpenAI's categories, true where a corresponding constitution category refused the text.
    #[schema(value_type = Object)]
    categories: serde_json::Map<String, serde_json::Value>,
    /// 1.0 for a category the lexicon refused on (a listed phrase or pattern), the semantic
    /// layer's similarity for one it refused on, 0.0 for a category not refused: Steward decides,
    /// it does not rate every category.
    #[schema(value_type = Object)]
    category_scores: serde_json::Map<String, serde_json::Value>,
    /// Steward's own verdict: the constitution's codes and categories, and the layer that decided.
    steward: StewardVerdict,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StewardVerdict {
    /// `allow`, or `refuse:<codes>` (as a turn's `x-policy-verdict`).
    verdict: String,
    categories: Vec<StewardCategory>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StewardCategory {
    code: String,
    category: String,
    /// `lexicon`, `semantic_static` or `semantic`.
    layer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
}

/// One text's result, in OpenAI's shape with Steward's verdict beside it.
fn result_of(hits: &[Hit]) -> ModerationResult {
    let mut categories = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    for (name, ours) in OPENAI_CATEGORIES {
        let hit = hits.iter().find(|h| ours.contains(&h.category.as_str()));
        categories.insert(name.into(), hit.is_some().into());
        scores.insert(name.into(), hit.map_or(0.0, |h| h.score.unwrap_or(1.0)).into());
    }
    let verdict = verdict_of(hits).header_value();
    ModerationResult {
        flagged: !hits.is_empty(),
        categories,
        category_scores: scores,
        steward: StewardVerdict {
            verdict,
            categories: hits
                .iter()
                .map(|h| StewardCategory { code: h.code.clone(), category: h.category.clone(), layer: h.layer.as_str(), score: h.score })
                .collect(),
        },
    }
}

/// Judge texts as Steward judges chat input (OpenAI-compatible)
///
/// Capability `moderate`. Each input is judged on its own by every layer of the tenant's active
/// constitution. The response has OpenAI's shape (`results[].flagged`, `categories`,
/// `category_scores`) with the constitution's categories mapped onto OpenAI's where they
/// correspond, and Steward's own codes in `results[].steward`; `x-constitution-hash` names the
/// constitution. Counted against the tenant's limits like a turn, and recorded as a
/// `moderation.checked` event (without the text).
#[utoipa::path(post, path = "/v1/moderations", tag = "moderation", security(("bearer" = [])),
    request_body = ModerationBody,
    responses(
        (status = 200, description = "one result per input", body = ModerationReply,
            headers(("x-constitution-hash" = String, description = "the constitution that judged"))),
        crate::responses::KeyErrors,
        crate::responses::BodyErrors,
        (status = 403, response = crate::responses::Problem),
        (status = 503, response = crate::responses::Problem),
    ))]
pub async fn moderations(req: HttpRequest, caller: Caller, body: web::Json<ModerationBody>, gateway: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    caller.require(Capability::Moderate)?;
    let ModerationBody { input, model } = body.into_inner();
    if let Some(asked) = model.as_deref() {
        tracing::debug!(asked, "moderation model named; the tenant's constitution judges");
    }
    let inputs = match input {
        ModerationInput::One(text) => vec![text],
        ModerationInput::Many(texts) => texts,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::new(Code::InvalidRequest, format!("input must be a text or 1 to {MAX_INPUTS} texts")));
    }
    for text in &inputs {
        gateway.limits.check_message(text)?;
    }
    let tenant = caller.tenant.as_str();
    let check_id = TurnId::mint();
    let chars: usize = inputs.iter().map(|t| t.chars().count()).sum();
    let _permit = gateway.limiter.admit(tenant, check_id.as_str(), (chars / 4) as u32).await?;
    let judge = gateway.judges.current(tenant).map_err(crate::policy::PolicyError::from)?;
    let started = std::time::Instant::now();
    let mut results = Vec::with_capacity(inputs.len());
    let mut refused: Vec<Hit> = Vec::new();
    for text in inputs.iter() {
        let hits = match judge.moderator.judge_messages(vec![text.clone()]).await? {
            Decision::Allow => Vec::new(),
            Decision::Refuse(hits) => hits,
        };
        for hit in &hits {
            if !refused.iter().any(|h| h.code == hit.code) {
                refused.push(hit.clone());
            }
        }
        results.push(result_of(&hits));
    }
    gateway.metrics.moderation_check("moderations", started.elapsed());

    let trace = crate::web::trace_of(&req);
    let training = gateway.training.mark(tenant).await;
    let context = TurnContext {
        tenant: tenant.to_owned(),
        session_id: SessionId::mint(),
        turn_id: check_id.clone(),
        trace_id: trace.trace_id.clone(),
        traceparent: trace.header(),
        tracestate: trace.tracestate.clone(),
        constitution_hash: judge.hash.to_string(),
        policy_verdict: verdict_of(&refused).header_value(),
        training_mode: training.enabled,
        training_fencing_token: training.fencing_token,
        training_mode_source: training.source.to_owned(),
    };
    let data = TurnData::Checked {
        inputs: inputs.len(),
        flagged: results.iter().filter(|r| r.flagged).count(),
        input_chars: chars,
        categories: refused.iter().map(|h| RefusedCategory { code: h.code.clone(), category: h.category.clone() }).collect(),
    };
    if !gateway.events.turn_durable(&context, data).await {
        return Err(ApiError::new(Code::Internal, "the check could not be recorded"));
    }
    let reply =
        ModerationReply { id: format!("modr-{check_id}"), model: format!("steward:{}@{}", judge.constitution.name, judge.constitution.version), results };
    Ok(HttpResponse::Ok().insert_header((headers::CONSTITUTION_HASH, judge.hash.as_str())).json(reply))
}
