//! Overview: is Steward well, and what has it decided in the last hour —
//! each dependency's readiness, turns and refusals per minute, refusals by
//! category, time to first token and to completion (this instance's
//! histograms), and the outbox's backlog. The numbers refresh live over SSE.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use maud::html;
use serde::Serialize;

use super::layout;
use super::viewer::{ConsoleError, Viewer};
use super::Console;
use crate::identity::Capability;
use crate::readiness::Readiness;
use crate::telemetry::Metrics;

const READERS: [Capability; 2] = [Capability::Ops, Capability::Audit];

/// How often the live numbers are sent.
const LIVE_EVERY: Duration = Duration::from_secs(5);

/// The overview's numbers, as the page shows them and the live stream sends them.
#[derive(Debug, Serialize)]
struct Numbers {
    turns_last_hour: i64,
    refused_last_hour: i64,
    ttft_p50: String,
    ttft_p95: String,
    completion_p50: String,
    completion_p95: String,
    outbox_pending: i64,
    outbox_oldest: String,
}

impl Console {
    async fn numbers(&self, tenant: Option<&str>, metrics: &Metrics) -> Result<Numbers, sqlx::Error> {
        let since = crate::db::now_ms() - 3_600_000;
        let minutes = self.turns.per_minute(tenant, since).await?;
        let (pending, oldest) = self.outbox.pending_stats().await?;
        let exposition = metrics.encode();
        let quantile = |name: &str, q: f64| quantile(&exposition, name, q).map_or("—".to_owned(), |s| format!("{:.0} ms", s * 1e3));
        Ok(Numbers {
            turns_last_hour: minutes.iter().map(|m| m.1).sum(),
            refused_last_hour: minutes.iter().map(|m| m.2).sum(),
            ttft_p50: quantile("steward_time_to_first_token_seconds", 0.5),
            ttft_p95: quantile("steward_time_to_first_token_seconds", 0.95),
            completion_p50: quantile("orchestrator_request_duration_seconds", 0.5),
            completion_p95: quantile("orchestrator_request_duration_seconds", 0.95),
            outbox_pending: pending,
            outbox_oldest: oldest.map_or("—".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1e3)),
        })
    }
}

/// `GET /console/overview`
pub async fn page(
    viewer: Viewer,
    console: web::Data<Console>,
    readiness: web::Data<Readiness>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let tenant = viewer.tenant_scope();
    let internal = |e: sqlx::Error| ConsoleError::Internal(e.to_string());
    let numbers = console.numbers(tenant, &metrics).await.map_err(internal)?;
    let now_minute = crate::db::now_ms() / 60_000;
    let per_minute: BTreeMap<i64, (i64, i64)> =
        console.turns.per_minute(tenant, (now_minute - 59) * 60_000).await.map_err(internal)?.into_iter().map(|(m, n, r)| (m, (n, r))).collect();
    let clock = |minute: i64| crate::db::rfc3339(minute * 60_000).get(11..16).unwrap_or_default().to_owned();
    let turns: Vec<(String, u64, &'static str)> =
        (now_minute - 59..=now_minute).map(|m| (clock(m), per_minute.get(&m).map_or(0, |v| v.0) as u64, "")).collect();
    let refused: Vec<(String, u64, &'static str)> =
        (now_minute - 59..=now_minute).map(|m| (clock(m), per_minute.get(&m).map_or(0, |v| v.1) as u64, "refused")).collect();
    let by_category = console.turns.refusals(tenant, crate::db::now_ms() - 3_600_000).await.map_err(internal)?;
    let report = readiness.current();
    let body = html! {
        div data-live="/console/overview/live" {
            div.cards {
                div.card { div.muted { "Turns, last hour" } div.big data-number="turns_last_hour" { (numbers.turns_last_hour) } }
                div.card { div.muted { "Refused, last hour" } div.big.bad data-number="refused_last_hour" { (numbers.refused_last_hour) } }
                div.card { div.muted { "Time to first token (p50 / p95)" }
                    div.big { span data-number="ttft_p50" { (numbers.ttft_p50) } " / " span data-number="ttft_p95" { (numbers.ttft_p95) } } }
                div.card { div.muted { "Completion (p50 / p95)" }
                    div.big { span data-number="completion_p50" { (numbers.completion_p50) } " / " span data-number="completion_p95" { (numbers.completion_p95) } } }
                @if report.checks.get("broker").is_some_and(|b| b.status == "disabled") {
                    div.card { div.muted { "Events" } div { "No broker is configured: events stay in the outbox (" code { "steward events tail" } ")." } }
                } @else {
                    div.card { div.muted { "Events waiting for the broker (oldest)" }
                        div.big { span data-number="outbox_pending" { (numbers.outbox_pending) } " (" span data-number="outbox_oldest" { (numbers.outbox_oldest) } ")" } }
                }
            }
        }
        @if tenant.is_some() { p.muted { "Turns and refusals of tenant " (viewer.caller.tenant) "; latencies and the outbox are this instance's." } }
        h2 { "Turns per minute, last hour" }
        (layout::bars("turns per minute", &turns))
        h2 { "Refused per minute, last hour" }
        (layout::bars("refused turns per minute", &refused))
        h2 { "Refusals by category, last hour" }
        @if by_category.is_empty() { p.muted { "None." } } @else {
            table { thead { tr { th { "Category code" } th { "Refused on input" } th { "Cut on output" } } }
                tbody { @for row in &by_category { tr {
                    td { a href={ "/console/turns?verdict=refuse&hours=1&code=" (row.code) } { (row.code) } }
                    td { (row.on_input) } td { (row.on_output) }
                } } } }
        }
        h2 { "Dependencies" }
        table { thead { tr { th { "Dependency" } th { "State" } @if viewer.can(Capability::Ops) { th { "Detail" } } } }
            tbody { @for (name, check) in &report.checks { tr {
                td { (name) } td { span class={ "pill " (check.status) } { (check.status) } }
                @if viewer.can(Capability::Ops) { td.muted { (check.detail.as_deref().unwrap_or_default()) } }
            } } } }
        p.muted { "Checked at " (crate::db::rfc3339(report.checked_at_ms)) "." }
    };
    Ok(layout::page(&viewer, "overview", "Overview", body))
}

/// `GET /console/overview/live`: the overview's numbers every few seconds, as SSE `numbers` events.
pub async fn live(viewer: Viewer, console: web::Data<Console>, metrics: web::Data<Metrics>) -> Result<HttpResponse, ConsoleError> {
    viewer.require_any(&READERS)?;
    let tenant = viewer.tenant_scope().map(str::to_owned);
    let stream = futures_util::stream::unfold((console, metrics, tenant, true), |(console, metrics, tenant, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        let numbers = console.numbers(tenant.as_deref(), &metrics).await.ok()?;
        let event = crate::web::sse_event("numbers", &numbers);
        Some((event, (console, metrics, tenant, false)))
    });
    Ok(HttpResponse::Ok().content_type("text/event-stream").body(crate::web::sse_body(stream, LIVE_EVERY * 3)))
}

/// The `q` quantile (seconds) of a histogram in a Prometheus text exposition,
/// its series summed over labels, interpolated within its bucket; `None`
/// before any observation.
fn quantile(exposition: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for line in exposition.lines().filter(|l| l.starts_with(&prefix)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        *buckets.entry(bound.to_bits()).or_default() += count;
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_iter().map(|(bits, n)| (f64::from_bits(bits), n)).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, cumulative) in sorted {
        if cumulative >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let within = (rank - below) / (cumulative - below).max(f64::MIN_POSITIVE);
            return Some(lower + (bound - lower) * within);
        }
        (lower, below) = (bound, cumulative);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn a_quantile_is_read_from_the_buckets_summed_over_routes() {
        let text = "x_bucket{route=\"a\",le=\"0.1\"} 2\nx_bucket{route=\"a\",le=\"1.0\"} 4\nx_bucket{route=\"a\",le=\"+Inf\"} 4\n\
                    x_bucket{route=\"b\",le=\"0.1\"} 2\nx_bucket{route=\"b\",le=\"1.0\"} 4\nx_bucket{route=\"b\",le=\"+Inf\"} 4\n";
        assert_eq!(quantile(text, "x", 0.5), Some(0.1));
        let p75 = quantile(text, "x", 0.75).unwrap();
        assert!((p75 - 0.55).abs() < 1e-9, "{p75}");
        assert_eq!(quantile("", "x", 0.5), None);
    }
}
