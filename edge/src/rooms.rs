//! Local fan-out: which sockets of this edge receive which chat.
//!
//! A delivery from a router is encoded once into a Socket.IO packet and the
//! same bytes are queued on every local socket of the chat. A socket whose
//! queue is full is disconnected (slow-consumer policy): it reconnects and
//! recovers with `sinceSeq`, and no one else waits for it.

use crate::sio;
use crate::socket::EioSocket;
use confab_proto::v1 as pb;
use engineioxide::{socket::Sid, DisconnectReason, Str};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

struct Room {
    sockets: HashMap<Sid, Arc<EioSocket>>,
    /// Highest seq delivered; a repeat (after a router reconnect) is dropped.
    last_seq: AtomicU64,
}

/// A membership change: (the chat's members now, the users removed).
pub type MembershipChange = (Vec<String>, Vec<String>);

#[derive(Default)]
pub struct Rooms {
    /// Removals are passed on here, so presence watches can be re-checked.
    removals: Option<tokio::sync::mpsc::Sender<MembershipChange>>,
    rooms: RwLock<HashMap<String, Room>>,
    /// The personal rooms `user:<userId>`: every local socket of a user.
    users: RwLock<HashMap<String, HashMap<Sid, Arc<EioSocket>>>>,
}

impl Rooms {
    pub fn new(removals: tokio::sync::mpsc::Sender<MembershipChange>) -> Self {
        Self { removals: Some(removals), ..Self::default() }
    }

    /// Adds a socket to its user's personal room.
    pub fn join_user(&self, user_id: &str, socket: &Arc<EioSocket>) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        users.entry(user_id.to_string()).or_default().insert(socket.id, socket.clone());
    }

    pub fn leave_user(&self, user_id: &str, sid: Sid) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(sockets) = users.get_mut(user_id) {
            sockets.remove(&sid);
            if sockets.is_empty() {
                users.remove(user_id);
            }
        }
    }

    /// The local sockets of a user.
    pub fn user_sockets(&self, user_id: &str) -> Vec<Arc<EioSocket>> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        users.get(user_id).map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Adds a socket to a chat, recording it in the socket's own set under
    /// that set's lock (so a disconnect racing the join leaves nothing
    /// behind); true when it is the chat's first local socket.
    pub fn join_socket(&self, chat_id: &str, socket: &Arc<EioSocket>, last_seq: u64) -> bool {
        if socket.data.is_disconnected() {
            return false;
        }
        let mut chats = socket.data.chats.lock().unwrap_or_else(|p| p.into_inner());
        chats.insert(chat_id.to_string());
        self.join(chat_id, socket, last_seq)
    }

    /// Takes a socket out of a chat (its own set and the room).
    fn leave_socket(&self, chat_id: &str, socket: &EioSocket) {
        let mut chats = socket.data.chats.lock().unwrap_or_else(|p| p.into_inner());
        chats.remove(chat_id);
        self.leave(chat_id, socket.id);
    }

    /// A chat was created or changed: added members' local sockets join it,
    /// removed members' leave it, and all of them get `chat:update`. Runs in
    /// the router link's reader, before any later delivery of the chat.
    /// False when no local socket is left in the chat (nothing to do with a
    /// malformed update, which counts as true).
    pub fn apply_chat_update(&self, update: &pb::ChatUpdate) -> bool {
        let Some(chat) = &update.chat else { return true };
        let payload = serde_json::json!({ "chat": crate::wire::chat(chat) });
        let packet: Str = sio::event("chat:update", &payload).into();
        for user in &update.added_user_ids {
            for socket in self.user_sockets(user) {
                self.join_socket(&chat.id, &socket, 0);
            }
        }
        let current = chat.members.iter().map(|m| &m.user_id);
        for user in current.chain(update.removed_user_ids.iter()) {
            for socket in self.user_sockets(user) {
                emit(&socket, &packet);
            }
        }
        for user in &update.removed_user_ids {
            for socket in self.user_sockets(user) {
                self.leave_socket(&chat.id, &socket);
            }
        }
        if let (Some(tx), false) = (&self.removals, update.removed_user_ids.is_empty()) {
            let members = chat.members.iter().map(|m| m.user_id.clone()).collect();
            if tx.try_send((members, update.removed_user_ids.clone())).is_err() {
                tracing::warn!("membership change queue full: presence watches not re-checked");
            }
        }
        self.has(&chat.id)
    }

    /// Adds a socket; true when it is the chat's first local socket.
    fn join(&self, chat_id: &str, socket: &Arc<EioSocket>, last_seq: u64) -> bool {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let first = !rooms.contains_key(chat_id);
        let room = rooms
            .entry(chat_id.to_string())
            .or_insert_with(|| Room { sockets: HashMap::new(), last_seq: AtomicU64::new(last_seq) });
        room.sockets.insert(socket.id, socket.clone());
        first
    }

    /// Removes a socket; true when the chat has no local socket left.
    pub fn leave(&self, chat_id: &str, sid: Sid) -> bool {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get_mut(chat_id) else {
            return false;
        };
        if room.sockets.remove(&sid).is_none() {
            return false;
        }
        if room.sockets.is_empty() {
            rooms.remove(chat_id);
            return true;
        }
        false
    }

    pub fn has(&self, chat_id: &str) -> bool {
        self.rooms.read().unwrap_or_else(|p| p.into_inner()).contains_key(chat_id)
    }

    pub fn chats(&self) -> Vec<String> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub fn deliver(&self, d: pb::Delivery) {
        match d.event {
            Some(pb::delivery::Event::MessageNew(m)) => self.deliver_message(&d.chat_id, &m),
            Some(pb::delivery::Event::ChatEvent(e)) => self.deliver_event(&d.chat_id, &e),
            Some(pb::delivery::Event::ChatUpdate(_)) | None => {}
        }
    }

    fn deliver_message(&self, chat_id: &str, m: &pb::Message) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get(chat_id) else { return };
        if room.last_seq.fetch_max(m.seq, Ordering::Relaxed) >= m.seq {
            return;
        }
        let packet: Str = sio::event("message:new", &crate::wire::message(m)).into();
        for socket in room.sockets.values() {
            emit(socket, &packet);
        }
    }

    /// An event the router already put in the client's JSON shape.
    fn deliver_event(&self, chat_id: &str, e: &pb::Event) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get(chat_id) else { return };
        let packet: Str = sio::raw_event(&e.name, &e.json).into();
        for socket in room.sockets.values() {
            let skip = match (&e.except_user, socket.data.session.get()) {
                (Some(user), Some(session)) => &session.user_id == user,
                _ => false,
            };
            if !skip {
                emit(socket, &packet);
            }
        }
    }
}

/// Queues a packet; a socket whose queue is full is disconnected.
fn emit(socket: &EioSocket, packet: &Str) {
    if socket.emit(packet.clone()).is_err() && !socket.is_closed() {
        tracing::warn!(sid = %socket.id, "socket queue full: disconnecting slow consumer");
        socket.close(DisconnectReason::TransportError);
    }
}
