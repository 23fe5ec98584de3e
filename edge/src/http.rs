//! The HTTP API (CONTRACT §7, §8.1): chats, members, messages, health and
//! metrics. Errors are `{ error, message, correlationId }`. Every write
//! takes a slot of its rate limit ([`crate::limits`]): over it, 429 with
//! `Retry-After`.

use crate::error::ApiError;
use crate::limits::{self, RateClass};
use crate::transport::server::Rejection;
use crate::{events, validate, wire, Edge};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use confab_api::store::NewChat;
use confab_common::{ErrorCode, UserId};
use confab_proto::v1 as pb;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status.unwrap_or(self.code.http_status()))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, axum::Json(self.body("http"))).into_response();
        // For `observe`, which counts errors by code.
        res.extensions_mut().insert(self.code);
        if let Some(ms) = self.retry_after_ms {
            // Whole seconds, rounded up (CONTRACT §8.26).
            if let Ok(v) = header::HeaderValue::from_str(&ms.div_ceil(1000).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

/// The answer to a request the server refused before the app saw it.
pub fn reject(r: Rejection) -> Response {
    let e = match r {
        Rejection::TooLarge => ApiError::too_large(),
        Rejection::BodyTimeout(after) => {
            let ms = after.as_millis();
            ApiError {
                http_status: Some(408),
                ..ApiError::validation(format!("the request body did not arrive within {ms} ms"))
            }
        }
    };
    e.into_response()
}

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// The caller, from `Authorization: Bearer`; a missing or bad token is 401.
/// Extracted before the body, so a request failing both gets the 401.
struct Caller(String, pb::Profile);

impl FromRequestParts<Arc<Edge>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, edge: &Arc<Edge>) -> Result<Self, ApiError> {
        let h = parts.headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
        crate::auth::pick_token(None, h, None)
            .and_then(|t| edge.verifier.verify(&t))
            .map(|i| Caller(i.user_id.clone(), i.profile()))
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, format!("token refused: {}", e.reason())))
    }
}

/// A JSON object body; over the payload limit is 413, anything else 400.
struct JsonObject(Map<String, Value>);

impl FromRequest<Arc<Edge>> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, edge: &Arc<Edge>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, edge).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::validation(format!("unreadable body: {r}"))
            }
        })?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(o)) => Ok(JsonObject(o)),
            Ok(_) => Err(ApiError::validation("body must be a JSON object")),
            Err(_) => Err(ApiError::validation("body is not valid JSON")),
        }
    }
}

async fn timed<T>(
    edge: &Edge,
    f: impl std::future::Future<Output = Result<T, confab_api::store::StoreError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(edge.config.request_timeout(), f)
        .await
        .map_err(|_| ApiError::unavailable("store did not answer in time"))?
        .map_err(ApiError::from)
}

async fn create_chat(
    State(edge): State<Arc<Edge>>,
    Caller(user, _): Caller,
    JsonObject(ref o): JsonObject,
) -> ApiResult {
    let kind = validate::string(o, "type", 1, 16)?;
    if kind != "dm" && kind != "group" {
        return Err(ApiError::validation("type must be \"dm\" or \"group\""));
    }
    let title = validate::optional_string(o, "title", 0, 200)?;
    let mut members = vec![user.clone()];
    for id in validate::user_ids(o, "memberIds", edge.config.max_members)? {
        if !members.contains(&id) {
            members.push(id);
        }
    }
    if kind == "dm" && members.len() != 2 {
        return Err(ApiError::validation("a dm has exactly two members: the caller and one other user"));
    }
    limits::check(&edge, &user, RateClass::Chats).await?;
    let new =
        NewChat { kind, title, created_by: user.into(), member_ids: members.into_iter().map(UserId::from).collect() };
    let create = async { edge.store.create_chat(new).await.map_err(confab_api::store::StoreError::of_write) };
    let (chat, created) = timed(&edge, create).await?;
    if created {
        // The owner tells every edge, which subscribes the members' sockets.
        let op = confab_proto::v1::request::Op::Announce(confab_proto::v1::AnnounceOp {});
        if let Err(e) = crate::error::from_reply(edge.links.request(&chat.id, &chat.created_by, op, None).await) {
            tracing::warn!(chat.id = %chat.id, error = %e.message, "chat created but not announced");
        }
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(status, wire::chat(&chat)))
}

async fn list_chats(State(edge): State<Arc<Edge>>, Caller(user, _): Caller) -> ApiResult {
    let chats = timed(&edge, edge.store.list_user_chats(&user.into(), usize::MAX)).await?;
    let chats: Vec<Value> = chats.iter().map(wire::chat_summary).collect();
    Ok(json_response(StatusCode::OK, json!({ "chats": chats })))
}

async fn get_chat(State(edge): State<Arc<Edge>>, Caller(user, _): Caller, Path(chat_id): Path<String>) -> ApiResult {
    let (chat, _) = timed(&edge, edge.store.get_chat(&chat_id.into())).await?;
    if !chat.members.iter().any(|m| m.user_id == user) {
        return Err(ApiError::forbidden("not a member of this chat"));
    }
    Ok(json_response(StatusCode::OK, wire::chat(&chat)))
}

fn query_u64(q: &HashMap<String, String>, field: &str) -> Result<Option<u64>, ApiError> {
    match q.get(field) {
        None => Ok(None),
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map(Some).map_err(|_| ApiError::validation(format!("{field} is out of range")))
        }
        Some(_) => Err(ApiError::validation(format!("{field} must be decimal digits"))),
    }
}

async fn get_messages(
    State(edge): State<Arc<Edge>>,
    Caller(user, _): Caller,
    Path(chat_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let after = query_u64(&q, "afterSeq")?;
    let before = query_u64(&q, "beforeSeq")?;
    let limit = match query_u64(&q, "limit")? {
        None => edge.config.history_default_limit,
        Some(n) if (1..=edge.config.history_max_limit).contains(&n) => n,
        Some(_) => return Err(ApiError::validation(format!("limit must be 1..{}", edge.config.history_max_limit))),
    };
    let page = events::history(&edge, &user, &chat_id, after, before, limit).await?;
    Ok(json_response(StatusCode::OK, page))
}

async fn post_message(
    State(edge): State<Arc<Edge>>,
    Caller(user, sender): Caller,
    Path(chat_id): Path<String>,
    JsonObject(ref o): JsonObject,
) -> ApiResult {
    let (m, duplicate) = events::queue_send(&edge, &user, sender, o, chat_id, None, None)?.await?;
    let status = if duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok(json_response(status, wire::send_ack(&m)))
}

async fn user_presence(
    State(edge): State<Arc<Edge>>,
    Caller(viewer, _): Caller,
    Path(user_id): Path<String>,
) -> ApiResult {
    validate::user_id(&user_id, "userId")?;
    let snapshot = crate::presence::visible_snapshot(&edge, &viewer, &[user_id]).await?;
    Ok(json_response(StatusCode::OK, snapshot.into_iter().next().unwrap_or(Value::Null)))
}

/// Sends a change of the chat to its writer, within the user's limit of
/// chat changes; answers 200 with the new `Chat`.
async fn manage(edge: &Arc<Edge>, user: &str, chat_id: &str, change: pb::manage_op::Change) -> ApiResult {
    limits::check(edge, user, RateClass::Chats).await?;
    let op = pb::request::Op::Manage(pb::ManageOp { change: Some(change) });
    match crate::error::from_reply(edge.links.request(chat_id, user, op, None).await)? {
        pb::reply::Result::Chat(chat) => Ok(json_response(StatusCode::OK, wire::chat(&chat))),
        _ => Err(ApiError::outcome_unknown("unexpected router reply")),
    }
}

async fn patch_chat(
    State(edge): State<Arc<Edge>>,
    Caller(user, _): Caller,
    Path(chat_id): Path<String>,
    JsonObject(ref o): JsonObject,
) -> ApiResult {
    let title = validate::string(o, "title", 0, 200)?;
    manage(&edge, &user, &chat_id, pb::manage_op::Change::Title(title)).await
}

async fn add_members(
    State(edge): State<Arc<Edge>>,
    Caller(user, _): Caller,
    Path(chat_id): Path<String>,
    JsonObject(ref o): JsonObject,
) -> ApiResult {
    let ids = validate::user_ids(o, "userIds", edge.config.max_members)?;
    if ids.is_empty() {
        return Err(ApiError::validation("userIds must not be empty"));
    }
    manage(&edge, &user, &chat_id, pb::manage_op::Change::AddMembers(pb::UserIds { user_ids: ids })).await
}

async fn remove_member(
    State(edge): State<Arc<Edge>>,
    Caller(user, _): Caller,
    Path((chat_id, member)): Path<(String, String)>,
) -> ApiResult {
    validate::user_id(&member, "userId")?;
    manage(&edge, &user, &chat_id, pb::manage_op::Change::RemoveMember(member)).await
}

async fn set_role(
    State(edge): State<Arc<Edge>>,
    Caller(user, _): Caller,
    Path((chat_id, member)): Path<(String, String)>,
    JsonObject(ref o): JsonObject,
) -> ApiResult {
    validate::user_id(&member, "userId")?;
    let role = validate::string(o, "role", 1, 16)?;
    if role != "admin" && role != "member" {
        return Err(ApiError::validation("role must be admin or member"));
    }
    let change = pb::manage_op::Change::SetRole(pb::RoleChange { user_id: member, role });
    manage(&edge, &user, &chat_id, change).await
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }))
}

async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    if edge.drain.is_draining() || !edge.links.any_connected() {
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "ready": false }))
    } else {
        json_response(StatusCode::OK, json!({ "ready": true }))
    }
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], edge.metrics.registry.render()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Gives axum's own refusals the contract's error body: a bare 405 (whose
/// `Allow` axum sets), and the plain-text 4xx of a path or query that does
/// not decode (invalid UTF-8 after percent-decoding, say).
async fn refusal_bodies(res: Response) -> Response {
    let status = res.status();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let (parts, _) = res.into_parts();
        let mut out = ApiError::validation("method not allowed").into_response();
        *out.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        if let Some(allow) = parts.headers.get(header::ALLOW) {
            out.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return out;
    }
    let plain = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !status.is_client_error() || !plain {
        return res;
    }
    // axum's rejection text says what could not be read; it is short.
    let text = axum::body::to_bytes(res.into_body(), 1024).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).chars().take(200).collect::<String>();
    let message = if message.trim().is_empty() { "the request could not be read".to_string() } else { message };
    ApiError { http_status: Some(status.as_u16()), ..ApiError::validation(message) }.into_response()
}

/// The span and the metrics of one API call (probes and `/metrics` are
/// not counted): the span parents what the call asks of routers and
/// store-svc, and carries the error code and correlation id of a refusal.
async fn observe(State(edge): State<Arc<Edge>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_string());
    let route = route.unwrap_or_default();
    let span = tracing::info_span!(
        target: confab_common::telemetry::SPANS,
        "http",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let span = confab_common::telemetry::traces::with_ids(span);
    let res = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    edge.metrics.outcome("http", res.extensions().get::<ErrorCode>().copied(), started);
    res
}

pub fn router(edge: Arc<Edge>) -> Router {
    let limit = edge.config.max_payload;
    Router::new()
        .route("/v1/chats", get(list_chats).post(create_chat))
        .route("/v1/chats/{chat_id}", get(get_chat).patch(patch_chat))
        .route("/v1/chats/{chat_id}/members", axum::routing::post(add_members))
        .route("/v1/chats/{chat_id}/members/{user_id}", axum::routing::delete(remove_member).patch(set_role))
        .route("/v1/chats/{chat_id}/messages", get(get_messages).post(post_message))
        .route("/v1/users/{user_id}/presence", get(user_presence))
        .route_layer(axum::middleware::from_fn_with_state(edge.clone(), observe))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(refusal_bodies))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(edge)
}
