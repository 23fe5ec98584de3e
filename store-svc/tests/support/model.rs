//! A keyspace simulated statement by statement, as ScyllaDB keeps it: of
//! two writes to one cell the one with the higher write timestamp stays
//! (the later one on a tie), a deletion is a write of nothing, a
//! conditional statement is atomic, and every statement is seen by every
//! later one (what QUORUM writes and reads and SERIAL claims give). The
//! ScyllaDB backend's logic runs over it in the conformance suite and the
//! fencing model; clustering ranges, order and limits mean here what CQL
//! says they mean, which the in-memory CQL server of the wiring test does
//! not do.

use confab_api::store::StoreError;
use confab_proto::v1::Profile;
use confab_store::scylla::{ChatRow, ClientKey, Head, MessageRow, NewRows, Owner, Tables};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One cell or row: its value (`None`: deleted) and write timestamp.
type Cell<V> = (Option<V>, i64);

/// The keyspace, table by table, as ScyllaDB keeps it.
#[derive(Default)]
pub struct Keyspace {
    owners: BTreeMap<String, Owner>,
    heads: BTreeMap<String, Cell<Head>>,
    chats: BTreeMap<String, Cell<ChatRow>>,
    user_chats: BTreeMap<(String, String), Cell<()>>,
    pairs: BTreeMap<String, String>,
    messages: BTreeMap<(String, u64), Cell<MessageRow>>,
    message_ids: BTreeMap<(String, String), Cell<u64>>,
    client_ids: BTreeMap<(String, String, String), Cell<ClientKey>>,
    cursors: BTreeMap<(String, String), Cell<u64>>,
    profiles: BTreeMap<String, Profile>,
}

/// A write: kept if its timestamp is not lower than the cell's.
fn write<K: Ord, V>(table: &mut BTreeMap<K, Cell<V>>, key: K, value: Option<V>, ts: i64) {
    match table.get(&key) {
        Some((_, old)) if *old > ts => {}
        _ => {
            table.insert(key, (value, ts));
        }
    }
}

fn read<K: Ord, V: Clone>(table: &BTreeMap<K, Cell<V>>, key: &K) -> Option<V> {
    table.get(key).and_then(|(v, _)| v.clone())
}

/// The simulated keyspace behind the `Tables` trait.
#[derive(Clone, Default)]
pub struct Model(Arc<Mutex<Keyspace>>);

impl Model {
    fn with<R>(&self, f: impl FnOnce(&mut Keyspace) -> R) -> Result<R, StoreError> {
        Ok(f(&mut self.0.lock().unwrap()))
    }
}

#[async_trait::async_trait]
impl Tables for Model {
    async fn owner_serial(&self, chat_id: &str) -> Result<Option<Owner>, StoreError> {
        self.with(|k| k.owners.get(chat_id).cloned())
    }
    async fn owner(&self, chat_id: &str) -> Result<Option<Owner>, StoreError> {
        self.with(|k| k.owners.get(chat_id).cloned())
    }
    async fn swap_owner(&self, chat_id: &str, expected: Option<u64>, new: &Owner) -> Result<bool, StoreError> {
        self.with(|k| {
            if k.owners.get(chat_id).map(|o| o.epoch) != expected {
                return false;
            }
            k.owners.insert(chat_id.to_string(), new.clone());
            true
        })
    }
    async fn head(&self, chat_id: &str) -> Result<Option<Head>, StoreError> {
        self.with(|k| read(&k.heads, &chat_id.to_string()))
    }
    async fn put_head(&self, chat_id: &str, head: Head, ts: i64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.heads, chat_id.to_string(), Some(head), ts))
    }
    async fn chat(&self, chat_id: &str) -> Result<Option<ChatRow>, StoreError> {
        self.with(|k| read(&k.chats, &chat_id.to_string()))
    }
    async fn put_chat(&self, row: &ChatRow, ts: i64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.chats, row.chat.id.clone(), Some(row.clone()), ts))
    }
    async fn delete_chat(&self, chat_id: &str, ts: i64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.chats, chat_id.to_string(), None, ts))
    }
    async fn user_chat_ids(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        self.with(|k| {
            k.user_chats
                .iter()
                .filter(|((u, _), (v, _))| u == user_id && v.is_some())
                .map(|((_, c), _)| c.clone())
                .collect()
        })
    }
    async fn put_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.user_chats, (user_id.to_string(), chat_id.to_string()), Some(()), ts))
    }
    async fn delete_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.user_chats, (user_id.to_string(), chat_id.to_string()), None, ts))
    }
    async fn claim_pair(&self, pair: &str, chat_id: &str) -> Result<Option<String>, StoreError> {
        self.with(|k| match k.pairs.get(pair) {
            Some(existing) => Some(existing.clone()),
            None => {
                k.pairs.insert(pair.to_string(), chat_id.to_string());
                None
            }
        })
    }
    async fn put_new_messages(&self, rows: &[NewRows], ts: i64) -> Result<(), StoreError> {
        self.with(|k| {
            for r in rows {
                let m = &r.row;
                write(&mut k.messages, (m.chat_id.clone(), m.seq), Some(m.clone()), ts);
                write(&mut k.message_ids, (m.chat_id.clone(), m.id.clone()), Some(m.seq), ts);
                let key = (m.chat_id.clone(), m.sender_id.clone(), m.client_id.clone());
                write(&mut k.client_ids, key, Some(ClientKey { seq: m.seq, created_at: r.created_at }), ts);
            }
        })
    }
    async fn message(&self, chat_id: &str, seq: u64) -> Result<Option<MessageRow>, StoreError> {
        self.with(|k| read(&k.messages, &(chat_id.to_string(), seq)))
    }
    async fn put_message(&self, row: &MessageRow, ts: i64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.messages, (row.chat_id.clone(), row.seq), Some(row.clone()), ts))
    }
    async fn messages(
        &self,
        chat_id: &str,
        bucket: i64,
        lo: u64,
        hi: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError> {
        self.with(|k| {
            let rows = k
                .messages
                .range((chat_id.to_string(), lo)..=(chat_id.to_string(), hi))
                .filter(|((_, seq), _)| confab_store::scylla::bucket(*seq) == bucket)
                .filter_map(|(_, (v, _))| v.clone());
            if newest_first {
                rows.rev().take(limit).collect()
            } else {
                rows.take(limit).collect()
            }
        })
    }
    async fn senders(&self, chat_id: &str, bucket: i64, lo: u64, hi: u64) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = self.messages(chat_id, bucket, lo, hi, false, usize::MAX).await?;
        Ok(rows.into_iter().map(|r| (r.sender_id, r.deleted)).collect())
    }
    async fn message_seq(&self, chat_id: &str, message_id: &str) -> Result<Option<u64>, StoreError> {
        self.with(|k| read(&k.message_ids, &(chat_id.to_string(), message_id.to_string())))
    }
    async fn client_key(
        &self,
        chat_id: &str,
        sender_id: &str,
        client_id: &str,
    ) -> Result<Option<ClientKey>, StoreError> {
        self.with(|k| read(&k.client_ids, &(chat_id.to_string(), sender_id.to_string(), client_id.to_string())))
    }
    async fn cursor(&self, chat_id: &str, user_id: &str) -> Result<Option<u64>, StoreError> {
        self.with(|k| read(&k.cursors, &(chat_id.to_string(), user_id.to_string())))
    }
    async fn put_cursor(&self, chat_id: &str, user_id: &str, seq: u64) -> Result<(), StoreError> {
        self.with(|k| write(&mut k.cursors, (chat_id.to_string(), user_id.to_string()), Some(seq), seq as i64))
    }
    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError> {
        self.with(|k| k.profiles.get(user_id).cloned())
    }
    async fn put_profile(&self, user_id: &str, profile: &Profile) -> Result<(), StoreError> {
        self.with(|k| {
            k.profiles.insert(user_id.to_string(), profile.clone());
        })
    }
}
