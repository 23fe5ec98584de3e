//! A minimal Socket.IO v5 client over a raw WebSocket: just what the
//! scenarios need (CONNECT with a JWT, events with acks, `message:new`), with
//! frames read by substring rather than parsed into JSON values, so the
//! generator spends its core on sockets, not on parsing.

use crate::ws::{Incoming, Socket, Writer};
use memchr::memmem::Finder;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock microseconds (send times travel in message bodies); the
/// socket stamps its reads with the same clock.
pub use crate::ws::now_micros;

/// An HS256 token for `user`, valid for an hour.
pub fn token(secret: &str, user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// `host:port` of an `http://host:port` base URL.
fn authority(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("only http:// URLs: {url}"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    Ok(hostport.parse()?)
}

/// Opens a WebSocket from `source` (a loopback address such as
/// 127.0.0.7, so connections spread over many ephemeral port ranges),
/// sends CONNECT with the token and waits for the accept.
pub async fn connect(url: &str, source: Option<IpAddr>, token: &str, deadline: Duration) -> anyhow::Result<Socket> {
    tokio::time::timeout(deadline, async {
        let addr = authority(url)?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut ws = Socket::handshake(tcp, &addr.to_string(), "/socket.io/?EIO=4&transport=websocket").await?;
        match ws.reader.next().await? {
            Some(Incoming::Text(t)) if t.starts_with(b"0") => {}
            other => anyhow::bail!("no Engine.IO open packet: {other:?}"),
        }
        ws.writer.text(&format!("40{}", json!({ "token": token }))).await?;
        loop {
            match ws.reader.next().await? {
                Some(Incoming::Text(t)) if t.starts_with(b"40") => return Ok(ws),
                Some(Incoming::Text(t)) if t.starts_with(b"44") => {
                    anyhow::bail!("refused: {}", String::from_utf8_lossy(t))
                }
                Some(other) => answer_ping(&mut ws.writer, &classify(other)).await?,
                None => anyhow::bail!("connection ended before the CONNECT was answered"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("connect timed out"))?
}

/// `42<id>["name",payload]`.
pub fn event_frame(ack_id: u64, name: &str, payload: &Value) -> String {
    format!("42{ack_id}{}", json!([name, payload]))
}

/// What one frame is, as far as the scenarios care.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// An Engine.IO ping (`2`), answered with `3`.
    Ping,
    /// A WebSocket ping, answered with a pong of the same payload.
    WsPing(&'a [u8]),
    /// `message:new`: its seq and the send time in its body, if any.
    New {
        seq: u64,
        sent_micros: Option<u64>,
    },
    /// An ack: its id, whether it is `ok:true`, and the raw payload.
    Ack {
        id: u64,
        ok: bool,
        raw: &'a [u8],
    },
    Other,
}

/// The keys whose numbers a `message:new` carries, each searched for with a
/// finder built once.
pub static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"seq\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"body\":\"t="));
static OK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"ok\":true"));

/// The decimal number at the start of `s` (at most 19 digits) and its
/// length.
fn leading_number(s: &[u8]) -> Option<(u64, usize)> {
    let digits = s.iter().take(19).take_while(|b| b.is_ascii_digit()).count();
    let n = s[..digits].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (digits > 0).then_some((n, digits))
}

/// The number right after the first match of `key` in `s`.
pub fn number_after(s: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(s)? + key.needle().len();
    leading_number(&s[at..]).map(|(n, _)| n)
}

/// What a received frame is; payloads are matched as bytes, never checked
/// as UTF-8 or parsed as JSON.
pub fn classify(frame: Incoming<'_>) -> Frame<'_> {
    let t = match frame {
        Incoming::Text(t) => t,
        Incoming::Ping(p) => return Frame::WsPing(p),
        Incoming::Binary(_) => return Frame::Other,
    };
    if t == b"2" {
        return Frame::Ping;
    }
    if let Some(rest) = t.strip_prefix(b"42[\"message:new\",") {
        let Some(seq) = number_after(rest, &SEQ) else { return Frame::Other };
        return Frame::New { seq, sent_micros: number_after(rest, &SENT) };
    }
    if let Some(rest) = t.strip_prefix(b"43") {
        if let Some((id, digits)) = leading_number(rest) {
            let raw = &rest[digits..];
            return Frame::Ack { id, ok: OK.find(raw).is_some(), raw };
        }
    }
    Frame::Other
}

/// Answers a ping of either layer (Engine.IO's `2`, a WebSocket ping);
/// any other frame needs no answer.
pub async fn answer_ping(writer: &mut Writer, frame: &Frame<'_>) -> std::io::Result<()> {
    match frame {
        Frame::Ping => writer.text("3").await,
        Frame::WsPing(p) => writer.pong(p).await,
        _ => Ok(()),
    }
}

/// Sends an event and waits for its ack, answering pings and passing any
/// `message:new` read meanwhile to `on_new`. Returns the ack payload.
pub async fn call(
    ws: &mut Socket,
    ack_id: u64,
    name: &str,
    payload: &Value,
    deadline: Duration,
    mut on_new: impl FnMut(u64, Option<u64>),
) -> anyhow::Result<Value> {
    tokio::time::timeout(deadline, async {
        ws.writer.text(&event_frame(ack_id, name, payload)).await?;
        loop {
            let Some(frame) = ws.reader.next().await? else { anyhow::bail!("connection ended waiting for {name}") };
            match classify(frame) {
                Frame::New { seq, sent_micros } => on_new(seq, sent_micros),
                Frame::Ack { id, raw, .. } if id == ack_id => {
                    let v: Value = serde_json::from_slice(raw)?;
                    let first = v.get(0).cloned().unwrap_or(Value::Null);
                    anyhow::ensure!(first["ok"] == true, "{name} refused: {first}");
                    return Ok(first["data"].clone());
                }
                other => answer_ping(&mut ws.writer, &other).await?,
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("{name} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        let text = |t: &'static str| classify(Incoming::Text(t.as_bytes()));
        assert_eq!(text("2"), Frame::Ping);
        assert_eq!(classify(Incoming::Ping(b"x")), Frame::WsPing(b"x"));
        assert_eq!(
            text(r#"42["message:new",{"chatId":"c","id":"x","seq":17,"senderId":"u","body":"t=123","createdAt":"z"}]"#),
            Frame::New { seq: 17, sent_micros: Some(123) }
        );
        assert_eq!(text(r#"42["message:new",{"seq":3,"body":"hello"}]"#), Frame::New { seq: 3, sent_micros: None });
        assert_eq!(text(r#"42["message:new",{"seq":"x"}]"#), Frame::Other);
        assert!(matches!(text(r#"437[{"ok":true,"data":{}}]"#), Frame::Ack { id: 7, ok: true, .. }));
        assert!(matches!(text(r#"4381[{"ok":false,"error":"X"}]"#), Frame::Ack { id: 81, ok: false, .. }));
        assert_eq!(text(r#"42["typing:update",{}]"#), Frame::Other);
        assert_eq!(text("43"), Frame::Other);
        assert_eq!(classify(Incoming::Binary(b"2")), Frame::Other);
        assert_eq!(number_after(br#"{"seq":99999999999999999999999}"#, &SEQ), Some(9_999_999_999_999_999_999));
        assert_eq!(authority("http://127.0.0.1:3000").unwrap().port(), 3000);
        assert!(authority("https://x").is_err());
    }
}
