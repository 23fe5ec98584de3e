//! Pieces every confab service shares and nothing more: id newtypes, the
//! client-facing error codes, timestamp formatting, shutdown, telemetry
//! set-up and gRPC listening. Domain logic lives in the service crates.

pub mod error;
pub mod grpc;
pub mod ids;
pub mod shutdown;
pub mod telemetry;
pub mod time;

pub use error::ErrorCode;
pub use ids::{ChatId, EdgeId, UserId};
pub use shutdown::Shutdown;
