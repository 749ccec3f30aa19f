//! The Redis connection of the Redis adapters (training locks, verdict
//! ledger): fred, failing fast while Redis is unreachable and reconnecting
//! in the background.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::ReconnectPolicy;

/// Starts connecting to `url` in the background; never waits for Redis.
pub fn connect(url: &str, timeout: Duration) -> Result<Client, fred::error::Error> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_config(|c| c.fail_fast = true)
        .with_connection_config(|c| {
            c.connection_timeout = timeout.max(Duration::from_millis(200));
            c.internal_command_timeout = timeout.max(Duration::from_millis(200));
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    client.connect();
    Ok(client)
}
