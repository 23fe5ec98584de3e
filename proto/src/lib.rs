//! The `.proto` files of confab's internal gRPC API and the tonic/prost code
//! generated from them. Nothing else lives here: conversions and domain types
//! belong to the crates that use them.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Version 1 of the internal API.
pub mod v1 {
    tonic::include_proto!("confab.v1");
}
