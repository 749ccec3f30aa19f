//! Turns: search the record, open a turn (its messages as stored, its
//! verdict and constitution, the layer and score that decided, its events in
//! their chain), and check its session's chain against the newest signed
//! checkpoint.

use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout;
use super::viewer::{ConsoleError, Viewer};
use super::Console;
use crate::events::chain_check::{check_session, ChainState};
use crate::identity::Capability;
use crate::orchestrator::{Judged, TurnFilter, TurnRecord, WITHHELD_TEXT};

/// Who may read the record.
const READERS: [Capability; 2] = [Capability::Ops, Capability::Audit];

/// The most turns a search lists.
const LISTED: i64 = 200;

/// The search form's fields (blank = any).
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    turn: String,
    #[serde(default)]
    trace: String,
    /// `allow` or `refuse`.
    #[serde(default)]
    verdict: String,
    /// A category code the turn was refused on (input or output), e.g. `S1`.
    #[serde(default)]
    code: String,
    /// How far back, in hours (default 24).
    hours: Option<u32>,
}

fn given(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

impl Search {
    /// The filter, within what `viewer` may read.
    fn filter(&self, viewer: &Viewer) -> TurnFilter {
        let hours = i64::from(self.hours.unwrap_or(24).clamp(1, 24 * 366));
        TurnFilter {
            tenant: viewer.tenant_scope().map(str::to_owned).or_else(|| given(&self.tenant)),
            session: given(&self.session),
            turn: given(&self.turn),
            trace: given(&self.trace),
            verdict: match self.verdict.as_str() {
                "allow" => Some(Judged::Allowed),
                "refuse" => Some(Judged::Refused),
                _ => None,
            },
            code: given(&self.code),
            since_ms: crate::db::now_ms() - hours * 3_600_000,
            limit: LISTED,
        }
    }
}

/// `GET /console/turns`
pub async fn list(viewer: Viewer, search: web::Query<Search>, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let turns = console.turns.search(&search.filter(&viewer)).await.map_err(internal)?;
    let body = html! {
        form.filters method="get" action="/console/turns" {
            @if viewer.tenant_scope().is_none() {
                label { "Tenant" input name="tenant" value=(search.tenant); }
            }
            label { "Session" input name="session" value=(search.session); }
            label { "Turn" input name="turn" value=(search.turn); }
            label { "Trace" input name="trace" value=(search.trace); }
            label { "Verdict"
                select name="verdict" {
                    option value="" selected[search.verdict.is_empty()] { "any" }
                    option value="allow" selected[search.verdict == "allow"] { "allowed" }
                    option value="refuse" selected[search.verdict == "refuse"] { "refused" }
                }
            }
            label { "Category code" input name="code" size="6" value=(search.code); }
            label { "Last hours" input name="hours" type="number" min="1" size="4" value=(search.hours.unwrap_or(24)); }
            button.primary type="submit" { "Search" }
        }
        p.muted { (turns.len()) " turns" @if turns.len() as i64 == LISTED { " (the newest " (LISTED) ")" } }
        table {
            thead { tr { th { "When" } th { "Tenant" } th { "Turn" } th { "Verdict" } th { "Ended" } th { "Constitution" } th { "Message" } } }
            tbody {
                @for turn in &turns {
                    tr {
                        td.mono { (crate::db::rfc3339(turn.created_at)) }
                        td { (turn.tenant) }
                        td.mono { a href={ "/console/turns/" (turn.turn_id) } { (turn.turn_id) } }
                        td { (verdict(turn)) }
                        td { (turn.finish_reason.as_str()) }
                        td.mono title=(turn.constitution_hash) { (turn.constitution_hash.get(..19).unwrap_or(&turn.constitution_hash)) "…" }
                        td { (preview(&turn.user_message)) }
                    }
                }
            }
        }
    };
    Ok(layout::page(&viewer, "turns", "Turns", body))
}

/// `GET /console/turns/{id}`
pub async fn show(viewer: Viewer, id: web::Path<String>, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let turn = find(&viewer, &console, &id).await?;
    let events = console.turn_events(&turn).await.map_err(internal)?;
    let refused = events.iter().find(|e| e["type"] == "turn.refused").map(|e| &e["data"]);
    let dispatched = events.iter().find(|e| e["type"] == "turn.dispatched").map(|e| &e["data"]);
    let hash = &turn.constitution_hash;
    let body = html! {
        table {
            tr { th { "Turn" } td.mono { (turn.turn_id) } }
            tr { th { "Session" } td.mono { a href={ "/console/turns?session=" (turn.session_id) } { (turn.session_id) } } }
            tr { th { "Tenant" } td { (turn.tenant) } }
            tr { th { "Trace" } td.mono { (turn.trace_id) } }
            tr { th { "When" } td.mono { (crate::db::rfc3339(turn.created_at)) } }
            tr { th { "Verdict" } td { (verdict(&turn)) " (input verdict " span.mono { (turn.policy_verdict) } ")" } }
            tr { th { "Constitution" } td.mono {
                // Its text is the tenant's own to read (as the API's GET /v1/policy/constitutions/{hash}).
                @if turn.tenant == viewer.caller.tenant.as_str() { a href={ "/console/constitution/" (hash) } { (hash) } } @else { (hash) }
            } }
            tr { th { "Ended" } td { (turn.finish_reason.as_str()) } }
            @if let Some(refused) = refused {
                tr { th { "Decided by" } td {
                    (refused["stage"].as_str().unwrap_or("?")) " moderation, layer " (refused["layer"].as_str().unwrap_or("?"))
                    @if let Some(score) = refused["score"].as_f64() { ", score " (format!("{score:.3}")) }
                    @if let Some(categories) = refused["categories"].as_array() {
                        " — " @for c in categories { span.pill.refuse { (c["category"].as_str().unwrap_or_default()) " " (c["code"].as_str().unwrap_or_default()) } " " }
                    }
                } }
            }
            @if let Some(dispatched) = dispatched {
                tr { th { "Model" } td { (dispatched["model"].as_str().unwrap_or_default()) " (dispatch " (dispatched["dispatch"].as_str().unwrap_or("after_verdict")) ")" } }
            }
            tr { th { "Tokens" } td { (turn.prompt_tokens.map(|t| t.to_string()).unwrap_or("—".into())) " in, " (turn.completion_tokens.map(|t| t.to_string()).unwrap_or("—".into())) " out" } }
        }
        h2 { "Messages, as stored" }
        @if turn.preamble != "[]" { h3 { "Earlier messages" } (layout::text(&turn.preamble)) }
        h3 { "User" }
        @if turn.user_message == WITHHELD_TEXT {
            p.warn { "Withheld: the message was refused on input and is stored without its text (chat.store_refused_text is off)." }
        } @else {
            (layout::text(&turn.user_message))
        }
        h3 { "Assistant" }
        @if turn.assistant_message.is_empty() { p.muted { "No answer reached the client." } } @else { (layout::text(&turn.assistant_message)) }
        h2 { "Events" }
        (event_table(&events))
        p { a.button href={ "/console/turns/" (turn.turn_id) "/verify" } { "Verify this session's record" } }
    };
    Ok(layout::page(&viewer, "turns", "Turn", body))
}

/// `GET /console/turns/{id}/verify`: the session's chain, checked.
pub async fn verify(viewer: Viewer, id: web::Path<String>, console: web::Data<Console>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let turn = find(&viewer, &console, &id).await?;
    let topics = &console.topics;
    let check =
        check_session(&console.outbox, &topics.conversation, &topics.checkpoint, &turn.tenant, turn.session_id.as_str(), console.checkpoint_key.as_ref())
            .await
            .map_err(internal)?;
    let state = check.state.as_str();
    let body = html! {
        p.big { "The record of session " span.mono { (turn.session_id) } " is " strong class=(state) { (state) } "." }
        p { (match check.state {
            ChainState::Intact => "Every event links to the one before it, from the first to the last",
            ChainState::Truncated => "Events that a signed checkpoint covers are missing from its end",
            ChainState::Altered => "A link is broken: an event was changed, removed from inside the chain, or is not the one signed",
        }) "; " (check.report.events) " events checked." }
        @match &check.checkpoint {
            Some((when, seq)) => p { "Held against the signed checkpoint of " (when) ", which covers it up to event " (seq) "." },
            None if console.checkpoint_key.is_none() => p.muted { "No checkpoint key is configured (events.checkpoint_key): the links were checked, not against a signature." },
            None => p.muted { "No signed checkpoint covers this session yet: the links were checked." },
        }
        @if let Some(problem) = &check.checkpoint_problem { div.notice { "The newest checkpoint naming this session does not verify: " (problem) } }
        @if !check.report.problems.is_empty() {
            table { thead { tr { th { "Event" } th { "Problem" } th { "Detail" } } }
                tbody { @for p in &check.report.problems { tr { td { (p.seq) } td { (format!("{:?}", p.kind).to_lowercase()) } td { (p.detail) } } } } }
        }
        p { a href={ "/console/turns/" (turn.turn_id) } { "Back to the turn" } }
    };
    Ok(layout::page(&viewer, "turns", "Verify", body))
}

/// The turn `id`, if the viewer may read it.
async fn find(viewer: &Viewer, console: &Console, id: &str) -> Result<TurnRecord, ConsoleError> {
    let filter = TurnFilter { tenant: viewer.tenant_scope().map(str::to_owned), turn: Some(id.to_owned()), limit: 1, ..TurnFilter::default() };
    console.turns.search(&filter).await.map_err(internal)?.into_iter().next().ok_or(ConsoleError::NotFound("turn"))
}

fn verdict(turn: &TurnRecord) -> Markup {
    let input_codes = turn.policy_verdict.strip_prefix("refuse:");
    let cut = turn.finish_reason == crate::orchestrator::FinishReason::Refused && input_codes.is_none();
    html! {
        @if let Some(codes) = input_codes { span.pill.refuse { "refused" } " " span.mono { (codes) } }
        @else if cut { span.pill.refuse { "cut on output" } " " span.mono { (turn.output_code.as_deref().unwrap_or("?")) } }
        @else { span.pill.allow { "allowed" } }
    }
}

fn preview(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(80).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

fn event_table(events: &[Value]) -> Markup {
    html! {
        table {
            thead { tr { th { "Seq" } th { "Type" } th { "When" } th { "Data" } th { "Previous hash" } } }
            tbody {
                @for e in events {
                    tr {
                        td { (e["seq"]) }
                        td.mono { (e["type"].as_str().unwrap_or_default()) }
                        td.mono { (e["occurred_at"].as_str().unwrap_or_default()) }
                        td.mono { (e["data"].to_string()) }
                        td.mono { (e["prev_hash"].as_str().unwrap_or_default().get(..23).unwrap_or_default()) "…" }
                    }
                }
            }
        }
    }
}

fn internal(err: sqlx::Error) -> ConsoleError {
    ConsoleError::Internal(err.to_string())
}
