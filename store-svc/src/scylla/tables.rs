//! What the ScyllaDB backend asks of its tables, one method per CQL
//! statement (or one batch), with the rows it reads and writes. The
//! backend's logic ([`super::store`]) is written against this trait;
//! [`super::session::CqlTables`] runs it on a cluster with prepared
//! statements. Each method says its consistency; the fencing argument in
//! docs/operations.md rests on those.

use confab_api::store::StoreError;
use confab_proto::v1::{Chat, Profile};

/// One message row (table `messages`).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub chat_id: String,
    pub seq: u64,
    pub id: String,
    pub sender_id: String,
    pub client_id: String,
    pub deleted: bool,
    /// How many times the message was replaced (edits, deletes, reactions).
    pub version: u64,
    /// The message as protobuf.
    pub msg: Vec<u8>,
}

/// A chat's last seq and the time of its newest message (`chat_heads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub last_seq: u64,
    pub last_at: i64,
}

/// A chat's owner (`chat_owners`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub epoch: u64,
    pub owner: String,
}

/// A chat's state and how many times it changed (`chats`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRow {
    pub version: u64,
    pub chat: Chat,
}

/// An idempotency key's message (`client_ids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKey {
    pub seq: u64,
    pub created_at: i64,
}

/// A new message's rows: the message, its id and its idempotency key.
#[derive(Debug, Clone)]
pub struct NewRows {
    pub row: MessageRow,
    pub created_at: i64,
}

/// The tables. Writes given a `ts` use it as their write timestamp (see
/// [`super::fence`]); every write and every read not marked otherwise is
/// at QUORUM (LOCAL_QUORUM with a datacenter), so a read sees every write
/// acknowledged before it started.
#[async_trait::async_trait]
pub trait Tables: Send + Sync + 'static {
    /// The owner, read at SERIAL (LOCAL_SERIAL): sees any claim in flight.
    async fn owner_serial(&self, chat_id: &str) -> Result<Option<Owner>, StoreError>;
    /// The owner at QUORUM: the check after each fenced write.
    async fn owner(&self, chat_id: &str) -> Result<Option<Owner>, StoreError>;
    /// Sets the owner if its epoch is still `expected` (`None`: no owner
    /// yet), as one lightweight transaction; `false` when it was not.
    async fn swap_owner(&self, chat_id: &str, expected: Option<u64>, new: &Owner) -> Result<bool, StoreError>;

    async fn head(&self, chat_id: &str) -> Result<Option<Head>, StoreError>;
    async fn put_head(&self, chat_id: &str, head: Head, ts: i64) -> Result<(), StoreError>;

    async fn chat(&self, chat_id: &str) -> Result<Option<ChatRow>, StoreError>;
    async fn put_chat(&self, row: &ChatRow, ts: i64) -> Result<(), StoreError>;
    async fn delete_chat(&self, chat_id: &str, ts: i64) -> Result<(), StoreError>;

    /// The ids of a user's chats, every page of them.
    async fn user_chat_ids(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    async fn put_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError>;
    async fn delete_user_chat(&self, user_id: &str, chat_id: &str, ts: i64) -> Result<(), StoreError>;

    /// Claims a dm pair for `chat_id` (IF NOT EXISTS); the chat that holds
    /// it already when the claim lost.
    async fn claim_pair(&self, pair: &str, chat_id: &str) -> Result<Option<String>, StoreError>;

    /// Writes new messages, their ids and their idempotency keys (24 h
    /// TTL), as one unlogged batch.
    async fn put_new_messages(&self, rows: &[NewRows], ts: i64) -> Result<(), StoreError>;
    async fn message(&self, chat_id: &str, seq: u64) -> Result<Option<MessageRow>, StoreError>;
    async fn put_message(&self, row: &MessageRow, ts: i64) -> Result<(), StoreError>;
    /// The messages of one bucket with `lo <= seq <= hi`, at most `limit`,
    /// newest first when asked.
    async fn messages(
        &self,
        chat_id: &str,
        bucket: i64,
        lo: u64,
        hi: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<MessageRow>, StoreError>;
    /// Sender and deleted flag of one bucket's messages with `lo <= seq <= hi`.
    async fn senders(&self, chat_id: &str, bucket: i64, lo: u64, hi: u64) -> Result<Vec<(String, bool)>, StoreError>;
    async fn message_seq(&self, chat_id: &str, message_id: &str) -> Result<Option<u64>, StoreError>;
    async fn client_key(
        &self,
        chat_id: &str,
        sender_id: &str,
        client_id: &str,
    ) -> Result<Option<ClientKey>, StoreError>;

    async fn cursor(&self, chat_id: &str, user_id: &str) -> Result<Option<u64>, StoreError>;
    /// Written with `seq` as its timestamp: the highest cursor wins.
    async fn put_cursor(&self, chat_id: &str, user_id: &str, seq: u64) -> Result<(), StoreError>;

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError>;
    async fn put_profile(&self, user_id: &str, profile: &Profile) -> Result<(), StoreError>;
}
