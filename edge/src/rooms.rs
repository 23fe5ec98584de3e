//! Local fan-out: which sockets of this edge receive which chat.
//!
//! A delivery from a router is encoded once into a Socket.IO packet and the
//! same bytes are queued on every local socket of the chat, in the batch of
//! writes the caller passes ([`WriteBatch`]: the link's reader makes one for
//! the frames that arrived together). A socket whose queue is full is
//! disconnected (slow-consumer policy): it reconnects and recovers with
//! `sinceSeq`, and no one else waits for it.
//!
//! Each room delivers `message:new` strictly in seq order. A message that
//! arrives after a gap (the edge was cut off from a router, or the chat
//! moved to another router) is held back, and the room asks for the missing
//! ones from the store ([`Rooms::recover`]); held messages follow once the
//! gap is filled.

use crate::session::EioSocket;
use crate::socketio::packet as sio;
use crate::transport::{Packet, WriteBatch};
use confab_proto::v1 as pb;
use engineioxide::socket::Sid;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// Messages held back behind a gap, per room, before the room gives up on
/// order and lets its sockets recover with `sinceSeq` instead.
const MAX_HELD: usize = 10_000;

struct Room {
    sockets: HashMap<Sid, Arc<EioSocket>>,
    order: Mutex<Order>,
}

#[derive(Default)]
struct Order {
    /// Highest seq delivered; a repeat is dropped.
    last_seq: u64,
    /// Messages past a gap, waiting for it to be filled.
    held: BTreeMap<u64, pb::Message>,
    /// A recovery was asked for and has not finished.
    recovering: bool,
}

/// A room asking for the messages after its last delivered seq, up to a seq.
pub type Recovery = (String, u64);

/// A membership change: (the chat's members now, the users removed).
pub type MembershipChange = (Vec<String>, Vec<String>);

#[derive(Default)]
pub struct Rooms {
    /// Removals are passed on here, so presence watches can be re-checked.
    removals: Option<tokio::sync::mpsc::Sender<MembershipChange>>,
    /// Gaps are passed on here, to be filled from the store.
    recoveries: Option<tokio::sync::mpsc::Sender<Recovery>>,
    rooms: RwLock<HashMap<String, Room>>,
    /// The personal rooms `user:<userId>`: every local socket of a user.
    users: RwLock<HashMap<String, HashMap<Sid, Arc<EioSocket>>>>,
}

impl Rooms {
    pub fn new(
        removals: tokio::sync::mpsc::Sender<MembershipChange>,
        recoveries: tokio::sync::mpsc::Sender<Recovery>,
    ) -> Self {
        Self { removals: Some(removals), recoveries: Some(recoveries), ..Self::default() }
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

    /// Every socket in a personal room: each local socket with a session.
    pub fn all_user_sockets(&self) -> Vec<Arc<EioSocket>> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        users.values().flat_map(|s| s.values().cloned()).collect()
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
    pub fn apply_chat_update(&self, update: &pb::ChatUpdate, batch: &mut WriteBatch) -> bool {
        let Some(chat) = &update.chat else { return true };
        let packet = Packet::new(&sio::event("chat:update", &crate::wire::chat_update(chat)));
        for user in &update.added_user_ids {
            for socket in self.user_sockets(user) {
                self.join_socket(&chat.id, &socket, update.last_seq);
            }
        }
        let current = chat.members.iter().map(|m| &m.user_id);
        for user in current.chain(update.removed_user_ids.iter()) {
            for socket in self.user_sockets(user) {
                socket.emit_in(&packet, batch);
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
        let room = rooms.entry(chat_id.to_string()).or_insert_with(|| Room {
            sockets: HashMap::new(),
            order: Mutex::new(Order { last_seq, ..Order::default() }),
        });
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

    /// Fans a delivery out to the chat's local sockets, written when
    /// `batch` ends.
    pub fn deliver(&self, d: pb::Delivery, batch: &mut WriteBatch) {
        use pb::delivery::Event;
        match &d.event {
            Some(Event::MessageNew(m)) => self.deliver_message(&d.chat_id, m, batch),
            Some(Event::ChatUpdate(_)) | None => {}
            Some(event) => {
                // Typing is not shown to the typing user's own sockets.
                let except_user = match event {
                    Event::TypingUpdate(t) => Some(t.user_id.as_str()),
                    _ => None,
                };
                if let Some((name, payload)) = crate::wire::chat_event(&d.chat_id, event) {
                    self.deliver_event(&d.chat_id, &sio::event(name, &payload), except_user, batch);
                }
            }
        }
    }

    /// Delivers in seq order: repeats are dropped, messages after a gap held.
    pub fn deliver_message(&self, chat_id: &str, m: &pb::Message, batch: &mut WriteBatch) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get(chat_id) else { return };
        let mut order = room.order.lock().unwrap_or_else(|p| p.into_inner());
        if m.seq <= order.last_seq {
            return;
        }
        if m.seq > order.last_seq + 1 {
            order.held.insert(m.seq, m.clone());
            if order.held.len() > MAX_HELD {
                // Too far behind: give up on this gap; clients recover with sinceSeq.
                tracing::warn!(chat.id = chat_id, "room too far behind: skipping a gap");
                order.last_seq = order.held.keys().next().map_or(order.last_seq, |s| s - 1);
            } else {
                self.ask_recovery(chat_id, &mut order, m.seq - 1);
            }
        } else {
            Self::emit_all(room, m, batch);
            order.last_seq = m.seq;
        }
        Self::release_held(room, &mut order, batch);
    }

    /// Delivers held messages that now follow the last one delivered.
    fn release_held(room: &Room, order: &mut Order, batch: &mut WriteBatch) {
        loop {
            let next = order.last_seq + 1;
            let Some(m) = order.held.remove(&next) else { break };
            Self::emit_all(room, &m, batch);
            order.last_seq = m.seq;
        }
        // Anything at or below the last delivered seq is a repeat.
        let last = order.last_seq;
        order.held.retain(|seq, _| *seq > last);
    }

    fn emit_all(room: &Room, m: &pb::Message, batch: &mut WriteBatch) {
        let packet = Packet::new(&sio::event("message:new", &crate::wire::message(m)));
        for socket in room.sockets.values() {
            socket.emit_in(&packet, batch);
        }
    }

    fn ask_recovery(&self, chat_id: &str, order: &mut Order, upto: u64) {
        if order.recovering {
            return;
        }
        if let Some(tx) = &self.recoveries {
            if tx.try_send((chat_id.to_string(), upto)).is_ok() {
                order.recovering = true;
            } else {
                tracing::warn!(chat.id = chat_id, "recovery queue full");
            }
        }
    }

    /// The owner's last seq is `head`: catch up if the room is behind.
    pub fn note_head(&self, chat_id: &str, head: u64) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get(chat_id) else { return };
        let mut order = room.order.lock().unwrap_or_else(|p| p.into_inner());
        if head > order.last_seq {
            self.ask_recovery(chat_id, &mut order, head);
        }
    }

    /// The seq after which a room needs messages, if it exists.
    pub fn last_seq(&self, chat_id: &str) -> Option<u64> {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        rooms.get(chat_id).map(|r| r.order.lock().unwrap_or_else(|p| p.into_inner()).last_seq)
    }

    /// A recovery ended: if a gap is left that the store could not fill,
    /// skip it so held messages flow again.
    pub fn recovery_done(&self, chat_id: &str, filled: bool, batch: &mut WriteBatch) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get(chat_id) else { return };
        let mut order = room.order.lock().unwrap_or_else(|p| p.into_inner());
        order.recovering = false;
        if !filled {
            if let Some(first) = order.held.keys().next().copied() {
                order.last_seq = first - 1;
            }
        }
        Self::release_held(room, &mut order, batch);
        // Something arrived past a new gap while recovering: go again.
        if let Some(first) = order.held.keys().next().copied() {
            self.ask_recovery(chat_id, &mut order, first - 1);
        }
    }

    /// Any other event of the chat, encoded once, to every local socket of
    /// the chat but those of `except_user`.
    fn deliver_event(&self, chat_id: &str, encoded: &str, except_user: Option<&str>, batch: &mut WriteBatch) {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get(chat_id) else { return };
        let packet = Packet::new(encoded);
        for socket in room.sockets.values() {
            let skip = match (except_user, socket.data.session.get()) {
                (Some(user), Some(session)) => session.user_id == user,
                _ => false,
            };
            if !skip {
                socket.emit_in(&packet, batch);
            }
        }
    }
}
