//! A message's `attachments` (CONTRACT §10.1): metadata of files the
//! application stored elsewhere, checked field by field before anything
//! reaches a router. Each refusal is VALIDATION_ERROR naming the field, as
//! `attachments[2].url`. What passes is rendered here, once, as the JSON
//! array routers and stores carry untouched (`attachments_json`) and
//! [`crate::wire`] splices into every `Message`.

use crate::error::ApiError;
use crate::validate::is_web_url;
use bytes::Bytes;
use confab_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Map, Value};

/// At most this many attachments per message.
pub const MAX_ATTACHMENTS: usize = 10;
const MAX_URL: usize = 2048;
const MAX_TYPE: usize = 255;
const MAX_NAME: usize = 255;
/// The largest integer a JavaScript client reads exactly (2^53 − 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
const KEYS: [&str; 7] = ["url", "type", "name", "size", "width", "height", "thumbnailUrl"];

/// The payload's `attachments` as the JSON array clients will read, its
/// optional fields only where sent; no bytes when the key is absent or the
/// array empty.
pub fn parse(o: &Map<String, Value>) -> Result<Bytes, ApiError> {
    let list = match o.get("attachments") {
        None => return Ok(Bytes::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("attachments", "must be an array")),
    };
    if list.len() > MAX_ATTACHMENTS {
        return Err(invalid("attachments", &format!("must hold at most {MAX_ATTACHMENTS} items")));
    }
    if list.is_empty() {
        return Ok(Bytes::new());
    }
    let checked = list.iter().enumerate().map(|(i, a)| attachment(a, i)).collect::<Result<Vec<_>, _>>()?;
    // Strings and integers into a Vec: nothing here can fail, and should it,
    // nothing was sent.
    let json = serde_json::to_vec(&checked).map_err(|e| ApiError::unavailable(format!("attachments: {e}")))?;
    Ok(Bytes::from(json))
}

/// One attachment as clients read it: one that passed, borrowing the
/// payload's strings, or one stored by the first 1.1 builds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Attachment<'a> {
    url: &'a str,
    r#type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnail_url: Option<&'a str>,
}

impl<'a> Attachment<'a> {
    pub(crate) fn stored(a: &'a pb::Attachment) -> Self {
        Attachment {
            url: &a.url,
            r#type: &a.r#type,
            name: a.name.as_deref(),
            size: a.size,
            width: a.width,
            height: a.height,
            thumbnail_url: a.thumbnail_url.as_deref(),
        }
    }
}

/// Where a refusal points, `attachments[2]` or `attachments[2].url`: named
/// only when something is refused, so an accepted attachment costs no
/// formatting.
#[derive(Clone, Copy)]
struct At<'a> {
    item: usize,
    field: Option<&'a str>,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attachments[{}]", self.item)?;
        match self.field {
            Some(field) => write!(f, ".{field}"),
            None => Ok(()),
        }
    }
}

fn attachment(v: &Value, item: usize) -> Result<Attachment<'_>, ApiError> {
    let at = |field| At { item, field: Some(field) };
    let Value::Object(o) = v else { return Err(invalid(At { item, field: None }, "must be an object")) };
    if let Some(key) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(invalid(at(key), "is not a known attachment field"));
    }
    let url = match o.get("url") {
        None => return Err(invalid(at("url"), "is required")),
        Some(v) => web_url(v, at("url"))?,
    };
    let kind = match o.get("type") {
        None => return Err(invalid(at("type"), "is required")),
        Some(v) => mime(v, at("type"))?,
    };
    Ok(Attachment {
        url,
        r#type: kind,
        name: optional(o, at("name"), |v, f| text(v, f, MAX_NAME))?,
        size: optional(o, at("size"), integer)?,
        width: optional(o, at("width"), integer)?,
        height: optional(o, at("height"), integer)?,
        thumbnail_url: optional(o, at("thumbnailUrl"), web_url)?,
    })
}

/// An optional field may be left out, but not sent as `null`.
fn optional<'v, T>(
    o: &'v Map<String, Value>,
    at: At<'_>,
    check: impl Fn(&'v Value, At<'_>) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    match o.get(at.field.unwrap_or_default()) {
        None => Ok(None),
        Some(Value::Null) => Err(invalid(at, "may be left out but not null")),
        Some(v) => check(v, at).map(Some),
    }
}

fn text<'v>(v: &'v Value, at: At<'_>, max: usize) -> Result<&'v str, ApiError> {
    match v {
        Value::String(s) if s.chars().count() <= max => Ok(s),
        Value::String(_) => Err(invalid(at, &format!("must be at most {max} characters"))),
        _ => Err(invalid(at, "must be a string")),
    }
}

/// An absolute `https:` or `http:` URL with a host.
fn web_url<'v>(v: &'v Value, at: At<'_>) -> Result<&'v str, ApiError> {
    let s = text(v, at, MAX_URL)?;
    if is_web_url(s) {
        Ok(s)
    } else if url::Url::parse(s).is_ok() {
        Err(invalid(at, "must be an https: or http: URL"))
    } else {
        Err(invalid(at, "must be an absolute https: or http: URL"))
    }
}

/// `type/subtype`, each a token of RFC 6838's restricted name characters.
fn mime<'v>(v: &'v Value, at: At<'_>) -> Result<&'v str, ApiError> {
    let s = text(v, at, MAX_TYPE)?;
    let token = |t: &str| {
        t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && t.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    match s.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => Ok(s),
        _ => Err(invalid(at, "must be a MIME type such as image/png")),
    }
}

/// A non-negative integer a JavaScript client reads exactly.
fn integer(v: &Value, at: At<'_>) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(n) if n <= MAX_SAFE_INTEGER => Ok(n),
        _ => Err(invalid(at, "must be a non-negative integer of at most 2^53 - 1")),
    }
}

fn invalid(field: impl std::fmt::Display, why: &str) -> ApiError {
    ApiError::validation(format!("{field} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(attachments: Value) -> Result<Value, String> {
        let payload = json!({ "attachments": attachments });
        let json = parse(payload.as_object().unwrap()).map_err(|e| e.message)?;
        Ok(if json.is_empty() { Value::Null } else { serde_json::from_slice(&json).unwrap() })
    }

    #[test]
    fn a_full_and_a_minimal_attachment_are_kept_as_sent() {
        let sent = json!([
            { "url": "https://cdn.example/a.png", "type": "image/png", "name": "a.png", "size": 1234,
              "width": 640, "height": 480, "thumbnailUrl": "http://cdn.example/a-small.png" },
            { "url": "https://cdn.example/b", "type": "application/vnd.api+json" },
        ]);
        assert_eq!(check(sent.clone()).unwrap(), sent, "rendered with exactly the fields sent");
        assert_eq!(check(json!([])).unwrap(), Value::Null, "an empty list is carried as none");
        let absent = json!({});
        assert!(parse(absent.as_object().unwrap()).unwrap().is_empty());
    }

    #[test]
    fn each_rule_names_the_field_it_refuses() {
        let ok = |extra: Value| {
            let mut a = json!({ "url": "https://x.example/f", "type": "image/png" });
            a.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            a
        };
        let long_url = format!("https://x.example/{}", "a".repeat(MAX_URL));
        let cases = [
            (json!("x"), "attachments must be an array"),
            (json!(vec![ok(json!({})); 11]), "attachments must hold at most 10 items"),
            (json!(["x"]), "attachments[0] must be an object"),
            (json!([{ "type": "image/png" }]), "attachments[0].url is required"),
            (json!([{ "url": "https://x.example/f" }]), "attachments[0].type is required"),
            (json!([ok(json!({ "url": "javascript:alert(1)" }))]), "attachments[0].url must be an https: or http: URL"),
            (json!([ok(json!({ "url": "data:text/plain,hi" }))]), "attachments[0].url must be an https: or http: URL"),
            (json!([ok(json!({ "url": "file:///etc/passwd" }))]), "attachments[0].url must be an https: or http: URL"),
            (
                json!([ok(json!({ "url": "/relative/path" }))]),
                "attachments[0].url must be an absolute https: or http: URL",
            ),
            (json!([ok(json!({ "url": long_url }))]), "attachments[0].url must be at most 2048 characters"),
            (json!([ok(json!({ "url": 7 }))]), "attachments[0].url must be a string"),
            (json!([ok(json!({ "type": "image" }))]), "attachments[0].type must be a MIME type such as image/png"),
            (
                json!([ok(json!({ "type": "image/png; q=1" }))]),
                "attachments[0].type must be a MIME type such as image/png",
            ),
            (
                json!([ok(json!({ "type": format!("image/{}", "a".repeat(250)) }))]),
                "attachments[0].type must be at most 255 characters",
            ),
            (json!([ok(json!({ "name": "n".repeat(256) }))]), "attachments[0].name must be at most 255 characters"),
            (json!([ok(json!({ "name": null }))]), "attachments[0].name may be left out but not null"),
            (
                json!([ok(json!({ "size": -1 }))]),
                "attachments[0].size must be a non-negative integer of at most 2^53 - 1",
            ),
            (
                json!([ok(json!({ "size": 9_007_199_254_740_992u64 }))]),
                "attachments[0].size must be a non-negative integer of at most 2^53 - 1",
            ),
            (
                json!([ok(json!({ "width": 1.5 }))]),
                "attachments[0].width must be a non-negative integer of at most 2^53 - 1",
            ),
            (
                json!([ok(json!({ "height": "3" }))]),
                "attachments[0].height must be a non-negative integer of at most 2^53 - 1",
            ),
            (
                json!([ok(json!({ "thumbnailUrl": "ftp://x.example/t" }))]),
                "attachments[0].thumbnailUrl must be an https: or http: URL",
            ),
            (
                json!([ok(json!({})), ok(json!({ "colour": "red" }))]),
                "attachments[1].colour is not a known attachment field",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(check(input.clone()).unwrap_err(), want, "{input}");
        }
        assert!(check(json!([ok(json!({ "size": 9_007_199_254_740_991u64 }))])).is_ok());
    }
}
