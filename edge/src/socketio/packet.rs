//! The Socket.IO v5 packet layer, on top of engineioxide's Engine.IO v4.
//!
//! Why not socketioxide's own socket layer: its CONNECT_ERROR packet carries
//! only `{ message }`, while the contract (§2) needs `{ message, data }`;
//! and we want to encode a broadcast once per edge rather than once per
//! socket. The text protocol is small: `<type>[<nsp>,][<ack id>][<json>]`.
//! Binary packets are not part of the contract and are refused.

use serde_json::Value;

/// A packet from a client, as far as this server cares.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// CONNECT to `nsp` with the optional auth payload.
    Connect { nsp: String, auth: Option<Value> },
    /// DISCONNECT from `nsp`.
    Disconnect { nsp: String },
    /// EVENT `name` with its arguments (the first one is the payload).
    Event { nsp: String, name: String, args: Vec<Value>, ack: Option<u64> },
    /// ACK from the client (the server asks for none, so these are ignored).
    Ack,
    /// BINARY_EVENT or BINARY_ACK: refused; `ack` is the id if one was sent.
    Binary { ack: Option<u64> },
    /// An EVENT that is valid JSON text but holds a lone UTF-16 surrogate
    /// escape (`"\ud83d"`, what `JSON.stringify` makes of a cut emoji): it
    /// has no Unicode value, so it is refused with VALIDATION_ERROR on its
    /// ack, and the connection stays.
    LoneSurrogate { nsp: String, name: String, ack: Option<u64> },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("malformed attachments count")]
    Attachments,
    #[error("ack id out of range")]
    AckId,
    #[error("payload is not valid JSON")]
    Json,
    #[error("event payload must be an array starting with the event name")]
    EventShape,
    #[error("packet type {0} is only sent by servers")]
    ServerOnly(char),
}

/// Parses one Engine.IO message into a Socket.IO packet.
pub fn parse(msg: &str) -> Result<Incoming, ParseError> {
    let mut chars = msg.char_indices();
    let (_, kind) = chars.next().ok_or(ParseError::Empty)?;
    let mut rest = &msg[kind.len_utf8()..];
    let binary = matches!(kind, '5' | '6');
    if binary {
        let dash = rest.find('-').ok_or(ParseError::Attachments)?;
        if dash == 0 || !rest[..dash].bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Attachments);
        }
        rest = &rest[dash + 1..];
    }
    let mut nsp = "/".to_string();
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(i) => {
                nsp = rest[..i].to_string();
                rest = &rest[i + 1..];
            }
            None => {
                nsp = rest.to_string();
                rest = "";
            }
        }
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits > 0 {
        // Socket.IO ack ids are JS numbers; keep them within u64 and sane.
        if digits > 15 {
            return Err(ParseError::AckId);
        }
        let id = rest[..digits].parse::<u64>().map_err(|_| ParseError::AckId)?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    match kind {
        '0' => {
            let auth =
                if rest.is_empty() { None } else { Some(serde_json::from_str(rest).map_err(|_| ParseError::Json)?) };
            Ok(Incoming::Connect { nsp, auth })
        }
        '1' => Ok(Incoming::Disconnect { nsp }),
        '2' => {
            let value: Value = match serde_json::from_str(rest) {
                Ok(v) => v,
                Err(_) => return lone_surrogate_event(nsp, rest, ack),
            };
            let Value::Array(mut args) = value else {
                return Err(ParseError::EventShape);
            };
            if args.is_empty() {
                return Err(ParseError::EventShape);
            }
            let Value::String(name) = args.remove(0) else {
                return Err(ParseError::EventShape);
            };
            Ok(Incoming::Event { nsp, name, args, ack })
        }
        '3' => Ok(Incoming::Ack),
        '5' | '6' => Ok(Incoming::Binary { ack }),
        '4' => Err(ParseError::ServerOnly('4')),
        other => Err(ParseError::UnknownType(other)),
    }
}

/// An EVENT's JSON that failed to parse: a lone surrogate escape in
/// otherwise valid JSON gives [`Incoming::LoneSurrogate`], anything else is
/// malformed.
fn lone_surrogate_event(nsp: String, json: &str, ack: Option<u64>) -> Result<Incoming, ParseError> {
    let replaced = replace_lone_surrogates(json).ok_or(ParseError::Json)?;
    match serde_json::from_str::<Value>(&replaced) {
        Ok(Value::Array(args)) => match args.into_iter().next() {
            Some(Value::String(name)) => Ok(Incoming::LoneSurrogate { nsp, name, ack }),
            _ => Err(ParseError::EventShape),
        },
        Ok(_) => Err(ParseError::EventShape),
        Err(_) => Err(ParseError::Json),
    }
}

/// `json` with every `\uXXXX` escape of a lone surrogate replaced by
/// `\ufffd`; `None` when it has none. Escapes are only found in strings,
/// and `\\` is skipped as a whole, so `"\\ud83d"` (a backslash and text)
/// is left alone.
fn replace_lone_surrogates(json: &str) -> Option<String> {
    fn escape_at(b: &[u8], i: usize) -> Option<u16> {
        let hex = b.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let b = json.as_bytes();
    let mut out = String::new();
    let (mut copied, mut i, mut found) = (0, 0, false);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape_at(b, i) {
            Some(0xD800..=0xDBFF) if matches!(escape_at(b, i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                // Every boundary here is an ASCII byte, so the slices are whole.
                out.push_str(&json[copied..i]);
                out.push_str("\\ufffd");
                found = true;
                i += 6;
                copied = i;
            }
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    if !found {
        return None;
    }
    out.push_str(&json[copied.min(json.len())..]);
    Some(out)
}

fn with_nsp(kind: char, nsp: &str) -> String {
    let mut s = String::with_capacity(64);
    s.push(kind);
    if nsp != "/" {
        s.push_str(nsp);
        s.push(',');
    }
    s
}

/// `0{"sid":...}`: the namespace accepted the connection.
pub fn connect_ok(nsp: &str, sid: &str) -> String {
    let mut s = with_nsp('0', nsp);
    s.push_str(&serde_json::json!({ "sid": sid }).to_string());
    s
}

/// `4{"message":...,"data":...}`: the connection was refused.
pub fn connect_error(nsp: &str, message: &str, data: Option<&Value>) -> String {
    let mut s = with_nsp('4', nsp);
    let body = match data {
        Some(d) => serde_json::json!({ "message": message, "data": d }),
        None => serde_json::json!({ "message": message }),
    };
    s.push_str(&body.to_string());
    s
}

/// `2["name",payload]` on the default namespace.
pub fn event(name: &str, payload: &(impl serde::Serialize + ?Sized)) -> String {
    let mut buf = Vec::with_capacity(128);
    buf.push(b'2');
    if serde_json::to_writer(&mut buf, &(name, payload)).is_err() {
        buf.truncate(1);
        buf.extend_from_slice(b"[]");
    }
    utf8(buf)
}

/// The text serde_json wrote (always UTF-8).
fn utf8(buf: Vec<u8>) -> String {
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `3<id>[payload]` on the default namespace.
pub fn ack(id: u64, payload: &Value) -> String {
    use std::io::Write as _;
    let mut buf = Vec::with_capacity(128);
    // Writing to a Vec cannot fail, nor can serializing a `Value`.
    let _ = write!(buf, "3{id}[");
    let _ = serde_json::to_writer(&mut buf, payload);
    buf.push(b']');
    utf8(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_socket_io_client_sends() {
        assert_eq!(parse("0").unwrap(), Incoming::Connect { nsp: "/".into(), auth: None });
        assert_eq!(
            parse(r#"0{"token":"x"}"#).unwrap(),
            Incoming::Connect { nsp: "/".into(), auth: Some(json!({"token":"x"})) }
        );
        assert_eq!(
            parse(r#"0/admin,{"token":"x"}"#).unwrap(),
            Incoming::Connect { nsp: "/admin".into(), auth: Some(json!({"token":"x"})) }
        );
        assert_eq!(
            parse(r#"212["message:send",{"chatId":"c"}]"#).unwrap(),
            Incoming::Event {
                nsp: "/".into(),
                name: "message:send".into(),
                args: vec![json!({"chatId":"c"})],
                ack: Some(12)
            }
        );
        assert_eq!(
            parse(r#"2["typing:start",{"chatId":"c"}]"#).unwrap(),
            Incoming::Event {
                nsp: "/".into(),
                name: "typing:start".into(),
                args: vec![json!({"chatId":"c"})],
                ack: None
            }
        );
        assert_eq!(parse("1").unwrap(), Incoming::Disconnect { nsp: "/".into() });
        assert_eq!(parse("51-3[\"x\",{\"_placeholder\":true,\"num\":0}]").unwrap(), Incoming::Binary { ack: Some(3) });
    }

    #[test]
    fn refuses_malformed_packets() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("9"), Err(ParseError::UnknownType('9')));
        assert_eq!(parse("2{not json"), Err(ParseError::Json));
        assert_eq!(parse("2{}"), Err(ParseError::EventShape));
        assert_eq!(parse("2[]"), Err(ParseError::EventShape));
        assert_eq!(parse("2[1,2]"), Err(ParseError::EventShape));
        assert_eq!(parse("2999999999999999999999[\"x\"]"), Err(ParseError::AckId));
        assert_eq!(parse("5x[\"x\"]"), Err(ParseError::Attachments));
        assert_eq!(parse("4{}"), Err(ParseError::ServerOnly('4')));
        // Multi-byte first characters do not panic.
        assert_eq!(parse("é"), Err(ParseError::UnknownType('é')));
    }

    #[test]
    fn a_lone_surrogate_escape_is_its_own_case() {
        assert_eq!(
            parse(r#"27["message:send",{"body":"cut \ud83d"}]"#).unwrap(),
            Incoming::LoneSurrogate { nsp: "/".into(), name: "message:send".into(), ack: Some(7) }
        );
        assert_eq!(
            parse(r#"2["a",{"b":"\udc00 then \ud83d\ude00"}]"#).unwrap(),
            Incoming::LoneSurrogate { nsp: "/".into(), name: "a".into(), ack: None }
        );
        // A whole pair, and an escaped backslash before "ud83d", are fine.
        assert!(matches!(parse(r#"2["a",{"b":"\ud83d\ude00"}]"#).unwrap(), Incoming::Event { .. }));
        assert!(matches!(parse(r#"2["a",{"b":"\\ud83d"}]"#).unwrap(), Incoming::Event { .. }));
        // Still malformed: broken JSON around it, or no event name.
        assert_eq!(parse(r#"2["a",{"b":"\ud83d"}"#), Err(ParseError::Json));
        assert_eq!(parse(r#"2[{"b":"\ud83d"}]"#), Err(ParseError::EventShape));
        assert_eq!(replace_lone_surrogates(r#""x\ud83d""#).as_deref(), Some(r#""x\ufffd""#));
        assert_eq!(
            replace_lone_surrogates(r#""\ud83d\ud83d\ude00\ud83d""#).as_deref(),
            Some(r#""\ufffd\ud83d\ude00\ufffd""#)
        );
        assert_eq!(replace_lone_surrogates("\\"), None);
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(connect_ok("/", "abc"), r#"0{"sid":"abc"}"#);
        assert_eq!(
            connect_error("/", "UNAUTHORIZED", Some(&json!({"code":"UNAUTHORIZED","reason":"missing_token"}))),
            r#"4{"data":{"code":"UNAUTHORIZED","reason":"missing_token"},"message":"UNAUTHORIZED"}"#
        );
        assert_eq!(connect_error("/x", "Invalid namespace", None), r#"4/x,{"message":"Invalid namespace"}"#);
        assert_eq!(event("a", &json!({"b":1})), r#"2["a",{"b":1}]"#);
        assert_eq!(ack(7, &json!({"ok":true})), r#"37[{"ok":true}]"#);
    }
}
