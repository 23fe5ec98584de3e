//! A minimal Socket.IO v5 client over a raw WebSocket: just what the
//! scenarios need (CONNECT with a JWT, events with acks, `message:new`), with
//! frames read by substring rather than parsed into JSON values, so the
//! generator spends its core on sockets, not on parsing.

use futures::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message as Ws;

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Wall-clock microseconds: send times travel in message bodies.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

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
pub async fn connect(url: &str, source: Option<IpAddr>, token: &str, deadline: Duration) -> anyhow::Result<WsStream> {
    tokio::time::timeout(deadline, async {
        let addr = authority(url)?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        let ws_url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        // Small buffers: a worker holds up to 15,000 of these.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(ws_url, tcp, Some(config)).await?;
        match ws.next().await {
            Some(Ok(Ws::Text(t))) if t.starts_with('0') => {}
            other => anyhow::bail!("no Engine.IO open packet: {other:?}"),
        }
        ws.send(Ws::text(format!("40{}", json!({ "token": token })))).await?;
        loop {
            match ws.next().await {
                Some(Ok(Ws::Text(t))) if t.starts_with("40") => return Ok(ws),
                Some(Ok(Ws::Text(t))) if t.starts_with("44") => anyhow::bail!("refused: {t}"),
                Some(Ok(Ws::Text(t))) if t.as_str() == "2" => ws.send(Ws::text("3")).await?,
                Some(Ok(_)) => {}
                other => anyhow::bail!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("connect timed out"))?
}

/// `42<id>["name",payload]`.
pub fn event_frame(ack_id: u64, name: &str, payload: &Value) -> Ws {
    Ws::text(format!("42{ack_id}{}", json!([name, payload])))
}

/// What one text frame is, as far as the scenarios care.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    Ping,
    /// `message:new`: its seq and the send time in its body, if any.
    New {
        seq: u64,
        sent_micros: Option<u64>,
    },
    /// An ack: its id, whether it is `ok:true`, and the raw payload.
    Ack {
        id: u64,
        ok: bool,
        raw: &'a str,
    },
    Other,
}

/// The keys whose numbers a `message:new` carries, each searched for with a
/// finder built once.
pub static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"seq\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"body\":\"t="));

/// The number right after the first match of `key` in `s`.
pub fn number_after(s: &str, key: &Finder<'_>) -> Option<u64> {
    let at = key.find(s.as_bytes())? + key.needle().len();
    let digits = &s.as_bytes()[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    s[at..at + end].parse().ok()
}

pub fn classify(t: &str) -> Frame<'_> {
    if t == "2" {
        return Frame::Ping;
    }
    if let Some(rest) = t.strip_prefix("42[\"message:new\",") {
        let Some(seq) = number_after(rest, &SEQ) else { return Frame::Other };
        return Frame::New { seq, sent_micros: number_after(rest, &SENT) };
    }
    if let Some(rest) = t.strip_prefix("43") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(id) = rest[..digits].parse() {
            let raw = &rest[digits..];
            return Frame::Ack { id, ok: raw.contains("\"ok\":true"), raw };
        }
    }
    Frame::Other
}

/// Sends an event and waits for its ack, answering pings and passing any
/// `message:new` read meanwhile to `on_new`. Returns the ack payload.
pub async fn call(
    ws: &mut WsStream,
    ack_id: u64,
    name: &str,
    payload: &Value,
    deadline: Duration,
    mut on_new: impl FnMut(u64, Option<u64>),
) -> anyhow::Result<Value> {
    tokio::time::timeout(deadline, async {
        ws.send(event_frame(ack_id, name, payload)).await?;
        loop {
            let Some(msg) = ws.next().await else { anyhow::bail!("connection ended waiting for {name}") };
            let Ws::Text(t) = msg? else { continue };
            match classify(&t) {
                Frame::Ping => ws.send(Ws::text("3")).await?,
                Frame::New { seq, sent_micros } => on_new(seq, sent_micros),
                Frame::Ack { id, raw, .. } if id == ack_id => {
                    let v: Value = serde_json::from_str(raw)?;
                    let first = v.get(0).cloned().unwrap_or(Value::Null);
                    anyhow::ensure!(first["ok"] == true, "{name} refused: {first}");
                    return Ok(first["data"].clone());
                }
                _ => {}
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
        assert_eq!(classify("2"), Frame::Ping);
        assert_eq!(
            classify(
                r#"42["message:new",{"chatId":"c","id":"x","seq":17,"senderId":"u","body":"t=123","createdAt":"z"}]"#
            ),
            Frame::New { seq: 17, sent_micros: Some(123) }
        );
        assert_eq!(classify(r#"42["message:new",{"seq":3,"body":"hello"}]"#), Frame::New { seq: 3, sent_micros: None });
        assert!(matches!(classify(r#"437[{"ok":true,"data":{}}]"#), Frame::Ack { id: 7, ok: true, .. }));
        assert!(matches!(classify(r#"438[{"ok":false,"error":"X"}]"#), Frame::Ack { id: 8, ok: false, .. }));
        assert_eq!(classify(r#"42["typing:update",{}]"#), Frame::Other);
        assert_eq!(authority("http://127.0.0.1:3000").unwrap().port(), 3000);
        assert!(authority("https://x").is_err());
    }
}
