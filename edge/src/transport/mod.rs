//! The transport: accepted TCP connections, the HTTP server, Engine.IO
//! over the lean WebSocket path and engineioxide, and the outboxes.

pub mod conn;
pub mod listener;
pub mod server;
pub mod ws;
