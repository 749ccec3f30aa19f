//! The command line: `serve`, `migrate` and `keys create|list|revoke`.

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::Settings;
use crate::db::Database;
use crate::identity::{Capability, KeyStore, TenantId};

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
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints the key alone on stdout (it is not stored, only its hash).
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: chat, training:admin.
        #[arg(long, default_value = "chat")]
        capabilities: String,
    },
    /// List keys (without secrets) as JSON lines.
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

async fn database(settings: &Settings) -> anyhow::Result<Database> {
    let db = Database::connect(settings.database.url.expose(), settings.database.max_connections).await?;
    db.migrate().await?;
    Ok(db)
}

pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => Application::build(&settings).await?.run_until_stopped().await?,
        Command::Migrate => {
            database(&settings).await?;
            eprintln!("migrations applied");
        }
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
            }
        }
    }
    Ok(())
}
