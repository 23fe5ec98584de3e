//! store-svc: the durable state of confab — chats, members, messages by
//! (chat, seq), client-id idempotency keys and read cursors.
//!
//! It implements confab-api's narrow [`Store`] trait (callers depend on
//! that crate, not on this one) and serves it over gRPC:
//! - [`EmbeddedStore`], the default backend: a single [redb] file with one writer
//!   thread that group-commits batches of writes through a write-ahead log
//!   (one sequential append and `fdatasync` per batch; redb commits durably
//!   only at checkpoints). redb was chosen
//!   because it is pure Rust (nothing to install), ACID with a durable commit
//!   by default, has a stable file format and a small, well-kept codebase;
//!   an LSM (fjall) would write faster but brings background compaction we
//!   do not need at this size.
//! - [`ScyllaStore`] (`scylla/`), history on a ScyllaDB or Cassandra
//!   cluster through the `scylla` driver: stateless replicas, QUORUM
//!   writes and reads, ownership fenced by write timestamps (see
//!   docs/operations.md);
//! - [`StoreService`], the `confab.v1.Store` gRPC service that [`run`]
//!   serves over any `Store`, beside the standard gRPC health service
//!   (NOT_SERVING while the embedded store's disk fails); its client is
//!   confab-api's `RemoteStore`.
//!
//! This crate does not know about sockets, rooms or fan-out; it also does
//! not decide who may write a chat (that is the router's single writer,
//! fenced here by the ownership epoch of its claim and the "next seq must
//! follow the last" check on append).

mod embedded;
mod grpc;
mod records;
pub mod scylla;
mod wal;

pub use embedded::{EmbeddedStore, OpenError};
pub use grpc::{Appends, StoreService};
pub use scylla::{ScyllaConfig, ScyllaError, ScyllaStore};
pub use wal::Damage;

use confab_api::store::{self, Store, StoreError};

use confab_common::grpc::{Listeners, RpcMetrics};
use confab_common::telemetry::metrics::{Metrics, LATENCY_BUCKETS};
use confab_common::Shutdown;
use confab_proto::v1::store_server::StoreServer;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// Configuration of the embedded store (`confab store`, `confab dev`).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "store")]
pub struct Config {
    /// Directory of the embedded store's files.
    #[arg(long = "data-dir", env = "CONFAB_DATA_DIR", default_value = "./confab-data")]
    pub data_dir: PathBuf,
    /// Memory for the database's page cache, in MiB.
    #[arg(long = "store-cache-mb", env = "CONFAB_STORE_CACHE_MB", default_value_t = 64)]
    pub cache_mb: usize,
    /// Start even though the write-ahead log is damaged: keep every valid
    /// record, drop the damaged ones, and raise every chat's next seq past
    /// any the lost records may have held (a gap). For one start after the
    /// store refused to; see docs/operations.md. (No environment variable:
    /// left set, it would hide the next damage.)
    #[arg(long)]
    pub salvage: bool,
}

impl Config {
    /// The defaults, in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir, cache_mb: 64, salvage: false }
    }

    pub fn for_test(data_dir: PathBuf) -> Self {
        Self::new(data_dir)
    }

    pub(crate) fn cache_bytes(&self) -> usize {
        self.cache_mb.saturating_mul(1 << 20)
    }
}

/// Why store-svc stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scylla(#[from] ScyllaError),
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Serves the store over gRPC on `listener` until `shutdown` fires, with
/// the standard gRPC health service: NOT_SERVING while the store's disk
/// fails, SERVING once it has recovered.
pub async fn run(config: Config, listeners: impl Into<Listeners>, shutdown: Shutdown) -> Result<(), RunError> {
    run_embedded(EmbeddedStore::open_with(&config)?, listeners, shutdown).await
}

/// [`run`] over a store already opened (`confab dev` opens it before it
/// starts anything, so a store that refuses to open stops it at once).
pub async fn run_embedded(
    embedded: EmbeddedStore,
    listeners: impl Into<Listeners>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let metrics = Metrics::new("confab-store").map_err(|e| RunError::Config(e.to_string()))?;
    embedded.report_syncs(
        metrics
            .meter("confab-store")
            .f64_histogram("confab.store.fsync.duration")
            .with_unit("s")
            .with_description("Group commits of the embedded store: one log write and fdatasync.")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build(),
    );
    let reporter = HealthReporter::new();
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    shutdown.spawn(report_health(embedded.health(), reporter, shutdown.clone()));
    let store: Arc<dyn Store> = Arc::new(embedded);
    let served = serve_with(store.clone(), Some(health), listeners.into(), metrics, shutdown).await;
    // No more calls: checkpoint, so the next start has nothing to redo.
    let closed = store.close().await;
    served?;
    Ok(closed?)
}

/// Serves history kept on a ScyllaDB cluster: connects, creates or
/// migrates the keyspace, then serves until `shutdown` fires, SERVING on
/// the health service from then on (the cluster's own failures answer each
/// call UNAVAILABLE).
pub async fn run_scylla(
    config: ScyllaConfig,
    listeners: impl Into<Listeners>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let metrics = Metrics::new("confab-store").map_err(|e| RunError::Config(e.to_string()))?;
    let store = scylla::connect(&config).await?;
    tracing::info!(nodes = %config.nodes.join(","), keyspace = %config.keyspace, "history on ScyllaDB");
    let reporter = HealthReporter::new();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status(<StoreServer<StoreService> as NamedService>::NAME, ServingStatus::Serving).await;
    let health = HealthServer::new(HealthService::from_health_reporter(reporter));
    Ok(serve_with(Arc::new(store), Some(health), listeners.into(), metrics, shutdown).await?)
}

/// Mirrors the store's health into the gRPC health service, for the whole
/// server ("") and the store service by name.
async fn report_health(mut healthy: watch::Receiver<bool>, reporter: HealthReporter, shutdown: Shutdown) {
    loop {
        let status = if *healthy.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(<StoreServer<StoreService> as NamedService>::NAME, status).await;
        tokio::select! {
            changed = healthy.changed() => if changed.is_err() { return },
            () = shutdown.triggered() => return,
        }
    }
}

/// Serves any `Store` over gRPC.
pub async fn serve(store: Arc<dyn Store>, listener: TcpListener, shutdown: Shutdown) -> Result<(), StoreError> {
    let metrics = Metrics::new("confab-store").map_err(|e| StoreError::Invalid(e.to_string()))?;
    serve_with(store, None, listener.into(), metrics, shutdown).await
}

async fn serve_with(
    store: Arc<dyn Store>,
    health: Option<HealthServer<HealthService>>,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), StoreError> {
    let listener = listeners.serve_metrics(&metrics, &shutdown);
    let incoming = confab_common::grpc::incoming(listener);
    tracing::info!("store-svc serving");
    tonic::transport::Server::builder()
        .trace_fn(confab_common::telemetry::propagation::server_span)
        .layer(RpcMetrics::new(&metrics, "confab.store"))
        .add_optional_service(health)
        .add_service(StoreService::new(store, Appends::new(&metrics)).into_server())
        .serve_with_incoming_shutdown(incoming, async move { shutdown.triggered().await })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(())
}
