//! The cluster under failure, as separate OS processes: store-svc,
//! presence-svc, routers and edges each run as `confab <role>`. A steady
//! load of senders and receivers runs over many chats while a router is
//! SIGKILLed, a router is added, a router is removed and an edge is
//! SIGKILLed. Then, for every chat: every acked message is in history
//! exactly once, seqs are 1..N without gaps, and every receiver (staying
//! connected, or reconnecting and recovering with `sinceSeq`) saw every
//! message in seq order.

use confab_api::placement::Ring;
use confab_tests::client::Client;
use confab_tests::{confab_bin, http_call, token, wait_until, SECRET};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const CHATS: usize = 12;
const SEND_EVERY: Duration = Duration::from_millis(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(args: &[String]) -> Child {
    // FAILOVER_LOG_DIR=dir keeps each process's log there, for debugging.
    let stderr = match std::env::var_os("FAILOVER_LOG_DIR") {
        Some(dir) => Stdio::from(
            std::fs::File::create(std::path::Path::new(&dir).join(format!(
                "{}-{}.log",
                args[0],
                args[2].replace(':', "_")
            )))
            .unwrap(),
        ),
        None => Stdio::inherit(),
    };
    let level = if std::env::var_os("FAILOVER_LOG_DIR").is_some() { "info,confab_edge=debug" } else { "warn" };
    Command::new(confab_bin().expect("confab binary"))
        .args(args)
        .env("CONFAB_JWT_SECRET", SECRET)
        .env("CONFAB_LOG", level)
        .env("CONFAB_RATE_LIMIT_MESSAGES", "100000")
        .env("CONFAB_ROUTER_PROBE_MS", "100")
        .env("CONFAB_FAILOVER_DETECT_MS", "500")
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn confab")
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, sig).expect("signal");
}

/// Seqs a receiver saw, in arrival order.
type Seen = Arc<Mutex<Vec<u64>>>;
/// The last seq a receiver must reach before it stops.
type Target = Arc<Mutex<Option<u64>>>;

#[derive(Default)]
struct Record {
    /// clientId -> (seq, when acked)
    acked: HashMap<String, (u64, Instant)>,
}

/// Sends one message after another, retrying each (same clientId) until
/// acked, reconnecting to the other edge when its edge goes away.
async fn sender(edges: Vec<String>, user: String, chat: String, record: Arc<Mutex<Record>>, stop: Instant) {
    let mut edge = 0;
    let mut client = Client::connect(&edges[edge], json!({ "token": token(&user) })).await.unwrap();
    let mut i = 0;
    while Instant::now() < stop {
        let client_id = format!("{user}-{i}");
        loop {
            let body = json!({ "chatId": chat, "body": format!("{i}"), "clientId": client_id });
            match client.try_call("message:send", body, Duration::from_secs(3)).await {
                Some(ack) if ack["ok"] == true => {
                    let seq = ack["data"]["seq"].as_u64().unwrap();
                    record.lock().unwrap().acked.insert(client_id.clone(), (seq, Instant::now()));
                    break;
                }
                _ if client.closed_within(Duration::ZERO).await => {
                    edge = (edge + 1) % edges.len();
                    if let Ok(c) = Client::connect(&edges[edge], json!({ "token": token(&user) })).await {
                        client = c;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        i += 1;
        tokio::time::sleep(SEND_EVERY).await;
    }
}

/// Collects `message:new` seqs in arrival order; after losing its edge it
/// reconnects to another one and recovers with `room:join { sinceSeq }`.
async fn receiver(
    edges: Vec<String>,
    start_edge: usize,
    user: String,
    chat: String,
    seen: Seen,
    until: Target,
    ready: Arc<tokio::sync::Notify>,
) {
    let mut edge = start_edge;
    let mut client = Client::connect(&edges[edge], json!({ "token": token(&user) })).await.unwrap();
    client.expect_event("session:ready", Duration::from_secs(5)).await;
    ready.notify_one();
    loop {
        if let Some(target) = *until.lock().unwrap() {
            if seen.lock().unwrap().last().is_some_and(|s| *s >= target) {
                return;
            }
        }
        match client.next_event("message:new", Duration::from_millis(100)).await {
            Some(m) if m["chatId"] == chat => {
                let seq = m["seq"].as_u64().unwrap();
                let mut s = seen.lock().unwrap();
                if s.last().is_none_or(|last| seq > *last) {
                    s.push(seq);
                } else if !s.contains(&seq) {
                    s.push(seq); // out of order: the checker reports it
                }
            }
            Some(_) => {}
            None if client.closed_within(Duration::ZERO).await => {
                edge = (edge + 1) % edges.len();
                let Ok(mut c) = Client::connect(&edges[edge], json!({ "token": token(&user) })).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let since = seen.lock().unwrap().last().copied().unwrap_or(0);
                c.expect_event("session:ready", Duration::from_secs(5)).await;
                let join = c
                    .try_call("room:join", json!({ "chatId": chat, "sinceSeq": since }), Duration::from_secs(10))
                    .await;
                match join {
                    Some(join) if join["ok"] == true => {
                        let mut s = seen.lock().unwrap();
                        for m in join["data"]["missed"].as_array().unwrap() {
                            let seq = m["seq"].as_u64().unwrap();
                            if s.last().is_none_or(|last| seq > *last) {
                                s.push(seq);
                            }
                        }
                    }
                    other => eprintln!("{user}: room:join after reconnect failed: {other:?}"),
                }
                client = c;
            }
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_and_edges_die_and_join_under_load_without_losing_or_reordering() {
    let data = tempfile::tempdir().unwrap();
    let (store_port, presence_port) = (free_port(), free_port());
    let router_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let edge_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let router_urls: Vec<String> = router_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let edge_urls: Vec<String> = edge_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let routers_flag = router_urls.join(",");
    let store_url = format!("http://127.0.0.1:{store_port}");
    let presence_url = format!("http://127.0.0.1:{presence_port}");
    let s = |v: &str| v.to_string();

    let _store = spawn(&[
        s("store"),
        s("--listen"),
        format!("127.0.0.1:{store_port}"),
        s("--data-dir"),
        data.path().display().to_string(),
    ]);
    let _presence = spawn(&[s("presence"), s("--listen"), format!("127.0.0.1:{presence_port}")]);
    let router = |i: usize| {
        spawn(&[
            s("router"),
            s("--listen"),
            format!("127.0.0.1:{}", router_ports[i]),
            s("--advertise"),
            router_urls[i].clone(),
            s("--routers"),
            routers_flag.clone(),
            s("--store-url"),
            store_url.clone(),
        ])
    };
    let edge = |i: usize| {
        spawn(&[
            s("edge"),
            s("--listen"),
            format!("127.0.0.1:{}", edge_ports[i]),
            s("--routers"),
            routers_flag.clone(),
            s("--store-url"),
            store_url.clone(),
            s("--presence-url"),
            presence_url.clone(),
        ])
    };
    // Routers 0-2 now; router 3 is listed but joins later.
    let mut routers: Vec<Option<Child>> = vec![Some(router(0)), Some(router(1)), Some(router(2)), None];
    let edges = vec![edge(0), edge(1)];
    let http = reqwest::Client::new();
    for url in &edge_urls {
        let (http, url) = (http.clone(), format!("{url}/readyz"));
        wait_until(Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move { matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) }
        })
        .await
        .expect("edges ready");
    }
    // Let the boot grace pass so router 3 is out of every ring.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut chats = Vec::new();
    for k in 0..CHATS {
        let body = json!({ "type": "group", "memberIds": [format!("r{k}")] });
        let (status, chat) = http_call(
            &http,
            reqwest::Method::POST,
            &format!("{}/v1/chats", edge_urls[0]),
            Some(&token(&format!("s{k}"))),
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{chat}");
        chats.push(chat["id"].as_str().unwrap().to_string());
    }
    let initial_ring = Ring::new(router_urls[..3].to_vec());
    let killed_chats: Vec<usize> = (0..CHATS)
        .filter(|&k| initial_ring.owner(&chats[k].as_str().into()) == Some(router_urls[0].as_str()))
        .collect();

    let stop = Instant::now() + Duration::from_secs(12);
    let record: Arc<Mutex<Record>> = Arc::default();
    let mut tasks = Vec::new();
    let mut receivers = Vec::new();
    let mut seen_by: Vec<(usize, Seen, Target)> = Vec::new();
    for (k, chat) in chats.iter().enumerate() {
        let target: Arc<Mutex<Option<u64>>> = Arc::default();
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let ready = Arc::new(tokio::sync::Notify::new());
        let r = receiver(
            edge_urls.clone(),
            (k + 1) % 2,
            format!("r{k}"),
            chat.clone(),
            seen.clone(),
            target.clone(),
            ready.clone(),
        );
        receivers.push(tokio::spawn(r));
        seen_by.push((k, seen, target));
        // Senders start once their receiver has its session.
        tokio::time::timeout(Duration::from_secs(10), ready.notified()).await.expect("receiver ready");
    }
    for (k, chat) in chats.iter().enumerate() {
        tasks.push(tokio::spawn(sender(edge_urls.clone(), format!("s{k}"), chat.clone(), record.clone(), stop)));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_at = Instant::now();
    signal(routers[0].as_ref().unwrap(), nix::sys::signal::Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(3)).await;
    routers[3] = Some(router(3)); // add a router
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(routers[1].as_ref().unwrap(), nix::sys::signal::Signal::SIGTERM); // remove a router
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&edges[1], nix::sys::signal::Signal::SIGKILL);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await.expect("senders stop").expect("sender panicked");
    }

    // The failover time: from the SIGKILL to the first ack, after it, in
    // each chat the dead router owned.
    let acked = record.lock().unwrap().acked.clone();
    let mut failover = Duration::ZERO;
    for &k in &killed_chats {
        let first = acked
            .iter()
            .filter(|(id, (_, at))| id.starts_with(&format!("s{k}-")) && *at > kill_at)
            .map(|(_, (_, at))| *at)
            .min()
            .expect("the chat was served again");
        failover = failover.max(first - kill_at);
    }

    // History from the surviving edge; every chat checked.
    let mut total_messages = 0;
    let mut receivers_checked = 0;
    for (k, chat) in chats.iter().enumerate() {
        let mut history: Vec<Value> = Vec::new();
        let mut after = 0;
        loop {
            let url = format!("{}/v1/chats/{chat}/messages?afterSeq={after}&limit=100", edge_urls[0]);
            let (status, page) =
                http_call(&http, reqwest::Method::GET, &url, Some(&token(&format!("s{k}"))), None).await;
            assert_eq!(status, 200, "{page}");
            let msgs = page["messages"].as_array().unwrap().clone();
            after = msgs.last().map_or(after, |m| m["seq"].as_u64().unwrap());
            history.extend(msgs);
            if page["hasMore"] != true {
                break;
            }
        }
        let n = history.len() as u64;
        let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "chat {k}: seqs must be 1..N");
        let mut by_client: HashMap<&str, u64> = HashMap::new();
        for m in &history {
            assert!(
                by_client.insert(m["clientId"].as_str().unwrap(), m["seq"].as_u64().unwrap()).is_none(),
                "chat {k}: a clientId stored twice"
            );
        }
        for (id, (seq, _)) in acked.iter().filter(|(id, _)| id.starts_with(&format!("s{k}-"))) {
            assert_eq!(by_client.get(id.as_str()), Some(seq), "chat {k}: acked {id} lost or moved");
        }
        total_messages += n;
        // The receiver catches up, then must have seen 1..N in order.
        let (_, seen, target) = &seen_by[k];
        *target.lock().unwrap() = Some(n);
        let seen2 = seen.clone();
        let caught_up = wait_until(Duration::from_secs(15), || {
            let s = seen2.clone();
            async move { s.lock().unwrap().len() as u64 >= n }
        })
        .await;
        let got = seen.lock().unwrap().clone();
        let missing: Vec<u64> = (1..=n).filter(|s| !got.contains(s)).collect();
        if !missing.is_empty() && receivers[k].is_finished() {
            eprintln!("chat {k}: the receiver task ended early");
        }
        assert!(caught_up.is_ok(), "chat {k}: receiver saw {} of {n}, missing {missing:?}", got.len());
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "chat {k}: receiver order");
        receivers_checked += 1;
    }
    println!(
        "failover test: {total_messages} messages in {CHATS} chats checked, {receivers_checked} receivers, {} chats on the killed router, failover {} ms",
        killed_chats.len(),
        failover.as_millis()
    );
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}");
    drop(edges);
}
