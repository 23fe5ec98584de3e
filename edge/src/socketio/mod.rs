//! The Socket.IO layer: above the transport ([`crate::transport`]), below
//! the edge's sessions, events, rooms and presence. It parses and encodes
//! Socket.IO v5 packets ([`packet`]), keeps each socket with the data of
//! the layer above ([`Socket`]), and hands what the packets mean to an
//! [`App`] ([`handler`]).

pub mod handler;
pub mod packet;
pub mod socket;

pub use handler::{App, Layer, Unsupported};
pub use socket::Socket;
