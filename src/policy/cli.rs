//! `steward constitution dry-run`: what a candidate constitution would change
//! on the stored turns of a window, before anyone activates it;
//! `steward constitution activate`: make one active across the fleet;
//! `steward audit replay`: judge one past turn again under the constitution
//! it was judged by.

use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;

use super::audit::{activate_recorded, ActivationRequest, AuditType};
use super::dry_run::{dry_run, parse_window, PastTurn};
use super::registry::{ConstitutionRegistry, Scope};
use super::{Constitution, ConstitutionHash};
use crate::config::Settings;
use crate::orchestrator::ConversationStore;

#[derive(Debug, Subcommand)]
pub enum ConstitutionCommand {
    /// Store a constitution in the registry (Redis) and make it active for
    /// every tenant without its own, or for one tenant; every instance judges
    /// by it within policy.staleness. Recorded in policy.audit.
    Activate {
        /// The constitution (TOML).
        file: std::path::PathBuf,
        /// Only this tenant's turns.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Judge the stored turns of a window under a candidate document and
    /// report, per category, which verdicts would change. Read-only.
    DryRun {
        /// The candidate constitution (TOML).
        file: std::path::PathBuf,
        /// Only this tenant's turns.
        #[arg(long)]
        tenant: Option<String>,
        /// How far back: `90s`, `30m`, `24h`, `7d`.
        #[arg(long, default_value = "24h")]
        since: String,
        /// At most this many turns, newest first.
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
    },
}

pub async fn run(settings: &Settings, command: ConstitutionCommand) -> anyhow::Result<()> {
    match command {
        ConstitutionCommand::DryRun { file, tenant, since, limit } => {
            let window = parse_window(&since).map_err(anyhow::Error::msg)?;
            let candidate = Constitution::load(&file)?;
            let moderator = std::sync::Arc::new(crate::moderation::candidate_moderator(&settings.moderation, &candidate)?);
            let db = crate::db::Database::connect(settings.database.url.expose(), 2).await.context("Failed to connect to the database")?;
            let since_ms = crate::db::now_ms() - window.as_millis() as i64;
            let stored = ConversationStore::new(db).window(tenant.as_deref(), since_ms, limit.max(0)).await?;
            let turns: Vec<PastTurn> = stored.into_iter().map(PastTurn::try_from).collect::<Result<_, _>>()?;
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
        ConstitutionCommand::Activate { file, tenant } => activate(settings, &file, tenant).await?,
    }
    Ok(())
}

/// Exit status of a replay whose verdict does not reproduce (1 is any other failure).
const NOT_REPRODUCED_EXIT: i32 = 2;
/// Exit status of a replay whose turn was stored without its text.
const WITHHELD_EXIT: i32 = 3;

pub async fn replay(settings: &Settings, turn_id: &str) -> anyhow::Result<()> {
    let db = crate::db::Database::connect(settings.database.url.expose(), 2).await.context("Failed to connect to the database")?;
    let id = crate::ids::TurnId::parse(turn_id)?;
    let record = ConversationStore::new(db).turn(&id).await?.ok_or_else(|| anyhow::anyhow!("no stored turn has the id {turn_id}"))?;
    let hash = ConstitutionHash::parse(&record.constitution_hash)?;
    let text = document_of(settings, &hash).await?;
    let constitution = Constitution::from_toml_str(&text)?;
    anyhow::ensure!(constitution.hash() == hash, "the document stored under {hash} hashes to {}", constitution.hash());
    let moderator = crate::moderation::moderator(&settings.moderation, &constitution)?;
    let turn = PastTurn::try_from(record)?;
    let mut out = serde_json::json!({
        "turn_id": turn.turn_id, "trace_id": turn.trace_id, "constitution_hash": hash.as_str(), "constitution": constitution.name,
        "classifier": constitution.semantic.classifier.map(|c| c.to_string()),
    });
    let Some(replayed) = super::dry_run::replay(&moderator, &turn).await? else {
        out["recorded"] = turn.verdict.header_value().into();
        out["withheld"] = true.into();
        println!("{}", serde_json::to_string_pretty(&out)?);
        eprintln!("turn {turn_id} was refused on input and stored without its text: it cannot be judged again");
        // Distinct statuses let a script tell "cannot replay" from "does not reproduce" and from a failure.
        std::process::exit(WITHHELD_EXIT);
    };
    out["recorded"] = replayed.recorded.clone().into();
    out["replayed"] = replayed.replayed.clone().into();
    out["reproduced"] = replayed.reproduced.into();
    println!("{}", serde_json::to_string_pretty(&out)?);
    if !replayed.reproduced {
        eprintln!("the verdict does not reproduce: recorded {}, now {}", replayed.recorded, replayed.replayed);
        std::process::exit(NOT_REPRODUCED_EXIT);
    }
    eprintln!("the verdict reproduces under {} ({hash}): {}", constitution.name, replayed.replayed);
    Ok(())
}

/// A constitution's text by its hash: from the registry (Redis), else the configured file.
async fn document_of(settings: &Settings, hash: &ConstitutionHash) -> anyhow::Result<String> {
    if !settings.redis.url.expose().is_empty() {
        if let Some(text) = registry(settings).await?.document(hash).await? {
            return Ok(text);
        }
    }
    let (configured, text) = Constitution::read(&settings.policy.constitution)?;
    anyhow::ensure!(configured.hash() == *hash, "constitution {hash} is neither in the registry nor the configured file");
    Ok(text)
}

/// How long the command waits for Redis.
#[cfg(feature = "redis")]
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The actor of an activation from the command line.
const CLI_ACTOR: &str = "steward:cli";

async fn activate(settings: &Settings, file: &std::path::Path, tenant: Option<String>) -> anyhow::Result<()> {
    let (constitution, text) = Constitution::read(file)?;
    let scope = match tenant {
        Some(t) => Scope::Tenant(crate::identity::TenantId::parse(&t)?.as_str().to_owned()),
        None => Scope::Default,
    };
    let registry = registry(settings).await?;
    let db = crate::db::Database::connect(settings.database.url.expose(), 2).await.context("Failed to connect to the database")?;
    db.migrate().await.context("Failed to apply migrations")?;
    let hash = constitution.hash();
    let trace = crate::telemetry::TraceContext::new_root();
    let outbox = crate::events::OutboxStore::new(db, settings.kafka.conversation_topic.clone());
    let request = ActivationRequest {
        scope: &scope,
        actor: CLI_ACTOR,
        constitution: &constitution,
        hash: &hash,
        text: &text,
        trace: &trace,
        via: crate::events::Via::Cli,
    };
    let record = |pending| {
        let outbox = &outbox;
        async move { outbox.append(&[pending]).await.map_err(|e| crate::events::EventsError::Store(e.to_string())) }
    };
    let activation = activate_recorded(registry.as_ref(), &request, &settings.kafka.policy_topic, record).await?;
    let entry = request.entry(AuditType::Activated, &activation);
    if activation.changed {
        eprintln!(
            "{} ({}) is active for {}; every instance judges by it within {:?}",
            constitution.name,
            hash,
            scope_label(&scope),
            settings.policy.staleness.get()
        );
    } else {
        eprintln!("{} ({hash}) was already active for {}: nothing changed", constitution.name, scope_label(&scope));
    }
    println!("{}", serde_json::to_string_pretty(&entry.outcome())?);
    Ok(())
}

fn scope_label(scope: &Scope) -> String {
    scope.tenant().map_or_else(|| "every tenant without its own".to_owned(), |t| format!("tenant {t}"))
}

/// The fleet's registry; embedded mode keeps it inside the running instance.
#[cfg(feature = "redis")]
async fn registry(settings: &Settings) -> anyhow::Result<Box<dyn ConstitutionRegistry>> {
    let url = settings.redis.url.expose();
    if url.is_empty() {
        anyhow::bail!(EMBEDDED);
    }
    let timeout = settings.redis.command_timeout.get();
    let registry = super::RedisRegistry::connect(url, &settings.redis.key_prefix, timeout).context("Failed to configure the Redis client (redis.url)")?;
    registry.connected(CONNECT_WAIT).await?;
    Ok(Box::new(registry))
}

#[cfg(not(feature = "redis"))]
async fn registry(_settings: &Settings) -> anyhow::Result<Box<dyn ConstitutionRegistry>> {
    anyhow::bail!(EMBEDDED)
}

const EMBEDDED: &str = "redis.url is empty: the active constitutions live inside the running instance; \
    activate with PUT /v1/policy/constitution, or change policy.constitution and restart";
