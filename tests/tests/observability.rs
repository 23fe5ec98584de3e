//! Traces and metrics as an SRE sees them: every role as its own process
//! (`confab edge|router|store|presence`) exporting to a real OTLP endpoint
//! in the test (opentelemetry-proto's collector services), `/metrics` of
//! every role checked by `promtool`, and every metric the shipped dashboard
//! and alert rules read present in what the services serve.

use confab_tests::client::Client;
use confab_tests::otlp::{Receiver, Span};
use confab_tests::process::{self, Roles};
use confab_tests::{http_call, repo_root, token, wait_until};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const EXPORT_DEADLINE: Duration = Duration::from_secs(20);

/// Creates a group chat of alice and bob, connects alice and joins it.
async fn alice_in_a_chat(edge: &str) -> (Client, String) {
    let http = reqwest::Client::new();
    let body = json!({ "type": "group", "title": "traced", "memberIds": ["bob"] });
    let (status, chat) =
        http_call(&http, reqwest::Method::POST, &format!("{edge}/v1/chats"), Some(&token("alice")), Some(body)).await;
    assert_eq!(status, 201, "{chat}");
    let chat_id = chat["id"].as_str().expect("chat id").to_string();
    let mut alice = Client::connect(edge, json!({ "token": token("alice") })).await.expect("connect");
    alice.expect_event("session:ready", Duration::from_secs(5)).await;
    let joined = alice.call("room:join", json!({ "chatId": chat_id })).await;
    assert_eq!(joined["ok"], true, "{joined}");
    (alice, chat_id)
}

/// The spans of the trace that `root` starts, once `wanted` of them are in.
async fn trace_of(receiver: &Receiver, root: impl Fn(&Span) -> bool, wanted: &[&str]) -> Vec<Span> {
    let mut found = Vec::new();
    let arrived = wait_until(EXPORT_DEADLINE, || {
        let spans = receiver.spans();
        let trace = spans.iter().find(|s| root(s)).map(|r| r.trace_id.clone());
        found = spans.into_iter().filter(|s| Some(&s.trace_id) == trace.as_ref()).collect();
        let names: BTreeSet<&str> = found.iter().map(|s| s.name.as_str()).collect();
        let complete = wanted.iter().all(|w| names.contains(w));
        async move { complete }
    })
    .await;
    let names: Vec<(&str, &str)> = found.iter().map(|s| (s.service.as_str(), s.name.as_str())).collect();
    assert!(arrived.is_ok(), "the trace never held all of {wanted:?}; it holds {names:?}");
    found
}

fn one<'a>(spans: &'a [Span], service: &str, name: &str) -> &'a Span {
    let matching: Vec<&Span> = spans.iter().filter(|s| s.service == service && s.name == name).collect();
    assert_eq!(matching.len(), 1, "one {service} span {name:?} in {spans:#?}");
    matching[0]
}

fn child_of(child: &Span, parent: &Span) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{} ({}) should be a child of {} ({})",
        child.name, child.service, parent.name, parent.service
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_one_trace_across_edge_router_and_store() {
    let receiver = Receiver::start().await.unwrap();
    let roles = Roles::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ])
    .await
    .unwrap();
    let (mut alice, chat_id) = alice_in_a_chat(&roles.edge).await;
    let sent = alice.call("message:send", json!({ "chatId": chat_id, "clientId": "c1", "body": "traced" })).await;
    assert_eq!(sent["ok"], true, "{sent}");

    // The send: edge → router (over the edge stream) → append → store-svc.
    let is_send = |s: &Span| s.service == "confab-edge" && s.name == "message:send" && s.status_code != 2;
    let wanted = ["message:send", "send", "chat.append", "confab.v1.Store/Append", "store.append", "chat.fanout"];
    let spans = trace_of(&receiver, is_send, &wanted).await;
    let edge = one(&spans, "confab-edge", "message:send");
    assert!(edge.parent_span_id.is_empty(), "the edge's span starts the trace");
    let router = one(&spans, "confab-router", "send");
    child_of(router, edge);
    let append = one(&spans, "confab-router", "chat.append");
    child_of(append, router);
    let served = one(&spans, "confab-store", "confab.v1.Store/Append");
    child_of(served, append);
    child_of(one(&spans, "confab-store", "store.append"), served);
    child_of(one(&spans, "confab-router", "chat.fanout"), append);

    // CONNECT and an HTTP API call are traced too.
    let names: BTreeSet<(String, String)> = receiver.spans().into_iter().map(|s| (s.service, s.name)).collect();
    assert!(names.contains(&("confab-edge".into(), "connect".into())), "{names:?}");
    assert!(names.contains(&("confab-edge".into(), "POST /v1/chats".into())), "{names:?}");

    // Metrics go over OTLP as well as to /metrics.
    let pushed = wait_until(EXPORT_DEADLINE, || {
        let metrics = receiver.metrics();
        async move {
            metrics.contains(&("confab-router".into(), "confab.router.requests".into()))
                && metrics.contains(&("confab-edge".into(), "confab.edge.events".into()))
        }
    })
    .await;
    assert!(pushed.is_ok(), "metrics pushed: {:?}", receiver.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_span_carries_its_code_and_correlation_id() {
    let receiver = Receiver::start().await.unwrap();
    let roles = Roles::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await
    .unwrap();
    let (mut alice, chat_id) = alice_in_a_chat(&roles.edge).await;
    // Refused at the edge (an empty body) and by the router (not a member).
    let refused = alice.call("message:send", json!({ "chatId": chat_id, "clientId": "c1", "body": "" })).await;
    confab_tests::error(&refused, "VALIDATION_ERROR");
    let elsewhere =
        alice.call("message:send", json!({ "chatId": "no-such-chat", "clientId": "c2", "body": "x" })).await;
    assert_eq!(elsewhere["ok"], false, "{elsewhere}");
    for ack in [&refused, &elsewhere] {
        let id = ack["correlationId"].as_str().unwrap().to_string();
        let code = ack["error"].as_str().unwrap().to_string();
        let mine = |s: &Span| s.attributes.get("confab.correlation_id") == Some(&id);
        let spans = trace_of(&receiver, mine, &["message:send"]).await;
        let span = spans.iter().find(|s| mine(s)).unwrap();
        assert_eq!((span.service.as_str(), span.name.as_str()), ("confab-edge", "message:send"));
        assert_eq!(span.status_code, 2, "an error status: {span:?}");
        assert_eq!(span.attributes.get("error.type"), Some(&code), "{span:?}");
    }
}

/// A collector that is down costs traces, not messages: sends are acked
/// as usual while every export fails (the export queue is bounded and
/// drops what it cannot send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_delays_no_message() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let roles = Roles::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
    ])
    .await
    .unwrap();
    let (mut alice, chat_id) = alice_in_a_chat(&roles.edge).await;
    for i in 0..200 {
        let body = json!({ "chatId": chat_id, "clientId": format!("c{i}"), "body": "m" });
        let acked = alice.try_call("message:send", body, Duration::from_secs(2)).await;
        let acked = acked.unwrap_or_else(|| panic!("send {i} not acked within 2 s"));
        assert_eq!(acked["ok"], true, "{acked}");
    }
}

/// `confab dev` over OTLP/HTTP: the same trace, through the same gRPC
/// boundaries inside one process; and its JSON log lines carry the trace
/// and span ids of the span they were written in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_dev_exports_over_otlp_http_and_logs_carry_trace_ids() {
    let receiver = Receiver::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut command = process::command(&["dev"], data.path()).unwrap();
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_url)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("CONFAB_LOG", "info")
        .env("CONFAB_LOG_JSON", "true")
        .stderr(std::process::Stdio::piped());
    let (mut dev, url) = process::start_dev(command).await.unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut lines = tokio::io::BufReader::new(dev.stderr.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    let (mut alice, chat_id) = alice_in_a_chat(&url).await;
    let sent = alice.call("message:send", json!({ "chatId": chat_id, "clientId": "c1", "body": "hi" })).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let is_send = |s: &Span| s.name == "message:send";
    let spans = trace_of(&receiver, is_send, &["message:send", "send", "chat.append", "confab.v1.Store/Append"]).await;
    assert!(spans.iter().all(|s| s.service == "confab-dev"), "{spans:#?}");
    child_of(one(&spans, "confab-dev", "send"), one(&spans, "confab-dev", "message:send"));

    // A refusal is logged (with its correlation id) inside the event's span.
    let refused = alice.call("message:send", json!({ "chatId": chat_id, "clientId": "c2", "body": "" })).await;
    let id = refused["correlationId"].as_str().unwrap().to_string();
    let mine = |s: &Span| s.attributes.get("confab.correlation_id") == Some(&id);
    let spans = trace_of(&receiver, mine, &["message:send"]).await;
    let span = spans.iter().find(|s| mine(s)).unwrap().clone();
    let mut line = None;
    let logged = wait_until(EXPORT_DEADLINE, || {
        line = log.lock().unwrap().iter().find(|l| l.contains(&id)).cloned();
        let found = line.is_some();
        async move { found }
    })
    .await;
    assert!(logged.is_ok(), "no log line names {id}");
    let line: Value = serde_json::from_str(&line.unwrap()).expect("a JSON log line");
    assert_eq!(line["span"]["trace_id"], span.trace_id.as_str(), "{line}");
    assert_eq!(line["span"]["span_id"], span.span_id.as_str(), "{line}");
}

/// The `confab_*` names a PromQL text reads.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(at) = rest.find("confab_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Every `expr` of the dashboard, and the alert rules.
fn shipped_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("k8s/confab/dashboards/confab.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match v {
                        Value::String(s) if k == "expr" => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "the dashboard's queries: {exprs:?}");
    // Every name the rules file mentions, in an expression or a text.
    let rules = std::fs::read_to_string(repo_root().join("k8s/confab/alerts/confab-rules.yaml")).expect("the rules");
    assert!(rules.matches("expr:").count() >= 7, "the alert rules' queries");
    exprs.push(rules);
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_metrics_that_promtool_accepts_and_the_dashboard_reads() {
    let roles = Roles::start(&[]).await.unwrap();
    // Some traffic, so that latency histograms have observations.
    let (mut alice, chat_id) = alice_in_a_chat(&roles.edge).await;
    let sent = alice.call("message:send", json!({ "chatId": chat_id, "clientId": "c1", "body": "m" })).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let refused = alice.call("message:send", json!({ "chatId": chat_id, "clientId": "c2", "body": "" })).await;
    assert_eq!(refused["ok"], false);

    let http = reqwest::Client::new();
    let mut served = BTreeSet::new();
    let mut everything = String::new();
    for (role, url) in &roles.metrics {
        let text = http.get(url).send().await.unwrap().text().await.unwrap();
        everything.push_str(&text);
        assert!(text.contains(&format!("target_info{{service_name=\"confab-{role}\"")), "{role}: {text}");
        let mut promtool = tokio::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is required (Debian package prometheus; scripts/test installs it)");
        use tokio::io::AsyncWriteExt;
        let mut stdin = promtool.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        drop(stdin);
        let out = promtool.wait_with_output().await.unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on {role}: {said}\n{text}");
        served.extend(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string()),
        );
    }
    let mut missing = BTreeSet::new();
    for expr in shipped_queries() {
        for name in metric_names(&expr) {
            if !served.contains(&name) {
                missing.insert(name);
            }
        }
    }
    assert!(missing.is_empty(), "queried by the dashboard or the alerts but served by no role: {missing:?}");
    // No chat or user id ever becomes a label.
    assert!(!everything.contains(&chat_id) && !everything.contains("alice"), "{everything}");
}
