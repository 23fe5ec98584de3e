//! Pieces every confab service shares and nothing more: id newtypes (and
//! the user id rule), the client-facing error codes, timestamp formatting,
//! shutdown, telemetry set-up, gRPC listening, retry backoff and
//! rate-limited log lines. Domain logic lives in the service crates.

pub mod backoff;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod log_limit;
pub mod shutdown;
pub mod telemetry;
pub mod time;

pub use error::ErrorCode;
pub use ids::{ChatId, EdgeId, InvalidUserId, UserId};
pub use shutdown::Shutdown;
