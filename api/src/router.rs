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

use confab_proto::v1 as pb;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// Why a router stream could not be opened, or ended: invalid (a bad
/// address, or a stream the router refused), unavailable (unreachable, or
/// the stream broke: what was in flight may or may not have been applied)
/// or internal.
pub type RouterError = crate::status::CallError;

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
