//! Where presence state lives: [`State`] is what the service calls, with the
//! caller's clock, so the rules are tested without sleeping on every
//! backend. [`MemoryState`] keeps it in this process ([`Hub`], the
//! `confab dev` default); [`crate::redis_state::RedisState`] in Redis, shared
//! by every replica.

use crate::hub::{Hub, Seen, Windows};
use crate::unavailable::Unavailable;
use std::sync::Mutex;

/// One session opened or closed.
#[derive(Debug, Clone)]
pub struct SessionChange {
    pub user: String,
    pub edge: String,
    pub session: String,
    pub open: bool,
}

/// Presence state. Each method returns the updates it caused, for the
/// edges watching those users.
#[tonic::async_trait]
pub trait State: Send + Sync {
    /// Applies session opens and closes in order.
    async fn sessions(&self, changes: &[SessionChange], now: i64) -> Result<Vec<Seen>, Unavailable>;
    /// Renews `edge`'s lease.
    async fn heartbeat(&self, edge: &str, now: i64) -> Result<(), Unavailable>;
    /// Sets a user's chosen status; also returns the state the user sees.
    async fn set_status(&self, user: &str, status: &'static str, now: i64) -> Result<(Vec<Seen>, Seen), Unavailable>;
    /// The states of `users` as `viewer` sees them.
    async fn seen_by(&self, users: &[String], viewer: &str, now: i64) -> Result<Vec<Seen>, Unavailable>;
    /// Runs the clocks: grace windows, held updates, lapsed leases.
    async fn tick(&self, now: i64) -> Result<Vec<Seen>, Unavailable>;
    /// Whether the backend itself delivers its updates to every replica
    /// (then the caller delivers none of what the methods return).
    fn delivers_updates(&self) -> bool;
}

/// Presence in this process's memory.
pub struct MemoryState(Mutex<Hub>);

impl MemoryState {
    pub fn new(windows: Windows) -> Self {
        Self(Mutex::new(Hub::new(windows)))
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl State for MemoryState {
    async fn sessions(&self, changes: &[SessionChange], now: i64) -> Result<Vec<Seen>, Unavailable> {
        let mut hub = self.hub();
        let mut updates = Vec::new();
        for c in changes {
            updates.extend(if c.open {
                hub.open(&c.user, &c.edge, &c.session, now)
            } else {
                hub.close(&c.user, &c.edge, &c.session, now)
            });
        }
        Ok(updates)
    }

    async fn heartbeat(&self, edge: &str, now: i64) -> Result<(), Unavailable> {
        self.hub().heartbeat(edge, now);
        Ok(())
    }

    async fn set_status(&self, user: &str, status: &'static str, now: i64) -> Result<(Vec<Seen>, Seen), Unavailable> {
        let mut hub = self.hub();
        let updates = hub.set_status(user, status, now);
        Ok((updates, hub.seen_by(user, user, now)))
    }

    async fn seen_by(&self, users: &[String], viewer: &str, now: i64) -> Result<Vec<Seen>, Unavailable> {
        let hub = self.hub();
        Ok(users.iter().map(|u| hub.seen_by(u, viewer, now)).collect())
    }

    async fn tick(&self, now: i64) -> Result<Vec<Seen>, Unavailable> {
        Ok(self.hub().tick(now))
    }

    fn delivers_updates(&self) -> bool {
        false
    }
}
