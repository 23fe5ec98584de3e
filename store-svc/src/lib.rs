//! store-svc: the durable state of confab — chats, members, messages by
//! (chat, seq), client-id idempotency keys and read cursors.
//!
//! Callers depend on the narrow [`Store`] trait. Two implementations:
//! - [`EmbeddedStore`], the default: a single [redb] file with one writer
//!   thread that group-commits batches of writes through a write-ahead log
//!   (one sequential append and `fdatasync` per batch; redb commits durably
//!   only at checkpoints). redb was chosen
//!   because it is pure Rust (nothing to install), ACID with a durable commit
//!   by default, has a stable file format and a small, well-kept codebase;
//!   an LSM (fjall) would write faster but brings background compaction we
//!   do not need at this size.
//! - [`RemoteStore`], a tonic client of the gRPC service that
//!   [`run`] serves over any `Store`.
//!
//! This crate does not know about sockets, rooms or fan-out; it also does
//! not decide who may write a chat (that is the router's single writer,
//! fenced here by the "next seq must follow the last" check on append).

mod embedded;
mod grpc;
mod store;
mod wal;

pub use embedded::EmbeddedStore;
pub use grpc::{RemoteStore, StoreService};
pub use store::{AppendBatch, Appended, History, NewChat, Store, StoreError};

use confab_common::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Configuration of a store-svc process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Directory of the embedded store's files.
    #[arg(long = "data-dir", env = "CONFAB_DATA_DIR", default_value = "./confab-data")]
    pub data_dir: PathBuf,
}

impl Config {
    pub fn for_test(data_dir: PathBuf) -> Self {
        Self { data_dir }
    }
}

/// Serves the store over gRPC on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), StoreError> {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&config.data_dir)?);
    let served = serve(store.clone(), listener, shutdown).await;
    // No more calls: checkpoint, so the next start has nothing to redo.
    let closed = store.close().await;
    served?;
    closed
}

/// Serves any `Store` over gRPC.
pub async fn serve(store: Arc<dyn Store>, listener: TcpListener, shutdown: Shutdown) -> Result<(), StoreError> {
    let incoming = confab_common::grpc::incoming(listener);
    tracing::info!("store-svc serving");
    tonic::transport::Server::builder()
        .add_service(StoreService::new(store).into_server())
        .serve_with_incoming_shutdown(incoming, async move { shutdown.triggered().await })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(())
}
