//! The ScyllaDB backend (`confab store --scylla-nodes`): history on a
//! ScyllaDB or Cassandra cluster through the `scylla` driver, so store-svc
//! replicas hold no state and any number of them serve one keyspace.
//!
//! - `fence.rs`: partition buckets and the logical write timestamps that
//!   fence a deposed owner;
//! - `tables.rs`: the [`Tables`] trait, one method per CQL statement;
//! - `session.rs`: [`CqlTables`], those statements prepared on a cluster;
//! - `schema.rs`: the keyspace and the versioned CQL in `store-svc/cql/`;
//! - `store.rs`: [`ScyllaStore`], the `Store` over any `Tables`.
//!
//! docs/operations.md ("History on ScyllaDB") has the schema's keys, the
//! consistency of each statement and the fencing argument.

mod fence;
mod schema;
mod session;
mod store;
mod tables;

pub use fence::bucket;
pub use schema::SchemaError;
pub use session::CqlTables;
pub use store::ScyllaStore;
pub use tables::{ChatRow, ClientKey, Head, MessageRow, NewRows, Owner, Tables};

use schema::Replication;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::Consistency;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Configuration of the ScyllaDB backend (`confab store`).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "scylla")]
pub struct ScyllaConfig {
    /// ScyllaDB (or Cassandra) contact points, HOST:PORT, comma separated:
    /// keep history there instead of the embedded store.
    #[arg(long = "scylla-nodes", env = "CONFAB_SCYLLA_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The keyspace, created on first start.
    #[arg(long = "scylla-keyspace", env = "CONFAB_SCYLLA_KEYSPACE", default_value = "confab")]
    pub keyspace: String,
    /// Replicas of each row; writes and reads need a majority of them.
    #[arg(long = "scylla-replication-factor", env = "CONFAB_SCYLLA_REPLICATION_FACTOR", default_value_t = 3)]
    pub replication_factor: u32,
    /// The datacenter this store-svc runs in: the keyspace replicates there
    /// (NetworkTopologyStrategy), statements are LOCAL_QUORUM and
    /// LOCAL_SERIAL, and the driver talks to its nodes only.
    #[arg(long = "scylla-datacenter", env = "CONFAB_SCYLLA_DATACENTER")]
    pub datacenter: Option<String>,
    /// User name for password authentication.
    #[arg(long = "scylla-username", env = "CONFAB_SCYLLA_USERNAME")]
    pub username: Option<String>,
    /// Password for password authentication.
    #[arg(long = "scylla-password", env = "CONFAB_SCYLLA_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Speak TLS to the nodes, trusting the CA certificates (PEM) in this file.
    #[arg(long = "scylla-ca-file", env = "CONFAB_SCYLLA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Every store call ends within this many milliseconds (the routers'
    /// and edges' store deadline), UNAVAILABLE if it did not.
    #[arg(long = "scylla-timeout-ms", env = "CONFAB_SCYLLA_TIMEOUT_MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Read the cluster's schema metadata and wait for schema agreement
    /// after each schema change. Turn off only for a CQL server without the
    /// system schema tables; schema changes then apply as the server says.
    #[arg(
        long = "scylla-schema-metadata",
        env = "CONFAB_SCYLLA_SCHEMA_METADATA",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub schema_metadata: bool,
}

impl ScyllaConfig {
    /// The defaults, against `nodes`.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            keyspace: "confab".into(),
            replication_factor: 3,
            datacenter: None,
            username: None,
            password: None,
            ca_file: None,
            timeout_ms: 5000,
            schema_metadata: true,
        }
    }
}

/// Why the ScyllaDB backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    #[error("--scylla-ca-file {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    #[error("--scylla-username and --scylla-password go together")]
    Credentials,
    #[error("cannot reach ScyllaDB at {nodes}: {why}")]
    Connect { nodes: String, why: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("preparing statements: {0}")]
    Prepare(String),
}

/// A TLS client trusting the CA certificates of a PEM file.
fn tls(path: &PathBuf) -> Result<Arc<rustls::ClientConfig>, ScyllaError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fail = |why: String| ScyllaError::CaFile { path: path.clone(), why };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        roots.add(cert.map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to the cluster, creates or migrates the keyspace and prepares
/// every statement.
pub async fn connect(config: &ScyllaConfig) -> Result<ScyllaStore<CqlTables>, ScyllaError> {
    let timeout = Duration::from_millis(config.timeout_ms);
    let local = config.datacenter.is_some();
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.datacenter {
        policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(if local { Consistency::LocalQuorum } else { Consistency::Quorum })
        .request_timeout(Some(timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(timeout)
        .default_execution_profile_handle(profile.into_handle())
        .fetch_schema_metadata(config.schema_metadata)
        .auto_await_schema_agreement(config.schema_metadata);
    match (&config.username, &config.password) {
        (Some(user), Some(password)) => builder = builder.user(user, password),
        (None, None) => {}
        _ => return Err(ScyllaError::Credentials),
    }
    if let Some(path) = &config.ca_file {
        builder = builder.tls_context(Some(tls(path)?));
    }
    let session = builder
        .build()
        .await
        .map_err(|e| ScyllaError::Connect { nodes: config.nodes.join(","), why: e.to_string() })?;
    let replication = Replication { factor: config.replication_factor, datacenter: config.datacenter.clone() };
    schema::migrate(&session, &config.keyspace, &replication).await?;
    let tables = CqlTables::prepare(session, local).await.map_err(|e| ScyllaError::Prepare(e.to_string()))?;
    Ok(ScyllaStore::new(tables, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_settings_are_clear_errors_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let mut config = ScyllaConfig::new(vec!["127.0.0.1:1".into()]);
        config.ca_file = Some(missing.clone());
        let Err(e) = connect(&config).await else { panic!("connected with a missing CA file") };
        assert!(matches!(&e, ScyllaError::CaFile { path, .. } if *path == missing), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        config.ca_file = Some(empty);
        let Err(e) = connect(&config).await else { panic!("connected with an empty CA file") };
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let mut config = ScyllaConfig::new(vec!["127.0.0.1:1".into()]);
        config.username = Some("confab".into());
        assert!(matches!(connect(&config).await, Err(ScyllaError::Credentials)));
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_the_start_and_names_the_nodes() {
        let mut config = ScyllaConfig::new(vec!["127.0.0.1:1".into()]);
        config.timeout_ms = 500;
        let Err(e) = connect(&config).await else { panic!("connected to nothing") };
        assert!(matches!(&e, ScyllaError::Connect { nodes, .. } if nodes == "127.0.0.1:1"), "{e}");
    }
}
