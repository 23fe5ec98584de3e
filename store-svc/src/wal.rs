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
//! next generation in the database before the log restarts, and the
//! restart writes a first record with no changes (the mark) for it, so a
//! log that was begun always starts with a record. Records left from the
//! previous generation end the replay, as does a zero length (each append
//! writes one after its record) or a record whose crc fails.
//!
//! Where the replay ends decides what it was. Zeros or nothing more of this
//! generation after it: the log's end, or a record torn by a crash while it
//! was written (never answered, so dropped). A valid record of this
//! generation further on: damage, which [`read`] reports (with every valid
//! record it could find) for the store to refuse or, told to, salvage.
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
    /// Whether this generation's mark is written; appends write it first.
    marked: bool,
    record: Vec<u8>,
    /// Tests: appends fail as a full or broken disk would make them.
    #[cfg(test)]
    pub(crate) fail_appends: bool,
}

/// What reading a log back found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The payloads of the valid records to redo, oldest first: those of
    /// the generation asked for, including any after damage; or, when that
    /// generation's log was never begun, those of the one before (a
    /// checkpoint that was stored though its commit reported a failure
    /// leaves them: redoing them again changes nothing).
    pub records: Vec<Vec<u8>>,
    /// Records lost before valid ones, or a log that lost its start.
    pub damage: Option<Damage>,
    /// Where a torn last record (never answered) was dropped.
    pub torn_at: Option<u64>,
    /// Whether the file starts with a valid record of this generation or
    /// an older one (a log begun, as [`Wal::ensure_start`] makes sure).
    starts_valid: bool,
}

/// Damage that a replay cannot pass over silently.
#[derive(Debug, Clone, PartialEq)]
pub enum Damage {
    /// Bytes that are no valid record, followed by valid records of the
    /// same generation: a torn tail has nothing of its generation after it.
    Records {
        /// The first damaged byte.
        offset: u64,
        /// Bytes skipped to reach the valid records after each damaged stretch.
        lost_bytes: u64,
        /// Valid records found after the first damaged byte.
        records_after: usize,
    },
    /// The database says this generation's log was begun, but the file
    /// holds no valid first record: it was zeroed, cut or replaced.
    LostStart { file_bytes: u64 },
    /// The database says this generation's log was begun, but there is no file.
    Missing,
}

impl Damage {
    /// At most how many bytes of records the damage may have cost: what
    /// bounds the messages those records may have held.
    pub(crate) fn lost_bytes(&self) -> u64 {
        match self {
            Damage::Records { lost_bytes, .. } => *lost_bytes,
            // The file may have been cut as well as zeroed.
            Damage::LostStart { file_bytes } => (*file_bytes).max(MAX_BYTES + GROW_BYTES),
            // A log that was never checkpointed grows to its bound, plus
            // the record that crossed it.
            Damage::Missing => 2 * MAX_BYTES,
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Records { offset, lost_bytes, records_after } => write!(
                f,
                "is damaged at byte offset {offset}: {records_after} valid records follow the damage ({lost_bytes} bytes unreadable)"
            ),
            Damage::LostStart { file_bytes } => write!(
                f,
                "has lost its start (byte offset 0 of {file_bytes} bytes holds no valid record), though the database says records were logged to it"
            ),
            Damage::Missing => write!(f, "is missing, though the database says records were logged to it"),
        }
    }
}

/// One valid record in `bytes` at `offset`.
struct Found<'a> {
    generation: u64,
    payload: &'a [u8],
    next: usize,
}

fn record_at(bytes: &[u8], offset: usize) -> Option<Found<'_>> {
    let header = bytes.get(offset..offset.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let generation = u64::from_le_bytes(header[8..16].try_into().ok()?);
    if len < 8 {
        return None;
    }
    let next = offset.checked_add(8 + len)?;
    let body = bytes.get(offset + 8..next)?;
    (crc32fast::hash(body) == crc).then(|| Found { generation, payload: &body[8..], next })
}

/// The first valid record of `generation` at or after `from` whose changes
/// also decode: the check that tells damage from a torn tail, which has
/// nothing of its generation after it.
fn find_record(bytes: &[u8], from: usize, generation: u64) -> Option<usize> {
    let pattern = generation.to_le_bytes();
    (from..bytes.len().saturating_sub(HEADER - 1)).find(|&p| {
        bytes[p + 8..p + HEADER] == pattern
            && record_at(bytes, p).is_some_and(|r| r.generation == generation && decode(r.payload).is_ok())
    })
}

/// Reads the log at `path` back without changing it: the records of
/// `generation` and what stopped the replay. `begun` says that the database
/// expects the log to start with a record (every log since marks were
/// written does).
pub(crate) fn read(path: &Path, generation: u64, begun: bool) -> io::Result<Replay> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Replay { damage: begun.then_some(Damage::Missing), ..Replay::default() });
        }
        Err(e) => return Err(e),
    };
    let first = record_at(&bytes, 0);
    let mut replay =
        Replay { starts_valid: first.as_ref().is_some_and(|r| r.generation <= generation), ..Replay::default() };
    // This generation's log was never begun: the previous one's is what
    // there is.
    let chain = match first {
        Some(r) if r.generation.checked_add(1) == Some(generation) => r.generation,
        _ => generation,
    };
    let mut offset = 0;
    let mut first_damage = None;
    let (mut lost_bytes, mut records_after) = (0, 0);
    loop {
        while let Some(r) = record_at(&bytes, offset).filter(|r| r.generation == chain) {
            replay.records.push(r.payload.to_vec());
            records_after += usize::from(first_damage.is_some());
            offset = r.next;
        }
        let Some(next) = find_record(&bytes, offset + 1, chain) else { break };
        first_damage.get_or_insert(offset as u64);
        lost_bytes += (next - offset) as u64;
        offset = next;
    }
    let ends_clean = bytes.get(offset..offset + 4).is_none_or(|len| len == [0; 4]);
    if first_damage.is_none() && offset > 0 && !ends_clean {
        replay.torn_at = Some(offset as u64);
    }
    replay.damage = match first_damage {
        Some(offset) => Some(Damage::Records { offset, lost_bytes, records_after }),
        None if begun && !replay.starts_valid => Some(Damage::LostStart { file_bytes: bytes.len() as u64 }),
        None => None,
    };
    Ok(replay)
}

impl Wal {
    /// Opens (or creates) the log at `path` for `generation`, after
    /// [`read`] has read it back. The caller redoes what it read,
    /// checkpoints, and calls [`Wal::restart`].
    pub(crate) fn open(path: &Path, generation: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let allocated = file.metadata()?.len();
        let mut wal = Self {
            file,
            offset: 0,
            allocated,
            generation,
            marked: false,
            record: Vec::new(),
            #[cfg(test)]
            fail_appends: false,
        };
        if wal.allocated < CHECKPOINT_BYTES + GROW_BYTES {
            wal.grow(CHECKPOINT_BYTES + GROW_BYTES)?;
        }
        Ok(wal)
    }

    /// Makes sure the file starts with a valid record before the database
    /// is told that the log is marked: a new or never written log gets the
    /// mark of its present generation (which redoes to nothing).
    pub(crate) fn ensure_start(&mut self, replay: &Replay) -> io::Result<()> {
        if !replay.starts_valid {
            self.mark()?;
        }
        Ok(())
    }

    /// Writes this generation's mark at the start of the file.
    fn mark(&mut self) -> io::Result<()> {
        self.offset = 0;
        self.write_record(&[])?;
        self.marked = true;
        Ok(())
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
        if !self.marked {
            self.mark()?;
        }
        self.write_record(changes)
    }

    /// Writes one record at the offset and syncs it.
    fn write_record(&mut self, changes: &[u8]) -> io::Result<()> {
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

    /// Bytes of records since the last restart, less the mark.
    pub(crate) fn len(&self) -> u64 {
        if self.marked {
            self.offset - HEADER as u64
        } else {
            self.offset
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts writing `generation` from the beginning: the caller has
    /// checkpointed everything before and stored `generation` with it.
    /// Writes the generation's mark; if that fails, the next append tries
    /// again (until then the file starts with the previous generation's
    /// records, which a replay of `generation` redoes harmlessly).
    pub(crate) fn restart(&mut self, generation: u64) -> io::Result<()> {
        self.generation = generation;
        self.marked = false;
        self.mark()
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

    /// The records a replay of `generation` redoes.
    fn records(path: &Path, generation: u64) -> Vec<Vec<u8>> {
        read(path, generation, true).unwrap().records
    }

    fn flip(path: &Path, offset: u64) {
        let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], offset).unwrap();
    }

    /// A log of `generation`, marked, with `n` records; the offset of each.
    fn log_of(path: &Path, generation: u64, n: u8) -> (Wal, Vec<u64>) {
        let mut wal = Wal::open(path, generation).unwrap();
        wal.restart(generation).unwrap();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(wal.offset);
            wal.append(&record(i)).unwrap();
        }
        (wal, offsets)
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
        let (mut wal, _) = log_of(&path, 1, 3);
        // The mark redoes to nothing: an empty record first.
        let mut expected = vec![vec![]];
        expected.extend((0..3).map(record));
        assert_eq!(records(&path, 1), expected);
        // Another generation sees none of them (the one after redoes them
        // again while its own log was never begun; see below).
        assert!(records(&path, 3).is_empty());
        // A checkpoint restarts the log: the new generation's records are
        // all a replay sees, though older records follow them in the file.
        wal.restart(2).unwrap();
        wal.append(&record(9)).unwrap();
        assert_eq!(records(&path, 2), vec![vec![], record(9)]);
        // A torn last record (one byte flipped) ends the replay before it,
        // and is no damage: nothing of its generation follows.
        let torn = wal.offset;
        wal.append(&record(10)).unwrap();
        flip(&path, torn + 20);
        let replay = read(&path, 2, true).unwrap();
        assert_eq!(replay.records, vec![vec![], record(9)]);
        assert_eq!((replay.damage, replay.torn_at), (None, Some(torn)));
    }

    #[test]
    fn a_damaged_record_followed_by_valid_ones_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (_wal, offsets) = log_of(&path, 4, 10);
        // In a record's changes, in its length, in its generation.
        for (victim, at) in [(3usize, 20u64), (5, 1), (7, 12)] {
            let copy = dir.path().join(format!("wal-{victim}"));
            std::fs::copy(&path, &copy).unwrap();
            flip(&copy, offsets[victim] + at);
            let replay = read(&copy, 4, true).unwrap();
            let Some(Damage::Records { offset, lost_bytes, records_after }) = replay.damage else {
                panic!("record {victim}: {:?}", replay.damage);
            };
            assert_eq!(offset, offsets[victim]);
            assert_eq!(lost_bytes, offsets[victim + 1] - offsets[victim]);
            assert_eq!(records_after, 10 - victim - 1);
            // Every valid record is kept, the damaged one left out.
            let kept: Vec<_> = (0..10u8).filter(|&i| i as usize != victim).map(record).collect();
            assert_eq!(replay.records[1..], kept[..]);
        }
        // Zeros over a stretch in the middle (a lost page) are damage too.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&vec![0; (offsets[6] - offsets[2]) as usize], offsets[2]).unwrap();
        let damage = read(&path, 4, true).unwrap().damage;
        assert_eq!(
            damage,
            Some(Damage::Records { offset: offsets[2], lost_bytes: offsets[6] - offsets[2], records_after: 4 })
        );
    }

    #[test]
    fn a_begun_log_that_is_missing_or_zeroed_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        // A new store: no file, and a database that expects none.
        assert_eq!(read(&path, 0, false).unwrap().damage, None);
        let (_wal, _) = log_of(&path, 2, 3);
        let len = std::fs::metadata(&path).unwrap().len();
        // Zeroed in place.
        let zeroed = dir.path().join("zeroed");
        std::fs::write(&zeroed, vec![0; len as usize]).unwrap();
        let replay = read(&zeroed, 2, true).unwrap();
        assert_eq!(replay.damage, Some(Damage::LostStart { file_bytes: len }));
        assert!(replay.records.is_empty());
        // Gone.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read(&path, 2, true).unwrap().damage, Some(Damage::Missing));
        // A log from before marks (the database does not expect one) is
        // read as it is.
        assert_eq!(read(&zeroed, 2, false).unwrap().damage, None);
    }

    #[test]
    fn a_generation_never_begun_redoes_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = log_of(&path, 5, 2);
        // The database took generation 6, and the mark did not follow.
        let replay = read(&path, 6, true).unwrap();
        assert_eq!(replay.records, vec![vec![], record(0), record(1)]);
        assert_eq!(replay.damage, None);
        // Once 6 is marked, 5 is left alone.
        wal.restart(6).unwrap();
        assert_eq!(records(&path, 6), vec![Vec::<u8>::new()]);
        // The mark's length is no record's.
        assert_eq!(wal.len(), 0);
    }

    #[test]
    fn the_file_is_allocated_ahead_and_reused_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let len = || std::fs::metadata(&path).unwrap().len();
        let mut wal = Wal::open(&path, 1).unwrap();
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
        wal.restart(2).unwrap();
        for _ in 0..10 {
            wal.append(&big).unwrap();
        }
        assert_eq!(len(), size);
        assert_eq!(records(&path, 2).len(), 11);
    }

    #[test]
    fn a_log_that_is_never_checkpointed_stops_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut wal = Wal::open(&path, 1).unwrap();
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
        // What was appended is intact (after the mark the first append
        // wrote), and a checkpoint makes room again.
        assert_eq!(records(&path, 1).len(), appended as usize + 1);
        wal.restart(2).unwrap();
        wal.append(&big).unwrap();
    }
}
