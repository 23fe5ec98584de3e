//! Fills the gaps rooms report (see [`crate::rooms`]) from the store, so
//! sockets that stayed connected see every message once and in order even
//! when their edge was cut off from a router or a chat changed owner.

use crate::rooms::Recovery;
use crate::transport::WriteBatch;
use crate::Edge;
use std::sync::Arc;
use std::time::Duration;

/// Messages read per store call while catching up.
const PAGE: usize = 100;
/// Tries of one recovery before the gap is skipped (clients then recover
/// with `sinceSeq`).
const TRIES: u32 = 5;

pub async fn run(edge: Arc<Edge>, mut gaps: tokio::sync::mpsc::Receiver<Recovery>) {
    loop {
        let (chat_id, upto) = tokio::select! {
            g = gaps.recv() => match g { Some(g) => g, None => return },
            () = edge.shutdown.triggered() => return,
        };
        let filled = catch_up(&edge, &chat_id, upto).await;
        if !filled {
            tracing::warn!(chat.id = %chat_id, upto, "could not fill a gap from the store: skipping it");
        }
        edge.rooms.recovery_done(&chat_id, filled, &mut WriteBatch::new());
    }
}

/// Delivers the messages after the room's last seq up to `upto`.
async fn catch_up(edge: &Edge, chat_id: &str, upto: u64) -> bool {
    let mut failures = 0;
    loop {
        let Some(from) = edge.rooms.last_seq(chat_id) else { return true };
        if from >= upto {
            return true;
        }
        let id = chat_id.into();
        let read = edge.store.history(&id, Some(from), Some(upto + 1), PAGE);
        match tokio::time::timeout(edge.config.request_timeout(), read).await {
            Ok(Ok(page)) if !page.messages.is_empty() => {
                let mut batch = WriteBatch::new();
                for m in &page.messages {
                    edge.rooms.deliver_message(chat_id, m, &mut batch);
                }
                batch.flush();
            }
            Ok(Ok(_)) => return false,
            _ => {
                failures += 1;
                if failures >= TRIES {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
