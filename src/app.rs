//! Wiring: adapters into services, services into routes. `Application::build`
//! is shared by `steward serve` and the integration tests (which bind port 0).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use rand::RngCore;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{PerTenant, Secret, Settings};
use crate::db::Database;
use crate::events::{AuditTrail, EventLog, EventPublisher, OutboxStore, Relay};
use crate::gateway::Gateway;
use crate::identity::{AuthFailures, Authenticator, KeyCache, KeyPace, KeyStore, TrustedProxies};
use crate::ops::OpsAccess;
use crate::orchestrator::{Conversation, ConversationStore, Orchestrator, OrchestratorApi, OrchestratorSettings, Pacing, TurnLimits};
use crate::policy::{BuildModerator, Constitution, ConstitutionRegistry, Freshness, Judge, Judges, MemoryRegistry, PolicyEngine};
use crate::readiness::{Dependencies, Readiness};
use crate::slm::{CircuitSettings, FairGate, FairModelClient, HttpModelClient, ModelCatalog, ModelClient, Router, Timeouts, Upstream};
use crate::telemetry::Metrics;

/// Connections of the key-lookup pool, apart from `database.max_connections`.
const IDENTITY_CONNECTIONS: u32 = 2;

pub struct Application {
    port: u16,
    server: Server,
    /// Stops the background tasks (event writer, relay) after the server.
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Stops the turns still running when the shutdown's grace period is over.
    turns: CancellationToken,
    /// How long a shutdown lets running turns finish (`server.shutdown_grace`).
    grace: Duration,
    /// Signs the trail's checkpoints, the last one at shutdown; `None` without a key.
    checkpoints: Option<Arc<crate::events::checkpoint::Checkpointer>>,
    /// The OTLP span exporter, flushed at the end.
    spans: Option<crate::telemetry::spans::SpanExport>,
}

impl Application {
    /// Connects, migrates, loads the constitution and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let spans = match settings.telemetry.otlp_endpoint.as_str() {
            "" => None,
            endpoint => {
                let export = crate::telemetry::spans::SpanExport::start(endpoint, "steward")
                    .context("Failed to start the OTLP span exporter (telemetry.otlp_endpoint)")?;
                tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
                Some(export)
            }
        };
        let acquire = settings.database.acquire_timeout.get();
        let db = Database::connect_waiting(settings.database.url.expose(), settings.database.max_connections.get(), acquire)
            .await
            .context("Failed to connect to the database")?;
        db.migrate().await.context("Failed to apply migrations")?;

        let (constitution, text) = Constitution::read(&settings.policy.constitution)
            .with_context(|| format!("Failed to load the constitution (policy.constitution = {})", settings.policy.constitution.display()))?;
        let build: BuildModerator = {
            let settings = Arc::new(settings.clone());
            Arc::new(move |constitution: &Constitution| crate::moderation::moderator(&settings.moderation, constitution))
        };
        let seed = Arc::new(Judge { hash: constitution.hash(), moderator: Arc::new(build(&constitution)?), constitution, text });
        tracing::info!(constitution = %seed.constitution.name, version = %seed.constitution.version, hash = %seed.hash, "configured constitution loaded");
        let policy = PolicyEngine::new(signing_key(&settings.policy.signing_key), verdict_seconds(settings.policy.verdict_ttl));
        let redis = redis_connection(settings)?;
        let policy = Arc::new(match verdict_ledger(settings, &redis) {
            Some(ledger) => policy.with_ledger(ledger),
            None => policy,
        });

        let slm = &settings.slm;
        let timeouts = Timeouts {
            connect: slm.connect_timeout.get(),
            first_token: slm.first_token_timeout.get(),
            idle: slm.idle_timeout.get(),
            total: slm.total_timeout.get(),
        };
        let metrics = Arc::new(Metrics::new());
        let router = model_router(slm, timeouts, &metrics)?;
        let first_token = slm.first_token_timeout.get();
        let model: Arc<dyn ModelClient> = Arc::new(FairModelClient::new(Arc::new(router.clone()), FairGate::new(slm.max_concurrent), first_token));
        let store = ConversationStore::new(db.clone());
        let (cancel, tasks, turns) = (CancellationToken::new(), TaskTracker::new(), CancellationToken::new());
        let grace = settings.server.shutdown_grace;
        let (events, publisher) = start_events(settings, &db, &metrics, &cancel, &tasks);
        let checkpoints = start_checkpoints(settings, &db, &events, &cancel, &tasks);
        let auditor = AuditTrail { events: events.clone(), topic: settings.kafka.policy_topic.clone() };
        let judges = start_judges(settings, &redis, build, seed, auditor.clone(), &cancel, &tasks).await?;
        let limiter = limiter(settings, &redis, &metrics, &tasks);
        let (training, redis) = start_training(settings, &db, &redis, &events, &metrics, &cancel, &tasks)?;
        let limits = TurnLimits {
            max_message_chars: settings.chat.max_message_chars,
            default_max_tokens: slm.default_max_tokens,
            max_tokens_limit: slm.max_tokens_limit,
        };
        let keepalive = settings.server.keepalive.get();
        let guard = guard(&settings.moderation.guard)?;
        let orchestrator: Arc<dyn Conversation> = Arc::new(Orchestrator::new(
            policy.clone(),
            judges.clone(),
            model.clone(),
            store.clone(),
            metrics.clone(),
            events.clone(),
            OrchestratorSettings {
                guard: guard.clone(),
                system_prompt: slm.system_prompt.clone(),
                max_history_turns: settings.chat.max_history_turns,
                pacing: Pacing { buffer: settings.server.stream_buffer_events.get(), write_stall: settings.server.write_stall.get(), shutdown: turns.clone() },
            },
        ));
        let gateway = web::Data::new(Gateway {
            judges: judges.clone(),
            policy,
            conversation: orchestrator.clone(),
            store,
            metrics: metrics.clone(),
            events,
            training: training.clone(),
            limits,
            keepalive,
            socket_auth_timeout: settings.server.socket_auth_timeout.get(),
            models: router.catalog(),
            store_refused_text: settings.chat.store_refused_text,
            limiter,
            caller_system: PerTenant::new(settings.chat.caller_system_prompt, &settings.chat.caller_system_prompt_tenants),
            dispatch: PerTenant::new(settings.moderation.dispatch, &settings.moderation.dispatch_tenants),
            guard: guard.clone(),
            openai_lenient: PerTenant::new(settings.openai.lenient, &settings.openai.lenient_tenants),
            allowed_tools: Arc::new(settings.openai.allowed_tools.clone()),
        });
        let policy_api = web::Data::new(crate::policy::PolicyApi {
            judges,
            auditor,
            moderation: Arc::new(settings.moderation.clone()),
            store: ConversationStore::new(db.clone()),
        });
        let orchestrator_api = web::Data::new(OrchestratorApi {
            conversation: orchestrator,
            training: training.clone(),
            limits,
            metrics: metrics.clone(),
            keepalive,
            socket_auth_timeout: settings.server.socket_auth_timeout.get(),
            models: router.catalog(),
        });
        let keys = KeyCache::new(
            // A small pool of its own: a flood of requests waiting on key lookups cannot take the
            // connections the event writer needs.
            KeyStore::new(
                Database::connect(settings.database.url.expose(), IDENTITY_CONNECTIONS).await.context("Failed to connect to the database (key lookups)")?,
            ),
            settings.identity.key_cache,
            settings.identity.key_cache_entries,
        );
        let proxies = TrustedProxies::parse(&settings.server.trusted_proxies, settings.server.forwarded_header)
            .map_err(|reason| anyhow::anyhow!("server.trusted_proxies: {reason}"))?;
        let failures = AuthFailures::new(settings.identity.max_failed_auth_per_minute);
        let pace = KeyPace::new(settings.identity.requests_per_second_per_key, settings.identity.burst_per_key);
        let auth = web::Data::new(Authenticator::new(keys, failures, pace, proxies, metrics.clone()));
        let training = web::Data::from(training);
        let console = web::Data::new(console(settings, &db));
        let deps = Dependencies { database: db, model: router, broker: publisher, redis };
        let readiness = web::Data::from(Readiness::start(deps, settings.server.readiness_refresh.get(), &cancel, &tasks).await);
        let ops = web::Data::new(OpsAccess { metrics_require_ops: settings.server.metrics_require_ops });
        let metrics = web::Data::from(metrics);
        let body_limit = settings.server.body_limit_bytes;
        let send_buffer = settings.server.send_buffer_bytes;

        let listener = TcpListener::bind(&settings.server.bind).with_context(|| format!("Failed to bind {}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(crate::web::json_config(body_limit))
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(gateway.clone())
                .app_data(orchestrator_api.clone())
                .app_data(policy_api.clone())
                .app_data(auth.clone())
                .app_data(training.clone())
                .app_data(readiness.clone())
                .app_data(ops.clone())
                .app_data(metrics.clone())
                .app_data(console.clone())
                .configure(crate::gateway::configure)
                .configure(crate::orchestrator::configure)
                .configure(crate::policy::configure)
                .configure(crate::training::configure)
                .configure(crate::ops::configure)
                .configure(crate::openapi::configure)
                .configure(crate::console::configure(4 * body_limit))
                .default_service(web::to(crate::ops::not_found))
        })
        // Without TCP_NODELAY the last small frames of a stream wait for the client's delayed ACK on a reused connection.
        .tcp_nodelay(true)
        .on_connect(move |connection, _| bound_send_buffer(connection, send_buffer))
        // A client that closes its connection ends the response at once, also while a turn waits
        // for its first token (nothing written yet would reveal it): the turn is recorded
        // cancelled and its model request aborted.
        .h1_allow_half_closed(false)
        // Signals are the caller's (`run_until_stopped`); connections still open a moment
        // after the running turns were stopped are closed.
        .disable_signals()
        .shutdown_timeout(grace.as_secs() + 5)
        .listen(listener)?
        .run();
        tracing::info!(port, "steward listening");
        Ok(Self { port, server, cancel, tasks, turns, grace, checkpoints, spans })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then stops gracefully: no new
    /// connections; running turns may finish within the grace period, and
    /// those still running then end as cancelled (recorded, with their
    /// `done`); then the event writer drains its queue, and the relay
    /// publishes what is pending (within the grace period) and releases its
    /// lease.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let served = tokio::select! {
            served = &mut server => served,
            () = shutdown => {
                tracing::info!(grace_ms = self.grace.as_millis() as u64, "shutting down: running turns may finish within the grace period");
                let stopping = handle.stop(true);
                tokio::pin!(stopping);
                if tokio::time::timeout(self.grace, &mut stopping).await.is_err() {
                    tracing::warn!("grace period over: stopping the turns still running");
                    self.turns.cancel();
                    stopping.await;
                }
                server.await
            }
        };
        let served = served.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // The last checkpoint covers the turns that ended during the shutdown.
        if let Some(checkpoints) = &self.checkpoints {
            if let Err(err) = checkpoints.checkpoint().await {
                tracing::warn!(error = %err, "the shutdown's checkpoint was not written");
            }
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(spans) = &self.spans {
            spans.shutdown();
        }
        served
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): what `steward serve` stops on.
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Bounds the kernel send buffer of a client connection (`server.send_buffer_bytes`; 0 leaves it).
fn bound_send_buffer(connection: &dyn std::any::Any, bytes: usize) {
    if bytes == 0 {
        return;
    }
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(err) = socket2::SockRef::from(stream).set_send_buffer_size(bytes) {
            tracing::warn!(error = %err, "could not bound a connection's send buffer");
        }
    }
}

/// The configured key, or a random one that only this process can verify.
/// A verdict's lifetime in whole seconds (its expiry is a Unix time), rounded up.
/// The operator's guard, or the disabled one.
fn guard(settings: &crate::config::GuardSettings) -> anyhow::Result<crate::moderation::guard::GuardPolicy> {
    use crate::config::GuardKindSetting;
    use crate::moderation::guard::{GuardKind, GuardPolicy, HttpGuard};
    let kind = match settings.kind {
        GuardKindSetting::Off => return Ok(GuardPolicy::disabled()),
        GuardKindSetting::Chat => GuardKind::Chat,
        GuardKindSetting::ModerationApi => GuardKind::ModerationApi,
    };
    let api_key = Some(settings.api_key.expose().to_owned()).filter(|key| !key.is_empty());
    let guard = HttpGuard::new(kind, &settings.base_url, &settings.model, api_key, settings.timeout.get()).context("Failed to build the guard's client")?;
    tracing::info!(kind = ?settings.kind, base_url = %settings.base_url, model = %settings.model, "guard configured");
    Ok(GuardPolicy { guard: Arc::new(guard), guarded: true, failure: Arc::new(PerTenant::new(settings.on_failure, &settings.on_failure_tenants)) })
}

/// The model servers behind one router (one upstream when `[[slm.upstreams]]` lists none).
fn model_router(slm: &crate::config::SlmSettings, timeouts: Timeouts, metrics: &Metrics) -> anyhow::Result<Arc<Router>> {
    let circuit = CircuitSettings { failures: slm.circuit_failures.get(), cooldown: slm.circuit_cooldown.get(), max_cooldown: slm.circuit_max_cooldown.get() };
    let mut upstreams = Vec::new();
    for upstream in slm.upstreams() {
        let timeouts = Timeouts {
            connect: upstream.connect_timeout.map_or(timeouts.connect, |t| t.get()),
            first_token: upstream.first_token_timeout.map_or(timeouts.first_token, |t| t.get()),
            ..timeouts
        };
        let api_key = upstream
            .api_key_env
            .as_ref()
            .map(|var| std::env::var(var).with_context(|| format!("{var} (slm.upstreams {}) is not set", upstream.name)))
            .transpose()?;
        let served = upstream.model.as_deref().unwrap_or(&slm.model);
        let client = HttpModelClient::new(&upstream.base_url, served, timeouts, api_key)
            .with_context(|| format!("Failed to build the client of upstream {}", upstream.name))?;
        upstreams.push(Upstream::new(&upstream.name, Arc::new(client), upstream.weight.get(), upstream.max_concurrent, circuit, &metrics.upstreams()));
    }
    Ok(Router::new(upstreams, model_catalog(slm), slm.max_attempts.get() as usize))
}

/// The model names and their upstreams (by index in `slm.upstreams()`), checked by `Settings::validate`.
fn model_catalog(slm: &crate::config::SlmSettings) -> Arc<ModelCatalog> {
    let names: Vec<String> = slm.upstreams().into_iter().map(|u| u.name).collect();
    let models = slm.models().into_iter().map(|m| (m.name, m.upstreams.iter().filter_map(|u| names.iter().position(|n| n == u)).collect())).collect();
    Arc::new(ModelCatalog::new(models, slm.tenant_models.clone()))
}

fn verdict_seconds(ttl: crate::durations::NonZeroDuration) -> u64 {
    u64::try_from(ttl.get().as_millis().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn signing_key(configured: &Secret) -> Secret {
    if !configured.expose().is_empty() {
        return configured.clone();
    }
    tracing::warn!("policy.signing_key is empty: signing verdicts with a random per-process key (single instance only)");
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    Secret::new(hex::encode(key))
}

/// The outbox writer and the relay (with a Kafka publisher when brokers are configured).
fn start_events(
    settings: &Settings,
    db: &Database,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> (EventLog, Option<Arc<dyn EventPublisher>>) {
    let store = OutboxStore::new(db.clone(), settings.kafka.conversation_topic.clone());
    let committed = Arc::new(Notify::new());
    let drain = settings.server.shutdown_grace;
    let events = EventLog::start(store.clone(), committed.clone(), metrics.clone(), cancel.clone(), drain, tasks);
    let publisher = publisher(settings);
    let relay = Relay { store, publisher: publisher.clone(), metrics: metrics.clone(), settings: settings.outbox.clone(), drain, committed };
    tasks.spawn(relay.run(cancel.clone()));
    (events, publisher)
}

/// What the console reads: sessions, turns, the outbox, and the checkpoints' public key.
fn console(settings: &Settings, db: &Database) -> crate::console::Console {
    let checkpoint_key = crate::events::checkpoint::CheckpointKey::from_secret(settings.events.checkpoint_key.expose())
        .ok()
        .flatten()
        .and_then(|key| crate::events::checkpoint::public_key(&key.public_hex()).ok());
    crate::console::Console {
        sessions: crate::console::ConsoleSessions::new(db.clone(), &settings.console),
        turns: ConversationStore::new(db.clone()),
        outbox: OutboxStore::new(db.clone(), settings.kafka.conversation_topic.clone()),
        keys: crate::identity::KeyStore::new(db.clone()),
        topics: crate::console::Topics {
            conversation: settings.kafka.conversation_topic.clone(),
            checkpoint: settings.kafka.checkpoint_topic.clone(),
            training: settings.kafka.training_topic.clone(),
            policy: settings.kafka.policy_topic.clone(),
        },
        checkpoint_key,
    }
}

/// The checkpointer of the trail, when `events.checkpoint_key` is set.
fn start_checkpoints(
    settings: &Settings,
    db: &Database,
    events: &EventLog,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Option<Arc<crate::events::checkpoint::Checkpointer>> {
    use crate::events::checkpoint::{CheckpointKey, Checkpointer};
    // A weak key was refused when the settings were validated.
    let Ok(Some(key)) = CheckpointKey::from_secret(settings.events.checkpoint_key.expose()) else {
        tracing::warn!("events.checkpoint_key is empty: the trail is not checkpointed (audit verify checks its hash chains only)");
        return None;
    };
    tracing::info!(public_key = %key.public_hex(), topic = %settings.kafka.checkpoint_topic, "signing checkpoints of the event trail");
    let checkpointer = Arc::new(Checkpointer {
        db: db.clone(),
        events: events.clone(),
        key,
        topic: settings.kafka.checkpoint_topic.clone(),
        conversation_topic: settings.kafka.conversation_topic.clone(),
    });
    tasks.spawn(checkpointer.clone().run(settings.events.checkpoint_interval.get(), cancel.clone()));
    Some(checkpointer)
}

#[cfg(feature = "kafka")]
fn publisher(settings: &Settings) -> Option<Arc<dyn EventPublisher>> {
    if settings.kafka.brokers.is_empty() {
        tracing::info!("kafka.brokers is empty: events stay in the outbox (steward events tail)");
        return None;
    }
    Some(Arc::new(crate::events::kafka::KafkaPublisher::new(settings.kafka.clone())))
}

#[cfg(not(feature = "kafka"))]
fn publisher(_settings: &Settings) -> Option<Arc<dyn EventPublisher>> {
    None
}

/// The instance's one Redis connection, shared by the training lock store and
/// the verdict ledger; `None` when `redis.url` is empty.
#[cfg(feature = "redis")]
type RedisConnection = Option<fred::prelude::Client>;
#[cfg(not(feature = "redis"))]
type RedisConnection = Option<std::convert::Infallible>;

#[cfg(feature = "redis")]
fn redis_connection(settings: &Settings) -> anyhow::Result<RedisConnection> {
    let url = settings.redis.url.expose();
    if url.is_empty() {
        return Ok(None);
    }
    let client = crate::redis_client::connect(url, redis_timeout(settings)).context("Failed to configure the Redis client (redis.url)")?;
    Ok(Some(client))
}

#[cfg(not(feature = "redis"))]
fn redis_connection(settings: &Settings) -> anyhow::Result<RedisConnection> {
    if settings.redis.url.expose().is_empty() {
        return Ok(None);
    }
    anyhow::bail!("redis.url is set but this build lacks the `redis` Cargo feature")
}

#[cfg(feature = "redis")]
fn redis_timeout(settings: &Settings) -> Duration {
    settings.redis.command_timeout.get()
}

/// How long a start waits for the registry's first read.
const REGISTRY_START_WAIT: Duration = Duration::from_secs(3);

/// The instance's judges over the configured registry, read once before
/// serving (an unreadable registry is logged; turns wait for it) and kept
/// current in the background.
async fn start_judges(
    settings: &Settings,
    redis: &RedisConnection,
    build: BuildModerator,
    seed: Arc<Judge>,
    auditor: AuditTrail,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Arc<Judges>> {
    let policy = &settings.policy;
    let freshness = Freshness { staleness: policy.staleness.get(), fail_open: policy.fail_open };
    if policy.fail_open {
        tracing::warn!("policy.fail_open is on: while the registry is unreachable, turns are judged by a copy older than policy.staleness");
    }
    let registry: Arc<dyn ConstitutionRegistry> = match constitution_registry(settings, redis)? {
        Some(registry) => registry,
        None => {
            tracing::info!("redis.url is empty: the active constitutions are held in process (single instance only)");
            Arc::new(MemoryRegistry::default())
        }
    };
    let judges = Arc::new(Judges::new(registry, build, freshness, seed, auditor));
    // The Redis connection is still being made: a few tries before serving.
    let deadline = std::time::Instant::now() + REGISTRY_START_WAIT;
    loop {
        match judges.refresh().await {
            Ok(()) => {
                // The active constitutions other than the configured file are built in the background.
                if !judges.settled(deadline.saturating_duration_since(std::time::Instant::now())).await {
                    tracing::warn!("an active constitution is not loaded yet: its tenants' turns are refused until it is");
                }
                break;
            }
            Err(err) if std::time::Instant::now() >= deadline => {
                tracing::warn!(error = %err, "the constitution registry cannot be read yet: turns are refused until it can");
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    tasks.spawn(judges.clone().run(cancel.clone()));
    Ok(judges)
}

#[cfg(feature = "redis")]
fn constitution_registry(settings: &Settings, redis: &RedisConnection) -> anyhow::Result<Option<Arc<dyn ConstitutionRegistry>>> {
    let Some(client) = redis.clone() else { return Ok(None) };
    let subscriber = crate::redis_client::subscriber(settings.redis.url.expose(), redis_timeout(settings))
        .context("Failed to configure the Redis subscriber (redis.url)")?;
    Ok(Some(Arc::new(crate::policy::RedisRegistry::new(client, subscriber, &settings.redis.key_prefix, redis_timeout(settings)))))
}

#[cfg(not(feature = "redis"))]
fn constitution_registry(_settings: &Settings, _redis: &RedisConnection) -> anyhow::Result<Option<Arc<dyn ConstitutionRegistry>>> {
    Ok(None)
}

/// Tenant limits, counted in Redis when configured (shared by every instance), else in this process.
fn limiter(settings: &Settings, redis: &RedisConnection, metrics: &Arc<Metrics>, tasks: &TaskTracker) -> Arc<crate::limits::Limiter> {
    use crate::limits::{LimitStore, Limiter, MemoryLimits, TenantLimits};
    let store: Arc<dyn LimitStore> = limit_store(settings, redis).unwrap_or_else(|| Arc::new(MemoryLimits::default()));
    let l = &settings.limits;
    let defaults = TenantLimits {
        max_concurrent_streams: l.max_concurrent_streams,
        requests_per_second: l.requests_per_second,
        burst: l.burst,
        tokens_per_minute: l.tokens_per_minute,
    };
    // No turn outlives the model's total deadline: a slot an instance could not give back frees itself after it.
    let lease = settings.slm.total_timeout.get() + Duration::from_secs(60);
    Arc::new(Limiter::new(store, defaults, l.tenants.clone(), lease, metrics.clone(), tasks.clone()))
}

#[cfg(feature = "redis")]
fn limit_store(settings: &Settings, redis: &RedisConnection) -> Option<Arc<dyn crate::limits::LimitStore>> {
    let client = redis.clone()?;
    Some(Arc::new(crate::limits::RedisLimits::new(client, &settings.redis.key_prefix, redis_timeout(settings))))
}

#[cfg(not(feature = "redis"))]
fn limit_store(_settings: &Settings, _redis: &RedisConnection) -> Option<Arc<dyn crate::limits::LimitStore>> {
    None
}

/// Where verdicts accepted over HTTP are claimed: Redis when configured (so a
/// verdict is good once across the fleet), else this process.
#[cfg(feature = "redis")]
fn verdict_ledger(settings: &Settings, redis: &RedisConnection) -> Option<Arc<dyn crate::policy::VerdictLedger>> {
    let client = redis.clone()?;
    Some(Arc::new(crate::policy::RedisLedger::new(client, &settings.redis.key_prefix, redis_timeout(settings))))
}

#[cfg(not(feature = "redis"))]
fn verdict_ledger(_settings: &Settings, _redis: &RedisConnection) -> Option<Arc<dyn crate::policy::VerdictLedger>> {
    None
}

#[cfg(feature = "redis")]
type RedisHandle = Option<Arc<crate::training::RedisLockStore>>;
#[cfg(not(feature = "redis"))]
type RedisHandle = Option<()>;

/// The training service over the configured lock store, and its expiry watcher.
fn start_training(
    settings: &Settings,
    db: &Database,
    redis: &RedisConnection,
    events: &EventLog,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<(Arc<crate::training::TrainingService>, RedisHandle)> {
    use crate::training::{InMemoryLockStore, LockStore, TrainingService};
    let (store, redis): (Arc<dyn LockStore>, RedisHandle) = match redis {
        None => {
            tracing::info!("redis.url is empty: training locks are held in process (single instance only)");
            (Arc::new(InMemoryLockStore::default()), None)
        }
        Some(client) => redis_store(settings, client),
    };
    let service = Arc::new(TrainingService::new(
        store,
        crate::training::FencingLedger::new(db.clone()),
        AuditTrail { events: events.clone(), topic: settings.kafka.training_topic.clone() },
        metrics.clone(),
        settings.training.clone(),
    ));
    let every = settings.training.expiry_check.get();
    tasks.spawn(crate::training::watch(service.clone(), metrics.clone(), every, cancel.clone()));
    Ok((service, redis))
}

#[cfg(feature = "redis")]
fn redis_store(settings: &Settings, client: &fred::prelude::Client) -> (Arc<dyn crate::training::LockStore>, RedisHandle) {
    let store = Arc::new(crate::training::RedisLockStore::new(client.clone(), &settings.redis.key_prefix, redis_timeout(settings)));
    (store.clone(), Some(store))
}

#[cfg(not(feature = "redis"))]
fn redis_store(_settings: &Settings, never: &std::convert::Infallible) -> (Arc<dyn crate::training::LockStore>, RedisHandle) {
    match *never {}
}
