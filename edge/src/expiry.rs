//! Token expiry of connected sessions (CONTRACT §2): when a socket's token
//! expires it gets `session:expired {}` and is disconnected, within the
//! check interval (1 s by default, well inside the contract's 5 s).
//!
//! One task per edge walks a time-ordered index instead of a timer per
//! socket. `auth:refresh` adds a later entry; a stale entry is skipped
//! because the session's current expiry is checked when it comes due.

use crate::session::EioSocket;
use crate::socketio::packet as sio;
use confab_common::Shutdown;
use engineioxide::{socket::Sid, DisconnectReason};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The due times of every session on this edge.
#[derive(Default)]
pub struct Expiry {
    due: Mutex<BTreeMap<(i64, Sid), Weak<EioSocket>>>,
}

impl Expiry {
    /// Watches `socket`, whose token expires at `exp` (seconds since the epoch).
    pub fn watch(&self, exp: i64, socket: &Arc<EioSocket>) {
        self.due.lock().unwrap_or_else(|p| p.into_inner()).insert((exp, socket.id), Arc::downgrade(socket));
    }

    /// Takes every entry whose token is expired at `now` (seconds): a token
    /// is valid through its `exp` second.
    fn take_due(&self, now: i64) -> Vec<Weak<EioSocket>> {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let later = due.split_off(&(now, Sid::ZERO));
        std::mem::replace(&mut *due, later).into_values().collect()
    }

    /// Runs until shutdown, checking every `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => return,
            }
            let now = confab_common::time::now_ms() / 1000;
            for weak in self.take_due(now) {
                let Some(s) = weak.upgrade() else { continue };
                let Some(session) = s.data.session.get() else { continue };
                // A refreshed session has a later entry of its own.
                if session.expires_at() >= now || s.data.is_disconnected() {
                    continue;
                }
                tracing::info!(sid = %s.id, user.id = %session.user_id, "token expired: closing session");
                s.send(sio::event("session:expired", &serde_json::json!({})));
                // Give the event a moment to leave before the close.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    s.close(DisconnectReason::TransportClose);
                });
            }
        }
    }
}
