//! The command line: `serve`, `migrate`, `healthcheck`, `keys create|list|revoke`, `events tail`,
//! `audit verify|replay`, `moderation prepare|eval|fit|train` and `constitution dry-run|activate`.

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::Settings;
use crate::db::Database;
use crate::identity::{Capability, KeyStore, TenantId};
use crate::moderation::cli::ModerationCommand;
use crate::policy::cli::ConstitutionCommand;

#[derive(Debug, Parser)]
#[command(name = "steward", version, about = "A governed chat runtime")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and serve the HTTP API.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Ask the server on `server.bind` for /healthz: exit 0 if it answers (the container's HEALTHCHECK).
    Healthcheck,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read the events stored in the outbox.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Check the event trail in Kafka.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Measure moderation on labelled data.
    #[command(subcommand)]
    Moderation(ModerationCommand),
    /// Try a constitution, and make one active.
    #[command(subcommand)]
    Constitution(ConstitutionCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Consume a chained topic (conversation events, `training.audit`, `policy.audit`) and verify
    /// every chain; exits non-zero on any problem.
    Verify {
        /// Comma-separated `host:port` list.
        #[arg(long, value_delimiter = ',', required = true)]
        brokers: Vec<String>,
        #[arg(long, default_value = "conversation.events")]
        topic: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// The checkpoint signer's public key (`steward keys audit-public`): also check the
        /// topic against the signed checkpoints on `--checkpoint-topic`, which finds sessions
        /// whose last events were removed, deleted sessions and forged events.
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long, default_value = "conversation.checkpoints")]
        checkpoint_topic: String,
        /// The topic name the checkpoints were signed for, when `--topic` is a copy of it
        /// under another name (a mirror, a backup); default: `--topic`.
        #[arg(long)]
        checkpointed_as: Option<String>,
    },
    /// Judge one stored turn again under the constitution it was judged by
    /// (fetched by its hash from the registry) and show whether the verdict
    /// reproduces: exit 0 if it does, 2 if not, 3 if the turn's text was
    /// withheld (refused on input) and cannot be judged again, 1 on failure.
    Replay {
        #[arg(long)]
        turn: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print stored conversation events as JSON lines, oldest first.
    Tail {
        /// Keep printing new events as they are stored.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        session: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints the key alone on stdout (it is not stored, only its hash).
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: chat, training:admin, policy:admin, ops.
        #[arg(long, default_value = "chat")]
        capabilities: String,
    },
    /// List keys (without secrets) as JSON lines.
    List,
    /// Revoke a key by id.
    Revoke { id: String },
    /// Print the public key of `events.checkpoint_key`, for `audit verify --public-key`.
    AuditPublic,
    /// Print a new random checkpoint key (32 bytes, base64), for `events.checkpoint_key`.
    AuditGenerate,
}

async fn database(settings: &Settings) -> anyhow::Result<Database> {
    let db = Database::connect(settings.database.url.expose(), settings.database.max_connections.get()).await?;
    db.migrate().await?;
    Ok(db)
}

pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => Application::build(&settings).await?.run_until_stopped(crate::app::terminated()).await?,
        Command::Healthcheck => healthcheck(&settings).await?,
        Command::Migrate => {
            database(&settings).await?;
            eprintln!("migrations applied");
        }
        Command::Events(EventsCommand::Tail { follow, session }) => tail(&settings, follow, session).await?,
        Command::Audit(AuditCommand::Verify { brokers, topic, tenant, session, public_key, checkpoint_topic, checkpointed_as }) => {
            let signed_for = checkpointed_as.as_deref().unwrap_or(&topic);
            let checkpoints = public_key.as_deref().map(|key| Checkpoints { public_key: key, topic: &checkpoint_topic, signed_for });
            audit_verify(&brokers, &topic, tenant.as_deref(), session.as_deref(), checkpoints).await?
        }
        Command::Keys(KeysCommand::AuditPublic) => {
            let key = crate::events::checkpoint::CheckpointKey::from_secret(settings.events.checkpoint_key.expose())?
                .ok_or_else(|| anyhow::anyhow!("events.checkpoint_key is empty: nothing signs checkpoints"))?;
            println!("{}", key.public_hex());
        }
        Command::Keys(KeysCommand::AuditGenerate) => println!("{}", crate::events::checkpoint::CheckpointKey::generate()),
        Command::Audit(AuditCommand::Replay { turn }) => crate::policy::cli::replay(&settings, &turn).await?,
        Command::Moderation(cmd) => crate::moderation::cli::run(&settings, cmd).await?,
        Command::Constitution(cmd) => crate::policy::cli::run(&settings, cmd).await?,
        Command::Keys(cmd) => {
            let keys = KeyStore::new(database(&settings).await?);
            match cmd {
                KeysCommand::Create { tenant, capabilities } => {
                    let tenant = TenantId::parse(&tenant)?;
                    let caps = Capability::parse_list(&capabilities)?;
                    let (record, key) = keys.create(&tenant, &caps).await?;
                    eprintln!("created {} for tenant {} with capabilities {}; the key is shown once:", record.id, record.tenant, record.capabilities);
                    println!("{}", key.expose());
                }
                KeysCommand::List => {
                    for record in keys.list().await? {
                        println!("{}", serde_json::to_string(&record)?);
                    }
                }
                KeysCommand::Revoke { id } => {
                    keys.revoke(&id).await?;
                    eprintln!("revoked {id}");
                }
                KeysCommand::AuditPublic | KeysCommand::AuditGenerate => unreachable!("answered above, without the database"),
            }
        }
    }
    Ok(())
}

async fn healthcheck(settings: &Settings) -> anyhow::Result<()> {
    let port = settings.server.bind.rsplit(':').next().unwrap_or("8080");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(2)).build()?;
    let response = client.get(&url).send().await.map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    Ok(())
}

async fn tail(settings: &Settings, follow: bool, session: Option<String>) -> anyhow::Result<()> {
    let outbox = crate::events::OutboxStore::new(database(settings).await?, settings.kafka.conversation_topic.clone());
    let mut after = 0;
    loop {
        let rows = outbox.tail(&settings.kafka.conversation_topic, session.as_deref(), after, 1000).await?;
        for (id, payload) in &rows {
            println!("{payload}");
            after = *id;
        }
        if rows.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
}

/// Where `audit verify` finds the signed checkpoints of a topic.
pub struct Checkpoints<'a> {
    /// The signer's public key, hex.
    pub public_key: &'a str,
    /// The topic holding the checkpoints.
    pub topic: &'a str,
    /// The name of the topic they were signed for.
    pub signed_for: &'a str,
}

/// Prints one JSON line per chain, then one for the window verified; fails
/// if any chain is broken. With `checkpoints`, also checks the chains
/// against the newest signed checkpoint of each. Reads each topic in one
/// pass, keeping per chain only what [`crate::events::audit::Verifier`] needs.
pub async fn audit_verify(
    brokers: &[String],
    topic: &str,
    tenant: Option<&str>,
    session: Option<&str>,
    checkpoints: Option<Checkpoints<'_>>,
) -> anyhow::Result<()> {
    #[cfg(feature = "kafka")]
    {
        use crate::events::audit::{read, Item, Verifier};
        use crate::events::checkpoint::Head;
        let deadline = std::time::Duration::from_secs(5);
        let chosen = |chain: &str| {
            let (t, s) = chain.split_once(':').unwrap_or((chain, ""));
            tenant.is_none_or(|x| x == t) && session.is_none_or(|x| x == s)
        };
        let mut checkpointed: std::collections::BTreeMap<String, Head> = std::collections::BTreeMap::new();
        let mut earliest: Option<String> = None;
        if let Some(checkpoints) = checkpoints {
            use crate::events::checkpoint::{public_key, verified};
            let key = public_key(checkpoints.public_key).map_err(anyhow::Error::msg)?;
            let (mut good, mut bad) = (0, 0);
            read(brokers, checkpoints.topic, deadline, |item| {
                let Item::Record { value: record, .. } = item else { return };
                if record["topic"].as_str() != Some(checkpoints.signed_for) {
                    return;
                }
                match verified(&record, &key) {
                    Ok(heads) => {
                        good += 1;
                        // RFC 3339 times of one format order as text.
                        if let Some(made) = record["created_at"].as_str() {
                            if earliest.as_deref().is_none_or(|e| made < e) {
                                earliest = Some(made.to_owned());
                            }
                        }
                        for head in heads.into_iter().filter(|h| chosen(&h.chain)) {
                            match checkpointed.get(&head.chain) {
                                Some(newest) if newest.seq >= head.seq => {}
                                _ => {
                                    checkpointed.insert(head.chain.clone(), head);
                                }
                            }
                        }
                    }
                    Err(why) => {
                        bad += 1;
                        println!("{}", serde_json::json!({ "checkpoint": record["checkpoint_id"], "status": "rejected", "reason": why }));
                    }
                }
            })
            .await
            .map_err(anyhow::Error::msg)?;
            eprintln!("{good} signed checkpoint(s) of {} verified, {bad} rejected", checkpoints.signed_for);
            if bad > 0 {
                anyhow::bail!("{bad} checkpoint(s) do not verify with this public key");
            }
        }
        let mut verifier = Verifier::new(checkpointed, earliest);
        read(brokers, topic, deadline, |item| match item {
            Item::Partition { partition, from_offset, to_offset } => verifier.partition(partition, from_offset, to_offset),
            Item::Record { partition, timestamp_ms, value } => {
                let wanted = tenant.is_none_or(|t| value["tenant"].as_str() == Some(t)) && session.is_none_or(|s| value["session_id"].as_str() == Some(s));
                if wanted {
                    verifier.record(partition, timestamp_ms, &value);
                } else {
                    verifier.skip(partition, timestamp_ms);
                }
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let (reports, window) = verifier.finish();
        let broken = reports.iter().filter(|r| !r.problems.is_empty()).count();
        for report in &reports {
            println!("{}", serde_json::to_string(report)?);
        }
        println!("{}", serde_json::json!({ "window": window }));
        match window.retained_from_ms {
            None => eprintln!("{} chain(s) checked from their first event, {broken} broken", reports.len()),
            Some(from) => eprintln!(
                "retention has deleted older records: {} chain(s) checked from their first record written since {}, {broken} broken; {} checkpointed chain(s) wholly before that",
                reports.len(),
                crate::db::rfc3339(from),
                window.outside
            ),
        }
        if broken > 0 {
            anyhow::bail!("audit found problems in {broken} chain(s)");
        }
        Ok(())
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (brokers, topic, tenant, session, checkpoints);
        anyhow::bail!("this build lacks the `kafka` Cargo feature")
    }
}
