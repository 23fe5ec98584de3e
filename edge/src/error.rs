//! The one error type of the edge's handlers, mapped once to the client's
//! shape: an ack `{ ok: false, error, message, correlationId }` or an HTTP
//! body `{ error, message, correlationId }`. The correlation id is logged
//! with the failure.

use confab_common::ErrorCode;
use confab_proto::v1 as pb;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// An HTTP status other than the code's own (413 for a body too large).
    pub http_status: Option<u16>,
    /// RATE_LIMITED: when to retry, also sent as `data.retryAfterMs`.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), http_status: None, retry_after_ms: None }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }
    /// A request body over the payload limit (HTTP 413).
    pub fn too_large() -> Self {
        Self { http_status: Some(413), ..Self::validation("body is larger than the payload limit") }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// A write whose outcome can't be told (the answer about it was lost
    /// or unreadable): it may or may not have been applied, so the client
    /// retries with the same ids (UNAVAILABLE, never INTERNAL).
    pub fn outcome_unknown(why: &str) -> Self {
        Self::unavailable(format!("{why}: the outcome is unknown, retry with the same ids"))
    }
    /// Over a rate limit: `data.retryAfterMs` (and HTTP `Retry-After`).
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self { retry_after_ms: Some(retry_after_ms), ..Self::new(ErrorCode::RateLimited, message) }
    }

    /// The error body, with a fresh correlation id that is also logged.
    pub fn body(&self, context: &str) -> Value {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        confab_common::telemetry::traces::record_error(self.code.as_str(), &correlation_id, &self.message);
        match self.code {
            ErrorCode::Internal | ErrorCode::Unavailable => {
                tracing::warn!(correlation_id, code = %self.code, context, "{}", self.message)
            }
            _ => tracing::info!(correlation_id, code = %self.code, context, "{}", self.message),
        }
        let mut body = json!({ "error": self.code.as_str(), "message": self.message, "correlationId": correlation_id });
        if let Some(ms) = self.retry_after_ms {
            body["data"] = json!({ "retryAfterMs": ms });
        }
        body
    }

    /// The ack payload of a failed event.
    pub fn ack(&self, event: &str) -> Value {
        let mut body = self.body(event);
        if let Value::Object(o) = &mut body {
            o.insert("ok".into(), Value::Bool(false));
        }
        body
    }
}

/// A store failure met by the edge itself (history, chat lists, chat
/// creation) reaches the client as the router's would.
impl From<confab_api::store::StoreError> for ApiError {
    fn from(e: confab_api::store::StoreError) -> Self {
        e.client_error().into()
    }
}

/// Every presence failure is UNAVAILABLE to the client: what it asked of
/// presence (a status, who is online) was checked here first.
impl From<confab_api::presence::PresenceError> for ApiError {
    fn from(e: confab_api::presence::PresenceError) -> Self {
        Self::unavailable(format!("presence {e}"))
    }
}

/// The router's error codes, and the store's through them, as the client's:
/// the one mapping of an internal error to the contract's codes.
impl From<pb::Error> for ApiError {
    fn from(e: pb::Error) -> Self {
        let code = match pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Internal) {
            pb::ErrorCode::Validation => ErrorCode::ValidationError,
            pb::ErrorCode::Forbidden => ErrorCode::Forbidden,
            pb::ErrorCode::NotFound => ErrorCode::NotFound,
            pb::ErrorCode::Unavailable | pb::ErrorCode::NotOwner => ErrorCode::Unavailable,
            pb::ErrorCode::RateLimited => ErrorCode::RateLimited,
            pb::ErrorCode::Internal | pb::ErrorCode::Unspecified => ErrorCode::Internal,
        };
        ApiError { retry_after_ms: e.retry_after_ms, ..ApiError::new(code, e.message) }
    }
}

/// A router reply, or its error as the client's.
pub fn from_reply(r: pb::reply::Result) -> Result<pb::reply::Result, ApiError> {
    match r {
        pb::reply::Result::Error(e) => Err(e.into()),
        other => Ok(other),
    }
}

/// `{ ok: true, data }`.
pub fn ok(data: Value) -> Value {
    json!({ "ok": true, "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_api::store::StoreError;

    fn code_of(code: pb::ErrorCode) -> ErrorCode {
        ApiError::from(pb::Error { code: code as i32, message: "m".into(), retry_after_ms: None }).code
    }

    #[test]
    fn each_router_code_has_its_client_code() {
        assert_eq!(code_of(pb::ErrorCode::Validation), ErrorCode::ValidationError);
        assert_eq!(code_of(pb::ErrorCode::Forbidden), ErrorCode::Forbidden);
        assert_eq!(code_of(pb::ErrorCode::NotFound), ErrorCode::NotFound);
        assert_eq!(code_of(pb::ErrorCode::Unavailable), ErrorCode::Unavailable);
        assert_eq!(code_of(pb::ErrorCode::NotOwner), ErrorCode::Unavailable);
        assert_eq!(code_of(pb::ErrorCode::RateLimited), ErrorCode::RateLimited);
        assert_eq!(code_of(pb::ErrorCode::Internal), ErrorCode::Internal);
        assert_eq!(code_of(pb::ErrorCode::Unspecified), ErrorCode::Internal);
        let unknown = ApiError::from(pb::Error { code: 99, message: "m".into(), retry_after_ms: None });
        assert_eq!(unknown.code, ErrorCode::Internal);
        let limited =
            pb::Error { code: pb::ErrorCode::RateLimited as i32, message: "m".into(), retry_after_ms: Some(7) };
        assert_eq!(ApiError::from(limited).retry_after_ms, Some(7));
    }

    /// A store failure the edge meets itself reaches the client as one the
    /// router met: a seq conflict or a fenced write is UNAVAILABLE.
    #[test]
    fn a_store_failure_maps_as_the_routers_would() {
        for e in [
            StoreError::NotFound,
            StoreError::SeqConflict { last_seq: 3, first_seq: 5 },
            StoreError::Invalid("bad".into()),
            StoreError::Fenced,
            StoreError::Unavailable("down".into()),
            StoreError::Internal("disk".into()),
        ] {
            let here = ApiError::from(e.clone());
            let routed = from_reply(pb::reply::Result::Error(e.client_error())).unwrap_err();
            assert_eq!((here.code, &here.message), (routed.code, &routed.message), "{e:?}");
        }
        assert_eq!(ApiError::from(StoreError::SeqConflict { last_seq: 3, first_seq: 5 }).code, ErrorCode::Unavailable);
        assert_eq!(ApiError::from(StoreError::Fenced).code, ErrorCode::Unavailable);
    }
}
