//! `steward constitution dry-run`: what a candidate constitution would change
//! on the stored turns of a window, before anyone activates it.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::dry_run::{dry_run, PastTurn};
use super::{Constitution, Verdict};
use crate::cli::ConstitutionCommand;
use crate::config::Settings;
use crate::orchestrator::{ConversationStore, FinishReason};

pub async fn run(settings: &Settings, command: ConstitutionCommand) -> anyhow::Result<()> {
    match command {
        ConstitutionCommand::DryRun { file, tenant, since, limit } => {
            let window = parse_window(&since)?;
            let candidate = Constitution::load(&file)?;
            let moderator = crate::app::moderator(settings, &candidate)?;
            let db = crate::db::Database::connect(settings.database.url.expose(), 2).await.context("Failed to connect to the database")?;
            let since_ms = crate::db::now_ms() - window.as_millis() as i64;
            let stored = ConversationStore::new(db).window(tenant.as_deref(), since_ms, limit.max(0)).await?;
            let turns: Vec<PastTurn> = stored.into_iter().map(past_turn).collect();
            eprintln!("judging {} stored turn(s) of the last {since} under {} ({})", turns.len(), candidate.name, candidate.hash());
            let (total, started) = (turns.len(), Instant::now());
            let report = dry_run(&moderator, &turns, |done| {
                if done % 100 == 0 || done == total {
                    eprintln!("{done}/{total} judged, {:.1} s", started.elapsed().as_secs_f64());
                }
            })
            .await?;
            let out = serde_json::json!({ "candidate": { "name": candidate.name, "version": candidate.version, "hash": candidate.hash().as_str() }, "report": report });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

/// A stored turn for the dry run. A turn refused on input was stored without its text.
fn past_turn(turn: crate::orchestrator::TurnRecord) -> PastTurn {
    let verdict = Verdict::parse(&turn.policy_verdict).unwrap_or(Verdict::Allow);
    let withheld = matches!(verdict, Verdict::Refuse(_));
    PastTurn {
        output_refused: !withheld && turn.finish_reason == FinishReason::Refused.as_str(),
        user_message: (!withheld).then_some(turn.user_message),
        assistant_message: turn.assistant_message,
        turn_id: turn.turn_id,
        trace_id: turn.trace_id,
        verdict,
    }
}

/// `90s`, `30m`, `24h`, `7d`.
fn parse_window(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().with_context(|| format!("`{s}`: expected a number and a unit, e.g. 24h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("`{s}`: the unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(n * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_seconds_minutes_hours_and_days() {
        assert_eq!(parse_window("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_window("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_window("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_window("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_window("7").is_err());
        assert!(parse_window("h").is_err());
        assert!(parse_window("3w").is_err());
    }
}
