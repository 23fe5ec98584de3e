//! One load-generating process's share of a run: it opens its sockets, joins
//! its chats, reports ready, and on `go` runs the measured phase, then
//! reports counts and histograms. The coordinator ([`crate::run`]) hands each
//! worker whole chats, so every check of a chat (loss, order, recovery)
//! happens inside one worker.

use crate::client::{self, classify, Frame};
use crate::ws::Socket;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one connect or one acked call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// After the last send, how long receivers keep reading at most. A fan-out
/// or DM receiver stops sooner, once it has seen its chat's last acked seq
/// (see [`Settled`]).
const DRAIN: Duration = Duration::from_secs(2);
/// Reconnect: how long after the drop a client may take to recover.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// S1: connections that only hold.
    Idle,
    /// S2: group fan-out, one sender per chat.
    Fanout,
    /// S3: two-person chats, one sender each.
    Dm,
    /// S4: everyone but the senders drops and reconnects with `sinceSeq`.
    Reconnect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanChat {
    pub id: String,
    pub sender: String,
    /// The other members (receivers).
    pub members: Vec<String>,
    /// When, within one send interval, this chat's sender starts (spreads
    /// the senders evenly instead of sending in bursts).
    pub phase_micros: u64,
}

/// A worker's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub scenario: Scenario,
    pub urls: Vec<String>,
    pub secret: String,
    pub sources: Vec<IpAddr>,
    pub connect_concurrency: usize,
    pub chats: Vec<PlanChat>,
    pub idle_users: Vec<String>,
    /// Between two sends of one sender.
    pub interval_micros: u64,
    pub send_secs: f64,
    /// Reconnect: receivers drop this long after `go`...
    pub drop_after_secs: f64,
    /// ...stay away this long, then reconnect.
    pub outage_ms: u64,
    /// Attachments on each sent message.
    pub attachments: u32,
}

/// `n` attachments as a photo app sends them: an image with every field,
/// then a file reference, alternating.
fn attachments(n: u32) -> Value {
    let image = json!({ "url": "https://cdn.example.com/u/7f3a/photo-2048.jpg", "type": "image/jpeg",
        "name": "photo.jpg", "size": 482_113, "width": 2048, "height": 1536,
        "thumbnailUrl": "https://cdn.example.com/u/7f3a/photo-256.jpg" });
    let file = json!({ "url": "https://files.example.com/d/91c2/report.pdf", "type": "application/pdf",
        "name": "report.pdf", "size": 90_412 });
    Value::Array((0..n).map(|i| if i % 2 == 0 { image.clone() } else { file.clone() }).collect())
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub connections: usize,
    pub connect_started_micros: u64,
    pub connect_ended_micros: u64,
}

/// A histogram as (value, count) pairs, to cross process boundaries.
pub type Counts = Vec<(u64, u64)>;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub ack_us: Counts,
    pub delivery_us: Counts,
    /// Reconnect: clients that dropped, recovered, seqs they never saw,
    /// and the time from the drop to each recovery.
    pub clients: u64,
    pub recovered: u64,
    pub missed: u64,
    pub recovery_us: Counts,
    /// Chats whose sender announced them settled (everything acked and
    /// seen), so that their receivers stopped before the drain's end.
    pub settled_chats: u64,
    /// CPU time this process used during the measured phase, and its length.
    pub cpu_secs: f64,
    pub wall_secs: f64,
}

/// Microseconds from 1 µs to 10 minutes, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub fn counts(h: &Histogram<u64>) -> Counts {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn merge(into: &mut Histogram<u64>, counts: &Counts) {
    for (value, count) in counts {
        let _ = into.record_n((*value).max(1), *count);
    }
}

/// utime + stime of this process, in seconds (from /proc).
pub fn cpu_seconds() -> f64 {
    process_cpu_seconds("self").unwrap_or(0.0)
}

/// utime + stime of process `pid` (`self` for this one), in seconds.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Some((ticks(11) + ticks(12)) / 100.0)
}

/// Per-worker totals shared by its tasks.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    expected: AtomicU64,
    missed: AtomicU64,
    recovered: AtomicU64,
    settled: AtomicU64,
    ack: Mutex<Option<Histogram<u64>>>,
    delivery: Mutex<Option<Histogram<u64>>>,
    recovery: Mutex<Option<Histogram<u64>>>,
}

impl Totals {
    /// Records a task's samples (µs). Tasks keep plain vectors and the worker
    /// one histogram per kind: a histogram per socket would cost its
    /// bucket array for each of thousands of sockets.
    fn add(slot: &Mutex<Option<Histogram<u64>>>, samples: &[u64]) {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let h = slot.get_or_insert_with(histogram);
        for v in samples {
            let _ = h.record((*v).max(1));
        }
    }

    fn take(slot: &Mutex<Option<Histogram<u64>>>) -> Counts {
        slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(counts).unwrap_or_default()
    }
}

/// One socket of the plan.
struct Seat {
    user: String,
    chat: Option<usize>,
    sender: bool,
}

fn seats(plan: &Plan) -> Vec<Seat> {
    let mut seats = Vec::new();
    for (c, chat) in plan.chats.iter().enumerate() {
        seats.push(Seat { user: chat.sender.clone(), chat: Some(c), sender: true });
        for m in &chat.members {
            seats.push(Seat { user: m.clone(), chat: Some(c), sender: false });
        }
    }
    for u in &plan.idle_users {
        seats.push(Seat { user: u.clone(), chat: None, sender: false });
    }
    seats
}

/// Opens one socket of the plan and joins its chat: (socket, the chat's
/// last seq at the join).
async fn open(plan: Arc<Plan>, i: usize, user: String, chat: Option<usize>) -> anyhow::Result<(Socket, u64)> {
    let url = &plan.urls[i % plan.urls.len()];
    let source = (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);
    let mut ws = client::connect(url, source, &client::token(&plan.secret, &user), CALL_DEADLINE).await?;
    let mut last_seq = 0;
    if let Some(c) = chat {
        let data =
            client::call(&mut ws, 1, "room:join", &json!({ "chatId": plan.chats[c].id }), CALL_DEADLINE, |_, _| {})
                .await?;
        last_seq = data["lastSeq"].as_u64().unwrap_or(0);
    }
    Ok((ws, last_seq))
}

async fn numbered<T>(i: usize, f: impl std::future::Future<Output = T>) -> (usize, T) {
    (i, f.await)
}

/// Runs a plan: `ready` is called once every socket is open, then the
/// measured phase starts when `go` resolves.
pub async fn run(
    plan: Plan,
    ready: impl FnOnce(Ready),
    go: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let seats = seats(&plan);
    let started = client::now_micros();
    // Unordered: a slow handshake must not hold the slots of those behind
    // it (with `buffered` the generator, not the server, set the rate).
    let opening: Vec<_> = seats
        .iter()
        .enumerate()
        .map(|(i, seat)| numbered(i, open(plan.clone(), i, seat.user.clone(), seat.chat)))
        .collect();
    let mut opened: Vec<(usize, anyhow::Result<(Socket, u64)>)> =
        futures::stream::iter(opening).buffer_unordered(plan.connect_concurrency.max(1)).collect().await;
    opened.sort_unstable_by_key(|(i, _)| *i);
    let mut sockets = Vec::with_capacity(seats.len());
    for (_, s) in opened {
        sockets.push(s?);
    }
    ready(Ready {
        connections: sockets.len(),
        connect_started_micros: started,
        connect_ended_micros: client::now_micros(),
    });
    go.await;

    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let totals = Arc::new(Totals::default());
    let send_for = Duration::from_secs_f64(plan.send_secs);
    let until = t0 + send_for + DRAIN;
    // The last acked seq of each chat, for the reconnect checks.
    let heads: Arc<Vec<AtomicU64>> = Arc::new(plan.chats.iter().map(|_| AtomicU64::new(0)).collect());
    let settled: Vec<_> = plan.chats.iter().map(|_| tokio::sync::watch::channel(None)).collect();
    let mut tasks = Vec::new();
    for (i, (seat, (ws, joined_at))) in seats.iter().zip(sockets).enumerate() {
        let Some(c) = seat.chat else {
            // Idle: hold the socket (answering pings) until the end.
            tasks.push(tokio::spawn(hold(ws, until)));
            continue;
        };
        let totals = totals.clone();
        let members = plan.chats[c].members.len() as u64 + 1;
        if seat.sender {
            let (plan, heads, settled) = (plan.clone(), heads.clone(), settled[c].0.clone());
            tasks.push(tokio::spawn(async move {
                send_loop(ws, &plan, c, t0, until, members, &heads[c], &settled, &totals).await;
            }));
        } else if plan.scenario == Scenario::Reconnect {
            let (plan, heads, user) = (plan.clone(), heads.clone(), seat.user.clone());
            tasks.push(tokio::spawn(async move {
                reconnecting_receiver(ws, &plan, i, &user, c, joined_at, t0, until, &heads, &totals).await;
            }));
        } else {
            tasks.push(tokio::spawn(receive(ws, until, settled[c].1.clone(), totals)));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(Outcome {
        sent: totals.sent.load(Ordering::Relaxed),
        acked: totals.acked.load(Ordering::Relaxed),
        delivered: totals.delivered.load(Ordering::Relaxed),
        expected_deliveries: totals.expected.load(Ordering::Relaxed),
        ack_us: Totals::take(&totals.ack),
        delivery_us: Totals::take(&totals.delivery),
        clients: if plan.scenario == Scenario::Reconnect {
            plan.chats.iter().map(|c| c.members.len() as u64).sum()
        } else {
            0
        },
        recovered: totals.recovered.load(Ordering::Relaxed),
        missed: totals.missed.load(Ordering::Relaxed),
        recovery_us: Totals::take(&totals.recovery),
        settled_chats: totals.settled.load(Ordering::Relaxed),
        cpu_secs: cpu_seconds() - cpu0,
        wall_secs: t0.elapsed().as_secs_f64(),
    })
}

/// A chat's sender announces here, once it has stopped sending and every
/// send is acked, the last seq it was acked: a receiver that has seen it has
/// everything it will get, and need not wait out the drain.
type Settled = tokio::sync::watch::Sender<Option<u64>>;

/// Reads a socket until `until` or its end, answering pings and passing
/// each `message:new` (seq, send time, receive time) to `on_new`.
async fn read_live(ws: &mut Socket, until: Instant, on_new: impl FnMut(u64, Option<u64>, u64)) {
    let (_never, settled) = tokio::sync::watch::channel(None);
    read_until_settled(ws, until, settled, on_new).await;
}

/// Like [`read_live`], but also stops once the chat has settled and this
/// socket has seen its last seq.
async fn read_until_settled(
    ws: &mut Socket,
    until: Instant,
    mut settled: tokio::sync::watch::Receiver<Option<u64>>,
    mut on_new: impl FnMut(u64, Option<u64>, u64),
) {
    // The deadline and the wait for the chat's last seq live across reads,
    // so a delivery costs no timer and no waiter of its own.
    let deadline = tokio::time::sleep_until(until.into());
    // A closed channel (its sender gone unsettled) waits out `until`.
    let settle = async move {
        let head = settled.wait_for(Option::is_some).await.ok().and_then(|head| *head);
        match head {
            Some(head) => head,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline, settle);
    let (mut last, mut head, mut reads) = (0, None, 0u32);
    loop {
        reads = reads.wrapping_add(1);
        // The deadline is polled only when the socket has nothing to read;
        // the clock is read every 256 frames in case it never runs dry.
        if head.is_some_and(|head| last >= head) || (reads % 256 == 0 && Instant::now() >= until) {
            break;
        }
        // The socket first, so a delivery polls no timer and no waiter.
        let more = tokio::select! {
            biased;
            more = ws.reader.advance() => more,
            h = &mut settle, if head.is_none() => {
                head = Some(h);
                continue;
            }
            () = &mut deadline => break,
        };
        let Ok(true) = more else { break };
        let frame = classify(ws.reader.frame());
        if let Frame::New { seq, sent_micros } = frame {
            last = last.max(seq);
            on_new(seq, sent_micros, ws.reader.received_micros());
        } else if client::answer_ping(&mut ws.writer, &frame).await.is_err() {
            break;
        }
    }
}

/// Delivery latencies (µs) of one socket, from messages carrying a send time.
#[derive(Default)]
struct Deliveries(Vec<u64>);

impl Deliveries {
    /// A delivery sent and received at these wall-clock µs.
    fn note(&mut self, sent_micros: Option<u64>, received_micros: u64) {
        if let Some(sent) = sent_micros {
            self.0.push(received_micros.saturating_sub(sent));
        }
    }

    fn report(self, totals: &Totals) {
        totals.delivered.fetch_add(self.0.len() as u64, Ordering::Relaxed);
        Totals::add(&totals.delivery, &self.0);
    }
}

async fn hold(mut ws: Socket, until: Instant) {
    read_live(&mut ws, until, |_, _, _| {}).await;
}

/// Reads `message:new` until `until` or the chat has settled, timing each
/// delivery.
async fn receive(
    mut ws: Socket,
    until: Instant,
    settled: tokio::sync::watch::Receiver<Option<u64>>,
    totals: Arc<Totals>,
) {
    let mut d = Deliveries::default();
    read_until_settled(&mut ws, until, settled, |_, sent, at| d.note(sent, at)).await;
    d.report(&totals);
}

/// Sends open-loop at the plan's interval (starting at the chat's phase),
/// reading acks and its own deliveries on the same socket. Once it has
/// stopped sending, has every ack and its own copy of the last message, it
/// announces the chat settled and ends.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    ws: Socket,
    plan: &Plan,
    c: usize,
    t0: Instant,
    until: Instant,
    members: u64,
    head: &AtomicU64,
    settled: &Settled,
    totals: &Totals,
) {
    let Socket { mut reader, mut writer } = ws;
    let chat_id = plan.chats[c].id.clone();
    let interval = Duration::from_micros(plan.interval_micros.max(1));
    let stop_sending = t0 + Duration::from_secs_f64(plan.send_secs);
    let mut tick = tokio::time::interval_at((t0 + Duration::from_micros(plan.chats[c].phase_micros)).into(), interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent_at = std::collections::HashMap::new();
    let (mut acks, mut deliveries) = (Vec::new(), Vec::new());
    let (mut sent, mut acked, mut delivered, mut id) = (0u64, 0u64, 0u64, 1u64);
    let mut own_last = 0u64;
    // Wakes the loop to check whether the chat has settled when sending ends.
    let stop = tokio::time::sleep_until(stop_sending.into());
    tokio::pin!(stop);
    loop {
        // Acks without a seq (head stays 0) never settle: the drain decides.
        let last = head.load(Ordering::Relaxed);
        if Instant::now() >= stop_sending && sent_at.is_empty() && (sent == 0 || last > 0) && own_last >= last {
            settled.send_replace(Some(last));
            totals.settled.fetch_add(1, Ordering::Relaxed);
            break;
        }
        tokio::select! {
            () = &mut stop, if !stop.is_elapsed() => {}
            _ = tick.tick(), if Instant::now() < stop_sending => {
                // The guard is checked when the wait starts, not when it ends.
                if Instant::now() >= stop_sending {
                    continue;
                }
                id += 1;
                let t = client::now_micros();
                let mut body = json!({ "chatId": chat_id, "body": format!("t={t}"), "clientId": format!("c{id}") });
                if plan.attachments > 0 {
                    body["attachments"] = attachments(plan.attachments);
                }
                if writer.text(&client::event_frame(id, "message:send", &body)).await.is_err() {
                    break;
                }
                sent_at.insert(id, t);
                sent += 1;
            }
            more = tokio::time::timeout_at(until.into(), reader.advance()) => {
                let Ok(Ok(true)) = more else { break };
                let at = reader.received_micros();
                match classify(reader.frame()) {
                    Frame::Ack { id, ok: true, raw } => {
                        if let Some(t0) = sent_at.remove(&id) {
                            acks.push(at.saturating_sub(t0));
                            acked += 1;
                            if let Some(seq) = client::number_after(raw, &client::SEQ) {
                                head.fetch_max(seq, Ordering::Relaxed);
                            }
                        }
                    }
                    Frame::New { seq, sent_micros: Some(s) } => {
                        deliveries.push(at.saturating_sub(s));
                        delivered += 1;
                        own_last = own_last.max(seq);
                    }
                    other => {
                        let _ = client::answer_ping(&mut writer, &other).await;
                    }
                }
            }
        }
    }
    totals.sent.fetch_add(sent, Ordering::Relaxed);
    totals.acked.fetch_add(acked, Ordering::Relaxed);
    totals.delivered.fetch_add(delivered, Ordering::Relaxed);
    totals.expected.fetch_add(acked * members, Ordering::Relaxed);
    Totals::add(&totals.ack, &acks);
    Totals::add(&totals.delivery, &deliveries);
}

/// Seqs a client has seen, from the one after `base`.
struct Seen {
    base: u64,
    bits: Vec<bool>,
}

impl Seen {
    fn mark(&mut self, seq: u64) {
        if seq <= self.base {
            return;
        }
        let i = (seq - self.base - 1) as usize;
        if i >= self.bits.len() {
            self.bits.resize(i + 1, false);
        }
        self.bits[i] = true;
    }

    /// The highest seq up to which nothing is missing.
    fn contiguous(&self) -> u64 {
        self.base + self.bits.iter().take_while(|b| **b).count() as u64
    }

    fn missing_up_to(&self, head: u64) -> u64 {
        (self.base + 1..=head)
            .filter(|s| !self.bits.get((s - self.base - 1) as usize).copied().unwrap_or(false))
            .count() as u64
    }
}

/// A receiver that drops at the plan's time, reconnects after the outage
/// with `room:join { sinceSeq }` (paging while `hasMore`), and checks that
/// it saw every seq of its chat.
#[allow(clippy::too_many_arguments)]
async fn reconnecting_receiver(
    mut ws: Socket,
    plan: &Plan,
    i: usize,
    user: &str,
    c: usize,
    joined_at: u64,
    t0: Instant,
    until: Instant,
    heads: &[AtomicU64],
    totals: &Totals,
) {
    let mut seen = Seen { base: joined_at, bits: Vec::new() };
    let mut d = Deliveries::default();
    let drop_at = t0 + Duration::from_secs_f64(plan.drop_after_secs);
    // Before the drop: live deliveries.
    read_live(&mut ws, drop_at, |seq, sent, at| {
        seen.mark(seq);
        d.note(sent, at);
    })
    .await;
    // Drop: the TCP connection closes at once, with no goodbye.
    drop(ws);
    let dropped = Instant::now();
    tokio::time::sleep(Duration::from_millis(plan.outage_ms)).await;
    let url = &plan.urls[i % plan.urls.len()];
    let source = (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);
    let token = client::token(&plan.secret, user);
    let mut ws = None;
    // Recovery is measured, not cut off at the end of the sending window.
    let recover_until = until.max(dropped + RECOVERY_DEADLINE);
    // Retry until the deadline: a storm may be refused or time out at first.
    while Instant::now() < recover_until && ws.is_none() {
        let Ok(mut socket) = client::connect(url, source, &token, CALL_DEADLINE).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if rejoin(&mut socket, &plan.chats[c].id, &mut seen).await.is_ok() {
            totals.recovered.fetch_add(1, Ordering::Relaxed);
            Totals::add(&totals.recovery, &[dropped.elapsed().as_micros() as u64]);
            ws = Some(socket);
        }
    }
    // After: live deliveries until the senders are done (and a drain after
    // a late recovery).
    if let Some(mut ws) = ws {
        read_live(&mut ws, until.max(Instant::now() + DRAIN), |seq, sent, at| {
            seen.mark(seq);
            d.note(sent, at);
        })
        .await;
    }
    totals.missed.fetch_add(seen.missing_up_to(heads[c].load(Ordering::Relaxed)), Ordering::Relaxed);
    d.report(totals);
}

/// `room:join { sinceSeq }` from what the client has seen, paging while
/// `hasMore`; marks the missed messages and any live ones read meanwhile.
async fn rejoin(socket: &mut Socket, chat_id: &str, seen: &mut Seen) -> anyhow::Result<()> {
    for ack_id in 2.. {
        let payload = json!({ "chatId": chat_id, "sinceSeq": seen.contiguous() });
        let mut live = Vec::new();
        let data = client::call(socket, ack_id, "room:join", &payload, CALL_DEADLINE, |seq, _| live.push(seq)).await?;
        for seq in live {
            seen.mark(seq);
        }
        for m in data["missed"].as_array().into_iter().flatten() {
            if let Some(seq) = m["seq"].as_u64() {
                seen.mark(seq);
            }
        }
        if data["hasMore"] != true {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_tracks_gaps() {
        let mut s = Seen { base: 10, bits: Vec::new() };
        for seq in [9, 11, 12, 14] {
            s.mark(seq);
        }
        assert_eq!(s.contiguous(), 12);
        assert_eq!(s.missing_up_to(15), 2);
        s.mark(13);
        s.mark(15);
        assert_eq!(s.missing_up_to(15), 0);
        assert_eq!(s.contiguous(), 15);
    }

    #[test]
    fn histograms_cross_as_counts() {
        let mut h = histogram();
        for v in [5, 5, 900, 120_000] {
            h.record(v).unwrap();
        }
        let mut back = histogram();
        merge(&mut back, &counts(&h));
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }
}
