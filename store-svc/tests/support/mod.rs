//! What the store's integration tests share.

pub mod model;
