//! The embedded store's single writer thread.
//!
//! It keeps one redb transaction open across group commits. Each batch of
//! writes is applied to it, its changes are appended to the log and synced,
//! and only then are the writes answered: the log is what makes them
//! durable. The open transaction is committed (without an fsync) when a
//! reader needs to see answered writes ([`Job::Visible`]), or
//! [`VISIBLE_AFTER`] after its first logged batch; and durably, as the
//! checkpoint, when the log is full, or earlier when the writer has had
//! nothing to do for [`IDLE_AFTER`] and the log holds at least
//! [`IDLE_CHECKPOINT_BYTES`]. redb commits therefore follow reads and
//! the clock, not every batch: each redb commit rewrites the pages along
//! every path it touched, and one per batch wrote tens of MB/s.
//!
//! A checkpoint's fsync would stall every write behind it for as long as the
//! disk takes to write what redb wrote since the last one. So a helper
//! thread first syncs the redb file while the writer goes on, and the
//! checkpoint's own fsync is left with the little written meanwhile. Even
//! so, on a virtual disk the writes of that sync slowed the log's own syncs
//! beside it (to 10–30 ms), hence the checkpoint in pauses: the work then
//! falls outside the next burst of writes rather than inside it.
//!
//! A commit (or a transaction) that fails leaves redb refusing every later
//! one until the file is opened again ("previous I/O error"); a full disk
//! does that. The writer then answers every write as unavailable, reports
//! itself unhealthy, and re-opens the files with backoff: the database is
//! taken from readers, opened again, and the log, which holds every
//! answered write since the last checkpoint, redone and checkpointed
//! ([`super::open`]), as at a start. Once that succeeds, writes go on.

use super::open::{self, OpenError, DB_FILE, META, WAL_GENERATION};
use super::{apply, internal, redo, Job, Outcome, Shared};
use crate::store::StoreError;
use crate::wal::{self, Wal};
use crate::Config;
use redb::{Database, Durability, Key, TableDefinition, TableHandle, Value, WriteTransaction};
use std::borrow::Borrow;
use std::cell::RefCell;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Writes taken into one group commit at most.
const MAX_BATCH: usize = 512;
/// How long answered writes may stay invisible to readers that do not ask.
const VISIBLE_AFTER: Duration = Duration::from_millis(100);
/// How often an idle writer looks whether the pre-checkpoint sync is done.
const FLUSH_POLL: Duration = Duration::from_millis(5);
/// A writer with nothing queued for this long checkpoints early, if its log
/// holds at least [`IDLE_CHECKPOINT_BYTES`]: the disk's work then happens
/// in a pause rather than under the next burst of writes.
pub(super) const IDLE_AFTER: Duration = Duration::from_millis(250);
pub(super) const IDLE_CHECKPOINT_BYTES: u64 = 256 << 10;
/// The first re-open after a failed write waits this long; each failure
/// doubles the wait, up to [`RECOVER_BACKOFF_MAX`].
const RECOVER_BACKOFF: Duration = Duration::from_millis(250);
const RECOVER_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a re-open waits for readers to let go of the old database (a
/// read gives up after 5 s).
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// What readers check before reading: whether every answered write has
/// been committed to redb.
#[derive(Default)]
pub(super) struct Visibility {
    /// Batches logged (and so answered).
    pub(super) logged: AtomicU64,
    /// `logged` as of the last commit.
    pub(super) visible: AtomicU64,
}

impl Visibility {
    /// Whether some answered write is not yet visible to a read transaction.
    pub(super) fn behind(&self) -> bool {
        self.visible.load(Ordering::Acquire) < self.logged.load(Ordering::Acquire)
    }
}

pub(super) struct Writer {
    /// The database; `None` while it is being re-opened.
    db: Option<Arc<Database>>,
    /// Where readers find it.
    shared: Arc<Shared>,
    wal: Wal,
    vis: Arc<Visibility>,
    /// The store's settings, for re-opening its files.
    config: Config,
    /// Whether writes succeed, for readiness.
    health: watch::Sender<bool>,
    /// Since a database write failed, until the files are re-opened.
    failing: Option<Failing>,
    /// The transaction holding the logged batches not yet committed.
    open: Option<Wtx>,
    /// Those batches' log records, to redo into a new transaction if the
    /// open one is lost (a failed append or commit).
    unseen: Vec<Vec<u8>>,
    /// When the first of them was logged.
    first_unseen: Instant,
    /// The redb file, for syncing ahead of a checkpoint.
    file: File,
    /// That sync, while it runs.
    flushing: Option<JoinHandle<std::io::Result<()>>>,
    /// When the last job was served.
    last_job: Instant,
}

impl Drop for Writer {
    /// The open transaction ends before the database: dropping the last
    /// handle of a database begins a write transaction of its own, which
    /// would wait for this one forever.
    fn drop(&mut self) {
        self.open = None;
    }
}

/// A writer whose database failed.
struct Failing {
    since: Instant,
    next_attempt: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Writer {
    /// `file` is the database's file, opened again.
    pub(super) fn new(
        db: Arc<Database>,
        shared: Arc<Shared>,
        file: File,
        wal: Wal,
        vis: Arc<Visibility>,
        config: Config,
        health: watch::Sender<bool>,
    ) -> Self {
        let now = Instant::now();
        // A re-open never salvages: damage found then stops the writes.
        let config = Config { salvage: false, ..config };
        Self {
            db: Some(db),
            shared,
            wal,
            vis,
            config,
            health,
            failing: None,
            open: None,
            unseen: Vec::new(),
            first_unseen: now,
            file,
            flushing: None,
            last_job: now,
        }
    }

    /// Serves the queue until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let clock = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "store writer: no timer; writes will fail");
                return;
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let deadline = match (self.unseen.is_empty(), &self.flushing) {
                _ if self.failing.is_some() => self.failing.as_ref().map(|f| f.next_attempt),
                (_, Some(_)) => Some(Instant::now() + FLUSH_POLL),
                (false, None) => Some(self.first_unseen + VISIBLE_AFTER),
                (true, None) if self.worth_an_idle_checkpoint() => Some(self.last_job + IDLE_AFTER),
                (true, None) => None,
            };
            let next = match deadline {
                None => clock.block_on(rx.recv()),
                Some(deadline) => {
                    match clock.block_on(async { tokio::time::timeout_at(deadline.into(), rx.recv()).await }) {
                        Ok(next) => next,
                        Err(_) if self.failing.is_some() => {
                            self.recover(false);
                            continue;
                        }
                        Err(_) => {
                            if self.first_unseen + VISIBLE_AFTER <= Instant::now() {
                                self.commit(false).ok();
                            }
                            let idle = self.last_job + IDLE_AFTER <= Instant::now();
                            self.checkpoint_when_due(idle);
                            continue;
                        }
                    }
                }
            };
            let Some(first) = next else { break };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let closing = self.group_commit(&mut batch);
            self.last_job = Instant::now();
            if let Some(reply) = closing {
                // Jobs still queued are dropped with the receiver: they fail
                // as the writer having stopped.
                drop(reply.send(self.close()));
                return;
            }
            self.checkpoint_when_due(false);
        }
        // Every sender gone without a close: the log keeps what the tables
        // lack, for the next start to redo.
        self.wait_for_flush();
    }

    /// Waits for a pre-checkpoint sync under way, if any.
    fn wait_for_flush(&mut self) {
        if let Some(flushing) = self.flushing.take() {
            drop(flushing.join());
        }
    }

    /// A clean end: waits for a sync under way, then checkpoints whatever the
    /// log holds (every unseen batch is in it), so that the next start has
    /// nothing to redo.
    fn close(&mut self) -> Result<(), StoreError> {
        self.wait_for_flush();
        self.recover(true);
        if self.failing.is_some() {
            return Err(StoreError::Unavailable(
                "closed while the store's database fails: the log keeps every answered write for the next start".into(),
            ));
        }
        if self.wal.len() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        self.commit(true)?;
        tracing::info!(elapsed = ?started.elapsed(), "store: checkpointed at shutdown");
        Ok(())
    }

    fn worth_an_idle_checkpoint(&self) -> bool {
        self.wal.len() >= IDLE_CHECKPOINT_BYTES
    }

    /// Once the log is full, or the writer `idle` with a log worth it:
    /// starts syncing the redb file, and when that is done, checkpoints.
    fn checkpoint_when_due(&mut self, idle: bool) {
        let due = self.wal.is_full() || (idle && self.worth_an_idle_checkpoint());
        if (!due && self.flushing.is_none()) || self.failing.is_some() {
            return;
        }
        match &self.flushing {
            Some(flushing) if !flushing.is_finished() => return,
            Some(_) => {
                let flushed = self.flushing.take().map(|f| f.join());
                if !matches!(flushed, Some(Ok(Ok(())))) {
                    tracing::warn!("store: the sync before a checkpoint failed; the checkpoint syncs itself");
                }
            }
            None => {
                let file = self.file.try_clone();
                let spawned = file.and_then(|file| {
                    std::thread::Builder::new().name("store-flush".into()).spawn(move || file.sync_data())
                });
                if let Ok(flushing) = spawned {
                    self.flushing = Some(flushing);
                    return;
                }
            }
        }
        if let Err(e) = self.commit(true) {
            tracing::error!(error = %e, log_bound = wal::MAX_BYTES, "store: checkpoint failed; the log keeps growing up to its bound, then refuses writes");
        }
    }

    /// The open transaction, begun (with the unseen batches redone) if
    /// there is none.
    fn open(&mut self) -> Result<&Wtx, StoreError> {
        if self.failing.is_some() {
            return Err(StoreError::Unavailable("the store's database failed a write; re-opening it".into()));
        }
        if self.open.is_none() {
            let begun = self.begin();
            self.open = Some(begun.inspect_err(|e| self.fail(e))?);
        }
        Ok(self.open.as_ref().expect("just opened"))
    }

    fn begin(&self) -> Result<Wtx, StoreError> {
        let db = self.db.as_ref().ok_or_else(|| StoreError::Unavailable("no database".into()))?;
        let mut tx = db.begin_write().map_err(|e| StoreError::Unavailable(format!("store transaction failed: {e}")))?;
        // The log makes writes durable; the checkpoint makes redb so.
        tx.set_durability(Durability::None);
        for record in &self.unseen {
            redo(&tx, record)?;
        }
        Ok(Wtx::new(tx))
    }

    /// A database write failed: redb refuses every later one until the
    /// file is opened again. Logged once; [`Writer::recover`] follows.
    fn fail(&mut self, why: &StoreError) {
        self.open = None;
        if self.failing.is_none() {
            tracing::error!(error = %why, "store: a database write failed; every write fails as unavailable (nothing answered is lost: the log holds it) until the store has re-opened its files, tried with backoff");
            let now = Instant::now();
            self.failing = Some(Failing {
                since: now,
                next_attempt: now + RECOVER_BACKOFF,
                backoff: RECOVER_BACKOFF,
                attempts: 0,
            });
            self.health.send_replace(false);
        }
    }

    /// When an attempt is due (or `now`): re-opens the database and redoes
    /// the log, ending the failure if that works.
    fn recover(&mut self, now: bool) {
        let Some(failing) = &mut self.failing else { return };
        let started = Instant::now();
        if !now && started < failing.next_attempt {
            return;
        }
        failing.attempts += 1;
        failing.backoff = (failing.backoff * 2).min(RECOVER_BACKOFF_MAX);
        failing.next_attempt = started + failing.backoff;
        let (since, attempts) = (failing.since, failing.attempts);
        self.wait_for_flush();
        self.open = None;
        match self.reopen() {
            Ok(()) => {
                self.failing = None;
                self.health.send_replace(true);
                tracing::warn!(failed_for = ?since.elapsed(), attempts, "store: recovered: re-opened the database and redid the log; writes succeed again");
            }
            Err(e) => {
                tracing::debug!(error = %e, attempts, "store: re-opening the database failed; trying again later")
            }
        }
    }

    /// Opens the database again (once readers have let go of the old one),
    /// redoes the log and checkpoints it.
    fn reopen(&mut self) -> Result<(), OpenError> {
        // Both handles of the old database go (readers' and the writer's
        // own: the same database, so one is kept to watch); readers still
        // holding one are waited for.
        let readers = self.shared.set(None);
        let own = self.db.take();
        if let Some(old) = readers.or(own) {
            let released = Arc::downgrade(&old);
            drop(old);
            let deadline = Instant::now() + RELEASE_DEADLINE;
            while released.strong_count() > 0 {
                if Instant::now() >= deadline {
                    // Not this time: readers may go on with the old one.
                    self.db = released.upgrade();
                    self.shared.set(self.db.clone());
                    return Err(StoreError::Unavailable("readers held the old database".into()).into());
                }
                std::thread::sleep(FLUSH_POLL);
            }
        }
        let path = self.config.data_dir.join(DB_FILE);
        let db = Arc::new(open::database(&path, self.config.cache_bytes())?);
        let (tx, mut wal) = open::redo_log(&db, &self.config)?;
        open::finish(tx, &mut wal)?;
        self.wal = wal;
        self.unseen.clear();
        self.vis.visible.store(self.vis.logged.load(Ordering::Acquire), Ordering::Release);
        if let Ok(file) = File::open(&path) {
            self.file = file;
        }
        self.shared.set(Some(db.clone()));
        self.db = Some(db);
        Ok(())
    }

    /// Applies, logs and answers a batch; returns the reply of a close
    /// among its jobs, for after it.
    fn group_commit(&mut self, batch: &mut Vec<Job>) -> Option<CloseReply> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut waiting = Vec::new();
        let mut closing = None;
        self.recover(false);
        let result = match self.open() {
            Ok(tx) => {
                for job in batch.drain(..) {
                    match job {
                        Job::Visible(reply) => waiting.push(reply),
                        Job::Write(write) => outcomes.push(apply(tx, write)),
                        Job::Close(reply) => closing = Some(reply),
                    }
                }
                let changes = tx.take_changes();
                if changes.is_empty() {
                    Ok(())
                } else {
                    self.log(changes)
                }
            }
            Err(e) => Err(e),
        };
        // Writes not reached (when no transaction could begin) fail too.
        for job in batch.drain(..) {
            let err = StoreError::Unavailable("store transaction failed".into());
            match job {
                Job::Visible(reply) => waiting.push(reply),
                Job::Write(write) => outcomes.push(Outcome::failed(write, err)),
                Job::Close(reply) => closing = Some(reply),
            }
        }
        for outcome in outcomes {
            outcome.answer(&result);
        }
        if !waiting.is_empty() {
            let visible = self.commit(false);
            for reply in waiting {
                drop(reply.send(visible.as_ref().map(|()| 0).map_err(|e| StoreError::Unavailable(e.to_string()))));
            }
        }
        closing
    }

    /// Appends a batch's changes to the log. On failure the open
    /// transaction, which holds them, is dropped.
    fn log(&mut self, changes: Vec<u8>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let logged = self.wal.append(&changes);
        if let Some(syncs) = self.shared.syncs.get() {
            syncs.record(started.elapsed().as_secs_f64(), &[]);
        }
        if let Err(e) = logged {
            self.open = None;
            return Err(StoreError::Unavailable(format!("log write failed: {e}")));
        }
        if self.unseen.is_empty() {
            self.first_unseen = Instant::now();
        }
        self.unseen.push(changes);
        self.vis.logged.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Commits the open transaction: visible to readers, and with
    /// `checkpoint` also durable in redb, after which the log starts over.
    fn commit(&mut self, checkpoint: bool) -> Result<(), StoreError> {
        if self.unseen.is_empty() && !checkpoint {
            return Ok(());
        }
        let next = self.wal.generation() + 1;
        self.open()?;
        let mut tx = self.open.take().expect("just opened").into_transaction();
        if checkpoint {
            tx.set_durability(Durability::Immediate);
            tx.open_table(META).map_err(internal)?.insert(WAL_GENERATION, next).map_err(internal)?;
        }
        let logged = self.vis.logged.load(Ordering::Acquire);
        let started = Instant::now();
        let committed = tx.commit().map_err(|e| StoreError::Unavailable(format!("store commit failed: {e}")));
        committed.inspect_err(|e| self.fail(e))?;
        self.unseen.clear();
        self.vis.visible.store(logged, Ordering::Release);
        if checkpoint {
            if let Err(e) = self.wal.restart(next) {
                tracing::warn!(error = %e, "store: could not mark the restarted log; the next write tries again");
            }
            tracing::debug!(elapsed = ?started.elapsed(), "store: checkpoint");
        }
        Ok(())
    }
}

/// A write transaction whose tables record every change they make, in the
/// log's format, so that a batch can be logged before it is answered.
pub(super) struct Wtx {
    tx: WriteTransaction,
    changes: RefCell<Vec<u8>>,
}

impl Wtx {
    pub(super) fn new(tx: WriteTransaction) -> Self {
        Self { tx, changes: RefCell::new(Vec::new()) }
    }

    pub(super) fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<Logged<'_, K, V>, StoreError> {
        Ok(Logged { table: self.tx.open_table(def).map_err(internal)?, def, changes: &self.changes })
    }

    /// The changes made since the last call.
    fn take_changes(&self) -> Vec<u8> {
        std::mem::take(&mut *self.changes.borrow_mut())
    }

    /// The transaction, its changes already taken (or not to be logged).
    pub(super) fn into_transaction(self) -> WriteTransaction {
        self.tx
    }
}

/// A table of a [`Wtx`]: reads through `Deref`, writes through its own
/// `insert` and `remove`, which record the change first.
pub(super) struct Logged<'t, K: Key + 'static, V: Value + 'static> {
    table: redb::Table<'t, K, V>,
    def: TableDefinition<'static, K, V>,
    changes: &'t RefCell<Vec<u8>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> std::ops::Deref for Logged<'t, K, V> {
    type Target = redb::Table<'t, K, V>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl<K: Key + 'static, V: Value + 'static> Logged<'_, K, V> {
    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        {
            let (k, v) = (K::as_bytes(key.borrow()), V::as_bytes(value.borrow()));
            wal::encode(&mut self.changes.borrow_mut(), self.def.name(), k.as_ref(), Some(v.as_ref()));
        }
        self.table.insert(key, value).map_err(internal)?;
        Ok(())
    }

    pub(super) fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<(), StoreError> {
        wal::encode(&mut self.changes.borrow_mut(), self.def.name(), K::as_bytes(key.borrow()).as_ref(), None);
        self.table.remove(key).map_err(internal)?;
        Ok(())
    }
}

/// Writes one logged change again, into `def`.
pub(super) fn redo_change<K: Key + 'static, V: Value + 'static>(
    tx: &WriteTransaction,
    def: TableDefinition<'static, K, V>,
    change: &wal::Change<'_>,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(def).map_err(internal)?;
    let key = K::from_bytes(change.key);
    match change.value {
        Some(value) => drop(table.insert(key, V::from_bytes(value)).map_err(internal)?),
        None => drop(table.remove(key).map_err(internal)?),
    }
    Ok(())
}

/// An answer to a reader waiting for [`Job::Visible`].
pub(super) type VisibleReply = oneshot::Sender<Result<u64, StoreError>>;
pub(super) type CloseReply = oneshot::Sender<Result<(), StoreError>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{Write, LAST_SEQ};
    use crate::store::{AppendBatch, Appended, NewChat};
    use confab_proto::v1::{Chat, Message};

    fn append(chat: &str, seq: u64) -> (Job, oneshot::Receiver<Result<Appended, StoreError>>) {
        let m = Message {
            chat_id: chat.into(),
            id: format!("m{seq}"),
            seq,
            client_id: format!("c{seq}"),
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel();
        let batch = AppendBatch { chat_id: chat.into(), messages: vec![m], epoch: None, repeats_since_ms: None };
        (Job::Write(Write::Append(batch, tx)), rx)
    }

    /// A log append that fails answers its batch with an error and drops
    /// the open transaction; the batches answered before it are redone into
    /// the next one, so nothing answered goes missing.
    #[test]
    fn a_failed_append_loses_only_its_own_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("confab.redb")).unwrap());
        let wal = Wal::open(&dir.path().join("confab.wal"), 1).unwrap();
        let file = File::open(dir.path().join("confab.redb")).unwrap();
        let vis = Arc::new(Visibility::default());
        let shared = Arc::new(Shared::new(db.clone()));
        let config = Config::new(dir.path().to_path_buf());
        let mut writer = Writer::new(db.clone(), shared, file, wal, vis.clone(), config, watch::channel(true).0);

        let (reply, mut created) = oneshot::channel::<Result<(Chat, bool), StoreError>>();
        let new = NewChat { kind: "group".into(), title: None, created_by: "a".into(), member_ids: vec!["a".into()] };
        writer.group_commit(&mut vec![Job::Write(Write::CreateChat(new, reply))]);
        let chat = created.try_recv().unwrap().unwrap().0.id;
        let (write, mut first) = append(&chat, 1);
        writer.group_commit(&mut vec![write]);
        assert_eq!(first.try_recv().unwrap().unwrap(), Appended::Written(1));

        writer.wal.fail_appends = true;
        let (write, mut failed) = append(&chat, 2);
        writer.group_commit(&mut vec![write]);
        assert!(matches!(failed.try_recv().unwrap(), Err(StoreError::Unavailable(_))));
        assert!(writer.open.is_none());

        writer.wal.fail_appends = false;
        // Seq 2 again: the failed batch left nothing, and seq 1 is still there.
        let (write, mut again) = append(&chat, 2);
        let (visible, mut seen) = oneshot::channel();
        writer.group_commit(&mut vec![write, Job::Visible(visible)]);
        assert_eq!(again.try_recv().unwrap().unwrap(), Appended::Written(2));
        assert!(seen.try_recv().unwrap().is_ok());
        assert!(!vis.behind());
        let last_seq =
            db.begin_read().unwrap().open_table(LAST_SEQ).unwrap().get(chat.as_str()).unwrap().unwrap().value();
        assert_eq!(last_seq, 2);
    }
}
