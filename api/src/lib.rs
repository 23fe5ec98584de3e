//! confab-api: what one service needs to call another, beside the generated
//! gRPC code of `confab-proto`. Services depend on this crate and on
//! `confab-common`, never on each other.
//!
//! - [`store`]: the narrow [`store::Store`] trait every store backend
//!   implements (store-svc's embedded store, later ScyllaDB), its types and
//!   errors (typed across gRPC, and mapped to the client's error once for
//!   every service), and [`store::RemoteStore`], the trait over store-svc's
//!   gRPC API.
//! - [`presence`]: the narrow [`presence::Presence`] trait of the calls an
//!   edge makes to presence-svc (sessions, statuses, watches, rate limits),
//!   its errors, and [`presence::RemotePresence`] over its gRPC API.
//! - [`router`]: the [`router::Routers`] trait through which an edge opens
//!   its long-lived stream to a router, and [`router::RemoteRouters`], which
//!   dials them over gRPC.
//! - [`placement`]: which router owns a chat ([`placement::Ring`]), where
//!   the router list comes from and how a silent router is detected; edges
//!   and routers both build it, so they agree on every owner.
//!
//! Not here: any backend, any server, anything about sockets or clients.

pub mod placement;
pub mod presence;
pub mod router;
mod status;
pub mod store;
