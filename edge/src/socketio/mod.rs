//! The Socket.IO layer, above the transport.

pub mod packet;
