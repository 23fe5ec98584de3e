//! The routers as an edge reaches them: one long-lived `Router/EdgeStream`
//! per router, frames out and frames back. [`Routers`] is the narrow trait
//! (the edge's links take it, so they need no network of their own to be
//! tested), [`RemoteRouters`] dials routers over gRPC. Its errors are
//! [`RouterError`], mapped once from the transport or a gRPC status here.
//!
//! What travels on a stream is the proto's frames: requests name their chat
//! and user as the strings of the wire, matched to replies by id.

mod remote;

pub use remote::RemoteRouters;

use crate::status::Outcome;
use confab_proto::v1 as pb;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// Why a router stream could not be opened, or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The address is not one a router can be dialed at, or the router
    /// refused the stream as malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The router could not be reached, or the stream broke: what was in
    /// flight on it may or may not have been applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The router failed in a way no retry mends.
    #[error("internal: {0}")]
    Internal(String),
}

/// A status on a router stream, mapped once: one this side made from a
/// failure of the call itself (it carries that error as its source) or one
/// that says the router could not serve now is `Unavailable`; a refused
/// argument is `Invalid`; the rest is `Internal`.
impl From<tonic::Status> for RouterError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_string();
        match crate::status::outcome(&s) {
            Outcome::Refused => RouterError::Invalid(message),
            Outcome::Unknown => RouterError::Unavailable(message),
            Outcome::Failed => RouterError::Internal(message),
        }
    }
}

/// What a router sends on an edge's stream, in the order its chats'
/// writers produced it; it ends, or yields an error, when the stream breaks.
pub type RouterFrames = BoxStream<'static, Result<pb::RouterFrame, RouterError>>;

#[async_trait::async_trait]
pub trait Routers: Send + Sync + 'static {
    /// Opens an edge's stream to the router at `addr` (`http://host:port`):
    /// the frames queued on `frames` go to the router in order (the first
    /// is the edge's `Hello`), until the queue closes or the stream breaks.
    async fn open(&self, addr: &str, frames: mpsc::Receiver<pb::EdgeFrame>) -> Result<RouterFrames, RouterError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn a_broken_or_refused_stream_is_unavailable() {
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset by peer")));
        assert_eq!(RouterError::from(broken), RouterError::Unavailable("connection reset by peer".into()));
        for s in
            [Status::unavailable("x"), Status::cancelled("x"), Status::unknown("x"), Status::deadline_exceeded("x")]
        {
            let code = s.code();
            assert_eq!(RouterError::from(s), RouterError::Unavailable("x".into()), "{code:?}");
        }
        assert_eq!(RouterError::from(Status::invalid_argument("x")), RouterError::Invalid("x".into()));
        assert_eq!(RouterError::from(Status::unimplemented("x")), RouterError::Internal("x".into()));
    }
}
