//! The last messages of a chat, kept by its writer, so that a join with
//! `sinceSeq` (a client reconnecting) is answered from memory instead of a
//! store read. A reconnect storm then costs the store nothing for the
//! messages most clients missed: the last few seconds of each chat.
//!
//! The tail is what the store holds: the writer pushes each message once
//! the store has it, replaces one after an edit, delete or reaction, and
//! clears the tail when it is unsure (an append failed). It is bounded by a
//! count and by encoded bytes; a join reaching further back reads the store.

use confab_proto::v1 as pb;
use prost::Message as _;
use std::collections::VecDeque;

pub(crate) struct Tail {
    /// Consecutive seqs, oldest first.
    messages: VecDeque<pb::Message>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl Tail {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self { messages: VecDeque::new(), bytes: 0, max_messages, max_bytes }
    }

    /// Adds the chat's newest message. One that does not follow the last
    /// held starts the tail afresh, so the tail never has a gap.
    pub(crate) fn push(&mut self, m: &pb::Message) {
        if self.messages.back().is_some_and(|last| last.seq + 1 != m.seq) {
            self.clear();
        }
        self.bytes += m.encoded_len();
        self.messages.push_back(m.clone());
        while self.messages.len() > self.max_messages || (self.bytes > self.max_bytes && !self.messages.is_empty()) {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.encoded_len();
            }
        }
    }

    /// The stored message changed (edited, deleted, reacted to).
    pub(crate) fn update(&mut self, m: &pb::Message) {
        let Some(first) = self.messages.front().map(|f| f.seq) else { return };
        let Some(held) = m.seq.checked_sub(first).and_then(|i| self.messages.get_mut(i as usize)) else { return };
        if held.id == m.id {
            self.bytes = self.bytes - held.encoded_len() + m.encoded_len();
            *held = m.clone();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// What the store's history after `since` would answer, up to
    /// `last_seq`: at most `limit` messages, oldest first, and whether more
    /// follow. `None` when the tail does not cover all of it.
    pub(crate) fn since(&self, since: u64, last_seq: u64, limit: usize) -> Option<(Vec<pb::Message>, bool)> {
        let first = self.messages.front()?.seq;
        let last = self.messages.back()?.seq;
        if since + 1 < first || last != last_seq || since >= last_seq {
            return None;
        }
        let skip = usize::try_from(since + 1 - first).ok()?;
        let after: Vec<pb::Message> = self.messages.iter().skip(skip).take(limit).cloned().collect();
        let has_more = (last_seq - since) as usize > after.len();
        Some((after, has_more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> pb::Message {
        pb::Message {
            chat_id: "c".into(),
            id: format!("m{seq}"),
            seq,
            body: format!("body {seq}"),
            ..Default::default()
        }
    }

    fn seqs(found: &(Vec<pb::Message>, bool)) -> (Vec<u64>, bool) {
        (found.0.iter().map(|m| m.seq).collect(), found.1)
    }

    #[test]
    fn answers_what_it_covers_and_nothing_else() {
        let mut tail = Tail::new(4, 1 << 20);
        for seq in 1..=6 {
            tail.push(&msg(seq));
        }
        // Holds 3..=6.
        assert_eq!(tail.since(2, 6, 10).map(|f| seqs(&f)), Some((vec![3, 4, 5, 6], false)));
        assert_eq!(tail.since(4, 6, 10).map(|f| seqs(&f)), Some((vec![5, 6], false)));
        assert_eq!(tail.since(2, 6, 2).map(|f| seqs(&f)), Some((vec![3, 4], true)));
        // Before what it holds, past the end, or behind the chat's last seq.
        assert!(tail.since(1, 6, 10).is_none());
        assert!(tail.since(6, 6, 10).is_none());
        assert!(tail.since(4, 7, 10).is_none());
    }

    #[test]
    fn a_gap_restarts_it_and_bytes_bound_it() {
        let mut tail = Tail::new(100, 1 << 20);
        tail.push(&msg(1));
        tail.push(&msg(2));
        tail.push(&msg(5));
        assert!(tail.since(1, 5, 10).is_none());
        assert_eq!(tail.since(4, 5, 10).map(|f| seqs(&f)), Some((vec![5], false)));

        let one = msg(1).encoded_len();
        let mut small = Tail::new(100, one * 2);
        for seq in 1..=5 {
            small.push(&msg(seq));
        }
        assert_eq!(small.since(3, 5, 10).map(|f| seqs(&f)), Some((vec![4, 5], false)));
        assert!(small.since(2, 5, 10).is_none());
    }

    #[test]
    fn updates_replace_the_held_copy() {
        let mut tail = Tail::new(10, 1 << 20);
        for seq in 1..=3 {
            tail.push(&msg(seq));
        }
        let mut edited = msg(2);
        edited.body = "edited".into();
        tail.update(&edited);
        // A message it does not hold, or another message at that seq, is ignored.
        tail.update(&msg(9));
        tail.update(&pb::Message { id: "other".into(), ..msg(3) });
        let (found, _) = tail.since(0, 3, 10).unwrap();
        let bodies: Vec<&str> = found.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, vec!["body 1", "edited", "body 3"]);
        tail.clear();
        assert!(tail.since(0, 3, 10).is_none());
    }
}
