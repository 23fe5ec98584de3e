//! The embedded store's write-ahead log: one file, appended to and
//! `fdatasync`ed once per group commit, reused from the start after each
//! checkpoint.
//!
//! A durable redb commit rewrites a dozen or more scattered pages and its
//! fsync waits for all of them; on a virtual disk that is where a write's
//! tail latency went. The log instead makes each group commit one small
//! sequential write into space that is already allocated and zero-filled,
//! so `fdatasync` has no file metadata to flush. The redb commits behind it
//! are non-durable, and a durable one (the checkpoint) happens only when the
//! log has filled [`Wal::is_full`].
//!
//! Record: `len: u32` (of what follows the crc), `crc32: u32` (of what
//! follows it), `generation: u64`, then the changes. A checkpoint stores the
//! next generation in the database before the log restarts, so records left
//! from the previous generation end the replay, as does a zero length (the
//! unwritten tail) or a torn record (its crc fails).
//!
//! Changes: `op: u8` (1 put, 2 remove), `table: u8 len + name`,
//! `key: u32 len + bytes`, and for a put `value: u32 len + bytes`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The log restarts (after a checkpoint) once it holds this much.
pub(crate) const CHECKPOINT_BYTES: u64 = 4 << 20;
/// The file grows by zero-filled steps of this size; it starts at
/// [`CHECKPOINT_BYTES`] and one step, so that a log filling up in the usual
/// way never waits for the file to grow.
const GROW_BYTES: u64 = 1 << 20;
/// Once the log holds this much it refuses appends: checkpoints have been
/// failing (each failure is logged and retried after every batch), and a
/// log that grew without bound would fill the disk and make the next
/// start's redo as long as the outage. (A record that starts below the
/// bound may end past it, so that no batch is too large ever to log.)
pub(crate) const MAX_BYTES: u64 = 8 * CHECKPOINT_BYTES;
const HEADER: usize = 16;

const PUT: u8 = 1;
const REMOVE: u8 = 2;

pub(crate) struct Wal {
    file: File,
    /// Where the next record goes.
    offset: u64,
    /// Bytes of the file that are allocated and written (zeros or records).
    allocated: u64,
    generation: u64,
    record: Vec<u8>,
    /// Tests: appends fail as a full or broken disk would make them.
    #[cfg(test)]
    pub(crate) fail_appends: bool,
}

impl Wal {
    /// Opens (or creates) the log at `path` and returns it with the
    /// payloads of its records of `generation`, oldest first. The caller
    /// redoes them, checkpoints, and calls [`Wal::restart`].
    pub(crate) fn open(path: &Path, generation: u64) -> io::Result<(Self, Vec<Vec<u8>>)> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let allocated = file.metadata()?.len();
        let mut wal = Self {
            file,
            offset: 0,
            allocated,
            generation,
            record: Vec::new(),
            #[cfg(test)]
            fail_appends: false,
        };
        let records = wal.read_generation()?;
        if wal.allocated < CHECKPOINT_BYTES + GROW_BYTES {
            wal.grow(CHECKPOINT_BYTES + GROW_BYTES)?;
        }
        Ok((wal, records))
    }

    fn read_generation(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut records = Vec::new();
        let mut offset = 0u64;
        let mut header = [0u8; HEADER];
        while offset + HEADER as u64 <= self.allocated {
            self.file.read_exact_at(&mut header, offset)?;
            let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as u64;
            let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
            let generation = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            if len < 8 || generation != self.generation || offset + 8 + len > self.allocated {
                break;
            }
            let mut body = vec![0u8; len as usize];
            self.file.read_exact_at(&mut body, offset + 8)?;
            if crc32fast::hash(&body) != crc {
                break;
            }
            body.drain(..8);
            records.push(body);
            offset += 8 + len;
        }
        self.offset = offset;
        Ok(records)
    }

    /// Appends one record of `changes` and waits until it is on disk.
    pub(crate) fn append(&mut self, changes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_appends {
            return Err(io::Error::other("injected by a test"));
        }
        if self.offset >= MAX_BYTES {
            return Err(io::Error::other("the log is full: checkpoints are failing"));
        }
        self.record.clear();
        let len = u32::try_from(8 + changes.len()).map_err(|_| io::Error::other("log record too large"))?;
        self.record.extend_from_slice(&len.to_le_bytes());
        self.record.extend_from_slice(&[0; 4]);
        self.record.extend_from_slice(&self.generation.to_le_bytes());
        self.record.extend_from_slice(changes);
        let crc = crc32fast::hash(&self.record[8..]);
        self.record[4..8].copy_from_slice(&crc.to_le_bytes());
        // A zero header past the record ends a replay there, even where the
        // space still holds a longer record whose append failed.
        let end = self.offset + self.record.len() as u64 + HEADER as u64;
        if end > self.allocated {
            self.grow(end)?;
        }
        self.record.extend_from_slice(&[0; HEADER]);
        self.file.write_all_at(&self.record, self.offset)?;
        self.file.sync_data()?;
        self.offset += (self.record.len() - HEADER) as u64;
        Ok(())
    }

    /// Extends the file with zeros past `end` and syncs the new length once,
    /// so later appends overwrite allocated space.
    fn grow(&mut self, end: u64) -> io::Result<()> {
        let target = end.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0u8; (target - self.allocated) as usize];
        self.file.write_all_at(&zeros, self.allocated)?;
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// Whether the log holds enough to be worth a checkpoint.
    pub(crate) fn is_full(&self) -> bool {
        self.offset >= CHECKPOINT_BYTES
    }

    /// Bytes of records since the last restart.
    pub(crate) fn len(&self) -> u64 {
        self.offset
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts writing `generation` from the beginning: the caller has
    /// checkpointed everything before and stored `generation` with it.
    pub(crate) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
    }
}

/// One change of a record: a put (with `value`) or a remove in `table`.
#[derive(Debug, PartialEq)]
pub(crate) struct Change<'a> {
    pub table: &'a str,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// Adds a change to a record being built.
pub(crate) fn encode(out: &mut Vec<u8>, table: &str, key: &[u8], value: Option<&[u8]>) {
    out.push(if value.is_some() { PUT } else { REMOVE });
    out.push(table.len() as u8);
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    if let Some(value) = value {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
}

/// The changes of one record, in order; an error for a malformed record.
pub(crate) fn decode(mut record: &[u8]) -> Result<Vec<Change<'_>>, String> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("log record ends early".into());
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn sized<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let len = u32::from_le_bytes(take(rest, 4)?.try_into().map_err(|_| "bad length")?);
        take(rest, len as usize)
    }
    let mut changes = Vec::new();
    while !record.is_empty() {
        let op = take(&mut record, 1)?[0];
        let name_len = take(&mut record, 1)?[0] as usize;
        let table = std::str::from_utf8(take(&mut record, name_len)?).map_err(|_| "bad table name")?;
        let key = sized(&mut record)?;
        let value = match op {
            PUT => Some(sized(&mut record)?),
            REMOVE => None,
            other => return Err(format!("unknown log op {other}")),
        };
        changes.push(Change { table, key, value });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, "messages", &[n; 3], Some(&[n; 5]));
        encode(&mut out, "cursors", &[n], None);
        out
    }

    #[test]
    fn changes_round_trip() {
        let bytes = record(7);
        let changes = decode(&bytes).unwrap();
        assert_eq!(
            changes,
            vec![
                Change { table: "messages", key: &[7; 3], value: Some(&[7; 5]) },
                Change { table: "cursors", key: &[7], value: None },
            ]
        );
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[9, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn replay_returns_this_generation_up_to_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        {
            let (mut wal, old) = Wal::open(&path, 1).unwrap();
            assert!(old.is_empty() && !wal.is_full());
            for n in 0..3 {
                wal.append(&record(n)).unwrap();
            }
        }
        let (mut wal, records) = Wal::open(&path, 1).unwrap();
        assert_eq!(records, (0..3).map(record).collect::<Vec<_>>());
        // Another generation sees none of them.
        assert!(Wal::open(&path, 2).unwrap().1.is_empty());
        // A checkpoint restarts the log: the new generation's first record
        // is all a replay sees, though older records follow it in the file.
        wal.restart(2);
        wal.append(&record(9)).unwrap();
        assert_eq!(Wal::open(&path, 2).unwrap().1, vec![record(9)]);
        // A torn record (one byte flipped) ends the replay before it.
        wal.append(&record(10)).unwrap();
        let first_len = 16 + record(9).len() as u64;
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], first_len + 20).unwrap();
        assert_eq!(Wal::open(&path, 2).unwrap().1, vec![record(9)]);
    }

    #[test]
    fn the_file_is_allocated_ahead_and_reused_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let len = || std::fs::metadata(&path).unwrap().len();
        let (mut wal, _) = Wal::open(&path, 1).unwrap();
        let start = CHECKPOINT_BYTES + GROW_BYTES;
        assert_eq!(len(), start);
        let big = vec![1u8; 300 << 10];
        while !wal.is_full() {
            wal.append(&big).unwrap();
        }
        assert_eq!(len(), start, "filling up to a checkpoint needs no growth");
        // A record past the end grows the file by whole steps.
        wal.append(&vec![2u8; 3 << 20]).unwrap();
        let size = len();
        assert!(size > start && size % GROW_BYTES == 0, "{size}");
        wal.restart(2);
        for _ in 0..10 {
            wal.append(&big).unwrap();
        }
        assert_eq!(len(), size);
        assert_eq!(Wal::open(&path, 2).unwrap().1.len(), 10);
    }

    #[test]
    fn a_log_that_is_never_checkpointed_stops_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 1).unwrap();
        let big = vec![3u8; 1 << 20];
        let mut appended = 0;
        let refused = loop {
            match wal.append(&big) {
                Ok(()) => appended += 1,
                Err(e) => break e,
            }
            assert!(appended <= (MAX_BYTES >> 20) + 1, "the log grew past its bound");
        };
        assert!(refused.to_string().contains("checkpoints are failing"), "{refused}");
        assert!(std::fs::metadata(&path).unwrap().len() <= MAX_BYTES + 2 * GROW_BYTES);
        // What was appended is intact, and a checkpoint makes room again.
        assert_eq!(Wal::open(&path, 1).unwrap().1.len(), appended as usize);
        wal.restart(2);
        wal.append(&big).unwrap();
    }
}
