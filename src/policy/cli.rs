//! `steward constitution dry-run`: what a candidate constitution would change
//! on the stored turns of a window, before anyone activates it.

use std::time::Instant;

use anyhow::Context;

use super::dry_run::{dry_run, parse_window, PastTurn};
use super::Constitution;
use crate::cli::ConstitutionCommand;
use crate::config::Settings;
use crate::orchestrator::ConversationStore;

pub async fn run(settings: &Settings, command: ConstitutionCommand) -> anyhow::Result<()> {
    match command {
        ConstitutionCommand::DryRun { file, tenant, since, limit } => {
            let window = parse_window(&since).map_err(anyhow::Error::msg)?;
            let candidate = Constitution::load(&file)?;
            let moderator = crate::app::moderator(settings, &candidate)?;
            let db = crate::db::Database::connect(settings.database.url.expose(), 2).await.context("Failed to connect to the database")?;
            let since_ms = crate::db::now_ms() - window.as_millis() as i64;
            let stored = ConversationStore::new(db).window(tenant.as_deref(), since_ms, limit.max(0)).await?;
            let turns: Vec<PastTurn> = stored.into_iter().map(PastTurn::from).collect();
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
