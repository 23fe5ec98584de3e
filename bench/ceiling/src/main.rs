//! `ceiling`: a benchmark peer, not part of confab. A bare socketioxide
//! server that implements the benchmark subset of the client contract in
//! memory (no gRPC, no store, no fsync): what the Socket.IO layer alone costs
//! in Rust, used as written in socketioxide's documentation.
//!
//! Subset: `POST /v1/chats`, CONNECT with a JWT in the auth payload, auto-join
//! of the user's chats and `session:ready`, `room:join { chatId, sinceSeq }`,
//! `message:send` with idempotent client ids, `message:new` to the chat's room.
//! One difference from the contract: socketioxide's CONNECT_ERROR carries
//! only `{ message }`, so a refused token has no `data.code`.

use axum::extract::State as HttpState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use clap::Parser;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, Extension, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Messages kept per chat for `room:join { sinceSeq }`.
const HISTORY: usize = 10_000;

#[derive(Parser)]
#[command(name = "ceiling", about = "Benchmark peer: bare socketioxide with the benchmark subset, in memory")]
struct Cli {
    #[arg(long, env = "CEILING_LISTEN", default_value = "127.0.0.1:4100")]
    listen: std::net::SocketAddr,
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    secret: String,
}

#[derive(Default)]
struct Chat {
    members: Vec<String>,
    last_seq: u64,
    history: VecDeque<Value>,
    /// (sender, clientId) → the ack data of the first send.
    sent: HashMap<(String, String), Value>,
}

struct App {
    key: jsonwebtoken::DecodingKey,
    /// Each chat behind an async lock: a send emits while holding it, so seqs go out in order.
    chats: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Chat>>>>,
    user_chats: Mutex<HashMap<String, Vec<String>>>,
    dm_pairs: Mutex<HashMap<(String, String), String>>,
}

#[derive(Clone)]
struct User(String);

fn now_iso() -> String {
    confab_common::time::iso8601(confab_common::time::now_ms())
}

fn error(code: &str, message: &str) -> Value {
    json!({ "ok": false, "error": code, "message": message, "correlationId": uuid::Uuid::new_v4().to_string() })
}

impl App {
    fn user_of(&self, token: &str) -> Option<String> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &validation).ok()?;
        data.claims["sub"].as_str().map(str::to_string)
    }

    fn chat(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Chat>>> {
        self.chats.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }
}

async fn create_chat(HttpState(app): HttpState<Arc<App>>, headers: HeaderMap, body: Json<Value>) -> impl IntoResponse {
    let token = headers.get("authorization").and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
    let Some(caller) = token.and_then(|t| app.user_of(t)) else {
        return (StatusCode::UNAUTHORIZED, Json(error("UNAUTHORIZED", "missing or invalid token")));
    };
    let kind = body["type"].as_str().unwrap_or("");
    let Some(ids) = body["memberIds"].as_array() else {
        return (StatusCode::BAD_REQUEST, Json(error("VALIDATION_ERROR", "memberIds must be an array")));
    };
    let mut members = vec![caller.clone()];
    for id in ids {
        match id.as_str() {
            Some(id) if !members.iter().any(|m| m == id) => members.push(id.to_string()),
            Some(_) => {}
            None => return (StatusCode::BAD_REQUEST, Json(error("VALIDATION_ERROR", "memberIds must be strings"))),
        }
    }
    if !matches!(kind, "group" | "dm") || (kind == "dm" && members.len() != 2) {
        return (StatusCode::BAD_REQUEST, Json(error("VALIDATION_ERROR", "type group, or dm with one other member")));
    }
    let now = now_iso();
    let shape = |id: &str| {
        json!({ "id": id, "type": kind, "title": body["title"], "memberIds": members, "createdBy": caller,
                "createdAt": now, "updatedAt": now })
    };
    if kind == "dm" {
        let mut pair = (members[0].clone(), members[1].clone());
        if pair.0 > pair.1 {
            pair = (pair.1, pair.0);
        }
        if let Some(id) = app.dm_pairs.lock().unwrap_or_else(|p| p.into_inner()).get(&pair) {
            return (StatusCode::OK, Json(shape(id)));
        }
        let id = uuid::Uuid::new_v4().to_string();
        app.dm_pairs.lock().unwrap_or_else(|p| p.into_inner()).insert(pair, id.clone());
        register(&app, &id, &members);
        return (StatusCode::CREATED, Json(shape(&id)));
    }
    let id = uuid::Uuid::new_v4().to_string();
    register(&app, &id, &members);
    (StatusCode::CREATED, Json(shape(&id)))
}

fn register(app: &App, id: &str, members: &[String]) {
    let chat = Chat { members: members.to_vec(), ..Chat::default() };
    app.chats.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), Arc::new(tokio::sync::Mutex::new(chat)));
    let mut user_chats = app.user_chats.lock().unwrap_or_else(|p| p.into_inner());
    for m in members {
        user_chats.entry(m.clone()).or_default().push(id.to_string());
    }
}

#[derive(Debug)]
struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UNAUTHORIZED")
    }
}

/// Connect middleware: the JWT in the auth payload names the user.
async fn authenticate(s: SocketRef, State(app): State<Arc<App>>, Data(auth): Data<Value>) -> Result<(), Unauthorized> {
    let user = auth["token"].as_str().and_then(|t| app.user_of(t)).ok_or(Unauthorized)?;
    s.extensions.insert(User(user));
    // Handlers before the CONNECT is accepted: an event that arrives before
    // its handler exists is dropped, and the client may send right away.
    s.on("room:join", room_join);
    s.on("message:send", message_send);
    Ok(())
}

async fn on_connect(s: SocketRef, State(app): State<Arc<App>>, Extension(User(user)): Extension<User>) {
    let chats = app.user_chats.lock().unwrap_or_else(|p| p.into_inner()).get(&user).cloned().unwrap_or_default();
    let mut listed = Vec::with_capacity(chats.len());
    for id in &chats {
        s.join(id.clone());
        let last_seq = match app.chat(id) {
            Some(c) => c.lock().await.last_seq,
            None => 0,
        };
        listed.push(json!({ "chatId": id, "lastSeq": last_seq, "lastReadSeq": 0, "unread": 0 }));
    }
    let ready = json!({ "userId": user, "sessionId": s.id.to_string(), "serverTime": now_iso(), "chats": listed });
    let _ = s.emit("session:ready", &ready);
}

async fn room_join(
    s: SocketRef,
    State(app): State<Arc<App>>,
    Extension(User(user)): Extension<User>,
    Data(p): Data<Value>,
    ack: AckSender,
) {
    let Some(chat_id) = p["chatId"].as_str() else {
        let _ = ack.send(&error("VALIDATION_ERROR", "chatId must be a string"));
        return;
    };
    let Some(chat) = app.chat(chat_id) else {
        let _ = ack.send(&error("NOT_FOUND", "no such chat"));
        return;
    };
    let reply = {
        let chat = chat.lock().await;
        if !chat.members.contains(&user) {
            let _ = ack.send(&error("FORBIDDEN", "not a member of this chat"));
            return;
        }
        let (missed, has_more) = match p["sinceSeq"].as_u64() {
            Some(since) => {
                let after: Vec<&Value> = chat.history.iter().filter(|m| m["seq"].as_u64() > Some(since)).collect();
                (after.iter().take(100).map(|m| (*m).clone()).collect::<Vec<_>>(), after.len() > 100)
            }
            None => (Vec::new(), false),
        };
        json!({ "ok": true, "data": { "chatId": chat_id, "lastSeq": chat.last_seq, "lastReadSeq": 0,
                "missed": missed, "hasMore": has_more } })
    };
    s.join(chat_id.to_string());
    let _ = ack.send(&reply);
}

async fn message_send(
    io: SocketIo,
    State(app): State<Arc<App>>,
    Extension(User(user)): Extension<User>,
    Data(p): Data<Value>,
    ack: AckSender,
) {
    let (Some(chat_id), Some(body), Some(client_id)) =
        (p["chatId"].as_str(), p["body"].as_str(), p["clientId"].as_str())
    else {
        let _ = ack.send(&error("VALIDATION_ERROR", "chatId, body and clientId must be strings"));
        return;
    };
    if body.trim().is_empty() || body.chars().count() > 8000 || client_id.is_empty() || client_id.chars().count() > 64 {
        let _ = ack.send(&error("VALIDATION_ERROR", "body 1..8000 characters, clientId 1..64"));
        return;
    }
    let Some(chat) = app.chat(chat_id) else {
        let _ = ack.send(&error("NOT_FOUND", "no such chat"));
        return;
    };
    let mut chat = chat.lock().await;
    if !chat.members.contains(&user) {
        let _ = ack.send(&error("FORBIDDEN", "not a member of this chat"));
        return;
    }
    let key = (user.clone(), client_id.to_string());
    if let Some(data) = chat.sent.get(&key) {
        let _ = ack.send(&json!({ "ok": true, "data": data }));
        return;
    }
    chat.last_seq += 1;
    let (id, created_at) = (uuid::Uuid::new_v4().to_string(), now_iso());
    let message = json!({ "chatId": chat_id, "id": id, "seq": chat.last_seq, "senderId": user, "body": body,
                          "createdAt": created_at, "clientId": client_id });
    let data = json!({ "clientId": client_id, "serverId": id, "seq": chat.last_seq, "createdAt": created_at });
    chat.history.push_back(message.clone());
    if chat.history.len() > HISTORY {
        chat.history.pop_front();
    }
    chat.sent.insert(key, data.clone());
    let _ = ack.send(&json!({ "ok": true, "data": data }));
    // Emitted under the chat's lock, so the room sees seqs in order; the
    // in-memory adapter queues to each socket without waiting.
    let _ = io.to(chat_id.to_string()).emit("message:new", &message).await;
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let app = Arc::new(App {
            key: jsonwebtoken::DecodingKey::from_secret(cli.secret.as_bytes()),
            chats: Mutex::default(),
            user_chats: Mutex::default(),
            dm_pairs: Mutex::default(),
        });
        let (layer, io) = SocketIo::builder().with_state(app.clone()).build_layer();
        io.ns("/", on_connect.with(authenticate));
        let router = axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/chats", post(create_chat))
            .with_state(app)
            .layer(layer);
        let listener = tokio::net::TcpListener::bind(cli.listen).await?;
        println!("ceiling listening on http://{}", listener.local_addr()?);
        axum::serve(listener, router).await?;
        Ok(())
    })
}
