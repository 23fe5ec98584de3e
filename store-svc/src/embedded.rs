//! The embedded default: one redb file behind a write-ahead log, one writer
//! thread with group commit.
//!
//! Writes go through a bounded queue to a single thread ([`writer`]) that
//! takes every write waiting and applies them to its open transaction,
//! whose tables record each change they make. It appends those changes to
//! the log ([`crate::wal`]) and syncs it before answering; redb itself is
//! committed when a reader needs it, on a clock, and durably at
//! checkpoints. Opening the store redoes the log's records since the last
//! checkpoint, so a restart or a crash loses nothing that was answered;
//! it refuses a damaged log or database rather than lose answered writes
//! quietly, and salvages only when told to ([`open`]). A failed disk write
//! makes the writer re-open the files by itself once writes succeed again.
//! Reads first make sure every answered write is committed, then open their
//! own read transactions on the blocking pool.
//!
//! Here are the store itself, its opening and the [`Store`] calls; the
//! tables are in `schema`, the writes the writer applies in `writes` and
//! the read queries in `reads`.

use crate::store::{AppendBatch, Appended, History, NewChat, Store, StoreError};
use crate::Config;
use confab_common::{ChatId, UserId};
use confab_proto::v1::{Chat, ChatSummary, Message, Profile};
use redb::Database;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

const WRITE_QUEUE: usize = 4096;

mod dm_pairs;
mod open;
mod reads;
mod schema;
mod writer;
mod writes;
pub use open::OpenError;
use open::{DB_FILE, SKIPPED};
use schema::{
    decode_chat, redo, CHATS, CLIENT_IDS, CURSORS, DM_PAIRS, LAST_SEQ, MESSAGES, MESSAGE_IDS, OWNERS, USER_CHATS,
};
use writer::{Visibility, Writer, Wtx};
use writes::{apply, index_existing_messages, Outcome, Write};

/// What the writer's queue carries. (A `Job` is as large as a `Write`, as
/// the queue's items were before; boxing would cost an allocation a write.)
#[allow(clippy::large_enum_variant)]
enum Job {
    Write(Write),
    /// Commit what has been answered, so that reads see it.
    Visible(writer::VisibleReply),
    /// Checkpoint what the log holds and stop: a clean shutdown.
    Close(writer::CloseReply),
}

/// How long a call waits for the store (room in the writer's queue, its
/// answer, a read) before it fails as unavailable. The router's own
/// deadline for a remote store is the same 5 s by default.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long a clean shutdown waits for the final checkpoint (a sync of up
/// to a full log's worth of redb pages).
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Shared>,
    write_tx: mpsc::Sender<Job>,
    visibility: Arc<Visibility>,
    /// Whether writes succeed (false while the writer recovers from a
    /// failed disk).
    healthy: watch::Receiver<bool>,
    deadline: Duration,
}

/// The database as readers reach it: the writer takes it away while it
/// re-opens the file after a failed disk, and puts the new one back.
pub(crate) struct Shared {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    /// Where the writer reports each log write and `fdatasync`, once the
    /// server has metrics ([`EmbeddedStore::report_syncs`]).
    pub(crate) syncs: std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>>,
}

impl Shared {
    fn new(db: Arc<Database>) -> Self {
        Self { db: std::sync::RwLock::new(Some(db)), syncs: std::sync::OnceLock::new() }
    }

    /// The database, or unavailable while it is being re-opened.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        db.clone()
            .ok_or_else(|| StoreError::Unavailable("the store is re-opening its database after a failed write".into()))
    }

    fn set(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        let mut slot = self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut slot, db)
    }
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, with the default settings.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(&Config::new(dir.to_path_buf()))
    }

    /// Opens (or creates) the store in `config.data_dir`: refuses a damaged
    /// log (unless `config.salvage`) or database with an [`OpenError`]
    /// naming the file, and redoes the log since the last checkpoint.
    /// From now on each group commit's log write and `fdatasync` is timed
    /// into `histogram` (seconds).
    pub fn report_syncs(&self, histogram: opentelemetry::metrics::Histogram<f64>) {
        let _ = self.db.syncs.set(histogram);
    }

    pub fn open_with(config: &Config) -> Result<Self, OpenError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io { path: dir.clone(), source })?;
        let db = Arc::new(open::database(&dir.join(DB_FILE), config.cache_bytes())?);
        let (tx, mut wal) = open::redo_log(&db, config)?;
        {
            dm_pairs::migrate(&tx)?;
            let tx = Wtx::new(tx);
            tx.open(CHATS)?;
            tx.open(USER_CHATS)?;
            tx.open(LAST_SEQ)?;
            tx.open(MESSAGES)?;
            tx.open(CLIENT_IDS)?;
            tx.open(DM_PAIRS)?;
            tx.open(CURSORS)?;
            tx.open(MESSAGE_IDS)?;
            tx.open(OWNERS)?;
            tx.open(SKIPPED)?;
            index_existing_messages(&tx)?;
            open::finish(tx.into_transaction(), &mut wal)?;
        }
        let file = std::fs::File::open(dir.join(DB_FILE)).map_err(internal)?;
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
        let visibility = Arc::new(Visibility::default());
        let shared = Arc::new(Shared::new(db.clone()));
        let (health_tx, healthy) = watch::channel(true);
        let writer = Writer::new(db, shared.clone(), file, wal, visibility.clone(), config.clone(), health_tx);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(write_rx))
            .map_err(internal)?;
        Ok(Self { db: shared, write_tx, visibility, healthy, deadline: DEADLINE })
    }

    /// Whether the store's writes succeed: false from a failed disk write
    /// until the writer has re-opened the files and redone the log.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// Runs `call` within the deadline. A write that missed it may still be
    /// applied later; callers retry with the same client id.
    async fn within<T>(&self, call: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.deadline, call).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!("the store did not answer within {} ms", self.deadline.as_millis())))
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.within(async {
            // Reads see every write answered before they began.
            if self.visibility.behind() {
                self.ask(Job::Visible).await?;
            }
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || {
                // The handle outlives the transaction: a re-open waits for both.
                let db = db.get()?;
                let tx = db.begin_read().map_err(internal)?;
                f(&tx)
            })
            .await
            .map_err(internal)?
        })
        .await
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        self.within(self.ask(|reply| Job::Write(make(reply)))).await
    }

    /// Queues a job for the writer and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.write_tx.send(make(tx)).await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool), StoreError> {
        self.write(|reply| Write::CreateChat(chat, reply)).await
    }

    async fn get_chat(&self, chat_id: &ChatId) -> Result<(Chat, u64), StoreError> {
        let chat_id = chat_id.to_string();
        self.read(move |tx| reads::read_chat(tx, &chat_id)?.ok_or(StoreError::NotFound)).await
    }

    async fn list_user_chats(&self, user_id: &UserId, limit: usize) -> Result<Vec<ChatSummary>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |tx| reads::user_chats(tx, &user_id, limit)).await
    }

    async fn list_users_chats(&self, user_ids: &[UserId], limit: usize) -> Result<Vec<Vec<ChatSummary>>, StoreError> {
        let user_ids = user_ids.to_vec();
        self.read(move |tx| user_ids.iter().map(|user| reads::user_chats(tx, user, limit)).collect()).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        self.write(|reply| Write::Append(batch, reply)).await
    }

    async fn find_by_client_id(
        &self,
        chat_id: &ChatId,
        sender_id: &UserId,
        client_id: &str,
        not_before_ms: i64,
    ) -> Result<Option<Message>, StoreError> {
        let (chat_id, sender_id, client_id) = (chat_id.to_string(), sender_id.to_string(), client_id.to_string());
        self.read(move |tx| reads::find_by_client_id(tx, &chat_id, &sender_id, &client_id, not_before_ms)).await
    }

    async fn get_message(&self, chat_id: &ChatId, message_id: &str, seq: u64) -> Result<Option<Message>, StoreError> {
        let (chat_id, message_id) = (chat_id.to_string(), message_id.to_string());
        self.read(move |tx| reads::get_message(tx, &chat_id, &message_id, seq)).await
    }

    async fn put_message(&self, message: Message, epoch: Option<u64>) -> Result<(), StoreError> {
        self.write(|reply| Write::Put(message, epoch, reply)).await.map(|_| ())
    }

    async fn claim(&self, chat_id: &ChatId, owner: &str) -> Result<u64, StoreError> {
        let (chat_id, owner) = (chat_id.to_string(), owner.to_string());
        self.write(|reply| Write::Claim(chat_id, owner, reply)).await
    }

    async fn save_chat(
        &self,
        chat: Chat,
        removed: Vec<UserId>,
        delete: bool,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        let removed = removed.into_iter().map(String::from).collect();
        self.write(|reply| Write::SaveChat(chat, removed, delete, epoch, reply)).await.map(|_| ())
    }

    async fn get_cursor(&self, chat_id: &ChatId, user_id: &UserId) -> Result<u64, StoreError> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.read(move |tx| reads::get_cursor(tx, &chat_id, &user_id)).await
    }

    async fn set_cursor(&self, chat_id: &ChatId, user_id: &UserId, seq: u64) -> Result<u64, StoreError> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.write(|reply| Write::SetCursor(chat_id, user_id, seq, reply)).await
    }

    /// Most saves repeat the stored profile (a user reconnecting with the
    /// same token claims): those are read, not written, and a batch of
    /// nothing but repeats costs no write transaction.
    async fn put_profiles(&self, profiles: Vec<(UserId, Profile)>) -> Result<(), StoreError> {
        let mut latest: std::collections::HashMap<String, Profile> = std::collections::HashMap::new();
        for (user, p) in profiles {
            latest.insert(user.to_string(), p);
        }
        let users: Vec<String> = latest.keys().cloned().collect();
        let stored = self.read(move |tx| reads::profiles(tx, &users)).await?;
        for (user, p) in stored {
            if latest.get(&user) == Some(&p) {
                latest.remove(&user);
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let profiles = latest.into_iter().collect();
        self.write(|reply| Write::PutProfiles(profiles, reply)).await.map(|_| ())
    }

    async fn profiles(&self, users: &[UserId]) -> Result<Vec<(UserId, Profile)>, StoreError> {
        let users: Vec<String> = users.iter().map(ToString::to_string).collect();
        let found = self.read(move |tx| reads::profiles(tx, &users)).await?;
        Ok(found.into_iter().map(|(user, p)| (UserId::from(user), p)).collect())
    }

    async fn history(
        &self,
        chat_id: &ChatId,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let chat_id = chat_id.to_string();
        self.read(move |tx| reads::history(tx, &chat_id, after_seq, before_seq, limit)).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let closed = tokio::time::timeout(CLOSE_DEADLINE, self.ask(Job::Close)).await;
        closed.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the store's final checkpoint did not end within {} s",
                CLOSE_DEADLINE.as_secs()
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal;
    use confab_proto::v1::Member;

    /// One message to append, with no epoch.
    fn single(m: Message) -> AppendBatch {
        AppendBatch { chat_id: m.chat_id.clone().into(), messages: vec![m], epoch: None, repeats_since_ms: None }
    }

    fn msg(chat: &str, seq: u64) -> Message {
        Message {
            chat_id: chat.into(),
            id: format!("m{seq}"),
            seq,
            sender_id: "alice".into(),
            body: format!("hello {seq}"),
            created_at_ms: seq as i64,
            client_id: format!("c{seq}"),
            ..Default::default()
        }
    }

    async fn group(store: &EmbeddedStore) -> Chat {
        let (chat, created) = store
            .create_chat(NewChat {
                kind: "group".into(),
                title: Some("t".into()),
                created_by: "alice".into(),
                member_ids: vec!["alice".into(), "bob".into()],
            })
            .await
            .unwrap();
        assert!(created);
        chat
    }

    /// Opens the store in `dir` again once the writer thread of the
    /// previous instance has released the file.
    async fn reopen(dir: &Path) -> EmbeddedStore {
        for _ in 0..250 {
            if let Ok(store) = EmbeddedStore::open(dir) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("store did not reopen: {:?}", EmbeddedStore::open(dir).err());
    }

    /// The messages of `chat` that the redb file alone holds, without the log.
    fn seqs_in_redb_alone(dir: &Path, chat: &str) -> Vec<u64> {
        try_seqs_in_redb_alone(dir, chat).expect("a copy of the redb file opens")
    }

    /// Like [`seqs_in_redb_alone`], for a store still open: a copy taken
    /// while the writer commits may not open.
    fn try_seqs_in_redb_alone(dir: &Path, chat: &str) -> Option<Vec<u64>> {
        let copy = tempfile::tempdir().ok()?;
        std::fs::copy(dir.join("confab.redb"), copy.path().join("confab.redb")).ok()?;
        let db = Database::open(copy.path().join("confab.redb")).ok()?;
        let tx = db.begin_read().ok()?;
        let messages = tx.open_table(MESSAGES).ok()?;
        let seqs = messages.range((chat, 0)..=(chat, u64::MAX)).ok()?.map(|e| e.map(|e| e.0.value().1));
        seqs.collect::<Result<_, _>>().ok()
    }

    /// Polls the redb file alone (the store still open) until it holds at
    /// least `at_least` of `chat`'s messages, for up to 5 s.
    async fn wait_for_redb(dir: &Path, chat: &str, at_least: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        for _ in 0..250 {
            seen = try_seqs_in_redb_alone(dir, chat).unwrap_or_default();
            if seen.len() as u64 >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    }

    #[tokio::test]
    async fn a_clean_close_checkpoints_the_log_and_takes_no_more_calls() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let chat = group(&store).await;
        for seq in 1..=3 {
            store.append(single(msg(&chat.id, seq))).await.unwrap();
        }
        // Far from any checkpoint: the redb file alone has none of them.
        assert_eq!(try_seqs_in_redb_alone(dir.path(), &chat.id), Some(vec![]));
        store.close().await.unwrap();
        assert_eq!(try_seqs_in_redb_alone(dir.path(), &chat.id), Some(vec![1, 2, 3]));
        let late = store.append(single(msg(&chat.id, 4))).await;
        assert!(matches!(late, Err(StoreError::Unavailable(_))), "{late:?}");
        assert!(matches!(store.close().await, Err(StoreError::Unavailable(_))));
        drop(store);
        let store = reopen(dir.path()).await;
        let page = store.history(&ChatId::from(&chat.id), None, None, 10).await.unwrap();
        assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_restart_redoes_every_kind_of_write_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (chat, dm) = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let chat = group(&store).await;
            let new_dm = NewChat {
                kind: "dm".into(),
                title: None,
                created_by: "alice".into(),
                member_ids: vec!["alice".into(), "carol".into()],
            };
            let (dm, _) = store.create_chat(new_dm).await.unwrap();
            let epoch = store.claim(&ChatId::from(&chat.id), "router-a").await.unwrap();
            let batch = AppendBatch {
                chat_id: chat.id.clone().into(),
                messages: (1..=3).map(|seq| msg(&chat.id, seq)).collect(),
                epoch: Some(epoch),
                repeats_since_ms: None,
            };
            store.append(batch).await.unwrap();
            let deleted = Message { deleted: true, body: String::new(), ..msg(&chat.id, 2) };
            store.put_message(deleted, Some(epoch)).await.unwrap();
            store.set_cursor(&ChatId::from(&chat.id), &UserId::from("bob"), 1).await.unwrap();
            // bob leaves, dave joins; the dm is deleted.
            let mut changed = chat.clone();
            changed.members.retain(|m| m.user_id != "bob");
            changed.members.push(Member { user_id: "dave".into(), role: "member".into(), joined_at_ms: 1 });
            store.save_chat(changed, vec!["bob".into()], false, Some(epoch)).await.unwrap();
            store.save_chat(dm.clone(), vec![], true, None).await.unwrap();
            (chat, dm)
        };
        // Nothing was checkpointed: the redb file alone has none of it.
        assert!(seqs_in_redb_alone(dir.path(), &chat.id).is_empty());
        let store = reopen(dir.path()).await;
        let (stored, last) = store.get_chat(&ChatId::from(&chat.id)).await.unwrap();
        assert_eq!(last, 3);
        let members: Vec<_> = stored.members.iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(members, ["alice", "dave"]);
        assert!(store.get_message(&ChatId::from(&chat.id), "m2", 0).await.unwrap().unwrap().deleted);
        assert_eq!(store.get_message(&ChatId::from(&chat.id), "m3", 0).await.unwrap(), Some(msg(&chat.id, 3)));
        assert_eq!(store.get_cursor(&ChatId::from(&chat.id), &UserId::from("bob")).await.unwrap(), 1);
        assert!(store.list_user_chats(&UserId::from("bob"), 10).await.unwrap().is_empty());
        assert!(matches!(store.get_chat(&ChatId::from(&dm.id)).await, Err(StoreError::NotFound)));
        // dave has 3, less the deleted one, unread.
        assert_eq!(store.list_user_chats(&UserId::from("dave"), 10).await.unwrap()[0].unread, 2);
        // The claim survived: a newer claim fences the older epoch.
        assert_eq!(store.claim(&ChatId::from(&chat.id), "router-b").await.unwrap(), 2);
        // Opening checkpointed the redo; a second restart finds it in redb.
        drop(store);
        assert_eq!(seqs_in_redb_alone(dir.path(), &chat.id), vec![1, 2, 3]);
        let store = reopen(dir.path()).await;
        assert_eq!(store.get_chat(&ChatId::from(&chat.id)).await.unwrap().1, 3);
    }

    #[tokio::test]
    async fn a_full_log_is_checkpointed_into_redb_and_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let chat = group(&store).await;
        let body = "x".repeat(64 << 10);
        let count = wal::CHECKPOINT_BYTES / (64 << 10) + 8;
        for seq in 1..=count {
            store.append(single(Message { body: body.clone(), ..msg(&chat.id, seq) })).await.unwrap();
        }
        // The checkpoint (once the helper's sync is done) holds at least
        // everything up to the moment the log filled, in order.
        let full = wal::CHECKPOINT_BYTES / (64 << 10);
        let in_redb = wait_for_redb(dir.path(), &chat.id, full).await;
        assert!(in_redb.len() as u64 >= full, "{} in redb", in_redb.len());
        assert_eq!(in_redb, (1..=in_redb.len() as u64).collect::<Vec<_>>());
        // The log started over instead of growing.
        let log = std::fs::metadata(dir.path().join("confab.wal")).unwrap().len();
        assert!(log <= wal::CHECKPOINT_BYTES + (2 << 20), "log file of {log} bytes");
        // Whatever came after the checkpoint is redone from the log.
        drop(store);
        let store = reopen(dir.path()).await;
        assert_eq!(store.get_chat(&ChatId::from(&chat.id)).await.unwrap().1, count);
        assert_eq!(store.get_message(&ChatId::from(&chat.id), "", count).await.unwrap().unwrap().body, body);
    }

    #[tokio::test]
    async fn an_idle_writer_checkpoints_a_log_worth_it_and_leaves_a_small_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let chat = group(&store).await;
        let body = "x".repeat(64 << 10);
        let count = writer::IDLE_CHECKPOINT_BYTES / (64 << 10) + 1;
        assert!(count * (64 << 10) < wal::CHECKPOINT_BYTES);
        let append = |seq: u64, body: &str| single(Message { body: body.to_string(), ..msg(&chat.id, seq) });
        for seq in 1..=count {
            store.append(append(seq, &body)).await.unwrap();
        }
        // Nothing more comes: the writer checkpoints in the pause.
        let in_redb = wait_for_redb(dir.path(), &chat.id, count).await;
        assert_eq!(in_redb, (1..=count).collect::<Vec<_>>());
        // A log holding less than that is left for later, however long the
        // pause.
        store.append(append(count + 1, "small")).await.unwrap();
        tokio::time::sleep(writer::IDLE_AFTER * 4).await;
        assert_eq!(wait_for_redb(dir.path(), &chat.id, count).await.len() as u64, count);
        drop(store);
        let store = reopen(dir.path()).await;
        assert_eq!(store.get_chat(&ChatId::from(&chat.id)).await.unwrap().1, count + 1);
    }

    #[tokio::test]
    async fn reads_see_answered_writes_at_once_and_the_clock_commits_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let chat = group(&store).await;
        for seq in 1..=50 {
            let batch = single(msg(&chat.id, seq));
            store.append(batch).await.unwrap();
            assert_eq!(store.get_chat(&ChatId::from(&chat.id)).await.unwrap().1, seq);
        }
        // Without a reader asking, an answered write is committed within
        // VISIBLE_AFTER; read transactions that skip the check see it then.
        let batch = single(msg(&chat.id, 51));
        let sent = std::time::Instant::now();
        store.append(batch).await.unwrap();
        let last_seq = || {
            let tx = store.db.get().unwrap().begin_read().unwrap();
            tx.open_table(LAST_SEQ).unwrap().get(chat.id.as_str()).unwrap().unwrap().value()
        };
        // (Unless this machine stalled for half of VISIBLE_AFTER.)
        if sent.elapsed() < std::time::Duration::from_millis(50) {
            assert!(store.visibility.behind());
            assert_eq!(last_seq(), 50);
        }
        for _ in 0..100 {
            if !store.visibility.behind() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!store.visibility.behind());
        assert_eq!(last_seq(), 51);
    }

    #[tokio::test]
    async fn calls_fail_as_unavailable_when_the_writer_does_not_answer_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let chat = group(&store).await;
        // A writer that takes jobs and never answers (a hung disk): a queue
        // of one that nobody serves.
        let (write_tx, mut hung) = mpsc::channel(1);
        let store = EmbeddedStore { write_tx, deadline: Duration::from_millis(100), ..store };
        let batch = single(msg(&chat.id, 1));
        // The first waits for an answer, the second for room in the queue.
        let bounded = Duration::from_secs(10);
        for _ in 0..2 {
            match tokio::time::timeout(bounded, store.append(batch.clone())).await.expect("no deadline") {
                Err(StoreError::Unavailable(why)) => assert!(why.contains("within 100 ms"), "{why}"),
                other => panic!("expected unavailable, got {other:?}"),
            }
        }
        assert!(matches!(hung.try_recv(), Ok(Job::Write(_))));
        assert!(hung.try_recv().is_err(), "the queue held more than its bound");
        // A read that must first make answered writes visible waits on the
        // writer too, and gives up at the same deadline.
        store.visibility.logged.fetch_add(1, std::sync::atomic::Ordering::Release);
        let read = tokio::time::timeout(bounded, store.get_chat(&ChatId::from(&chat.id))).await.expect("no deadline");
        assert!(matches!(read, Err(StoreError::Unavailable(_))));
        // With nothing to wait for, reads go on.
        store.visibility.visible.fetch_add(1, std::sync::atomic::Ordering::Release);
        assert_eq!(store.get_chat(&ChatId::from(&chat.id)).await.unwrap().0.id, chat.id);
    }

    #[tokio::test]
    async fn several_users_chats_in_one_read_match_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let chat = group(&store).await;
        let batch = single(msg(&chat.id, 1));
        store.append(batch).await.unwrap();
        let users: Vec<UserId> = ["bob", "nobody", "alice"].map(UserId::from).to_vec();
        let lists = store.list_users_chats(&users, 10).await.unwrap();
        assert_eq!(lists.len(), 3);
        for (user, list) in users.iter().zip(&lists) {
            assert_eq!(list, &store.list_user_chats(user, 10).await.unwrap(), "{user}");
        }
        assert!(lists[1].is_empty());
        // bob has alice's message unread; alice does not.
        assert_eq!((lists[0][0].unread, lists[2][0].unread), (1, 0));
        assert!(store.list_users_chats(&[], 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn saving_the_stored_profile_again_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (alice, bob) = (UserId::from("alice"), UserId::from("bob"));
        let profile = |name: &str| Profile { name: Some(name.into()), avatar_url: None };
        store.put_profiles(vec![(alice.clone(), profile("Alice")), (bob.clone(), profile("Bob"))]).await.unwrap();
        // The log's bytes: a write changes them (the file grows in steps).
        let log = || std::fs::read(dir.path().join("confab.wal")).unwrap();
        let written = log();
        for _ in 0..5 {
            store.put_profiles(vec![(alice.clone(), profile("Alice")), (bob.clone(), profile("Bob"))]).await.unwrap();
        }
        assert!(log() == written, "repeats reached the log");
        // A batch's later save of a user wins; only the changed one is written.
        let changed =
            vec![(alice.clone(), profile("Al")), (alice.clone(), profile("Alice B.")), (bob.clone(), profile("Bob"))];
        store.put_profiles(changed).await.unwrap();
        assert!(log() != written, "the change did not reach the log");
        let mut got = store.profiles(&[alice.clone(), bob.clone()]).await.unwrap();
        got.sort_by_key(|p| p.0.to_string());
        assert_eq!(got, vec![(alice, profile("Alice B.")), (bob, profile("Bob"))]);
    }

    #[tokio::test]
    async fn dm_pairs_are_deduplicated_and_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let new = |a: &str, b: &str| NewChat {
                kind: "dm".into(),
                title: None,
                created_by: a.into(),
                member_ids: vec![a.into(), b.into()],
            };
            let (first, created) = store.create_chat(new("alice", "bob")).await.unwrap();
            assert!(created);
            let (again, created) = store.create_chat(new("bob", "alice")).await.unwrap();
            assert!(!created);
            assert_eq!(first.id, again.id);
            store
                .append(AppendBatch {
                    chat_id: first.id.clone().into(),
                    messages: vec![msg(&first.id, 1)],
                    epoch: None,
                    repeats_since_ms: None,
                })
                .await
                .unwrap();
            first.id
        };
        let store = reopen(dir.path()).await;
        let (_, last) = store.get_chat(&ChatId::from(&id)).await.unwrap();
        assert_eq!(last, 1);
        // The client id outlives the reopen: sending it again is a repeat.
        let again = Message { client_id: "c1".into(), ..msg(&id, 2) };
        let batch =
            AppendBatch { chat_id: id.clone().into(), messages: vec![again], epoch: None, repeats_since_ms: Some(0) };
        assert_eq!(store.append(batch).await.unwrap(), Appended::Repeats(vec![msg(&id, 1)]));
        let chats = store.list_user_chats(&UserId::from("bob"), 10).await.unwrap();
        assert_eq!(chats.len(), 1);
        assert_eq!(chats[0].unread, 1);
    }
}
