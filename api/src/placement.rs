//! Chat placement, shared by edges and routers: the consistent-hash
//! [`Ring`] of routers and the [`membership`] that decides which routers
//! are on it.

pub mod membership;
mod ring;

pub use membership::{Detection, Discovery, Membership};
pub use ring::Ring;
