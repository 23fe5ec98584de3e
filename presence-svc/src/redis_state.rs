//! Presence state in Redis, shared by any number of presence-svc replicas.
//!
//! Every change runs as one Lua script (`lua/presence.lua`, the rules of
//! [`crate::hub`]) that Redis runs alone, start to end: two replicas
//! closing the last two sessions of a user at once, or a close racing an
//! open, see each other's effect, with no lock and one round trip. A script
//! also publishes the updates it causes on one channel, in the order it
//! made them; every replica subscribes ([`RedisState::updates`]) and hands
//! them to the edges watching on it, so an update reaches each watching
//! edge once, whichever replica made it. Times are the calling replica's
//! clock (replicas are assumed within a few milliseconds of each other).

use crate::hub::{parse_status, Seen, Windows};
use crate::state::{SessionChange, State};
use crate::unavailable::Unavailable;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::sync::mpsc;

const SCRIPT: &str = include_str!("../lua/presence.lua");
/// The channel the script publishes updates on.
const CHANNEL: &str = "confab:p:updates";

/// A state as the script returns it: user, status, last seen (-1: never),
/// since.
type Row = (String, String, i64, i64);

#[derive(Clone)]
pub struct RedisState {
    client: redis::Client,
    redis: ConnectionManager,
    script: redis::Script,
    windows: Windows,
}

fn seen((user_id, status, last, since): Row) -> Seen {
    let status = if status == "offline" { "offline" } else { parse_status(&status).unwrap_or("offline") };
    Seen { user_id, status, last_seen_ms: (last >= 0).then_some(last), since_ms: since }
}

impl RedisState {
    /// State on the Redis that `client` and `redis` reach
    /// ([`crate::redis_link::connect`]), with the rules' `windows`.
    pub fn new(client: redis::Client, redis: ConnectionManager, windows: Windows) -> Self {
        Self { client, redis, script: redis::Script::new(SCRIPT), windows }
    }

    /// Runs one operation of the script.
    async fn call<T: redis::FromRedisValue>(&self, op: &str, now: i64, args: &[&str]) -> Result<T, Unavailable> {
        let mut invocation = self.script.prepare_invoke();
        let w = self.windows;
        invocation.arg(op).arg(now).arg(w.offline_grace_ms).arg(w.update_interval_ms).arg(w.lease_ms);
        for a in args {
            invocation.arg(*a);
        }
        let mut redis = self.redis.clone();
        Ok(invocation.invoke_async(&mut redis).await?)
    }

    /// Every update any replica publishes, in order, until `shutdown`;
    /// subscribes again after losing Redis, and then calls `resubscribed`:
    /// Redis may have come back empty, or updates were lost meanwhile, so
    /// the edges are to announce their sessions again.
    pub async fn updates(
        self,
        out: mpsc::Sender<Seen>,
        retry: Duration,
        resubscribed: impl Fn() + Send + 'static,
        shutdown: confab_common::Shutdown,
    ) {
        let mut first = true;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                r = tokio::time::timeout(retry, subscribed) => r,
                () = shutdown.triggered() => return,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    if !std::mem::take(&mut first) {
                        tracing::info!("presence: subscribed to Redis updates again; edges re-announce");
                        resubscribed();
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            m = messages.next() => m,
                            () = shutdown.triggered() => return,
                        };
                        let Some(msg) = msg else { break };
                        match msg.get_payload::<String>().map(|p| serde_json::from_str::<serde_json::Value>(&p)) {
                            Ok(Ok(v)) => {
                                let row = (
                                    v["user"].as_str().unwrap_or_default().to_string(),
                                    v["status"].as_str().unwrap_or("offline").to_string(),
                                    v["last"].as_i64().unwrap_or(-1),
                                    v["since"].as_i64().unwrap_or(0),
                                );
                                if out.send(seen(row)).await.is_err() {
                                    return;
                                }
                            }
                            _ => tracing::warn!("presence: an update from Redis that does not parse, dropped"),
                        }
                    }
                    tracing::warn!("presence: the Redis subscription ended; subscribing again");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "presence: cannot subscribe to Redis updates"),
                Err(_) => tracing::warn!("presence: subscribing to Redis updates timed out"),
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = shutdown.triggered() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl State for RedisState {
    async fn sessions(&self, changes: &[SessionChange], now: i64) -> Result<Vec<Seen>, Unavailable> {
        let mut args = Vec::with_capacity(changes.len() * 4);
        for c in changes {
            args.extend([if c.open { "1" } else { "0" }, c.user.as_str(), c.edge.as_str(), c.session.as_str()]);
        }
        let rows: Vec<Row> = self.call("sessions", now, &args).await?;
        Ok(rows.into_iter().map(seen).collect())
    }

    async fn heartbeat(&self, edge: &str, now: i64) -> Result<(), Unavailable> {
        let _: Vec<Row> = self.call("heartbeat", now, &[edge]).await?;
        Ok(())
    }

    async fn set_status(&self, user: &str, status: &'static str, now: i64) -> Result<(Vec<Seen>, Seen), Unavailable> {
        let (rows, own): (Vec<Row>, Row) = self.call("status", now, &[user, status]).await?;
        Ok((rows.into_iter().map(seen).collect(), seen(own)))
    }

    async fn seen_by(&self, users: &[String], viewer: &str, now: i64) -> Result<Vec<Seen>, Unavailable> {
        let mut args = vec![viewer];
        args.extend(users.iter().map(String::as_str));
        let rows: Vec<Row> = self.call("get", now, &args).await?;
        Ok(rows.into_iter().map(seen).collect())
    }

    async fn tick(&self, now: i64) -> Result<Vec<Seen>, Unavailable> {
        let rows: Vec<Row> = self.call("tick", now, &[]).await?;
        Ok(rows.into_iter().map(seen).collect())
    }

    fn delivers_updates(&self) -> bool {
        true
    }
}
