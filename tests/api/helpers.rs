//! `spawn_app()` and the `TestApp` client used by every test.
//!
//! Services come from the environment (set by `scripts/test.sh`):
//! `STEWARD_TEST_SLM_URL` (model server), `STEWARD_TEST_POSTGRES_URL` (an
//! admin URL; each test gets its own database), `STEWARD_TEST_MODEL_PYTHON`
//! (the virtualenv that can start a private model server).

use std::path::PathBuf;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;
use sqlx::Connection;
use steward::app::Application;
use steward::config::{Secret, Settings};
use steward::db::Database;
use steward::durations::NonZeroDuration;
use steward::identity::{Capability, KeyStore, TenantId};
use steward::orchestrator::ConversationStore;
use steward::policy::{Constitution, ConstitutionHash, PolicyEngine, SignedVerdict, TurnRef, Verdict};

pub const SIGNING_KEY: &str = "integration-test-signing-key-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Sqlite,
    Postgres,
}

pub fn slm_url() -> String {
    std::env::var("STEWARD_TEST_SLM_URL").unwrap_or_else(|_| "http://127.0.0.1:8091/v1".into())
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A unique name for tenants, sessions and databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Settings for a test: the project's defaults, a private database, port 0.
pub async fn test_settings(storage: Storage) -> (Settings, Option<tempfile::TempDir>) {
    let mut settings = Settings::load_from(&manifest_dir().join("config")).expect("config/default.toml loads");
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.keepalive = NonZeroDuration::from_millis(500);
    settings.slm.base_url = slm_url();
    settings.slm.first_token_timeout = NonZeroDuration::from_millis(60_000);
    settings.policy.signing_key = Secret::new(SIGNING_KEY);
    settings.policy.constitution = manifest_dir().join("config/constitution.toml");
    settings.moderation.model_dir = manifest_dir().join(".models/all-minilm-l6-v2");
    settings.moderation.classifier_dir = manifest_dir().join("config/classifiers");
    settings.telemetry.log_level = "warn".into();
    let (url, dir) = match storage {
        Storage::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            (format!("sqlite://{}?mode=rwc", dir.path().join("steward.db").display()), Some(dir))
        }
        Storage::Postgres => (postgres_database().await, None),
    };
    settings.database.url = Secret::new(url);
    (settings, dir)
}

/// Creates an empty database on the test PostgreSQL server and returns its URL.
pub async fn postgres_database() -> String {
    let admin = std::env::var("STEWARD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin).await.expect("PostgreSQL reachable at STEWARD_TEST_POSTGRES_URL");
    let name = unique("steward_test_");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    format!("{base}/{name}")
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub db: Database,
    pub keys: KeyStore,
    pub store: ConversationStore,
    pub http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Storage::Sqlite, |_| {}).await
}

pub async fn spawn_app_with(storage: Storage, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_stoppable_app_with(storage, adjust).await.0
}

/// The app's shutdown, which a test triggers (as SIGTERM would) and waits out.
pub struct Stop {
    trigger: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Stop {
    /// Starts the shutdown and waits until the app has drained and stopped.
    pub async fn now(self) {
        let _ = self.trigger.send(());
        self.served.await.expect("the app task ends").expect("the app stops cleanly");
    }
}

/// An app as [`spawn_app_with`] makes, and its shutdown (dropping `Stop` leaves the app running).
pub async fn spawn_stoppable_app_with(storage: Storage, adjust: impl FnOnce(&mut Settings)) -> (TestApp, Stop) {
    steward::telemetry::init_logging("json", "warn");
    let (mut settings, dir) = test_settings(storage).await;
    adjust(&mut settings);
    let app = Application::build(&settings).await.expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (trigger, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped trigger (the usual test, which never stops its app) is no shutdown.
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::spawn(app.run_until_stopped(shutdown));
    let db = Database::connect(settings.database.url.expose(), 2).await.expect("test db handle");
    let app =
        TestApp { address, keys: KeyStore::new(db.clone()), store: ConversationStore::new(db.clone()), db, settings, http: reqwest::Client::new(), _dir: dir };
    (app, Stop { trigger, served })
}

/// A parsed SSE response.
pub struct Sse {
    pub headers: reqwest::header::HeaderMap,
    pub events: Vec<(String, Value)>,
}

impl Sse {
    pub fn names(&self) -> Vec<&str> {
        self.events.iter().map(|(n, _)| n.as_str()).collect()
    }
    pub fn first(&self, name: &str) -> &Value {
        &self.events.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no `{name}` event in {:?}", self.names())).1
    }
    /// All `delta` contents, concatenated.
    pub fn text(&self) -> String {
        self.events.iter().filter(|(n, _)| n == "delta").map(|(_, d)| d["content"].as_str().unwrap_or_default()).collect()
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("missing header {name}")).to_str().expect("ascii header")
    }
}

pub async fn read_sse(response: reqwest::Response) -> Sse {
    let headers = response.headers().clone();
    let mut events = Vec::new();
    let mut stream = response.bytes_stream().eventsource();
    while let Some(event) = stream.next().await {
        let event = event.expect("well-formed SSE");
        let data = if event.data == "[DONE]" { Value::String("[DONE]".into()) } else { serde_json::from_str(&event.data).expect("JSON data") };
        events.push((event.event, data));
    }
    Sse { headers, events }
}

impl TestApp {
    pub async fn key(&self, tenant: &str, caps: &[Capability]) -> String {
        let (_, key) = self.keys.create(&TenantId::parse(tenant).expect("tenant"), caps).await.expect("create key");
        key.expose().to_owned()
    }

    /// A new tenant with a `chat` key.
    pub async fn chat_key(&self) -> (String, String) {
        let tenant = unique("tenant-");
        let key = self.key(&tenant, &[Capability::Chat]).await;
        (tenant, key)
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.address)).json(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send().await.expect("request sent")
    }

    pub async fn chat(&self, key: &str, body: &Value) -> Sse {
        let response = self.post("/v1/chat/stream", Some(key), body).await;
        assert_eq!(response.status(), 200, "chat/stream failed: {:?}", response.text().await);
        read_sse(response).await
    }

    pub async fn get_with(&self, path: &str, key: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.address)).bearer_auth(key).send().await.expect("request sent")
    }

    /// Payloads stored in the outbox for `topic`, oldest first.
    pub async fn outbox(&self, topic: &str) -> Vec<Value> {
        let outbox = steward::events::OutboxStore::new(self.db.clone(), topic);
        let rows = outbox.tail(topic, None, 0, 10_000).await.expect("outbox readable");
        rows.into_iter().map(|(_, payload)| serde_json::from_str(&payload).expect("JSON payload")).collect()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    /// A signer holding the same key as the app, under its configured constitution.
    pub fn policy(&self) -> Signer {
        Signer::of(&self.settings.policy.constitution)
    }
}

/// Signs verdicts as a split deployment's gateway would: the app's key, under one constitution.
pub struct Signer {
    engine: PolicyEngine,
    pub hash: ConstitutionHash,
}

impl Signer {
    /// Under the constitution in `file`.
    pub fn of(file: &std::path::Path) -> Self {
        Self::under(Constitution::load(file).expect("constitution").hash())
    }

    /// Under the constitution whose hash is `hash`.
    pub fn under(hash: ConstitutionHash) -> Self {
        Self { engine: PolicyEngine::new(Secret::new(SIGNING_KEY), 60), hash }
    }

    pub fn sign(&self, turn: TurnRef<'_>, verdict: Verdict) -> SignedVerdict {
        self.engine.sign(turn, verdict, &self.hash)
    }

    pub fn sign_until(&self, turn: TurnRef<'_>, verdict: Verdict, expires_at: u64) -> SignedVerdict {
        self.engine.sign_until(turn, verdict, &self.hash, expires_at)
    }
}

/// Asserts a JSON error response with this status and code.
/// An error of the OpenAI facade: OpenAI's shape, `{"error": {"message", "type", "code", "param"?}}`.
pub async fn assert_openai_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    assert_eq!(response.headers()["content-type"], "application/json", "OpenAI's errors are plain JSON");
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {body}");
    body["error"].clone()
}

pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {body}");
    body
}
