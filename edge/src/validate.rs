//! Payload checks (CONTRACT §8.4, §8.13): unknown fields are ignored; a
//! known field of the wrong JSON type or out of bounds is VALIDATION_ERROR.
//! Lengths count Unicode scalar values. User ids follow [`UserId::check`].

use crate::error::ApiError;
use confab_common::UserId;
use serde_json::{Map, Value};

pub type Obj<'a> = &'a Map<String, Value>;

pub fn object(v: Option<&Value>) -> Result<Obj<'_>, ApiError> {
    match v {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(ApiError::validation("payload must be an object")),
        None => Err(ApiError::validation("payload is missing")),
    }
}

/// A required string of `min..=max` characters.
pub fn string(o: Obj<'_>, field: &str, min: usize, max: usize) -> Result<String, ApiError> {
    optional_string(o, field, min, max)?.ok_or_else(|| ApiError::validation(format!("{field} is required")))
}

pub fn optional_string(o: Obj<'_>, field: &str, min: usize, max: usize) -> Result<Option<String>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min || n > max {
                return Err(ApiError::validation(format!("{field} must be {min}..{max} characters")));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::validation(format!("{field} must be a string"))),
    }
}

/// An optional non-negative JSON integer.
pub fn optional_u64(o: Obj<'_>, field: &str) -> Result<Option<u64>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| ApiError::validation(format!("{field} must be a non-negative integer")))
        }
        Some(_) => Err(ApiError::validation(format!("{field} must be an integer"))),
    }
}

/// A required array of at most `max` user ids, each following the user
/// id rule ([`UserId::check`]).
pub fn user_ids(o: Obj<'_>, field: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let Some(Value::Array(ids)) = o.get(field) else {
        return Err(ApiError::validation(format!("{field} must be an array of strings")));
    };
    if ids.len() > max {
        return Err(ApiError::validation(format!("{field} holds at most {max} ids")));
    }
    ids.iter()
        .enumerate()
        .map(|(i, id)| match id {
            Value::String(s) => user_id(s, &format!("{field}[{i}]")).map(|()| s.clone()),
            _ => Err(ApiError::validation(format!("{field}[{i}] must be a string"))),
        })
        .collect()
}

/// A user id named by a client (a payload field or a path segment).
pub fn user_id(id: &str, field: &str) -> Result<(), ApiError> {
    UserId::check(id).map_err(|why| ApiError::validation(format!("{field} is not a valid user id: it {why}")))
}

/// A message body of at most `max` characters. Without attachments it
/// needs a non-whitespace character; beside them it may be `""` or blank
/// (CONTRACT §10.1). An edit passes `blank_ok` and its router checks the
/// rule against the message's attachments.
pub fn body(o: Obj<'_>, max: usize, blank_ok: bool) -> Result<String, ApiError> {
    let body = string(o, "body", 0, max)?;
    if !blank_ok && body.chars().all(char::is_whitespace) {
        return Err(ApiError::validation(BLANK_BODY));
    }
    Ok(body)
}

/// Why a body without attachments was refused.
const BLANK_BODY: &str = "body must contain a non-whitespace character, or the message an attachment";

/// An absolute `https:` or `http:` URL with a host.
pub fn is_web_url(s: &str) -> bool {
    url::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// A history page limit, 1..=100 (default 50).
pub fn limit(o: Obj<'_>, default: u64, max: u64) -> Result<u64, ApiError> {
    match optional_u64(o, "limit")? {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(format!("limit must be 1..{max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn o(v: &Value) -> Obj<'_> {
        v.as_object().unwrap()
    }

    #[test]
    fn types_and_bounds() {
        let v = json!({"chatId":"c","n":5,"s":"10","neg":-1,"f":1.5,"ws":" \u{2003}\n","emoji":"👍🏽"});
        assert_eq!(string(o(&v), "chatId", 1, 64).unwrap(), "c");
        assert!(string(o(&v), "missing", 1, 64).is_err());
        assert!(string(o(&v), "n", 1, 64).is_err());
        assert_eq!(optional_u64(o(&v), "n").unwrap(), Some(5));
        assert!(optional_u64(o(&v), "s").is_err());
        assert!(optional_u64(o(&v), "neg").is_err());
        assert!(optional_u64(o(&v), "f").is_err());
        assert!(body(o(&json!({"body": " \u{2003}\n"})), 8000, false).is_err());
        // Beside attachments a blank or empty body is kept as sent.
        assert_eq!(body(o(&json!({"body": " \u{2003}\n"})), 8000, true).unwrap(), " \u{2003}\n");
        assert_eq!(body(o(&json!({"body": ""})), 8000, true).unwrap(), "");
        assert!(body(o(&json!({"body": ""})), 8000, false).is_err());
        assert!(body(o(&json!({})), 8000, true).is_err(), "body stays required");
        assert_eq!(string(o(&v), "emoji", 2, 2).unwrap(), "👍🏽");
        assert!(body(o(&json!({"body": "x".repeat(8001)})), 8000, true).is_err());
        assert!(body(o(&json!({"body": "é".repeat(8000)})), 8000, false).is_ok());
        assert!(object(Some(&json!([1]))).is_err());
        assert!(object(None).is_err());
    }

    #[test]
    fn user_ids_follow_the_rule_and_errors_name_the_field() {
        let v = json!({"ok": ["alice", "Zoë Smith"], "nl": ["alice", "w\nz"], "nul": ["a\0"], "blank": [" "],
            "n": [5], "s": "alice"});
        assert_eq!(user_ids(o(&v), "ok", 10).unwrap(), ["alice", "Zoë Smith"]);
        for (field, named) in [("nl", "nl[1]"), ("nul", "nul[0]"), ("blank", "blank[0]"), ("n", "n[0]")] {
            let e = user_ids(o(&v), field, 10).unwrap_err();
            assert_eq!(e.code, confab_common::ErrorCode::ValidationError);
            assert!(e.message.starts_with(named), "{}", e.message);
        }
        assert!(user_ids(o(&v), "s", 10).is_err());
        assert!(user_ids(o(&v), "ok", 1).is_err());
        assert!(user_id("w\nz", "userId").unwrap_err().message.starts_with("userId "));
    }
}
