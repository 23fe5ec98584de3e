//! Packets as the transports send them: encoded once per edge, WebSocket
//! frame header included, and shared (reference counted) by every socket
//! they go to.

use bytes::Bytes;
use engineioxide::Str;

/// A Socket.IO packet, encoded once per edge in both forms its transports
/// send, and shared (reference counted) by every socket it goes to: no
/// per-socket encoding or UTF-8 check.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The whole WebSocket text frame (header, `4`, the packet): what the
    /// lean path queues on a socket's outbox.
    ws: Bytes,
    /// The Socket.IO packet alone (engineioxide adds the `4` itself).
    sio: Str,
}

impl Packet {
    /// Frames one Socket.IO packet (its text, as the layer above encodes it).
    pub fn new(sio: &str) -> Self {
        Self { ws: ws_text_frame(&["4", sio]), sio: Str::copy_from_slice(sio) }
    }

    /// An Engine.IO packet other than a message (`0` open, `2` ping, `3`
    /// pong); the lean path only.
    pub(crate) fn engine(eio: String) -> Self {
        Self { ws: ws_text_frame(&[&eio]), sio: Str::from("") }
    }

    /// The WebSocket frame, header included, shared: what a socket's
    /// queue holds.
    pub fn ws_frame(&self) -> Bytes {
        self.ws.clone()
    }

    /// The Socket.IO packet alone, for engineioxide.
    pub fn engine_message(&self) -> Str {
        self.sio.clone()
    }
}

/// An unmasked, final WebSocket text frame (RFC 6455 §5.2) holding `parts`
/// one after the other.
fn ws_text_frame(parts: &[&str]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81); // FIN, text
    if len < 126 {
        frame.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.push(126);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for p in parts {
        frame.extend_from_slice(p.as_bytes());
    }
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_length_in_the_form_its_size_needs() {
        // RFC 6455 §5.2: 7 bits up to 125, then 16 bits, then 64 bits.
        for (len, header) in
            [(125, vec![0x81, 125]), (126, vec![0x81, 126, 0, 126]), (65_535, vec![0x81, 126, 255, 255])]
        {
            let frame = ws_text_frame(&[&"a".repeat(len)]);
            assert_eq!(&frame[..header.len()], &header[..], "len {len}");
            assert_eq!(frame.len(), header.len() + len);
        }
        let frame = ws_text_frame(&["4", &"b".repeat(65_535)]);
        assert_eq!(&frame[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&frame[10..12], b"4b");
        let p = Packet::new("0");
        assert_eq!(p.ws_frame(), &[0x81, 2, b'4', b'0'][..]);
        assert_eq!(&*p.sio, "0");
    }
}
