//! The one error a presence backend returns.

/// A backend (Redis) that did not answer: the outcome is unknown, so the
/// caller gets UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
#[error("presence backend unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<Unavailable> for tonic::Status {
    fn from(e: Unavailable) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}

impl From<redis::RedisError> for Unavailable {
    fn from(e: redis::RedisError) -> Self {
        Unavailable(e.to_string())
    }
}
