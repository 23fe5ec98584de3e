//! A direct WebSocket's outbox: its TCP socket and the bytes waiting to go
//! out on it, written by whoever emits, and the [`WriteBatch`] that groups
//! those writes.
//!
//! A packet's WebSocket frame is encoded once per edge ([`Packet`]) and
//! copied into the socket's outbox, which writes it at once with a
//! non-blocking `write`. Queued with a [`WriteBatch`] (the fan-out of what
//! the router sent together), a socket gets one `write` for all its packets
//! when the batch ends. Only when the socket would block does the
//! connection's task take over ([`Outbox::drain`]), waiting for the socket
//! to drain, with a deadline.
//!
//! An idle connection holds no write buffer: a buffer emptied by a write
//! goes to a per-thread spare pool for the next socket that queues a packet.

use super::frame::Packet;
use super::listener::Socket;
use engineioxide::DisconnectReason;
use std::cell::RefCell;
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A batch touching more sockets than this is written by several tasks when
/// the runtime has several workers.
const BATCH_CHUNK: usize = 256;

/// A direct WebSocket's socket and the bytes waiting to go out on it.
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
    /// Encoded frames not yet written; `buf[sent..]` is what is left.
    buf: Vec<u8>,
    sent: usize,
    /// Packets in `buf` since it was last empty.
    packets: usize,
    closing: Option<DisconnectReason>,
    broken: bool,
    /// The socket would block: the connection's task writes the rest.
    waiting: bool,
    /// Held by a [`WriteBatch`]: written when that batch ends.
    batched: bool,
}

impl OutState {
    /// Adds bytes to write, in a spare buffer if the socket holds none.
    fn queue(&mut self, bytes: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = spare_buffer();
        }
        self.buf.extend_from_slice(bytes);
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
        state.queue(packet.ws_frame());
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
        state.queue(bytes);
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
        while state.sent < state.buf.len() {
            match self.tcp.0.try_write(&state.buf[state.sent..]) {
                Ok(0) => return self.broke(state),
                Ok(n) => state.sent += n,
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
        // Nothing kept: an idle connection holds no write buffer.
        give_back(std::mem::take(&mut state.buf));
        state.sent = 0;
        state.packets = 0;
    }

    fn broke(&self, state: &mut OutState) {
        state.broken = true;
        state.buf = Vec::new();
        state.sent = 0;
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

thread_local! {
    /// Emptied write buffers, for the next socket that queues a packet: a
    /// busy edge neither allocates nor grows a buffer per socket and batch.
    /// Per thread, because a buffer is taken and given back by whichever
    /// thread writes (under the socket's own lock only): a shared pool
    /// would put one more lock on every write of every socket.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// The capacity of a new write buffer: a batch's worth of packets for one
/// socket, without growing.
const SPARE_CAPACITY: usize = 4096;
/// Spare buffers kept per thread, each at most 2 × [`SPARE_CAPACITY`]
/// (8 MiB in all): enough for a fan-out to a thousand sockets.
const SPARE_BUFFERS: usize = 1024;

fn spare_buffer() -> Vec<u8> {
    SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(SPARE_CAPACITY))
}

/// Keeps an emptied buffer for reuse unless the thread has enough or it
/// grew large.
fn give_back(mut buf: Vec<u8>) {
    if !(SPARE_CAPACITY..=2 * SPARE_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
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
            assert!(state.batched && state.sent == 0 && state.packets == 2);
        }
        batch.flush();
        let mut want = a.ws_frame().to_vec();
        want.extend_from_slice(b.ws_frame());
        assert_eq!(read_n(&mut client, want.len()).await, want);
        assert_eq!(&want[..2], &[0x81, 7]);
        assert_eq!(&want[2..9], b"42[\"a\"]");
        // Outside a batch a packet goes out at once, and nothing is kept.
        outbox.push(&a, None).unwrap();
        assert_eq!(read_n(&mut client, a.ws_frame().len()).await, a.ws_frame());
        assert_eq!(outbox.lock().buf.capacity(), 0);
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
            assert!(state.batched && state.sent == 0 && state.packets == 2);
        }
        // Dropped without a flush (a panic, an early return): still written,
        // both packets in one go and in order.
        drop(first);
        let mut want = a.ws_frame().to_vec();
        want.extend_from_slice(b.ws_frame());
        assert_eq!(read_n(&mut client, want.len()).await, want);
        let state = outbox.lock();
        assert!(!state.batched && state.packets == 0);
    }

    #[tokio::test]
    async fn an_emptied_buffer_is_reused_by_the_next_socket() {
        let (first, mut client) = pair(8).await;
        let (second, _client) = pair(8).await;
        let p = Packet::new("2[\"a\"]");
        first.push(&p, None).unwrap();
        assert_eq!(read_n(&mut client, p.ws_frame().len()).await, p.ws_frame());
        let kept = SPARE.with(|s| s.borrow().last().map(|b| (b.as_ptr(), b.capacity(), b.len())));
        assert_eq!(kept.map(|k| (k.1, k.2)), Some((SPARE_CAPACITY, 0)));
        let mut batch = WriteBatch::new();
        second.push(&p, Some(&mut batch)).unwrap();
        assert_eq!(Some(second.lock().buf.as_ptr()), kept.map(|k| k.0));
        batch.flush();
        // Bounded: no more than SPARE_BUFFERS kept, and no large ones.
        for _ in 0..SPARE_BUFFERS + 10 {
            give_back(Vec::with_capacity(SPARE_CAPACITY));
        }
        give_back(Vec::with_capacity(4 * SPARE_CAPACITY));
        SPARE.with(|s| {
            let spare = s.borrow();
            assert_eq!(spare.len(), SPARE_BUFFERS);
            assert!(spare.iter().all(|b| b.capacity() == SPARE_CAPACITY));
        });
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
        assert!(got.ends_with(last.ws_frame()));
        assert!(!outbox.status().0);
    }
}
