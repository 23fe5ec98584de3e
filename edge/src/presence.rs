//! Presence on the edge: sessions and the lease reported to presence-svc,
//! which users this edge's sockets watch, and the `presence:update`s that
//! presence-svc streams back for them (encoded once per edge). Each time
//! the stream (re)connects, the watches and every live session are told
//! again (a restarted presence-svc starts empty), and a little later the
//! watchers hear what changed while it was away.

use crate::error::ApiError;
use crate::session::{self, EioSocket};
use crate::socketio::packet as sio;
use crate::Edge;
use confab_api::presence::Watching;
use confab_common::time::{iso8601, now_ms};
use confab_common::UserId;
use confab_proto::v1 as pb;
use engineioxide::socket::Sid;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Live sessions told to presence-svc again per round at most, when its
/// stream comes back (the batcher's calls carry as many).
const REANNOUNCE_BATCH: usize = 512;

/// How long after the stream comes back watchers are told what changed
/// meanwhile: by then every edge has reconnected (their backoff is at most
/// 2 s) and re-announced its sessions, so an offline then is real.
const RESYNC_AFTER: Duration = Duration::from_secs(3);

/// user -> the local sockets watching them.
#[derive(Default)]
pub struct Watchers {
    by_user: Mutex<HashMap<String, HashMap<Sid, Arc<EioSocket>>>>,
    /// user -> the status its watchers here were last told (an update or
    /// a snapshot); only watched users have an entry.
    told: Mutex<HashMap<String, String>>,
}

impl Watchers {
    /// Adds watches; returns the users no local socket watched before.
    pub fn add(&self, socket: &Arc<EioSocket>, users: &[String]) -> Vec<String> {
        if socket.data.is_disconnected() {
            return Vec::new();
        }
        let mut mine = socket.data.watching.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_user = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Vec::new();
        for user in users {
            let sockets = by_user.entry(user.clone()).or_default();
            if sockets.is_empty() {
                fresh.push(user.clone());
            }
            sockets.insert(socket.id, socket.clone());
            mine.insert(user.clone());
        }
        fresh
    }

    /// Removes watches (all of the socket's when `users` is `None`); returns
    /// the users no local socket watches any more.
    pub fn remove(&self, socket: &EioSocket, users: Option<&[String]>) -> Vec<String> {
        let mut mine = socket.data.watching.lock().unwrap_or_else(|p| p.into_inner());
        let users: Vec<String> = match users {
            Some(u) => u.iter().filter(|u| mine.contains(*u)).cloned().collect(),
            None => mine.iter().cloned().collect(),
        };
        let mut by_user = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        for user in users {
            mine.remove(&user);
            if let Some(sockets) = by_user.get_mut(&user) {
                sockets.remove(&socket.id);
                if sockets.is_empty() {
                    by_user.remove(&user);
                    self.told.lock().unwrap_or_else(|p| p.into_inner()).remove(&user);
                    gone.push(user);
                }
            }
        }
        gone
    }

    /// (watched user, watching socket) for every watch of `users`.
    fn watches_of(&self, users: &HashSet<&String>) -> Vec<(String, Arc<EioSocket>)> {
        let by_user = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        users
            .iter()
            .filter_map(|u| by_user.get(*u).map(|s| (u, s)))
            .flat_map(|(u, sockets)| sockets.values().map(move |s| ((*u).clone(), s.clone())))
            .collect()
    }

    fn watched(&self) -> Vec<String> {
        self.by_user.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Notes the status a snapshot showed watchers of `user` (not the
    /// user's own view of themselves).
    pub fn note(&self, user: &str, status: &str) {
        // Under the watches' lock, so an entry never outlives the last watch.
        let by_user = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        if by_user.contains_key(user) {
            self.told.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), status.to_string());
        }
    }

    /// Whether watchers here were last told something else than `s`.
    fn stale(&self, s: &pb::PresenceState) -> bool {
        self.told.lock().unwrap_or_else(|p| p.into_inner()).get(&s.user_id) != Some(&s.status)
    }

    fn deliver(&self, s: &pb::PresenceState) {
        let sockets: Vec<Arc<EioSocket>> = {
            let by_user = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
            let Some(m) = by_user.get(&s.user_id) else { return };
            self.told.lock().unwrap_or_else(|p| p.into_inner()).insert(s.user_id.clone(), s.status.clone());
            m.values().cloned().collect()
        };
        let payload = json!({
            "userId": s.user_id,
            "status": s.status,
            "lastSeenAt": s.last_seen_ms.map(iso8601),
            "timestamp": iso8601(s.since_ms),
        });
        let packet = sio::event("presence:update", &payload);
        for socket in sockets {
            socket.send(packet.clone());
        }
    }
}

/// `{ userId, status, lastSeenAt }` of a snapshot.
pub fn snapshot(s: &pb::PresenceState) -> Value {
    json!({ "userId": s.user_id, "status": s.status, "lastSeenAt": s.last_seen_ms.map(iso8601) })
}

fn hidden(user: &str) -> Value {
    json!({ "userId": user, "status": "offline", "lastSeenAt": Value::Null })
}

/// Tells presence-svc about watches that changed (best effort, bounded).
pub fn report(edge: &Arc<Edge>, add: Vec<String>, remove: Vec<String>) {
    if add.is_empty() && remove.is_empty() {
        return;
    }
    let change = Watching { add: user_ids(add), remove: user_ids(remove), reset: false };
    let (edge2, timeout) = (edge.clone(), edge.config.request_timeout());
    edge.shutdown.spawn(async move {
        if let Ok(Err(e)) = tokio::time::timeout(timeout, edge2.presence.watching(&edge2.edge_id, change)).await {
            tracing::warn!(error = %e, "presence watching update failed");
        }
    });
}

/// The users `viewer` may watch: everyone sharing a chat with them, and themselves.
pub async fn visible_to(edge: &Edge, viewer: &str) -> Result<HashSet<String>, ApiError> {
    let chats =
        tokio::time::timeout(edge.config.request_timeout(), edge.store.list_user_chats(&viewer.into(), usize::MAX))
            .await
            .map_err(|_| ApiError::unavailable("store did not answer in time"))??;
    let mut out: HashSet<String> = chats
        .iter()
        .filter_map(|s| s.chat.as_ref())
        .flat_map(|c| c.members.iter().map(|m| m.user_id.clone()))
        .collect();
    out.insert(viewer.to_string());
    Ok(out)
}

/// Current states of `users` as `viewer` sees them, in the order asked.
pub async fn states(edge: &Edge, viewer: &str, users: &[String]) -> Result<Vec<pb::PresenceState>, ApiError> {
    let (users, viewer) = (user_ids(users.to_vec()), UserId::from(viewer));
    let states = tokio::time::timeout(edge.config.request_timeout(), edge.presence.get_many(&users, Some(&viewer)))
        .await
        .map_err(|_| ApiError::unavailable("presence did not answer in time"))??;
    Ok(states)
}

/// Snapshot entries for `users`, hiding those `viewer` may not see.
pub async fn visible_snapshot(edge: &Edge, viewer: &str, users: &[String]) -> Result<Vec<Value>, ApiError> {
    let visible = visible_to(edge, viewer).await?;
    let shown: Vec<String> = users.iter().filter(|u| visible.contains(*u)).cloned().collect();
    let states = states(edge, viewer, &shown).await?;
    let by_id: HashMap<&str, &pb::PresenceState> = states.iter().map(|s| (s.user_id.as_str(), s)).collect();
    Ok(users.iter().map(|u| by_id.get(u.as_str()).map_or_else(|| hidden(u), |s| snapshot(s))).collect())
}

/// Keeps the lease alive and the watch stream open, until shutdown.
pub async fn run(edge: Arc<Edge>, heartbeat: Duration) {
    let shutdown = edge.shutdown.clone();
    let mut backoff = Duration::from_millis(50);
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_triggered() {
        // The deadline is ours, whatever the client's settings.
        let watch = edge.presence.watch(&edge.edge_id);
        let mut stream = match tokio::time::timeout(edge.config.request_timeout(), watch).await {
            Ok(Ok(s)) => s,
            failed => {
                match failed {
                    Ok(Err(e)) => tracing::warn!(error = %e, "presence watch failed"),
                    _ => tracing::warn!("presence watch timed out"),
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.triggered() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let reset = Watching { add: user_ids(edge.watchers.watched()), remove: vec![], reset: true };
        let _ = tokio::time::timeout(edge.config.request_timeout(), edge.presence.watching(&edge.edge_id, reset)).await;
        reannounce(&edge).await;
        let mut resync_at = Some(tokio::time::Instant::now() + RESYNC_AFTER);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(resync_at.unwrap_or_else(tokio::time::Instant::now)), if resync_at.is_some() => {
                    resync_at = None;
                    resync(&edge).await;
                }
                _ = beat.tick() => {
                    let _ = tokio::time::timeout(edge.config.request_timeout(), edge.presence.heartbeat(&edge.edge_id)).await;
                }
                msg = stream.next() => match msg {
                    Some(Ok(s)) => edge.watchers.deliver(&s),
                    _ => break,
                },
                () = shutdown.triggered() => return,
            }
        }
    }
}

/// Tells presence-svc again about every live session of this edge, each
/// time the Watch stream (re)connects: a presence-svc that restarted has
/// forgotten them, and their users would show offline until they opened a
/// new socket. An open is idempotent, so a presence-svc that only lost the
/// stream sees no change. The opens go through the same batcher as every
/// other session change, [`REANNOUNCE_BATCH`] at a time; a socket that
/// closed meanwhile is closed again after its open (its own close may have
/// gone first), so no session outlives its socket. A failure stops the
/// round: the stream fails too, and the next connection starts another.
async fn reannounce(edge: &Arc<Edge>) {
    let sockets = edge.rooms.all_user_sockets();
    let mut announced = 0;
    for chunk in sockets.chunks(REANNOUNCE_BATCH) {
        let live: Vec<(&Arc<EioSocket>, pb::SessionRequest)> =
            chunk.iter().filter_map(|s| session::live_session(edge, s).map(|r| (s, r))).collect();
        let opens = live.iter().map(|(_, r)| change(edge, r.clone(), true));
        if let Err(why) = futures::future::join_all(opens).await.into_iter().collect::<Result<Vec<()>, String>>() {
            tracing::warn!(error = %why, announced, "re-announcing sessions to presence stopped");
            return;
        }
        announced += live.len();
        for (s, r) in live {
            if session::live_session(edge, s).is_none() {
                let _ = change(edge, r, false).await;
            }
        }
    }
    if announced > 0 {
        tracing::info!(sessions = announced, "sessions re-announced to presence");
    }
}

/// Tells watchers what changed while the stream was away, once it is back
/// (see [`RESYNC_AFTER`]): the states of the watched users that differ from
/// what their watchers here were last told. Updates presence-svc published
/// while the stream was down, or while it restarted empty, are lost; this
/// is how a user who disconnected meanwhile is shown offline, and one who
/// came online before this edge re-registered its watches shown online.
async fn resync(edge: &Arc<Edge>) {
    let watched = edge.watchers.watched();
    for chunk in watched.chunks(REANNOUNCE_BATCH) {
        let users = user_ids(chunk.to_vec());
        match tokio::time::timeout(edge.config.request_timeout(), edge.presence.get_many(&users, None)).await {
            Ok(Ok(states)) => {
                for s in states.iter().filter(|s| edge.watchers.stale(s)) {
                    edge.watchers.deliver(s);
                }
            }
            Ok(Err(e)) => return tracing::warn!(error = %e, "presence re-sync failed"),
            Err(_) => return tracing::warn!("presence re-sync timed out"),
        }
    }
}

/// One session change through the batcher, within the request deadline.
async fn change(edge: &Edge, session: pb::SessionRequest, open: bool) -> Result<(), String> {
    let change = pb::SessionChange { session: Some(session), open };
    match tokio::time::timeout(edge.config.request_timeout(), edge.sessions.call(change)).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => Err("the edge is shutting down".into()),
        Err(_) => Err("presence did not answer in time".into()),
    }
}

/// The edge holds user ids as strings; presence takes them typed.
fn user_ids(users: Vec<String>) -> Vec<UserId> {
    users.into_iter().map(UserId::from).collect()
}

/// `serverTime` for `presence:ping`.
pub fn server_time() -> Value {
    json!({ "serverTime": iso8601(now_ms()) })
}

/// Ends the watches between removed members and the chat's remaining
/// members that no longer share any chat (CONTRACT §8.20); a new
/// `presence:subscribe` is needed to watch them again.
pub async fn run_rechecks(edge: Arc<Edge>, mut changes: tokio::sync::mpsc::Receiver<crate::rooms::MembershipChange>) {
    loop {
        let (members, removed) = tokio::select! {
            c = changes.recv() => match c { Some(c) => c, None => return },
            () = edge.shutdown.triggered() => return,
        };
        let members: HashSet<&String> = members.iter().collect();
        let removed: HashSet<&String> = removed.iter().collect();
        let all: HashSet<&String> = members.union(&removed).copied().collect();
        let mut visible: HashMap<String, HashSet<String>> = HashMap::new();
        for (watched, socket) in edge.watchers.watches_of(&all) {
            let Some(viewer) = socket.data.session.get().map(|s| s.user_id.clone()) else {
                continue;
            };
            let crosses = (removed.contains(&watched) && members.contains(&viewer))
                || (members.contains(&watched) && removed.contains(&viewer));
            if !crosses {
                continue;
            }
            if !visible.contains_key(&viewer) {
                match visible_to(&edge, &viewer).await {
                    Ok(v) => visible.insert(viewer.clone(), v),
                    Err(e) => {
                        tracing::warn!(error = %e.message, "presence re-check skipped");
                        continue;
                    }
                };
            }
            if !visible.get(&viewer).is_some_and(|v| v.contains(&watched)) {
                let gone = edge.watchers.remove(&socket, Some(std::slice::from_ref(&watched)));
                report(&edge, Vec::new(), gone);
            }
        }
    }
}
