//! A real `redis-server` for the tests that need Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of a test's own, on a free loopback port with a
/// directory of its own, stopped when dropped. A missing `redis-server`
/// fails the test (scripts/test installs it).
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    secured: bool,
}

/// The password of a [`RedisServer::start_secured`] server.
pub const PASSWORD: &str = "t0p-secret";

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (an empty one again, after [`RedisServer::kill`]).
    pub async fn start_on(port: u16) -> Self {
        Self::spawn(port, false).await
    }

    /// Starts one that speaks only TLS, with a certificate for `localhost`
    /// from a CA of its own ([`RedisServer::ca_file`]), and wants a password.
    pub async fn start_secured() -> Self {
        Self::spawn(free_port(), true).await
    }

    async fn spawn(port: u16, secured: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).arg("--dir").arg(dir.path());
        if secured {
            make_certificates(dir.path());
            command.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]);
            command.args([
                "--tls-cert-file",
                "redis.crt",
                "--tls-key-file",
                "redis.key",
                "--tls-ca-cert-file",
                "ca.crt",
            ]);
            command.args(["--requirepass", PASSWORD]).current_dir(dir.path());
        } else {
            command.args(["--port", &port.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is required for these tests (scripts/test installs it)");
        let server = Self { child, port, dir, secured };
        let client = server.client();
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
        match self.secured {
            true => format!("rediss://:{PASSWORD}@localhost:{}/0", self.port),
            false => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The CA that signed a secured server's certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.secured.then(|| self.dir.path().join("ca.crt"))
    }

    /// A client of this server, trusting its CA when it is secured.
    pub fn client(&self) -> redis::Client {
        match self.ca_file() {
            Some(ca) => {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).unwrap()) };
                redis::Client::build_with_tls(self.url(), certs).unwrap()
            }
            None => redis::Client::open(self.url()).unwrap(),
        }
    }

    /// Waits, at most 10 s, until `n` clients subscribe to `channel`.
    pub async fn wait_for_subscribers(&self, channel: &str, n: u32) {
        let conn = self.client().get_multiplexed_async_connection().await.unwrap();
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA (`ca.crt`) and a server certificate it signed for `localhost` and
/// 127.0.0.1 (`redis.crt`, `redis.key`), made in `dir` with openssl.
fn make_certificates(dir: &Path) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=confab test CA"],
        ]
        .concat(),
        [&["req"], &ec[..], &["-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=localhost"]].concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("openssl is required for the TLS test (scripts/test installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Declares two tests running `$body(redis: Option<&RedisServer>)`: on the
/// in-memory presence-svc (`None`) and on a fresh `redis-server`.
#[macro_export]
macro_rules! on_both_backends {
    ($memory:ident, $redis:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $memory() {
            $body(None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            let redis = $crate::redis::RedisServer::start().await;
            $body(Some(&redis)).await;
        }
    };
}
