//! The edge's answer to every socket: the [`App`] the Socket.IO layer hands
//! its packets to. CONNECT and the socket's life go to [`session`], events
//! to [`events`] once the socket has a session and the edge is not draining.

use crate::error::ApiError;
use crate::session::{self, SocketData};
use crate::socketio::packet as sio;
use crate::socketio::{App, Socket, Unsupported};
use crate::transport::DisconnectReason;
use crate::{events, Edge};
use confab_common::ErrorCode;
use serde_json::Value;
use std::sync::Arc;

impl App for Edge {
    type Data = SocketData;

    fn opened(self: &Arc<Self>, socket: &Arc<Socket<SocketData>>) {
        session::opened(self, socket);
    }

    fn connect(self: &Arc<Self>, socket: &Arc<Socket<SocketData>>, auth: Option<Value>) {
        session::connect(self, socket, auth.as_ref());
    }

    fn event(
        self: &Arc<Self>,
        socket: &Arc<Socket<SocketData>>,
        name: String,
        payload: Option<Value>,
        ack: Option<u64>,
    ) {
        if socket.data.session.get().is_none() {
            if let Some(id) = ack {
                let e = ApiError::new(ErrorCode::Unauthorized, "connect first");
                socket.send(sio::ack(id, &e.ack(&name)));
            }
            return;
        }
        if self.drain.is_draining() {
            if let Some(id) = ack {
                let e = ApiError::unavailable("the edge is shutting down; retry on another");
                socket.send(sio::ack(id, &e.ack(&name)));
            }
            return;
        }
        events::dispatch(self, socket, &name, payload, ack);
    }

    fn unsupported(self: &Arc<Self>, socket: &Arc<Socket<SocketData>>, event: &str, ack: u64, what: Unsupported) {
        let e = match what {
            Unsupported::LoneSurrogate => ApiError::validation(
                "payload holds a lone UTF-16 surrogate escape (a cut emoji?): send well-formed Unicode",
            ),
            Unsupported::Binary => ApiError::validation("binary payloads are not supported"),
        };
        socket.send(sio::ack(ack, &e.ack(event)));
    }

    fn closed(self: &Arc<Self>, socket: &Arc<Socket<SocketData>>, _reason: DisconnectReason) {
        session::closed(self, socket);
    }
}
