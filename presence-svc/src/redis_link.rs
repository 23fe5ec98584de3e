//! The connection every Redis backend of a presence-svc process shares.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("bad --redis-url: {0}")]
    Url(#[from] redis::RedisError),
    #[error("cannot read --redis-ca-file {path}: {source}")]
    CaFile { path: PathBuf, source: std::io::Error },
}

/// A connection to the Redis at `url` (`redis://[:password@]host:port/db`,
/// or `rediss://` for TLS, trusting only the CA in `ca_file` when one is
/// given and the system's roots otherwise) that connects lazily and
/// reconnects by itself: a Redis that is down makes calls fail within
/// `deadline`, not the process.
pub fn connect(
    url: &str,
    ca_file: Option<&Path>,
    deadline: Duration,
) -> Result<(redis::Client, ConnectionManager), LinkError> {
    // One TLS provider for the process, whichever crate asks first.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = match ca_file {
        Some(path) => {
            let root_cert =
                std::fs::read(path).map_err(|source| LinkError::CaFile { path: path.to_owned(), source })?;
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(url, certs)?
        }
        None => redis::Client::open(url)?,
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(deadline))
        .set_response_timeout(Some(deadline))
        .set_number_of_retries(1)
        .set_max_delay(deadline);
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
}
