//! Batched calls to another service: what callers queue while the previous
//! call is in flight goes out together as the next call.
//!
//! A connect storm then costs presence and the store a few calls instead of
//! one per socket, and a single connect still goes out at once (there is no
//! timer to wait for). At most `in_flight` calls are out at a time; with one,
//! changes reach the service in the order they were queued. The queue is
//! bounded: a caller waits for room within its own deadline.

use confab_common::Shutdown;
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

type Queued<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Queues requests for a task that makes one call per batch.
pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Queued<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the calling task. `call` answers a batch with one response per
    /// request, in order (it keeps its own deadline); requests it leaves
    /// unanswered get `None`. The task ends at shutdown.
    pub fn start<F, Fut>(queue: usize, max_batch: usize, in_flight: usize, shutdown: &Shutdown, call: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            tokio::select! {
                () = run(rx, max_batch.max(1), in_flight.max(1), call) => {}
                () = stop.triggered() => {}
            }
        });
        Self { tx }
    }

    /// Queues `req` without waiting for its answer; false (and `req` not
    /// queued) when the queue is full or the task stopped.
    pub fn try_queue(&self, req: Req) -> bool {
        let (reply, _) = oneshot::channel();
        self.tx.try_send((req, reply)).is_ok()
    }

    /// Queues `req` and waits for its answer; `None` once the task stopped.
    pub async fn call(&self, req: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).await.ok()?;
        answer.await.ok()
    }
}

async fn run<Req, Resp, F, Fut>(mut rx: mpsc::Receiver<Queued<Req, Resp>>, max_batch: usize, in_flight: usize, call: F)
where
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Vec<Resp>>,
{
    let mut calls = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            first = rx.recv(), if open && calls.len() < in_flight => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let (mut requests, mut replies) = (Vec::new(), Vec::new());
                let queued = std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()));
                for (req, reply) in queued.take(max_batch) {
                    requests.push(req);
                    replies.push(reply);
                }
                let answers = call(requests);
                calls.push(async move {
                    for (reply, answer) in replies.into_iter().zip(answers.await) {
                        let _ = reply.send(answer);
                    }
                });
            }
            Some(()) = calls.next(), if !calls.is_empty() => {}
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn what_queues_during_a_call_goes_out_as_one_batch_in_order() {
        let shutdown = Shutdown::new();
        let seen: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let log = seen.clone();
        let batcher = Arc::new(Batcher::start(64, 3, 1, &shutdown, move |reqs: Vec<u32>| {
            log.lock().unwrap().push(reqs.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                reqs.into_iter().map(|r| r * 10).collect::<Vec<_>>()
            }
        }));
        // The first goes out alone; the next five queue behind it and go in
        // batches of at most three, in order.
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (2..=6)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        assert_eq!(first.await.unwrap(), Some(10));
        for (i, r) in rest.into_iter().enumerate() {
            assert_eq!(r.await.unwrap(), Some((i as u32 + 2) * 10));
        }
        let batches = seen.lock().unwrap().clone();
        assert_eq!(batches.concat(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(batches[0], vec![1]);
        assert!(batches.len() <= 3 && batches.iter().all(|b| b.len() <= 3), "{batches:?}");
    }

    #[tokio::test]
    async fn at_most_in_flight_calls_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let shutdown = Shutdown::new();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let batcher = Arc::new(Batcher::start(64, 1, 2, &shutdown, move |reqs: Vec<u32>| {
            let (n, m) = (n.clone(), m.clone());
            async move {
                m.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                reqs
            }
        }));
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Some(i as u32));
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn try_queue_goes_out_in_the_next_batch_and_refuses_when_full() {
        let shutdown = Shutdown::new();
        let (seen_tx, mut seen) = mpsc::channel(8);
        let (release_tx, release) = tokio::sync::watch::channel(false);
        let batcher = Batcher::start(2, 8, 1, &shutdown, move |reqs: Vec<u32>| {
            let (seen_tx, mut release) = (seen_tx.clone(), release.clone());
            async move {
                let n = reqs.len();
                let _ = seen_tx.send(reqs).await;
                let _ = release.wait_for(|go| *go).await;
                vec![(); n]
            }
        });
        assert!(batcher.try_queue(1));
        // The first batch is in its call: two more fill the queue of two.
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap(), Some(vec![1]));
        assert!(batcher.try_queue(2));
        assert!(batcher.try_queue(3));
        assert!(!batcher.try_queue(4), "a full queue refuses");
        release_tx.send_replace(true);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap(), Some(vec![2, 3]));
    }

    #[tokio::test]
    async fn unanswered_requests_and_a_stopped_batcher_give_none() {
        let shutdown = Shutdown::new();
        let batcher = Batcher::start(8, 8, 1, &shutdown, |_reqs: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(batcher.call(1).await, None);
        shutdown.trigger();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(batcher.call(2).await, None);
    }
}
