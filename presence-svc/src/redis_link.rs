//! The connection every Redis backend of a presence-svc process shares.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// A connection to the Redis at `url` (`redis://[:password@]host:port/db`)
/// that connects lazily and reconnects by itself: a Redis that is down
/// makes calls fail within `deadline`, not the process.
pub fn connect(url: &str, deadline: Duration) -> Result<(redis::Client, ConnectionManager), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(deadline))
        .set_response_timeout(Some(deadline))
        .set_number_of_retries(1)
        .set_max_delay(deadline);
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
}
