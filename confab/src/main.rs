//! The `confab` command: `confab dev` runs the whole cluster in one process
//! (store-svc on the embedded store, presence-svc, a router and an edge,
//! talking gRPC over loopback as a cluster does); `confab edge|router|store|presence`
//! run one role each, for containers; `confab token` mints a dev token.
//! Each role is its crate's `run(config, listener, shutdown)`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use confab_common::grpc::Listeners;
use confab_common::{shutdown, Shutdown};
use confab_store::EmbeddedStore;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "confab", version, about = "A sharded real-time chat backend speaking Socket.IO")]
struct Cli {
    /// Log lines as JSON.
    #[arg(long, env = "CONFAB_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service in one process, embedded store on disk, presence in memory.
    Dev(DevArgs),
    /// The Socket.IO and HTTP edge.
    Edge {
        #[arg(long, env = "CONFAB_LISTEN", default_value = "0.0.0.0:3000")]
        listen: SocketAddr,
        // Boxed: by far the largest configuration, read once.
        #[command(flatten)]
        config: Box<confab_edge::Config>,
    },
    /// A router (owner of chats by consistent hash).
    Router {
        #[arg(long, env = "CONFAB_LISTEN", default_value = "0.0.0.0:7002")]
        listen: SocketAddr,
        /// Where `/metrics` is served (Prometheus text), if anywhere.
        #[arg(long = "metrics-listen", env = "CONFAB_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        config: confab_router::Config,
    },
    /// store-svc: on the embedded store, or on ScyllaDB with --scylla-nodes.
    Store {
        #[arg(long, env = "CONFAB_LISTEN", default_value = "0.0.0.0:7003")]
        listen: SocketAddr,
        /// Where `/metrics` is served (Prometheus text), if anywhere.
        #[arg(long = "metrics-listen", env = "CONFAB_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        config: confab_store::Config,
        #[command(flatten)]
        scylla: confab_store::ScyllaConfig,
    },
    /// presence-svc, in memory.
    Presence {
        #[arg(long, env = "CONFAB_LISTEN", default_value = "0.0.0.0:7004")]
        listen: SocketAddr,
        /// Where `/metrics` is served (Prometheus text), if anywhere.
        #[arg(long = "metrics-listen", env = "CONFAB_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        config: confab_presence::Config,
    },
    /// Mints an HS256 token signed with the configured secret.
    Token(TokenArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Where clients connect.
    #[arg(long, env = "CONFAB_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The embedded store: data directory, page cache, salvage.
    #[command(flatten)]
    store: confab_store::Config,
    /// Per-user rate limits of every class of write (see `confab edge --help`).
    #[command(flatten)]
    rate_limits: confab_edge::RateLimits,
    /// HS256 secret; generated and printed when absent.
    #[arg(long = "jwt-secret", env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Typing stops this many milliseconds after the last start.
    #[arg(long = "typing-ttl-ms", env = "CONFAB_TYPING_TTL_MS", default_value_t = 5000)]
    typing_ttl_ms: u64,
    /// A typing start within this many milliseconds of the last broadcast one is not re-broadcast.
    #[arg(long = "typing-debounce-ms", env = "CONFAB_TYPING_DEBOUNCE_MS", default_value_t = 2000)]
    typing_debounce_ms: u64,
    /// Engine.IO sessions one client IP may hold at a time, 0 for no cap (see `confab edge --help`).
    #[arg(long = "max-connections-per-ip", env = "CONFAB_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Socket.IO sessions one user may hold at a time, 0 for no cap.
    #[arg(long = "max-sessions-per-user", env = "CONFAB_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    max_sessions_per_user: usize,
    /// At shutdown: time to answer requests in flight and close every socket, in milliseconds.
    #[arg(long = "drain-ms", env = "CONFAB_DRAIN_MS", default_value_t = 5000)]
    drain_ms: u64,
    #[command(flatten)]
    presence: confab_presence::Config,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Display name (`name`).
    #[arg(long)]
    name: Option<String>,
    /// Avatar URL (`picture`), shown as the sender's `avatarUrl`.
    #[arg(long)]
    picture: Option<String>,
    /// Lifetime: 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: i64,
    #[arg(long = "jwt-secret", env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

fn parse_ttl(s: &str) -> Result<i64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| format!("bad duration {s:?}: use e.g. 90s, 30m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("duration {s:?} is too long"))
}

/// Connections the kernel completes and queues for `accept`. tokio's
/// default of 1,024 overflowed when 100,000 clients connected as fast as
/// they could: the kernel dropped the overflowing SYNs, and each such client
/// waited for its 1 s SYN retry. Linux caps the figure at
/// `net.core.somaxconn` (4,096 by default).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr}"))
}

/// The gRPC listener and, with `--metrics-listen`, the metrics one.
async fn listeners(grpc: SocketAddr, metrics: Option<SocketAddr>) -> anyhow::Result<Listeners> {
    let metrics = match metrics {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok(Listeners { grpc: bind(grpc).await?, metrics })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Token(t) = &cli.command {
        println!(
            "{}",
            confab_edge::auth::mint_hs256(
                t.jwt_secret.as_bytes(),
                &t.user,
                t.name.as_deref(),
                t.picture.as_deref(),
                t.ttl
            )
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Inside the runtime: the OTLP gRPC exporter connects through it.
    let telemetry = {
        let _in_runtime = runtime.enter();
        confab_common::telemetry::init(cli.command.service_name(), "info", cli.log_json)?
    };
    let result = runtime.block_on(async_main(cli.command));
    telemetry.shutdown();
    result
}

impl Command {
    /// The `service.name` of this process's spans unless `OTEL_SERVICE_NAME` says otherwise.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Dev(_) => "confab-dev",
            Command::Edge { .. } => "confab-edge",
            Command::Router { .. } => "confab-router",
            Command::Store { .. } => "confab-store",
            Command::Presence { .. } => "confab-presence",
            Command::Token(_) => "confab",
        }
    }
}

async fn async_main(command: Command) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("shutting down");
        on_signal.trigger();
    });
    let result = match command {
        Command::Dev(args) => dev(args, shutdown.clone()).await,
        Command::Edge { listen, config } => {
            confab_edge::run(*config, bind(listen).await?, shutdown.clone()).await.map_err(Into::into)
        }
        Command::Router { listen, metrics_listen, config } => {
            let listeners = listeners(listen, metrics_listen).await?;
            confab_router::run(config, listeners, shutdown.clone()).await.map_err(Into::into)
        }
        Command::Store { listen, metrics_listen, config, scylla } if !scylla.nodes.is_empty() => {
            let _ = config; // the embedded store's settings do not apply
            let listeners = listeners(listen, metrics_listen).await?;
            confab_store::run_scylla(scylla, listeners, shutdown.clone()).await.map_err(Into::into)
        }
        Command::Store { listen, metrics_listen, config, .. } => {
            let listeners = listeners(listen, metrics_listen).await?;
            confab_store::run(config, listeners, shutdown.clone()).await.map_err(Into::into)
        }
        Command::Presence { listen, metrics_listen, config } => {
            let listeners = listeners(listen, metrics_listen).await?;
            confab_presence::run(config, listeners, shutdown.clone()).await.map_err(Into::into)
        }
        Command::Token(_) => Ok(()),
    };
    if !shutdown.drain(Duration::from_secs(10)).await {
        tracing::warn!("some tasks did not finish within the drain deadline");
    }
    result
}

fn random_secret() -> String {
    use rand::RngExt;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn dev(args: DevArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let (store_l, presence_l, router_l) = (bind(loopback).await?, bind(loopback).await?, bind(loopback).await?);
    let edge_l = bind(args.listen).await?;
    let url = |l: &TcpListener| l.local_addr().map(|a| format!("http://{a}"));
    let (store_url, presence_url, router_url) = (url(&store_l)?, url(&presence_l)?, url(&router_l)?);
    let edge_addr = edge_l.local_addr()?;
    let generated = args.jwt_secret.is_none();
    let secret = args.jwt_secret.unwrap_or_else(random_secret);

    // The cluster in one process: store-svc (on the embedded store),
    // presence-svc and one router each serve gRPC on a loopback port, and
    // the edge and the router reach them through their gRPC clients, as
    // they would across machines. The store is opened first, so one that
    // refuses to open stops dev before anything is served.
    let store = EmbeddedStore::open_with(&args.store)
        .with_context(|| format!("cannot open the store in {}", args.store.data_dir.display()))?;
    // The services behind the edge stop once it has drained, so what it
    // answers while draining still reaches them.
    let backends = Shutdown::new();
    let store = confab_store::run_embedded(store, store_l, backends.clone());
    let presence = confab_presence::run(args.presence, presence_l, backends.clone());
    let mut router_config =
        confab_router::Config::for_test(router_url.clone(), vec![router_url.clone()], store_url.clone());
    router_config.typing_ttl_ms = args.typing_ttl_ms;
    router_config.typing_debounce_ms = args.typing_debounce_ms;
    let router = confab_router::run(router_config, router_l, backends.clone());

    let mut edge_config = confab_edge::Config::for_test(vec![router_url], store_url, presence_url, secret.clone());
    edge_config.rate_limits = args.rate_limits;
    edge_config.max_connections_per_ip = args.max_connections_per_ip;
    edge_config.max_sessions_per_user = args.max_sessions_per_user;
    edge_config.drain_ms = args.drain_ms;
    let edge = async {
        let ended = confab_edge::run(edge_config, edge_l, shutdown.clone()).await;
        backends.trigger();
        ended
    };

    let token = confab_edge::auth::mint_hs256(secret.as_bytes(), "alice", Some("Alice"), None, 24 * 3600);
    println!("confab dev is up");
    println!("  socket.io + http: http://{edge_addr}");
    println!("  data directory:   {}", args.store.data_dir.display());
    if generated {
        println!("  jwt secret:       {secret}   (generated for this run; set CONFAB_JWT_SECRET to keep one)");
    }
    println!("  token for alice:  {token}");
    println!("  more tokens:      CONFAB_JWT_SECRET={secret} confab token --user bob");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    // One runtime for all four. A thread of their own for router and
    // presence was tried (so a chat writer need not queue behind the edge's
    // socket writes): in S2 at 1,000-2,000 msgs/s its p99 was within the
    // run-to-run noise of one runtime, so the simpler shape stays.
    let (s, p, r, e) = tokio::join!(
        stop_all_on_exit(store, &shutdown),
        stop_all_on_exit(presence, &shutdown),
        stop_all_on_exit(router, &shutdown),
        stop_all_on_exit(edge, &shutdown)
    );
    if !backends.drain(Duration::from_secs(10)).await {
        tracing::warn!("some tasks of the services behind the edge did not finish within the drain deadline");
    }
    p.context("presence-svc")?;
    r.context("router")?;
    e.context("edge")?;
    s.context("store-svc")?;
    Ok(())
}

/// One service ending, for any reason, ends the whole dev cluster.
async fn stop_all_on_exit<E: std::error::Error + Send + Sync + 'static>(
    service: impl std::future::Future<Output = Result<(), E>>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let r = service.await;
    shutdown.trigger();
    r.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(7 * 86400));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn store_flags_reach_the_store_config() {
        let Command::Store { config, scylla, .. } = Cli::parse_from(["confab", "store"]).command else {
            unreachable!()
        };
        assert_eq!((config.cache_mb, config.salvage), (64, false));
        assert!(scylla.nodes.is_empty(), "the embedded store unless told otherwise");
        let args = [
            "confab",
            "store",
            "--scylla-nodes",
            "a:9042,b:9042",
            "--scylla-datacenter",
            "eu",
            "--scylla-keyspace",
            "chat",
        ];
        let Command::Store { scylla, .. } = Cli::parse_from(args).command else { unreachable!() };
        assert_eq!(scylla.nodes, ["a:9042", "b:9042"]);
        assert_eq!(
            (scylla.keyspace.as_str(), scylla.datacenter.as_deref(), scylla.replication_factor),
            ("chat", Some("eu"), 3)
        );
        let args = ["confab", "dev", "--store-cache-mb", "16", "--salvage", "--data-dir", "/tmp/x"];
        let Command::Dev(dev) = Cli::parse_from(args).command else { unreachable!() };
        assert_eq!((dev.store.cache_mb, dev.store.salvage), (16, true));
        assert_eq!(dev.store.data_dir, std::path::PathBuf::from("/tmp/x"));
    }

    /// More connections than tokio's default backlog complete their
    /// handshake while the server is not accepting.
    #[tokio::test]
    async fn the_listener_queues_a_burst_of_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..1500 {
            connects.spawn(tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)));
        }
        let mut open = Vec::new();
        while let Some(joined) = connects.join_next().await {
            open.push(joined.unwrap().expect("connected in time").unwrap());
        }
        assert_eq!(open.len(), 1500);
        assert!(bind(addr).await.is_err(), "the port is taken");
    }
}
