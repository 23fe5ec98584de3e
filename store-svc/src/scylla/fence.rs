//! The arithmetic of the ScyllaDB backend: which partition a seq lives in,
//! and the logical write timestamps that fence a deposed owner.
//!
//! Every write to a fenced table carries `epoch << 32 | version` as its
//! write timestamp (ScyllaDB keeps, of two writes to one cell, the one with
//! the higher timestamp). The epoch is the writer's ownership epoch from
//! its claim; the version orders one owner's writes to one row (a message's
//! edit count, a chat's change count, the head's seq). So a write made by
//! the owner of epoch `e` beats every write of any earlier epoch, however
//! late that one arrives and whatever the clocks say; see
//! docs/operations.md for the whole argument.

use confab_api::store::StoreError;

/// Seqs per message partition: a partition holds at most this many
/// messages (a few MB at the contract's limits) and a page of history
/// reads one or two.
pub const BUCKET_SEQS: u64 = 4096;

/// The highest epoch a timestamp can carry (i64 has 63 bits to give).
pub const MAX_EPOCH: u64 = (1 << 31) - 1;
const MAX_VERSION: u64 = u32::MAX as u64;

/// The partition (bucket) of `seq`.
pub fn bucket(seq: u64) -> i64 {
    (seq / BUCKET_SEQS) as i64
}

/// The buckets holding `lo..=hi`, in order.
pub fn buckets(lo: u64, hi: u64) -> impl DoubleEndedIterator<Item = i64> {
    let (first, last) = (bucket(lo), bucket(hi.max(lo)));
    first..=last
}

/// The write timestamp of a fenced write: epoch high, version low. A
/// version past 2^32 - 1 stays there (a row changed four billion times
/// in one epoch orders its later changes by value, as ScyllaDB breaks
/// ties).
pub fn timestamp(epoch: u64, version: u64) -> Result<i64, StoreError> {
    if epoch > MAX_EPOCH {
        return Err(StoreError::Internal(format!("ownership epoch {epoch} is past {MAX_EPOCH}")));
    }
    Ok(((epoch << 32) | version.min(MAX_VERSION)) as i64)
}

/// A seq as CQL's bigint (seqs start at 1 and stay far below 2^63).
pub fn seq_value(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A bigint read back as a seq (never negative when written by us).
pub fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_4096_seqs_and_a_range_names_each_once() {
        assert_eq!((bucket(0), bucket(4095), bucket(4096), bucket(8191), bucket(8192)), (0, 0, 1, 1, 2));
        assert_eq!(buckets(1, 50).collect::<Vec<_>>(), [0]);
        assert_eq!(buckets(4000, 9000).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(buckets(4000, 9000).rev().collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(buckets(9, 3).collect::<Vec<_>>(), [0], "an empty range names its first bucket only");
    }

    #[test]
    fn a_later_epoch_beats_every_version_of_an_earlier_one() {
        let old_last = timestamp(4, u64::MAX).unwrap();
        let new_first = timestamp(5, 0).unwrap();
        assert!(new_first > old_last);
        assert!(timestamp(5, 1).unwrap() > new_first, "versions order one owner's writes");
        assert!(timestamp(0, 0).unwrap() >= 0);
        assert_eq!(timestamp(MAX_EPOCH, MAX_VERSION).unwrap(), i64::MAX);
        assert!(matches!(timestamp(MAX_EPOCH + 1, 0), Err(StoreError::Internal(_))));
    }
}
