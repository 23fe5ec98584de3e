//! engineioxide's side of the transport: long-polling sessions and the
//! WebSockets they upgrade to. Its handler hands every socket to the layer
//! above as a [`Conn`], and keeps that layer's state beside the socket.

use super::{Conn, Handler};
use engineioxide::handler::EngineIoHandler;
use engineioxide::{DisconnectReason, Socket, Str};
use std::sync::{Arc, OnceLock};

/// What engineioxide keeps beside each of its sockets: the state the layer
/// above made for it.
pub struct EngineData<S>(OnceLock<Arc<S>>);

impl<S> Default for EngineData<S> {
    fn default() -> Self {
        Self(OnceLock::new())
    }
}

/// engineioxide's handler: passes its sockets' lives on to `H`.
pub struct Engine<H>(pub Arc<H>);

impl<H> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<H> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl<H: Handler> EngineIoHandler for Engine<H> {
    type Data = EngineData<H::State>;

    fn on_connect(self: Arc<Self>, socket: Arc<Socket<Self::Data>>) {
        let state = self.0.state(Arc::new(Conn::engine(&socket)));
        // Set before `opened`, which may close the socket already: its
        // `on_disconnect` then finds the state.
        let _ = socket.data.0.set(state.clone());
        self.0.opened(&state);
    }

    fn on_disconnect(&self, socket: Arc<Socket<Self::Data>>, reason: DisconnectReason) {
        if let Some(state) = socket.data.0.get() {
            self.0.closed(state, reason);
        }
    }

    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<Self::Data>>) {
        if let Some(state) = socket.data.0.get() {
            self.0.message(state, &msg);
        }
    }

    fn on_binary(self: &Arc<Self>, _data: bytes::Bytes, _socket: Arc<Socket<Self::Data>>) {
        // Attachments of refused binary packets: dropped.
    }
}
