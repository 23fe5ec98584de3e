//! The generator's WebSocket: a client over a loopback TCP socket whose
//! received frames are parsed in place in one buffer per socket, with
//! tungstenite's header codec and handshake keys.
//!
//! A receiver reads about a million frames a second at the top of the fan-out
//! schedule. Through `tokio-tungstenite` each of them cost an allocation, a
//! UTF-8 check, a waker registration per poll and a clock read; here a frame
//! is a slice of the socket's buffer, stamped with the time of the read that
//! completed it. Server frames must be unfragmented (confab, socketioxide and
//! Node's `ws` all send them so); anything else ends the socket with an error.

use std::io::{self, Cursor};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Wall-clock microseconds: what a read is stamped with, and the send
/// times in message bodies.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Each socket's receive buffer to begin with (a worker holds up to 15,000).
const INITIAL_BUFFER: usize = 4096;
/// Kept after a large frame has been read; a larger buffer shrinks back.
const KEPT_BUFFER: usize = 64 * 1024;
/// The largest frame a socket accepts (a page of history fits many times).
const MAX_FRAME: u64 = 16 * 1024 * 1024;
/// The handshake's response head, at most.
const MAX_HEAD: usize = 16 * 1024;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One received frame's payload, borrowed from the socket's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    /// A WebSocket-level ping, to be answered with [`Writer::pong`].
    Ping(&'a [u8]),
}

/// The receiving half.
pub struct Reader {
    tcp: OwnedReadHalf,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The frame last returned (payload offset, length, opcode), whose
    /// `returned` bytes the next call consumes.
    current: (usize, usize, OpCode),
    returned: usize,
    /// Wall-clock µs when the latest read returned.
    read_at: u64,
}

/// The sending half: every frame masked, as a client's must be.
pub struct Writer {
    tcp: OwnedWriteHalf,
    out: Vec<u8>,
}

/// A connected client WebSocket.
pub struct Socket {
    pub reader: Reader,
    pub writer: Writer,
}

impl Socket {
    /// Upgrades `tcp` with a GET of `path` at `host`; bytes that follow the
    /// response head stay in the reader's buffer.
    pub async fn handshake(tcp: TcpStream, host: &str, path: &str) -> io::Result<Socket> {
        let (rd, wr) = tcp.into_split();
        let mut writer = Writer { tcp: wr, out: Vec::new() };
        let mut reader = Reader {
            tcp: rd,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            current: (0, 0, OpCode::Data(Data::Text)),
            returned: 0,
            read_at: 0,
        };
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        writer.tcp.write_all(request.as_bytes()).await?;
        let head_len = loop {
            if let Some(at) = memchr::memmem::find(&reader.buf[..reader.end], b"\r\n\r\n") {
                break at + 4;
            }
            if reader.end >= MAX_HEAD {
                return Err(invalid("the handshake response head is too long"));
            }
            if !reader.fill().await? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the handshake"));
            }
        };
        check_response(&reader.buf[..head_len], &derive_accept_key(key.as_bytes()))?;
        reader.start = head_len;
        Ok(Socket { reader, writer })
    }
}

/// A `101` whose `Sec-WebSocket-Accept` answers our key.
fn check_response(head: &[u8], accept: &str) -> io::Result<()> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(invalid(format!("the upgrade was refused: {status}")));
    }
    let answered = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept);
    if !answered {
        return Err(invalid("the upgrade's Sec-WebSocket-Accept does not match the key"));
    }
    Ok(())
}

impl Reader {
    /// The next data frame or ping; `None` once the peer has closed (a
    /// close frame or the end of the stream).
    pub async fn next(&mut self) -> io::Result<Option<Incoming<'_>>> {
        Ok(if self.advance().await? { Some(self.frame()) } else { None })
    }

    /// Moves to the next data frame or ping ([`Reader::frame`]); `false`
    /// once the peer has closed. Cancel-safe: a read cut off by a
    /// `select!` loses nothing.
    pub async fn advance(&mut self) -> io::Result<bool> {
        self.start += std::mem::take(&mut self.returned);
        loop {
            if let Some((at, len, opcode)) = self.parse()? {
                match opcode {
                    OpCode::Control(Control::Pong) => {
                        self.start = at + len;
                        continue;
                    }
                    OpCode::Control(Control::Close) => return Ok(false),
                    OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) | OpCode::Control(Control::Ping) => {
                        self.current = (at, len, opcode);
                        self.returned = at + len - self.start;
                        return Ok(true);
                    }
                    other => return Err(invalid(format!("unsupported frame: {other:?}"))),
                }
            }
            if !self.fill().await? {
                return Ok(false);
            }
        }
    }

    /// The frame [`Reader::advance`] last moved to.
    pub fn frame(&self) -> Incoming<'_> {
        let (at, len, opcode) = self.current;
        let payload = &self.buf[at..at + len];
        match opcode {
            OpCode::Data(Data::Text) => Incoming::Text(payload),
            OpCode::Data(Data::Binary) => Incoming::Binary(payload),
            _ => Incoming::Ping(payload),
        }
    }

    /// Wall-clock µs when the bytes that completed the frame last returned
    /// arrived (every frame in a buffer is complete before the next read).
    pub fn received_micros(&self) -> u64 {
        self.read_at
    }

    /// The next complete frame in the buffer: (payload offset, length,
    /// opcode).
    fn parse(&self) -> io::Result<Option<(usize, usize, OpCode)>> {
        let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|e| invalid(e.to_string()))? else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(invalid(format!("a frame of {len} bytes")));
        }
        if !header.is_final || header.opcode == OpCode::Data(Data::Continue) {
            return Err(invalid("a fragmented frame"));
        }
        if header.mask.is_some() || header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(invalid("a masked or extended server frame"));
        }
        let at = self.start + cursor.position() as usize;
        let len = len as usize;
        Ok((at + len <= self.end).then_some((at, len, header.opcode)))
    }

    /// Reads more bytes, first making room: moves what is unread to the
    /// front and grows the buffer if a frame needs more than it holds.
    /// `false` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEPT_BUFFER {
                self.buf = vec![0; INITIAL_BUFFER];
            }
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_FRAME as usize + MAX_HEAD);
            if grown == self.buf.len() {
                return Err(invalid("a frame larger than the buffer's bound"));
            }
            self.buf.resize(grown, 0);
        }
        let n = self.tcp.read(&mut self.buf[self.end..]).await?;
        self.read_at = now_micros();
        self.end += n;
        Ok(n > 0)
    }
}

impl Writer {
    pub async fn text(&mut self, text: &str) -> io::Result<()> {
        self.send(OpCode::Data(Data::Text), text.as_bytes()).await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OpCode::Control(Control::Pong), payload).await
    }

    async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let header = FrameHeader { opcode, mask: Some(rand::random()), ..FrameHeader::default() };
        self.out.clear();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut self.out)
            .map_err(|e| invalid(e.to_string()))?;
        self.tcp.write_all(&self.out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server frame (unmasked) of `opcode` carrying `payload`.
    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = FrameHeader { opcode, ..FrameHeader::default() };
        Frame::from_payload(header, payload.to_vec().into()).format(&mut out).unwrap();
        out
    }

    /// A socket whose peer, after answering the handshake with `response`
    /// (`{accept}` replaced by the right key), writes `chunks` one at a time
    /// and then reads whatever the client sends until it closes.
    async fn pair(
        response: &'static str,
        chunks: Vec<Vec<u8>>,
    ) -> (io::Result<Socket>, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
                let mut b = [0u8; 512];
                let n = tcp.read(&mut b).await.unwrap();
                head.extend_from_slice(&b[..n]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().trim().to_string();
            let mut reply = response.replace("{accept}", &derive_accept_key(key.as_bytes())).into_bytes();
            // The first frame arrives with the response head.
            if let Some(first) = chunks.first() {
                reply.extend_from_slice(first);
            }
            tcp.write_all(&reply).await.unwrap();
            for chunk in chunks.into_iter().skip(1) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tcp.write_all(&chunk).await.unwrap();
            }
            let mut rest = Vec::new();
            tcp.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        (Socket::handshake(tcp, &addr.to_string(), "/socket.io/?EIO=4&transport=websocket").await, server)
    }

    const OK: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n";

    #[tokio::test]
    async fn reads_frames_split_anywhere_and_of_every_length_form() {
        let long = vec![b'x'; 70_000];
        let medium = vec![b'y'; 300];
        let mut stream = server_frame(OpCode::Data(Data::Text), b"0{\"sid\":\"a\"}");
        stream.extend(server_frame(OpCode::Data(Data::Text), &medium));
        stream.extend(server_frame(OpCode::Control(Control::Pong), b""));
        stream.extend(server_frame(OpCode::Data(Data::Binary), &long));
        stream.extend(server_frame(OpCode::Control(Control::Ping), b"p"));
        stream.extend(server_frame(OpCode::Data(Data::Text), b"2"));
        // Cut into pieces that split headers and payloads.
        let cuts = [1, 7, 13, 320, 5000, 75_000];
        let mut chunks = vec![stream[..cuts[0]].to_vec()];
        for w in cuts.windows(2) {
            chunks.push(stream[w[0]..w[1].min(stream.len())].to_vec());
        }
        chunks.push(stream[cuts[cuts.len() - 1].min(stream.len())..].to_vec());
        let (socket, server) = pair(OK, chunks).await;
        let Socket { mut reader, mut writer } = socket.unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(Incoming::Text(b"0{\"sid\":\"a\"}")));
        assert!(reader.received_micros() > 0);
        assert_eq!(reader.next().await.unwrap(), Some(Incoming::Text(&medium)));
        assert_eq!(reader.next().await.unwrap(), Some(Incoming::Binary(&long)));
        assert_eq!(reader.next().await.unwrap(), Some(Incoming::Ping(b"p")));
        writer.pong(b"p").await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(Incoming::Text(b"2")));
        writer.text("3").await.unwrap();
        drop(writer);
        // The peer saw two masked frames: the pong, then "3".
        let sent = server.await.unwrap();
        let mut cursor = Cursor::new(&sent);
        let (pong, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!((pong.opcode, len), (OpCode::Control(Control::Pong), 1));
        let mask = pong.mask.expect("masked");
        let at = cursor.position() as usize;
        assert_eq!(sent[at] ^ mask[0], b'p');
        cursor.set_position(at as u64 + 1);
        let (text, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let at = cursor.position() as usize;
        assert_eq!((text.opcode, len), (OpCode::Data(Data::Text), 1));
        assert_eq!(sent[at] ^ text.mask.unwrap()[0], b'3');
        assert_eq!(reader.next().await.unwrap(), None);
        // The large frame's buffer was given back.
        assert!(reader.buf.len() <= KEPT_BUFFER);
    }

    #[tokio::test]
    async fn refuses_a_refused_or_unanswered_upgrade() {
        let (socket, _) = pair("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", vec![]).await;
        assert!(socket.err().unwrap().to_string().contains("refused"));
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        let (socket, _) = pair(wrong, vec![]).await;
        assert!(socket.err().unwrap().to_string().contains("does not match"));
    }

    #[tokio::test]
    async fn a_fragmented_or_masked_server_frame_is_an_error() {
        let mut first = Vec::new();
        let header = FrameHeader { is_final: false, opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
        Frame::from_payload(header, b"ab".to_vec().into()).format(&mut first).unwrap();
        let (socket, _) = pair(OK, vec![first]).await;
        let Socket { mut reader, .. } = socket.unwrap();
        assert!(reader.next().await.unwrap_err().to_string().contains("fragmented"));

        let mut masked = Vec::new();
        let header =
            FrameHeader { opcode: OpCode::Data(Data::Text), mask: Some([1, 2, 3, 4]), ..FrameHeader::default() };
        Frame::from_payload(header, b"ab".to_vec().into()).format(&mut masked).unwrap();
        let (socket, _) = pair(OK, vec![masked]).await;
        let Socket { mut reader, .. } = socket.unwrap();
        assert!(reader.next().await.unwrap_err().to_string().contains("masked"));
    }
}
