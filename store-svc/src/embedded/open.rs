//! Opening the embedded store's files, at start and when the writer
//! re-opens them after a failed disk: the database (whose own checks panic
//! on some damaged files), then the redo of the log since the last
//! checkpoint, which refuses damage unless told to salvage.
//!
//! Salvage keeps every valid record, drops the damaged ones and, since
//! those may have held acknowledged messages, raises every chat's last seq
//! by more than they can have held, so that no seq that may have been
//! acknowledged is handed out again. The skipped seqs are recorded
//! ([`SKIPPED`]) so that unread counts leave them out.

use super::{internal, redo, LAST_SEQ, MESSAGES};
use crate::store::StoreError;
use crate::wal::{self, Damage, Wal};
use crate::Config;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::cell::Cell;
use std::path::{Path, PathBuf};

pub(super) const DB_FILE: &str = "confab.redb";
pub(super) const LOG_FILE: &str = "confab.wal";

/// The store's own settings: [`WAL_GENERATION`], [`WAL_MARKED`].
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The generation of log records not yet checkpointed into the tables.
pub(super) const WAL_GENERATION: &str = "wal_generation";
/// Set (to 1) once every log generation starts with a record: a log
/// without one has lost its start.
const WAL_MARKED: &str = "wal_marked";
/// (chat, first seq skipped by a salvage) -> last seq skipped.
pub(super) const SKIPPED: TableDefinition<(&str, u64), u64> = TableDefinition::new("skipped");

/// The fewest log bytes a new message costs: its put into `messages` alone
/// is an op, a table name of 8 bytes with its length, a key (chat id and
/// an 8-byte seq) and their lengths. What a salvage divides lost bytes by.
const MIN_MESSAGE_BYTES: u64 = 24;

/// Why the store did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The log holds damage that is not a torn last record.
    #[error(
        "the store's log {path} {damage}; refusing to start, as that would lose acknowledged writes and reuse \
         their seqs. Start once with --salvage to keep every valid record and skip the seqs the damaged ones \
         may have held (see docs/operations.md)"
    )]
    DamagedLog { path: PathBuf, damage: Damage },
    /// The database file fails redb's checks.
    #[error("the store's database {path} is damaged or cut short: {reason}; restore it from a backup")]
    DamagedDatabase { path: PathBuf, reason: String },
    #[error("cannot use the store's files in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.to_path_buf(), source }
}

thread_local! {
    /// Set while this thread runs a database open whose panic is caught.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into its message. The panic hook stays quiet
/// for it (the message goes into the error instead); other threads'
/// panics are reported as before.
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        let message = payload.downcast_ref::<&str>().map(|s| s.to_string());
        message.or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
    })
}

/// Opens (or creates) the database with a page cache of `cache_bytes`.
/// redb asserts on some damaged files (one cut short, for one) rather than
/// returning an error; that panic is caught here and named.
pub(super) fn database(path: &Path, cache_bytes: usize) -> Result<Database, OpenError> {
    let opened = catch_panic(|| Database::builder().set_cache_size(cache_bytes).create(path));
    let damaged = |reason: String| OpenError::DamagedDatabase { path: path.to_path_buf(), reason };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source)))) => {
            Err(OpenError::Io { path: path.to_path_buf(), source })
        }
        Ok(Err(redb::DatabaseError::Storage(e))) => Err(damaged(e.to_string())),
        Ok(Err(e)) => Err(OpenError::Store(internal(format!("{}: {e}", path.display())))),
        Err(panic) => Err(damaged(format!("the database library stopped on it ({panic})"))),
    }
}

/// The log's generation and whether it is marked, as of the last checkpoint.
fn log_state(db: &Database) -> Result<(u64, bool), StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let meta = match tx.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, false)),
        Err(e) => return Err(internal(e)),
    };
    let get = |key| meta.get(key).map(|v| v.map(|v| v.value())).map_err(internal);
    Ok((get(WAL_GENERATION)?.unwrap_or(0), get(WAL_MARKED)?.is_some()))
}

/// Reads the log of `dir` back and begins the redo: a write transaction on
/// `db` with every valid record redone (and, salvaging, the lost seqs
/// skipped), and the log opened for the generation it was read as. Damage
/// is an error unless `config.salvage`. [`finish`] ends the redo.
pub(super) fn redo_log(db: &Database, config: &Config) -> Result<(WriteTransaction, Wal), OpenError> {
    let path = config.data_dir.join(LOG_FILE);
    let (generation, begun) = log_state(db)?;
    let replay = wal::read(&path, generation, begun).map_err(io_error(&path))?;
    let skip = match &replay.damage {
        None => None,
        Some(damage) if !config.salvage => {
            return Err(OpenError::DamagedLog { path, damage: damage.clone() });
        }
        Some(damage) => {
            tracing::error!(log = %path.display(), %damage, kept = replay.records.len(), "store: salvaging a damaged log: the damaged records are lost");
            Some(damage.lost_bytes() / MIN_MESSAGE_BYTES + 1)
        }
    };
    if let Some(offset) = replay.torn_at {
        tracing::warn!(log = %path.display(), offset, "store: dropped a torn last log record (written when the process stopped, never answered)");
    }
    let mut wal = Wal::open(&path, generation).map_err(io_error(&path))?;
    wal.ensure_start(&replay).map_err(io_error(&path))?;
    let tx = db.begin_write().map_err(internal)?;
    let checkpointed = if skip.is_some() { last_seqs(&tx)? } else { Vec::new() };
    for record in &replay.records {
        redo(&tx, record)?;
    }
    if let Some(skip) = skip {
        let holes = record_holes(&tx, &checkpointed)?;
        if holes > 0 {
            tracing::error!(
                holes,
                "store: salvage found seqs lost inside chats (their messages were in the damaged records)"
            );
        }
        let chats = skip_seqs(&tx, skip)?;
        tracing::error!(skip, chats, "store: salvage raised every chat's next seq by this much: seqs the lost records may have held are never handed out again (a gap in each chat)");
    }
    // Records whose batch was answered are counted once the empty marks are left out.
    let redone = replay.records.iter().filter(|r| !r.is_empty()).count();
    if redone > 0 {
        tracing::info!(records = redone, "store: redid the log since the last checkpoint");
    }
    Ok((tx, wal))
}

/// Commits the redo durably with the log's next generation (a checkpoint)
/// and restarts the log for it.
pub(super) fn finish(tx: WriteTransaction, wal: &mut Wal) -> Result<(), StoreError> {
    let next = wal.generation() + 1;
    {
        let mut meta = tx.open_table(META).map_err(internal)?;
        meta.insert(WAL_GENERATION, next).map_err(internal)?;
        meta.insert(WAL_MARKED, 1).map_err(internal)?;
    }
    tx.commit().map_err(internal)?;
    if let Err(e) = wal.restart(next) {
        tracing::warn!(error = %e, "store: could not mark the restarted log; the first write tries again");
    }
    Ok(())
}

/// Every chat's last seq.
fn last_seqs(tx: &WriteTransaction) -> Result<Vec<(String, u64)>, StoreError> {
    let table = tx.open_table(LAST_SEQ).map_err(internal)?;
    let mut chats = Vec::new();
    for entry in table.iter().map_err(internal)? {
        let (chat, last) = entry.map_err(internal)?;
        chats.push((chat.value().to_string(), last.value()));
    }
    Ok(chats)
}

/// Records as skipped the seqs, since the `checkpointed` last seqs, that
/// the redo left without a message (they were in damaged records); returns
/// how many. Only what the log wrote is looked at.
fn record_holes(tx: &WriteTransaction, checkpointed: &[(String, u64)]) -> Result<u64, StoreError> {
    let before: std::collections::HashMap<&str, u64> = checkpointed.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    let messages = tx.open_table(MESSAGES).map_err(internal)?;
    let mut skipped = tx.open_table(SKIPPED).map_err(internal)?;
    let mut holes = 0;
    for (chat, last) in last_seqs(tx)? {
        let from = before.get(chat.as_str()).copied().unwrap_or(0) + 1;
        let mut expected = from;
        let mut record = |hole_from: u64, hole_to: u64| -> Result<(), StoreError> {
            if hole_from <= hole_to {
                skipped.insert((chat.as_str(), hole_from), hole_to).map_err(internal)?;
                holes += hole_to - hole_from + 1;
            }
            Ok(())
        };
        for entry in messages.range((chat.as_str(), from)..=(chat.as_str(), last)).map_err(internal)? {
            let seq = entry.map_err(internal)?.0.value().1;
            record(expected, seq - 1)?;
            expected = seq + 1;
        }
        record(expected, last)?;
    }
    Ok(holes)
}

/// Raises every chat's last seq by `skip` and records the skipped range;
/// returns how many chats there are.
fn skip_seqs(tx: &WriteTransaction, skip: u64) -> Result<u64, StoreError> {
    let chats = last_seqs(tx)?;
    let mut table = tx.open_table(LAST_SEQ).map_err(internal)?;
    let mut skipped = tx.open_table(SKIPPED).map_err(internal)?;
    for (chat, last) in &chats {
        let to = last.saturating_add(skip);
        table.insert(chat.as_str(), to).map_err(internal)?;
        skipped.insert((chat.as_str(), last + 1), to).map_err(internal)?;
    }
    Ok(chats.len() as u64)
}
