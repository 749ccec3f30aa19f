//! Wiring: adapters into services, services into routes. `Application::build`
//! is shared by `steward serve` and the integration tests (which bind port 0).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use rand::RngCore;

use crate::config::{Secret, Settings};
use crate::db::Database;
use crate::gateway::Gateway;
use crate::identity::KeyStore;
use crate::moderation::Moderator;
use crate::ops::Dependencies;
use crate::orchestrator::{Conversation, ConversationStore, Orchestrator, OrchestratorApi, OrchestratorSettings, TurnLimits};
use crate::policy::{Constitution, PolicyEngine};
use crate::slm::{HttpModelClient, ModelClient, Timeouts};
use crate::telemetry::Metrics;

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Connects, migrates, loads the constitution and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let db = Database::connect(settings.database.url.expose(), settings.database.max_connections)
            .await
            .context("Failed to connect to the database")?;
        db.migrate().await.context("Failed to apply migrations")?;

        let constitution = Constitution::load(&settings.policy.constitution)
            .with_context(|| format!("Failed to load the constitution (policy.constitution = {})", settings.policy.constitution.display()))?;
        let moderator = Arc::new(Moderator::new(&constitution).context("Failed to build the moderator")?);
        let policy = Arc::new(PolicyEngine::new(constitution.hash(), signing_key(&settings.policy.signing_key), settings.policy.verdict_ttl_seconds));
        tracing::info!(constitution = %constitution.name, version = %constitution.version, hash = %policy.active_hash(), "constitution loaded");

        let slm = &settings.slm;
        let timeouts = Timeouts {
            connect: Duration::from_millis(slm.connect_timeout_ms),
            first_token: Duration::from_millis(slm.first_token_timeout_ms),
            idle: Duration::from_millis(slm.idle_timeout_ms),
            total: Duration::from_millis(slm.total_timeout_ms),
        };
        let model: Arc<dyn ModelClient> = Arc::new(HttpModelClient::new(&slm.base_url, &slm.model, timeouts).context("Failed to build the model client")?);
        let metrics = Arc::new(Metrics::new());
        let store = ConversationStore::new(db.clone());
        let limits = TurnLimits {
            max_message_chars: settings.chat.max_message_chars,
            default_max_tokens: slm.default_max_tokens,
            max_tokens_limit: slm.max_tokens_limit,
        };
        let keepalive = Duration::from_millis(settings.server.keepalive_ms);
        let orchestrator: Arc<dyn Conversation> = Arc::new(Orchestrator::new(
            policy.clone(),
            moderator.clone(),
            model.clone(),
            store.clone(),
            metrics.clone(),
            OrchestratorSettings { system_prompt: slm.system_prompt.clone(), max_history_turns: settings.chat.max_history_turns },
        ));
        let gateway = web::Data::new(Gateway {
            moderator,
            policy,
            conversation: orchestrator.clone(),
            store,
            metrics: metrics.clone(),
            limits,
            keepalive,
            model_name: slm.model.clone(),
        });
        let orchestrator_api = web::Data::new(OrchestratorApi { conversation: orchestrator, limits, metrics: metrics.clone(), keepalive });
        let keys = web::Data::new(KeyStore::new(db.clone()));
        let deps = web::Data::new(Dependencies { database: db, model });
        let metrics = web::Data::from(metrics);
        let body_limit = settings.server.body_limit_bytes;

        let listener = TcpListener::bind(&settings.server.bind).with_context(|| format!("Failed to bind {}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(crate::web::json_config(body_limit))
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(gateway.clone())
                .app_data(orchestrator_api.clone())
                .app_data(keys.clone())
                .app_data(deps.clone())
                .app_data(metrics.clone())
                .configure(crate::gateway::configure)
                .configure(crate::orchestrator::configure)
                .configure(crate::ops::configure)
                .default_service(web::to(crate::ops::not_found))
        })
        .listen(listener)?
        .run();
        tracing::info!(port, "steward listening");
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// The configured key, or a random one that only this process can verify.
fn signing_key(configured: &Secret) -> Secret {
    if !configured.expose().is_empty() {
        return configured.clone();
    }
    tracing::warn!("policy.signing_key is empty: signing verdicts with a random per-process key (single instance only)");
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    Secret::new(hex::encode(key))
}
