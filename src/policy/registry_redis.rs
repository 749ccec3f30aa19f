//! The Redis [`ConstitutionRegistry`]:
//! - `<prefix>policy:constitution:doc:<hash>`: a document's text, written once;
//! - `<prefix>policy:constitution:active`: a hash with `default`, one
//!   `tenant:<id>` field per tenant with its own constitution, and `version`;
//! - `<prefix>policy:constitution:changes`: the channel each activation is
//!   published on (the new version), from the same script that makes it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::constitution::ConstitutionHash;
use super::registry::{Activation, ActiveSet, ConstitutionRegistry, RegistryError, Scope};
use crate::redis_client::Script;

/// KEYS: document, active set. ARGV: text, field, hash, channel.
/// Returns `{previous or '', version, changed 0/1}`.
const ACTIVATE: &str = "redis.call('SET', KEYS[1], ARGV[1], 'NX') \
local previous = redis.call('HGET', KEYS[2], ARGV[2]) \
if previous == ARGV[3] then return {previous, tostring(redis.call('HGET', KEYS[2], 'version') or '0'), '0'} end \
local version = redis.call('HINCRBY', KEYS[2], 'version', 1) \
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) \
redis.call('PUBLISH', ARGV[4], version) \
return {previous or '', tostring(version), '1'}";

/// KEYS: document, active set. ARGV: text, hash, channel. Returns 1 if it seeded.
const SEED: &str = "redis.call('SET', KEYS[1], ARGV[1], 'NX') \
if redis.call('HSETNX', KEYS[2], 'default', ARGV[2]) == 0 then return 0 end \
local version = redis.call('HINCRBY', KEYS[2], 'version', 1) \
redis.call('PUBLISH', ARGV[3], version) \
return 1";

static ACTIVATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACTIVATE));
static SEED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SEED));
const DEFAULT_FIELD: &str = "default";
const TENANT_FIELD: &str = "tenant:";
const VERSION_FIELD: &str = "version";

pub struct RedisRegistry {
    client: Client,
    /// Connected by [`ConstitutionRegistry::watch`].
    subscriber: SubscriberClient,
    prefix: String,
    timeout: Duration,
}

impl RedisRegistry {
    /// A registry through `client` (connected by the caller), told of
    /// activations through `subscriber`, with keys under `prefix`.
    pub fn new(client: Client, subscriber: SubscriberClient, prefix: &str, timeout: Duration) -> Self {
        Self { client, subscriber, prefix: format!("{prefix}policy:constitution:"), timeout }
    }

    /// A registry with its own connections to `url` (made in the background).
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, fred::error::Error> {
        let client = crate::redis_client::connect(url, timeout)?;
        Ok(Self::new(client, crate::redis_client::subscriber(url, timeout)?, prefix, timeout))
    }

    /// Waits, at most `within`, until the connection is made.
    pub async fn connected(&self, within: Duration) -> Result<(), RegistryError> {
        match tokio::time::timeout(within, self.client.wait_for_connect()).await {
            Err(_) => Err(RegistryError::Unavailable(format!("not connected within {within:?}"))),
            Ok(Err(err)) => Err(RegistryError::Unavailable(err.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn document_key(&self, hash: &ConstitutionHash) -> String {
        self.key(&format!("doc:{hash}"))
    }

    /// Runs `call` with the command deadline, mapping every failure to `Unavailable`.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T, fred::error::Error>>) -> Result<T, RegistryError> {
        crate::redis_client::bounded(self.timeout, call).await.map_err(RegistryError::Unavailable)
    }

    fn commands(&self) -> fred::clients::WithOptions<Client> {
        crate::redis_client::one_shot(&self.client, self.timeout)
    }
}

fn field(scope: &Scope) -> String {
    match scope {
        Scope::Default => DEFAULT_FIELD.to_owned(),
        Scope::Tenant(t) => format!("{TENANT_FIELD}{t}"),
    }
}

fn hash_of(value: &str) -> Result<ConstitutionHash, RegistryError> {
    ConstitutionHash::parse(value).map_err(|e| RegistryError::Corrupt(e.to_string()))
}

fn active_set(fields: HashMap<String, String>) -> Result<ActiveSet, RegistryError> {
    let mut set = ActiveSet::default();
    for (name, value) in fields {
        if name == VERSION_FIELD {
            set.version = value.parse().map_err(|_| RegistryError::Corrupt(format!("version {value:?}")))?;
        } else if name == DEFAULT_FIELD {
            set.default = Some(hash_of(&value)?);
        } else if let Some(tenant) = name.strip_prefix(TENANT_FIELD) {
            set.tenants.insert(tenant.to_owned(), hash_of(&value)?);
        }
    }
    Ok(set)
}

impl ConstitutionRegistry for RedisRegistry {
    fn active(&self) -> BoxFuture<'_, Result<ActiveSet, RegistryError>> {
        Box::pin(async move {
            let fields: HashMap<String, String> = self.bounded(self.commands().hgetall(self.key("active"))).await?;
            active_set(fields)
        })
    }

    fn document<'a>(&'a self, hash: &'a ConstitutionHash) -> BoxFuture<'a, Result<Option<String>, RegistryError>> {
        Box::pin(async move { self.bounded(self.commands().get(self.document_key(hash))).await })
    }

    fn activate<'a>(&'a self, scope: &'a Scope, hash: &'a ConstitutionHash, text: &'a str) -> BoxFuture<'a, Result<Activation, RegistryError>> {
        Box::pin(async move {
            let keys = vec![self.document_key(hash), self.key("active")];
            let args = vec![text.to_owned(), field(scope), hash.to_string(), self.key("changes")];
            let reply: Vec<String> = self.bounded(ACTIVATE_SCRIPT.run(&self.commands(), &keys, &args)).await?;
            let [previous, version, changed] = <[String; 3]>::try_from(reply).map_err(|r| RegistryError::Corrupt(format!("activation reply {r:?}")))?;
            let previous = if previous.is_empty() { None } else { Some(hash_of(&previous)?) };
            let version = version.parse().map_err(|_| RegistryError::Corrupt(format!("version {version:?}")))?;
            Ok(Activation { previous, version, changed: changed == "1" })
        })
    }

    fn seed<'a>(&'a self, hash: &'a ConstitutionHash, text: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let keys = vec![self.document_key(hash), self.key("active")];
            let args = vec![text.to_owned(), hash.to_string(), self.key("changes")];
            let seeded: i64 = self.bounded(SEED_SCRIPT.run(&self.commands(), &keys, &args)).await?;
            Ok(seeded == 1)
        })
    }

    fn watch(&self, changed: Arc<Notify>, cancel: CancellationToken) -> BoxFuture<'static, ()> {
        let subscriber = self.subscriber.clone();
        let channel = self.key("changes");
        Box::pin(async move {
            let mut messages = subscriber.message_rx();
            let connection = subscriber.connect();
            // Subscribes again after every reconnection.
            let resubscriber = subscriber.manage_subscriptions();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    connected = subscriber.wait_for_connect() => match connected {
                        Ok(()) => match subscriber.subscribe(channel.as_str()).await {
                            Ok(()) => break,
                            Err(err) => tracing::debug!(error = %err, "subscribing to constitution changes failed; retrying"),
                        },
                        Err(err) => tracing::debug!(error = %err, "constitution change subscriber not connected; retrying"),
                    },
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    message = messages.recv() => match message {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => changed.notify_one(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            resubscriber.abort();
            let _ = subscriber.quit().await;
            connection.abort();
        })
    }
}
