//! A direct WebSocket's outbox: its TCP socket and the frames waiting to go
//! out on it, written by whoever emits, and the [`WriteBatch`] that groups
//! those writes.
//!
//! A packet's WebSocket frame is encoded once per edge ([`Packet`]) and
//! shared: a socket's outbox queues a reference to it, not a copy, and
//! writes its queued frames at once with one non-blocking vectored `write`.
//! Queued with a [`WriteBatch`] (the fan-out of what the router sent
//! together), a socket gets one `write` for all its packets when the batch
//! ends. Only when the socket would block does the connection's task take
//! over ([`Outbox::drain`]), waiting for the socket to drain, with a
//! deadline.
//!
//! Delivering a packet to a socket therefore costs the same whatever the
//! packet's size: no per-socket copy and no buffer that grows with it. The
//! kernel's copy into the socket is the only one.

use super::frame::Packet;
use super::listener::Socket;
use bytes::Bytes;
use engineioxide::DisconnectReason;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A batch touching more sockets than this is written by several tasks when
/// the runtime has several workers.
const BATCH_CHUNK: usize = 256;

/// Frames handed to one vectored `write` (Linux's `IOV_MAX` is 1024).
const WRITE_SLICES: usize = 64;

/// A queue that grew past this many frames (a client that fell behind) gives
/// its memory back once it has been written out.
const KEPT_FRAMES: usize = 16;

/// A direct WebSocket's socket and the frames waiting to go out on it.
pub struct Outbox {
    pub(super) tcp: Socket,
    state: Mutex<OutState>,
    /// Wakes the connection's task: the socket would block, broke, or the
    /// connection is to close.
    pub(super) wake: Notify,
    /// Packets a connection may have waiting before it counts as too slow.
    capacity: usize,
}

#[derive(Default)]
struct OutState {
    /// Frames not yet written, oldest first; `front_sent` bytes of the first
    /// have been.
    frames: VecDeque<Bytes>,
    front_sent: usize,
    /// Packets queued since the queue was last empty.
    packets: usize,
    closing: Option<DisconnectReason>,
    broken: bool,
    /// The socket would block: the connection's task writes the rest.
    waiting: bool,
    /// Held by a [`WriteBatch`]: written when that batch ends.
    batched: bool,
}

impl OutState {
    /// Marks `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.frames.front() else { return };
            let left = front.len() - self.front_sent;
            if n < left {
                self.front_sent += n;
                return;
            }
            n -= left;
            self.frames.pop_front();
            self.front_sent = 0;
        }
    }
}

impl Outbox {
    pub fn new(tcp: Socket, capacity: usize) -> Self {
        Self { tcp, state: Mutex::default(), wake: Notify::new(), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one packet; writes it now, or when `batch` ends if one is
    /// given; never waits. A socket already held by a batch (this one or
    /// another) is written when that batch ends.
    pub fn push(self: &Arc<Self>, packet: &Packet, batch: Option<&mut WriteBatch>) -> Result<(), EmitError> {
        let mut state = self.lock();
        if state.closing.is_some() || state.broken {
            return Err(EmitError::Closed);
        }
        if state.packets >= self.capacity {
            return Err(EmitError::Full);
        }
        state.frames.push_back(packet.ws_frame());
        state.packets += 1;
        if state.waiting || state.batched {
            return Ok(());
        }
        match batch {
            Some(batch) => {
                state.batched = true;
                batch.outboxes.push(self.clone());
            }
            None => self.write_locked(&mut state),
        }
        Ok(())
    }

    /// Raw bytes from tungstenite (pongs, the close frame), in order with
    /// the packets.
    pub(super) fn push_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.lock();
        if state.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        state.frames.push_back(Bytes::copy_from_slice(bytes));
        if !state.waiting && !state.batched {
            self.write_locked(&mut state);
        }
        Ok(bytes.len())
    }

    pub fn close(&self, reason: DisconnectReason) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
            self.wake.notify_one();
        }
    }

    /// Writes what is queued until done or the socket would block (then the
    /// connection's task is woken to finish it).
    fn write_locked(&self, state: &mut OutState) {
        while !state.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (i, frame) in state.frames.iter().take(WRITE_SLICES).enumerate() {
                let skip = if i == 0 { state.front_sent } else { 0 };
                slices[i] = IoSlice::new(&frame[skip..]);
                count += 1;
            }
            match self.tcp.0.try_write_vectored(&slices[..count]) {
                Ok(0) => return self.broke(state),
                Ok(n) => state.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !state.waiting {
                        state.waiting = true;
                        self.wake.notify_one();
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.broke(state),
            }
        }
        state.packets = 0;
        if state.frames.capacity() > KEPT_FRAMES {
            state.frames = VecDeque::new();
        }
    }

    fn broke(&self, state: &mut OutState) {
        state.broken = true;
        state.frames = VecDeque::new();
        state.front_sent = 0;
        self.wake.notify_one();
    }

    /// Ends a batch for this socket: writes what the batch queued.
    fn end_batch(&self) {
        let mut state = self.lock();
        state.batched = false;
        if !state.waiting && !state.broken {
            self.write_locked(&mut state);
        }
    }

    /// The connection's task: writes what is left as the socket drains, until
    /// nothing is, within `deadline`. False if it broke or timed out.
    pub(super) async fn drain(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            {
                let mut state = self.lock();
                if state.broken {
                    return false;
                }
                state.waiting = false;
                self.write_locked(&mut state);
                if !state.waiting {
                    return !state.broken;
                }
            }
            match tokio::time::timeout_at(until, self.tcp.0.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Whether the task has anything to do: (socket would block, broken,
    /// closing).
    pub(super) fn status(&self) -> (bool, bool, Option<DisconnectReason>) {
        let state = self.lock();
        (state.waiting, state.broken, state.closing.clone())
    }
}

/// Why an emit did not queue its packet.
#[derive(Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The socket's queue is full: the client reads too slowly.
    Full,
    Closed,
}

/// The writes of one batch of frames (what the router sent together, or a
/// CONNECT's replies): every direct WebSocket a packet was queued on with
/// it gets one `write` for all of its packets when the batch ends, by
/// [`WriteBatch::flush`] or by being dropped.
///
/// A batch lives within one synchronous stretch of code: a socket it holds
/// waits for it, so it is not `Send` and cannot be held across an `.await`
/// in a spawned task.
#[derive(Default)]
pub struct WriteBatch {
    outboxes: Vec<Arc<Outbox>>,
    _one_thread: PhantomData<*const ()>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the batch: writes every socket it holds.
    pub fn flush(self) {}
}

impl Drop for WriteBatch {
    fn drop(&mut self) {
        write_all(std::mem::take(&mut self.outboxes));
    }
}

/// Writes a batch's sockets; a large batch is split over the runtime's
/// workers, so a multi-core edge writes in parallel.
fn write_all(mut list: Vec<Arc<Outbox>>) {
    let workers = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
    if workers > 1 && list.len() > BATCH_CHUNK {
        let per = list.len().div_ceil(workers).max(BATCH_CHUNK);
        while list.len() > per {
            let chunk = list.split_off(list.len() - per);
            tokio::spawn(async move { chunk.iter().for_each(|o| o.end_batch()) });
        }
    }
    list.iter().for_each(|o| o.end_batch());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the edge's side as an outbox, and the client's.
    async fn pair(capacity: usize) -> (Arc<Outbox>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(Outbox::new(Socket(Arc::new(server)), capacity)), client)
    }

    /// Reads exactly `n` bytes from the client's side, with a deadline.
    async fn read_n(client: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf)).await.unwrap().unwrap();
        buf
    }

    #[tokio::test]
    async fn a_batch_writes_each_socket_once_at_its_end() {
        let (outbox, mut client) = pair(8).await;
        let (a, b) = (Packet::new("2[\"a\"]"), Packet::new("2[\"b\"]"));
        let mut batch = WriteBatch::new();
        outbox.push(&a, Some(&mut batch)).unwrap();
        outbox.push(&b, Some(&mut batch)).unwrap();
        {
            // Held until the batch ends: nothing on the wire yet.
            let state = outbox.lock();
            assert!(state.batched && state.front_sent == 0 && state.frames.len() == 2 && state.packets == 2);
        }
        batch.flush();
        let mut want = a.ws_frame().to_vec();
        want.extend_from_slice(&b.ws_frame());
        assert_eq!(read_n(&mut client, want.len()).await, want);
        assert_eq!(&want[..2], &[0x81, 7]);
        assert_eq!(&want[2..9], b"42[\"a\"]");
        // Outside a batch a packet goes out at once, and nothing is kept.
        outbox.push(&a, None).unwrap();
        assert_eq!(read_n(&mut client, a.ws_frame().len()).await, a.ws_frame());
        assert!(outbox.lock().frames.is_empty());
    }

    #[tokio::test]
    async fn a_socket_held_by_one_batch_is_written_when_that_one_ends_even_unflushed() {
        let (outbox, mut client) = pair(8).await;
        let (a, b) = (Packet::new("2[\"a\"]"), Packet::new("2[\"b\"]"));
        let (mut first, mut second) = (WriteBatch::new(), WriteBatch::new());
        outbox.push(&a, Some(&mut first)).unwrap();
        // Already held by `first`: `second` does not take it, and ending
        // `second` writes nothing.
        outbox.push(&b, Some(&mut second)).unwrap();
        second.flush();
        {
            let state = outbox.lock();
            assert!(state.batched && state.front_sent == 0 && state.frames.len() == 2 && state.packets == 2);
        }
        // Dropped without a flush (a panic, an early return): still written,
        // both packets in one go and in order.
        drop(first);
        let mut want = a.ws_frame().to_vec();
        want.extend_from_slice(&b.ws_frame());
        assert_eq!(read_n(&mut client, want.len()).await, want);
        let state = outbox.lock();
        assert!(!state.batched && state.packets == 0);
    }

    #[tokio::test]
    async fn sockets_queue_the_shared_frame_not_a_copy() {
        let (first, mut c1) = pair(8).await;
        let (second, mut c2) = pair(8).await;
        let p = Packet::new(&"y".repeat(3000));
        let mut batch = WriteBatch::new();
        first.push(&p, Some(&mut batch)).unwrap();
        second.push(&p, Some(&mut batch)).unwrap();
        // Both queues point at the packet's one encoding.
        let at = |o: &Arc<Outbox>| o.lock().frames.front().map(|f| f.as_ptr());
        assert_eq!(at(&first), Some(p.ws_frame().as_ptr()));
        assert_eq!(at(&second), Some(p.ws_frame().as_ptr()));
        batch.flush();
        assert_eq!(read_n(&mut c1, p.ws_frame().len()).await, p.ws_frame());
        assert_eq!(read_n(&mut c2, p.ws_frame().len()).await, p.ws_frame());
    }

    #[test]
    fn written_bytes_come_off_the_front_across_frames() {
        let mut state = OutState::default();
        for f in [&b"abc"[..], b"de", b"fghi"] {
            state.frames.push_back(Bytes::from_static(f));
        }
        state.advance(2);
        assert_eq!((state.frames.len(), state.front_sent), (3, 2));
        // The rest of the first, all of the second, one of the third.
        state.advance(1 + 2 + 1);
        assert_eq!((state.frames.len(), state.front_sent), (1, 1));
        assert_eq!(&state.frames[0][state.front_sent..], b"ghi");
        state.advance(3);
        assert!(state.frames.is_empty() && state.front_sent == 0);
    }

    #[tokio::test]
    async fn the_outbox_is_bounded_and_closes() {
        let (outbox, _client) = pair(2).await;
        let p = Packet::new("2[\"x\",{}]");
        let mut batch = WriteBatch::new();
        assert_eq!(outbox.push(&p, Some(&mut batch)), Ok(()));
        assert_eq!(outbox.push(&p, Some(&mut batch)), Ok(()));
        assert_eq!(outbox.push(&p, Some(&mut batch)), Err(EmitError::Full));
        batch.flush();
        outbox.close(DisconnectReason::TransportClose);
        assert_eq!(outbox.push(&p, None), Err(EmitError::Closed));
        assert_eq!(outbox.status().2, Some(DisconnectReason::TransportClose));
    }

    #[tokio::test]
    async fn a_socket_that_would_block_is_left_to_its_task() {
        let (outbox, mut client) = pair(1_000_000).await;
        let big = Packet::new(&"x".repeat(60_000));
        // The client reads nothing until the kernel's buffers are full.
        let mut pushed = 0;
        while !outbox.status().0 {
            outbox.push(&big, None).unwrap();
            pushed += 1;
            assert!(pushed < 10_000, "the socket never filled");
        }
        // Later packets wait behind the blocked write, in order.
        let last = Packet::new("2[\"last\"]");
        outbox.push(&last, None).unwrap();
        // The task's drain finishes once the client reads; with no reader it
        // times out.
        assert!(!outbox.drain(Duration::from_millis(50)).await);
        let total = pushed * big.ws_frame().len() + last.ws_frame().len();
        let reader = tokio::spawn(async move { read_n(&mut client, total).await });
        assert!(outbox.drain(Duration::from_secs(5)).await);
        let got = reader.await.unwrap();
        assert!(got.ends_with(&last.ws_frame()));
        assert!(!outbox.status().0);
    }
}
