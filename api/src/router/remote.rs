//! Routers dialed over gRPC, a stream per [`Routers::open`].

use super::{RouterError, RouterFrames, Routers};
use confab_proto::v1 as pb;
use confab_proto::v1::router_client::RouterClient;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// How long dialing a router may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on an idle stream, and how long one may go unanswered
/// before the stream counts as broken: a router that vanished without
/// closing its sockets is noticed within the detection window.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest frame a router may send (a join's missed messages).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// [`Routers`] over gRPC: each open dials the router afresh.
#[derive(Debug, Clone, Default)]
pub struct RemoteRouters;

impl RemoteRouters {
    pub fn new() -> Self {
        Self
    }
}

/// A transport error with its causes: tonic's own message says little.
fn unavailable(e: &dyn std::error::Error) -> RouterError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    RouterError::Unavailable(message)
}

#[async_trait::async_trait]
impl Routers for RemoteRouters {
    async fn open(&self, addr: &str, frames: mpsc::Receiver<pb::EdgeFrame>) -> Result<RouterFrames, RouterError> {
        let channel = Endpoint::from_shared(addr.to_string())
            .map_err(|e| RouterError::Invalid(format!("bad router address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .connect()
            .await
            .map_err(|e| unavailable(&e))?;
        let mut client = RouterClient::new(channel).max_decoding_message_size(MAX_FRAME);
        let inbound = client.edge_stream(ReceiverStream::new(frames)).await?.into_inner();
        Ok(inbound.map(|frame| frame.map_err(RouterError::from)).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_address_is_invalid_and_an_unreachable_router_unavailable() {
        let (_tx, rx) = mpsc::channel(1);
        let bad = RemoteRouters::new().open("not a url", rx).await.err();
        assert!(matches!(bad, Some(RouterError::Invalid(_))), "{bad:?}");
        // A port nothing listens on: bound, then freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (_tx, rx) = mpsc::channel(1);
        let down = RemoteRouters::new().open(&format!("http://127.0.0.1:{port}"), rx).await.err();
        assert!(matches!(down, Some(RouterError::Unavailable(_))), "{down:?}");
    }
}
