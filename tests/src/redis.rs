//! A real `redis-server` for the tests that need Redis.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of a test's own, on a free loopback port with a
/// directory of its own, stopped when dropped. A missing `redis-server`
/// fails the test (scripts/test installs it).
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port).await
    }

    /// Starts one on `port` (an empty one again, after [`RedisServer::kill`]).
    pub async fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is required for these tests (scripts/test installs it)");
        let server = Self { child, port, _dir: dir };
        let client = redis::Client::open(server.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Waits, at most 10 s, until `n` clients subscribe to `channel`.
    pub async fn wait_for_subscribers(&self, channel: &str, n: u32) {
        let client = redis::Client::open(self.url()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        crate::wait_until(Duration::from_secs(10), || {
            let mut conn = conn.clone();
            async move {
                let numsub: Result<(String, u32), _> =
                    redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut conn).await;
                numsub.is_ok_and(|(_, subscribers)| subscribers >= n)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("fewer than {n} subscribers to {channel} within 10 s: {e}"));
    }

    /// Stops it; returns its port, to start an empty one there again.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
