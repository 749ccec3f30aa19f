//! The Redis connections of the Redis adapters (training locks, verdict
//! ledger, constitution registry, tenant limits): fred, failing fast while
//! Redis is unreachable and reconnecting in the background; and how each
//! adapter sends one command ([`one_shot`], [`bounded`]).

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;

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
