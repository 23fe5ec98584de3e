//! The rate-limit windows in Redis, shared by every presence-svc replica:
//! one sorted set of slot times per key, changed only by Lua scripts, so
//! that two replicas taking slots of one user at once cannot both see the
//! same free slot (Redis runs a script alone, start to end).
//!
//! Times come from Redis's own clock (`TIME` inside the script), so replicas
//! whose clocks differ still share one window. A set expires one window
//! after its last slot: memory follows active users only.

use crate::limits::{Acquired, Limiter, Unavailable};
use redis::aio::ConnectionManager;

/// Takes up to ARGV[3] slots of at most ARGV[1] in ARGV[2] ms.
/// KEYS[1]: the slot times (members `time:n`, unique by the counter
/// KEYS[2]). Returns {1, slot_ms, granted} or {0, retry_after_ms, 0}.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local free = limit - redis.call('ZCARD', KEYS[1])
if free > 0 then
  local granted = math.min(free, math.max(count, 1))
  local last = redis.call('INCRBY', KEYS[2], granted)
  for i = 1, granted do
    redis.call('ZADD', KEYS[1], now, now .. ':' .. (last - granted + i))
  end
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[2], window)
  return {1, now, granted}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local retry = math.max(1, tonumber(oldest[2]) + window - now)
return {0, retry, 0}
";

/// Gives back up to ARGV[2] slots taken at ARGV[1].
const RELEASE: &str = r"
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #taken > 0 then
  redis.call('ZREM', KEYS[1], unpack(taken))
end
return #taken
";

/// The most slots one call takes: a lease is far smaller (the edge's
/// `MAX_LEASE`), and this keeps one script's work bounded.
const MAX_COUNT: u32 = 1024;

/// Sliding windows in Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    redis: ConnectionManager,
    acquire: redis::Script,
    release: redis::Script,
}

impl RedisLimiter {
    /// A limiter on `redis` ([`crate::redis_link::connect`]).
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis, acquire: redis::Script::new(ACQUIRE), release: redis::Script::new(RELEASE) }
    }
}

/// The set of a key's slots and its counter; the `{}` hash tag keeps both
/// on one node of a Redis cluster.
fn keys(key: &str) -> (String, String) {
    (format!("confab:rl:{{{key}}}"), format!("confab:rl:{{{key}}}:n"))
}

#[tonic::async_trait]
impl Limiter for RedisLimiter {
    async fn acquire(&self, key: &str, limit: u32, window_ms: u64, count: u32) -> Result<Acquired, Unavailable> {
        let (slots, counter) = keys(key);
        let mut redis = self.redis.clone();
        let (allowed, value, granted): (i64, i64, u32) = self
            .acquire
            .key(slots)
            .key(counter)
            .arg(limit)
            .arg(window_ms.max(1))
            .arg(count.min(MAX_COUNT))
            .invoke_async(&mut redis)
            .await
            .map_err(Unavailable::from)?;
        Ok(if allowed == 1 {
            Acquired::Allowed { slot_ms: value, granted }
        } else {
            Acquired::Refused { retry_after_ms: u64::try_from(value).unwrap_or(1).max(1) }
        })
    }

    async fn release(&self, key: &str, slot_ms: i64, count: u32) -> Result<(), Unavailable> {
        let (slots, _) = keys(key);
        let mut redis = self.redis.clone();
        let _: i64 = self
            .release
            .key(slots)
            .arg(slot_ms)
            .arg(count.clamp(1, MAX_COUNT))
            .invoke_async(&mut redis)
            .await
            .map_err(Unavailable::from)?;
        Ok(())
    }
}
