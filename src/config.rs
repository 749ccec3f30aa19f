//! Layered configuration: `config/default.toml`, then an optional profile file
//! (`config/<STEWARD_PROFILE>.toml`), then `STEWARD_<SECTION>__<KEY>` environment
//! variables. Unknown keys are errors, and [`Settings::validate`] names the key
//! that is wrong.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::durations::NonZeroDuration;
use crate::events::{KafkaSettings, OutboxSettings};
use crate::training::TrainingSettings;

/// A secret that never appears in `Debug` output or logs.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub identity: IdentitySettings,
    pub slm: SlmSettings,
    pub policy: PolicySettings,
    pub moderation: ModerationSettings,
    pub chat: ChatSettings,
    pub kafka: KafkaSettings,
    pub outbox: OutboxSettings,
    pub redis: RedisSettings,
    pub training: TrainingSettings,
    pub telemetry: TelemetrySettings,
    pub limits: LimitsSettings,
    pub events: EventsSettings,
    pub console: crate::console::ConsoleSettings,
    #[serde(default)]
    pub openai: OpenAiSettings,
}

/// `[openai]`: the OpenAI facade (`POST /v1/chat/completions`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSettings {
    /// Ignore request fields OpenAI's API is not known to have (logged and counted)
    /// instead of refusing them with `unsupported_parameter`.
    pub lenient: bool,
    /// Per-tenant exceptions to `lenient`.
    pub lenient_tenants: std::collections::HashMap<String, bool>,
    /// Per tenant, the only tool names its requests may declare (`tools`); a
    /// tenant not listed may declare any, one listed with `[]` none.
    pub allowed_tools: std::collections::HashMap<String, Vec<String>>,
}

/// Signed checkpoints of the event trail (see `crate::events::checkpoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    /// How often changed chains are checkpointed (and once at shutdown).
    pub checkpoint_interval: NonZeroDuration,
    /// The Ed25519 signing key's seed: 32 random bytes in base64 (or hex),
    /// from `steward keys audit-generate`. Empty = no checkpoints.
    pub checkpoint_key: Secret,
}

/// Per-tenant limits on chat turns (see `crate::limits`): the defaults, and
/// overrides under `limits.tenants.<tenant>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    pub max_concurrent_streams: u32,
    pub requests_per_second: f64,
    pub burst: u32,
    pub tokens_per_minute: u32,
    #[serde(default)]
    pub tenants: std::collections::HashMap<String, crate::limits::TenantLimits>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// `host:port`; port 0 picks a free port (tests).
    pub bind: String,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// Interval of SSE `: keep-alive` comments and of WebSocket pings.
    pub keepalive: NonZeroDuration,
    /// A WebSocket that has not authenticated within this is closed (1008).
    pub socket_auth_timeout: NonZeroDuration,
    /// Events a turn may run ahead of a client that does not read them.
    pub stream_buffer_events: NonZeroUsize,
    /// An event that waits this long for a client to read ends the turn
    /// (`client_too_slow`).
    pub write_stall: NonZeroDuration,
    /// Kernel send buffer of each client connection, in bytes (0 keeps the
    /// system's autotuned one): with the event buffer, bounds what a client
    /// that stops reading can hold before the write-stall deadline runs.
    pub send_buffer_bytes: usize,
    /// On SIGTERM, how long running turns may go on before they are stopped
    /// (recorded cancelled); the relay's last publish has as long again.
    #[serde(deserialize_with = "crate::durations::deserialize")]
    pub shutdown_grace: Duration,
    /// How often the dependencies are checked for `/readyz`, which serves the last result.
    pub readiness_refresh: NonZeroDuration,
    /// Whether `/metrics` needs a key with capability `ops`.
    pub metrics_require_ops: bool,
    /// Addresses and CIDR ranges of the proxies in front of Steward, whose
    /// `Forwarded` / `X-Forwarded-For` name the client; from anyone else those
    /// headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The one header those proxies write the client's address in: `x-forwarded-for` or
    /// `forwarded` (a proxy appending to one passes the other through as the client wrote it).
    #[serde(default)]
    pub forwarded_header: crate::identity::ForwardedHeader,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// How long an authenticated key is remembered (the longest a revocation
    /// takes to apply on an instance); `0s` reads the database on every request.
    #[serde(deserialize_with = "crate::durations::deserialize")]
    pub key_cache: Duration,
    /// Most keys remembered at once.
    pub key_cache_entries: usize,
    /// Unknown keys one client address may send per minute before it is
    /// refused (429) without a lookup; 0 = no bound.
    pub max_failed_auth_per_minute: u32,
    /// Requests one key may make per second on any route (0 = no bound) …
    pub requests_per_second_per_key: f64,
    /// … and at once after a quiet spell.
    pub burst_per_key: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` (embedded) or `postgres://…`.
    pub url: Secret,
    pub max_connections: NonZeroU32,
    /// Longest a caller waits for a free connection of the pool before it
    /// gets a pool timeout (which the outbox writer retries).
    pub acquire_timeout: NonZeroDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlmSettings {
    /// OpenAI-compatible base URL, ending in `/v1`.
    pub base_url: String,
    pub model: String,
    /// Sent as the first message of every conversation unless empty.
    pub system_prompt: String,
    pub connect_timeout: NonZeroDuration,
    pub first_token_timeout: NonZeroDuration,
    pub idle_timeout: NonZeroDuration,
    pub total_timeout: NonZeroDuration,
    pub default_max_tokens: u32,
    /// Model calls at once (the server's parallel slots; 0 = no bound): beyond, calls wait
    /// for a slot with the tenants waiting served in turn (see `crate::slm::FairGate`).
    pub max_concurrent: usize,
    pub max_tokens_limit: u32,
    /// The model servers; empty means one, `default`, at `base_url` serving `model`.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSettings>,
    /// The model names clients may ask for, each with the upstreams serving it (the first
    /// is the default); empty means one, `model`, served by every upstream.
    #[serde(default)]
    pub models: Vec<ModelSettings>,
    /// Tenants limited to some model names (e.g. `{ acme = ["small"] }`); others may use every one.
    #[serde(default)]
    pub tenant_models: std::collections::HashMap<String, Vec<String>>,
    /// Attempts per turn, each at another upstream, before the first token reached the client.
    pub max_attempts: NonZeroU32,
    /// Failed attempts in a row that put an upstream in cooldown (its circuit open).
    pub circuit_failures: NonZeroU32,
    /// The first cooldown; each failed probe doubles it, up to `circuit_max_cooldown`.
    pub circuit_cooldown: NonZeroDuration,
    pub circuit_max_cooldown: NonZeroDuration,
}

/// One model server under `[[slm.upstreams]]`; what it leaves out comes from `[slm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Named in events, metrics and readiness.
    pub name: String,
    /// OpenAI-compatible base URL, ending in `/v1`.
    pub base_url: String,
    /// The model name this server serves (`slm.model` when left out).
    #[serde(default)]
    pub model: Option<String>,
    /// Its share of the turns when the upstreams are equally busy.
    #[serde(default = "one")]
    pub weight: NonZeroU32,
    /// Requests it takes at once (its parallel slots); 0 = no bound of its own.
    #[serde(default)]
    pub max_concurrent: usize,
    /// The environment variable holding its API key, sent as `Authorization: Bearer`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<NonZeroDuration>,
    #[serde(default)]
    pub first_token_timeout: Option<NonZeroDuration>,
}

/// One model name under `[[slm.models]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// The name a client asks for (`model` in its request).
    pub name: String,
    /// The `[[slm.upstreams]]` names serving it.
    pub upstreams: Vec<String>,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

impl SlmSettings {
    /// The model names as configured, or the one `model` over every upstream.
    pub fn models(&self) -> Vec<ModelSettings> {
        if !self.models.is_empty() {
            return self.models.clone();
        }
        vec![ModelSettings { name: self.model.clone(), upstreams: self.upstreams().into_iter().map(|u| u.name).collect() }]
    }

    /// The upstreams as configured, or the single one `base_url` and `model` describe.
    pub fn upstreams(&self) -> Vec<UpstreamSettings> {
        if !self.upstreams.is_empty() {
            return self.upstreams.clone();
        }
        vec![UpstreamSettings {
            name: "default".into(),
            base_url: self.base_url.clone(),
            model: None,
            weight: one(),
            max_concurrent: 0,
            api_key_env: None,
            connect_timeout: None,
            first_token_timeout: None,
        }]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Path of the constitution file, relative to the working directory.
    pub constitution: PathBuf,
    /// HMAC key for policy verdicts. Empty = a random key per process (single instance only).
    pub signing_key: Secret,
    /// How long a signed verdict stays valid.
    pub verdict_ttl: NonZeroDuration,
    /// How old the instance's copy of the active constitutions may grow (it
    /// is re-read at a quarter of this) before turns are refused with
    /// `policy_registry_unavailable`.
    pub staleness: NonZeroDuration,
    /// Judge from an older copy instead of refusing turns while the registry
    /// is unreachable. Logged as a warning at start.
    pub fail_open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationSettings {
    /// The semantic layer: `on` (needs the model in `model_dir`) or `off`.
    pub semantic: SemanticSwitch,
    /// Directory holding the sentence-embedding model: `config.json`,
    /// `tokenizer.json` and `model.safetensors` (scripts/models.sh installs it).
    pub model_dir: PathBuf,
    /// Directory of trained classifiers, each `<sha256 hex>.safetensors`; the
    /// constitution's `[semantic] classifier` names the one that judges.
    pub classifier_dir: PathBuf,
    /// Embeddings kept in the exact-text cache (repeated prompts skip the model).
    pub cache_entries: usize,
    /// Streamed output is judged at each sentence end, and at least every this many chars.
    pub output_window_chars: usize,
    /// When the model request starts: `after_verdict` (a refused message never
    /// reaches the model) or `overlapped` (it starts while input moderation runs;
    /// nothing of its answer is released before the verdict allows it).
    #[serde(default)]
    pub dispatch: DispatchMode,
    /// Per-tenant exceptions to `dispatch`.
    #[serde(default)]
    pub dispatch_tenants: std::collections::HashMap<String, DispatchMode>,
    /// The operator's own guard service, judging input after the other layers allow it.
    #[serde(default)]
    pub guard: GuardSettings,
}

/// `[moderation.guard]`: a guard model or moderation service of the operator's choice.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// `off`, `chat` (a Llama Guard-style model over the chat API) or `moderation_api`
    /// (a service speaking OpenAI's `POST /v1/moderations`).
    pub kind: GuardKindSetting,
    /// Its OpenAI-compatible base URL, ending in `/v1`.
    pub base_url: String,
    /// The guard's model name, sent in each request and named in the record.
    pub model: String,
    /// Secret: its API key, sent as `Authorization: Bearer` (set STEWARD_MODERATION__GUARD__API_KEY); empty for none.
    pub api_key: Secret,
    /// Longest wait for its answer.
    pub timeout: NonZeroDuration,
    /// When it gives no answer in time (or none Steward reads): `closed` refuses the turn with
    /// 503 `guard_unavailable`; `open` lets it through and records `turn.guard_skipped`.
    pub on_failure: GuardFailure,
    /// Per-tenant exceptions to `on_failure`.
    pub on_failure_tenants: std::collections::HashMap<String, GuardFailure>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            kind: GuardKindSetting::Off,
            base_url: String::new(),
            model: String::new(),
            api_key: Secret::default(),
            timeout: NonZeroDuration::from_secs(2),
            on_failure: GuardFailure::Closed,
            on_failure_tenants: Default::default(),
        }
    }
}

/// See [`GuardSettings::kind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKindSetting {
    #[default]
    Off,
    Chat,
    ModerationApi,
}

/// See [`GuardSettings::on_failure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardFailure {
    #[default]
    Closed,
    Open,
}

/// See [`ModerationSettings::dispatch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    #[default]
    AfterVerdict,
    Overlapped,
}

impl DispatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AfterVerdict => "after_verdict",
            Self::Overlapped => "overlapped",
        }
    }
}

/// A setting with per-tenant exceptions.
#[derive(Debug, Clone, Default)]
pub struct PerTenant<T> {
    pub default: T,
    pub tenants: std::collections::HashMap<String, T>,
}

impl<T: Copy> PerTenant<T> {
    pub fn new(default: T, tenants: &std::collections::HashMap<String, T>) -> Self {
        Self { default, tenants: tenants.clone() }
    }

    /// The tenant's value: its exception, or the default.
    pub fn of(&self, tenant: &str) -> T {
        *self.tenants.get(tenant).unwrap_or(&self.default)
    }
}

/// See [`ModerationSettings::semantic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SemanticSwitch {
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSettings {
    /// Longest accepted user message, in characters.
    pub max_message_chars: usize,
    /// Most turns of history replayed to the model.
    pub max_history_turns: u32,
    /// A caller's `system`/`developer` message: `refuse` (400
    /// `system_prompt_not_allowed`) or `after_operator`.
    pub caller_system_prompt: CallerSystemPrompt,
    /// Per-tenant exceptions to `caller_system_prompt`.
    #[serde(default)]
    pub caller_system_prompt_tenants: std::collections::HashMap<String, CallerSystemPrompt>,
    /// Keep the text of turns refused on input (it may be the very content
    /// the refusal is about), so `steward audit replay` and the dry run can
    /// judge them again. Off: stored as withheld.
    #[serde(default)]
    pub store_refused_text: bool,
}

/// See [`ChatSettings::caller_system_prompt`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerSystemPrompt {
    #[default]
    Refuse,
    AfterOperator,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`. Empty = in-process lock store (single instance only).
    pub url: Secret,
    /// Prefix of every key Steward writes.
    pub key_prefix: String,
    /// A command fails (503 `lock_store_unavailable`) after this.
    pub command_timeout: NonZeroDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` (default) or `pretty`.
    pub log_format: String,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_level: String,
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`; empty = no spans exported.
    #[serde(default)]
    pub otlp_endpoint: String,
}

/// Errors while loading configuration; each names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    /// Loads from `<dir>/default.toml`, the profile file and the environment.
    pub fn load_from(dir: &Path) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::file(dir.join("default.toml")));
        if let Ok(profile) = std::env::var("STEWARD_PROFILE") {
            figment = figment.merge(Toml::file(dir.join(format!("{profile}.toml"))));
        }
        let settings: Settings = figment
            // Only `SECTION__KEY` variables are settings; others (STEWARD_PROFILE, STEWARD_TEST_*) are not.
            .merge(Env::prefixed("STEWARD_").filter(|key| key.as_str().contains("__")).split("__"))
            .extract()
            .map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads from the directory named by `STEWARD_CONFIG_DIR`, else `./config`.
    pub fn load() -> Result<Self, ConfigError> {
        let dir = std::env::var("STEWARD_CONFIG_DIR").unwrap_or_else(|_| "config".into());
        Self::load_from(Path::new(&dir))
    }

    /// What the types cannot say: the relations between keys, and the
    /// formats of addresses, URLs and keys. (Durations, and the counts where
    /// zero would mean nothing, are checked as they are read: `NonZero*`.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return invalid("server.bind", "expected host:port, e.g. 127.0.0.1:8080");
        }
        if self.server.body_limit_bytes < 1024 {
            return invalid("server.body_limit_bytes", "must be at least 1024");
        }
        if let Err(reason) = crate::identity::TrustedProxies::parse(&self.server.trusted_proxies, self.server.forwarded_header) {
            return invalid("server.trusted_proxies", &reason);
        }
        let rate = |r: f64| r.is_finite() && r >= 0.0;
        if !rate(self.identity.requests_per_second_per_key) {
            return invalid("identity.requests_per_second_per_key", "must be a number of at least 0");
        }
        if !std::iter::once(self.limits.requests_per_second).chain(self.limits.tenants.values().map(|l| l.requests_per_second)).all(rate) {
            return invalid("limits.requests_per_second", "must be a number of requests per second, 0 or more (also under limits.tenants)");
        }
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return invalid("database.url", "expected sqlite:… or postgres://…");
        }
        if !(self.slm.base_url.starts_with("http://") || self.slm.base_url.starts_with("https://")) {
            return invalid("slm.base_url", "expected an http(s) URL ending in /v1");
        }
        let guard = &self.moderation.guard;
        let guard_url = guard.base_url.starts_with("http://") || guard.base_url.starts_with("https://");
        if guard.kind != GuardKindSetting::Off && (!guard_url || guard.model.trim().is_empty()) {
            return invalid("moderation.guard", "a guard needs an http(s) base_url ending in /v1 and a model name");
        }
        let mut names = std::collections::HashSet::new();
        for upstream in &self.slm.upstreams {
            if upstream.name.trim().is_empty() || !names.insert(upstream.name.as_str()) {
                return invalid("slm.upstreams", "each upstream needs a name of its own");
            }
            if !(upstream.base_url.starts_with("http://") || upstream.base_url.starts_with("https://")) {
                return invalid("slm.upstreams", "each upstream's base_url must be an http(s) URL ending in /v1");
            }
            if upstream.api_key_env.as_ref().is_some_and(|var| std::env::var(var).is_err()) {
                return invalid("slm.upstreams", "an upstream's api_key_env names an environment variable that is not set");
            }
        }
        let upstreams: std::collections::HashSet<String> = self.slm.upstreams().into_iter().map(|u| u.name).collect();
        let mut models = std::collections::HashSet::new();
        for model in &self.slm.models() {
            if model.name.trim().is_empty() || !models.insert(model.name.clone()) {
                return invalid("slm.models", "each model needs a name of its own");
            }
            if model.upstreams.is_empty() || !model.upstreams.iter().all(|u| upstreams.contains(u)) {
                return invalid("slm.models", "each model names one or more of the [[slm.upstreams]]");
            }
        }
        if !self.slm.tenant_models.values().flatten().all(|name| models.contains(name)) {
            return invalid("slm.tenant_models", "names a model that [[slm.models]] does not list");
        }
        if self.slm.model.trim().is_empty() {
            return invalid("slm.model", "must not be empty");
        }
        if self.slm.default_max_tokens == 0 || self.slm.default_max_tokens > self.slm.max_tokens_limit {
            return invalid("slm.default_max_tokens", "must be between 1 and slm.max_tokens_limit");
        }
        if !self.policy.signing_key.expose().is_empty() && self.policy.signing_key.expose().len() < 32 {
            return invalid("policy.signing_key", "must be at least 32 characters (or empty for a per-process key)");
        }
        if self.moderation.output_window_chars < 16 {
            return invalid("moderation.output_window_chars", "must be at least 16");
        }
        if self.chat.max_message_chars == 0 {
            return invalid("chat.max_message_chars", "must be greater than 0");
        }
        self.validate_events()?;
        let redis = self.redis.url.expose();
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return invalid("redis.url", "expected redis://host:port (or empty for the in-process store)");
        }
        if !redis.is_empty() && !cfg!(feature = "redis") {
            return invalid("redis.url", "this build lacks the `redis` Cargo feature");
        }
        if !matches!(self.telemetry.log_format.as_str(), "json" | "pretty") {
            return invalid("telemetry.log_format", "expected json or pretty");
        }
        Ok(())
    }

    /// The broker, the outbox and the checkpoints.
    fn validate_events(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        let kafka = &self.kafka;
        if !kafka.brokers.is_empty() && !cfg!(feature = "kafka") {
            return invalid("kafka.brokers", "this build lacks the `kafka` Cargo feature");
        }
        if kafka.brokers.iter().any(|b| b.trim().is_empty() || !b.contains(':')) {
            return invalid("kafka.brokers", "each broker must be host:port");
        }
        if kafka.partitions < 1 || kafka.replication_factor < 1 {
            return invalid("kafka.partitions", "partitions and replication_factor must be at least 1");
        }
        if kafka.topics().iter().any(|t| t.is_empty()) {
            return invalid("kafka.conversation_topic", "topic names must not be empty");
        }
        if self.outbox.lease.get() < 4 * kafka.request_deadline.get() {
            return invalid("outbox.lease", "must be at least 4 x kafka.request_deadline, so a publish round ends within the lease");
        }
        if let Err(weak) = crate::events::checkpoint::CheckpointKey::from_secret(self.events.checkpoint_key.expose()) {
            return invalid("events.checkpoint_key", &format!("{}: use a 32-byte random seed in base64 (`steward keys audit-generate`)", weak.0));
        }
        Ok(())
    }
}
