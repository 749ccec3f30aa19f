//! The console at `/console`: operators and auditors see Steward in a
//! browser, served by the same binary. Server-rendered HTML (`maud`, which
//! escapes every value), one stylesheet and one small script of its own
//! (served with a long cache and an integrity hash); every page reads
//! without script. A browser signs in with an API key and holds a
//! server-side session ([`session`]); what it may see follows the key's
//! capabilities: `ops` reads every tenant, `audit` its own tenant's record.
//!
//! Pages: the overview ([`overview`]), the turns and the check of a
//! session's chain ([`turns`]), training mode ([`training`]), the
//! constitution and its versions ([`constitution`]), the keys ([`keys`]).

mod constitution;
mod diff;
mod keys;
mod layout;
mod overview;
mod session;
mod signin;
mod training;
mod turns;
mod viewer;

use actix_web::web;
use ed25519_dalek::VerifyingKey;
use serde_json::Value;

pub use session::{ConsoleSessions, ConsoleSettings};

use crate::events::OutboxStore;
use crate::orchestrator::{ConversationStore, TurnRecord};

/// The topics the console reads.
pub struct Topics {
    pub conversation: String,
    pub checkpoint: String,
    pub training: String,
    pub policy: String,
}

/// What the console's pages read.
pub struct Console {
    pub sessions: ConsoleSessions,
    pub turns: ConversationStore,
    pub outbox: OutboxStore,
    pub keys: crate::identity::KeyStore,
    pub topics: Topics,
    /// The public half of `events.checkpoint_key`, to check checkpoints' signatures.
    pub checkpoint_key: Option<VerifyingKey>,
}

/// How many of an audit topic's newest records are searched for a tenant's.
const RECORDS_SEARCHED: i64 = 500;

impl Console {
    /// The newest (at most `take`) records of an audit `topic` that `keep` keeps.
    async fn audit_records(&self, topic: &str, take: usize, keep: impl Fn(&Value) -> bool) -> Result<Vec<Value>, viewer::ConsoleError> {
        let rows = self.outbox.newest(topic, RECORDS_SEARCHED).await.map_err(|e| viewer::ConsoleError::Internal(e.to_string()))?;
        Ok(rows.into_iter().filter_map(|(_, payload)| serde_json::from_str::<Value>(&payload).ok()).filter(|r| keep(r)).take(take).collect())
    }

    /// Every tenant that has a key, in order (what `ops` pages list).
    async fn tenants(&self) -> Result<Vec<String>, viewer::ConsoleError> {
        let keys = self.keys.list().await.map_err(|e| viewer::ConsoleError::Internal(e.to_string()))?;
        let mut tenants: Vec<String> = keys.into_iter().map(|k| k.tenant).collect();
        tenants.sort();
        tenants.dedup();
        Ok(tenants)
    }

    /// A turn's events, in their chain's order.
    async fn turn_events(&self, turn: &TurnRecord) -> Result<Vec<Value>, sqlx::Error> {
        let rows = self.outbox.tail(&self.topics.conversation, Some(turn.session_id.as_str()), 0, i64::MAX).await?;
        Ok(rows.into_iter().filter_map(|(_, payload)| serde_json::from_str::<Value>(&payload).ok()).filter(|e| e["turn_id"] == turn.turn_id.as_str()).collect())
    }
}

/// The console's routes; its forms may be `form_limit` bytes (a constitution, URL-encoded, is about twice its size).
pub fn configure(form_limit: usize) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| configure_with(cfg, form_limit)
}

fn configure_with(cfg: &mut web::ServiceConfig, form_limit: usize) {
    cfg.service(
        web::scope("/console")
            .wrap(layout::security_headers())
            .app_data(web::FormConfig::default().limit(form_limit))
            .route("", web::get().to(signin::home))
            .route("/", web::get().to(signin::home))
            .route("/sign-in", web::get().to(signin::form))
            .route("/sign-in", web::post().to(signin::sign_in))
            .route("/sign-out", web::post().to(signin::sign_out))
            .route("/overview", web::get().to(overview::page))
            .route("/overview/live", web::get().to(overview::live))
            .route("/training", web::get().to(training::page))
            .route("/training/{action}", web::post().to(training::change))
            .route("/constitution", web::get().to(constitution::page))
            .route("/constitution/diff", web::get().to(constitution::diff))
            .route("/constitution/dry-run", web::post().to(constitution::dry_run))
            .route("/constitution/activate", web::post().to(constitution::activate))
            .route("/constitution/{hash}", web::get().to(constitution::document))
            .route("/keys", web::get().to(keys::page))
            .route("/keys/create", web::post().to(keys::create))
            .route("/keys/revoke", web::post().to(keys::revoke))
            .route("/turns", web::get().to(turns::list))
            .route("/turns/{id}", web::get().to(turns::show))
            .route("/turns/{id}/verify", web::get().to(turns::verify))
            .route("/assets/{file}", web::get().to(layout::asset)),
    );
}
