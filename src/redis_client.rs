//! The Redis connections of the Redis adapters (training locks, verdict
//! ledger, constitution registry, tenant limits): fred, failing fast while
//! Redis is unreachable and reconnecting in the background; and how each
//! adapter sends one command ([`one_shot`], [`bounded`], [`Script`]).

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;
use fred::types::{ClusterHash, CustomCommand};

fn builder(url: &str, timeout: Duration) -> Result<Builder, fred::error::Error> {
    let config = Config::from_url(url)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_config(|c| c.fail_fast = true)
        .with_connection_config(|c| {
            c.connection_timeout = timeout.max(Duration::from_millis(200));
            c.internal_command_timeout = timeout.max(Duration::from_millis(200));
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    Ok(builder)
}

/// Starts connecting to `url` in the background; never waits for Redis.
pub fn connect(url: &str, timeout: Duration) -> Result<Client, fred::error::Error> {
    let client = builder(url, timeout)?.build()?;
    client.connect();
    Ok(client)
}

/// A client for subscriptions only, not yet connected (its user connects it
/// and keeps its subscriptions across reconnections).
pub fn subscriber(url: &str, timeout: Duration) -> Result<SubscriberClient, fred::error::Error> {
    builder(url, timeout)?.build_subscriber_client()
}

/// `client` for one command: it fails at once while Redis is unreachable and is never retried.
pub fn one_shot(client: &Client, timeout: Duration) -> fred::clients::WithOptions<Client> {
    client.with_options(&fred::types::config::Options { fail_fast: true, timeout: Some(timeout), max_attempts: Some(1), ..Default::default() })
}

/// Bounds a command by `timeout` ourselves (the client queues commands while it
/// reconnects); a failure as text, for the adapter's own error.
pub async fn bounded<T>(timeout: Duration, call: impl std::future::Future<Output = Result<T, fred::error::Error>>) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(result) => result.map_err(|e| e.to_string()),
    }
}

/// A Lua script run by its SHA-1 (`EVALSHA`): a call sends Redis the
/// digest, not the script's text, and Redis does not hash the text again.
/// When the server does not hold it (restarted, `SCRIPT FLUSH`, a replica
/// promoted), `EVAL` sends the text once and the server keeps it again.
///
/// Sent as custom commands, so that the options of a [`one_shot`] client
/// apply: fred gives `WithOptions` no scripting interface, and its `eval`
/// reached through `Deref` ran on the bare client, without them.
pub struct Script {
    text: String,
    sha1: String,
}

impl Script {
    pub fn new(text: impl Into<String>) -> Self {
        use sha1::Digest;
        let text = text.into();
        let sha1 = hex::encode(sha1::Sha1::digest(text.as_bytes()));
        Self { text, sha1 }
    }

    pub async fn run<R: FromValue>(&self, client: &impl ClientLike, keys: &[String], args: &[String]) -> Result<R, fred::error::Error> {
        let call = |command: &'static str, script: &str| {
            let mut all = Vec::with_capacity(2 + keys.len() + args.len());
            all.extend([script.to_owned(), keys.len().to_string()]);
            all.extend(keys.iter().chain(args).cloned());
            // Routed by the first key, as Redis Cluster routes a script.
            client.custom::<R, String>(CustomCommand::new_static(command, ClusterHash::Offset(2), false), all)
        };
        match call("EVALSHA", &self.sha1).await {
            Err(error) if error.details().starts_with("NOSCRIPT") => call("EVAL", &self.text).await,
            done => done,
        }
    }
}
