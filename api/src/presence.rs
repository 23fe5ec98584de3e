//! The presence service as an edge uses it: sessions and the edge's lease,
//! users' statuses, the watches whose updates come back on one stream per
//! edge, and the per-user rate limits presence-svc keeps for every edge.
//! [`Presence`] is the narrow trait (a Redis backend implements the same
//! calls), [`RemotePresence`] the client of presence-svc's gRPC API. Its
//! errors are [`PresenceError`], mapped once from a gRPC status here.
//!
//! Users and edges are named by the `confab-common` id types; sessions and
//! states are the proto records presence-svc keeps.

mod remote;

pub use remote::RemotePresence;

use confab_common::{EdgeId, UserId};
use confab_proto::v1 as pb;
use futures::stream::BoxStream;

/// Why a presence call failed: invalid (refused, nothing done),
/// unavailable (presence-svc could not be reached or did not answer; the
/// call may or may not have been applied) or internal.
pub type PresenceError = crate::status::CallError;

/// The kinds of writes, each limited in a window of its own per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// `message:send` and HTTP sends.
    Messages,
    /// `message:edit`, `message:delete`, `reaction:add` and `reaction:remove`.
    Edits,
    /// Chat creation, title, member and role changes.
    Chats,
    /// `receipt:read`.
    Receipts,
}

impl From<RateClass> for pb::RateClass {
    fn from(class: RateClass) -> Self {
        match class {
            RateClass::Messages => pb::RateClass::Messages,
            RateClass::Edits => pb::RateClass::Edits,
            RateClass::Chats => pb::RateClass::Chats,
            RateClass::Receipts => pb::RateClass::Receipts,
        }
    }
}

/// A limit: at most `limit` slots in any `window_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub limit: u32,
    pub window_ms: u64,
}

/// What an acquire got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// `granted` slots (at least one), all taken at `slot_ms`: give unused
    /// ones back with [`Presence::release`] and that time.
    Granted { slot_ms: i64, granted: u32 },
    /// Over the limit: a slot frees in `retry_after_ms`.
    Refused { retry_after_ms: u64 },
}

impl From<pb::AcquireResponse> for Acquired {
    fn from(r: pb::AcquireResponse) -> Self {
        if r.allowed {
            // A grant is at least the one slot every caller asks for.
            Acquired::Granted { slot_ms: r.slot_ms, granted: r.granted.max(1) }
        } else {
            Acquired::Refused { retry_after_ms: r.retry_after_ms }
        }
    }
}

/// A change to the users an edge's sockets watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watching {
    pub add: Vec<UserId>,
    pub remove: Vec<UserId>,
    /// The edge's whole set becomes `add` (after the stream reconnects).
    pub reset: bool,
}

/// The updates of the users an edge watches, as presence-svc publishes
/// them; it ends (or yields an error) when the stream breaks.
pub type Updates = BoxStream<'static, Result<pb::PresenceState, PresenceError>>;

#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Opens and closes sessions in the order given; renews the leases of
    /// their edges.
    async fn sessions(&self, changes: Vec<pb::SessionChange>) -> Result<(), PresenceError>;
    /// Renews the edge's lease: an edge silent for a lease loses its sessions.
    async fn heartbeat(&self, edge: &EdgeId) -> Result<(), PresenceError>;
    /// Sets a user's status (online, away, busy or invisible); returns the
    /// state as the user sees it.
    async fn set_status(&self, user: &UserId, status: &str) -> Result<pb::PresenceState, PresenceError>;
    /// The states of `users`, in their order, as `viewer` sees them
    /// (invisible shows as offline to everyone else; `None` is no one).
    async fn get_many(
        &self,
        users: &[UserId],
        viewer: Option<&UserId>,
    ) -> Result<Vec<pb::PresenceState>, PresenceError>;
    /// Changes which users the edge's sockets watch.
    async fn watching(&self, edge: &EdgeId, change: Watching) -> Result<(), PresenceError>;
    /// Opens the edge's stream of updates of the users it watches,
    /// replacing any earlier one of the same edge.
    async fn watch(&self, edge: &EdgeId) -> Result<Updates, PresenceError>;
    /// Takes up to `count` slots (0 counts as 1) of the user's window of
    /// `class`, shared by every edge.
    async fn acquire(
        &self,
        user: &UserId,
        class: RateClass,
        limit: Limit,
        count: u32,
    ) -> Result<Acquired, PresenceError>;
    /// Gives back `count` slots taken at `slot_ms` whose work did not count.
    async fn release(&self, user: &UserId, class: RateClass, slot_ms: i64, count: u32) -> Result<(), PresenceError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn an_unknown_outcome_is_unavailable() {
        // Made on this side from a broken connection: it carries the error.
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset by peer")));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert_eq!(PresenceError::from(broken), PresenceError::Unavailable("connection reset by peer".into()));
        for s in [
            Status::unavailable("x"),
            Status::deadline_exceeded("x"),
            Status::cancelled("x"),
            Status::aborted("x"),
            Status::unknown("x"),
            Status::resource_exhausted("x"),
        ] {
            let code = s.code();
            assert_eq!(PresenceError::from(s), PresenceError::Unavailable("x".into()), "{code:?}");
        }
    }

    #[test]
    fn a_refused_call_is_invalid_and_a_failed_one_internal() {
        assert_eq!(
            PresenceError::from(Status::invalid_argument("unknown status")),
            PresenceError::Invalid("unknown status".into())
        );
        assert_eq!(PresenceError::from(Status::out_of_range("x")), PresenceError::Invalid("x".into()));
        for s in [Status::internal("x"), Status::unimplemented("x"), Status::not_found("x"), Status::data_loss("x")] {
            let code = s.code();
            assert_eq!(PresenceError::from(s), PresenceError::Internal("x".into()), "{code:?}");
        }
    }

    #[test]
    fn each_class_is_its_own_proto_class() {
        let classes = [RateClass::Messages, RateClass::Edits, RateClass::Chats, RateClass::Receipts];
        let proto: std::collections::HashSet<pb::RateClass> = classes.iter().map(|c| (*c).into()).collect();
        assert_eq!(proto.len(), classes.len());
        // Callers that set no class limit sends (the proto default).
        assert_eq!(pb::RateClass::from(RateClass::Messages), pb::RateClass::default());
    }

    #[test]
    fn an_acquire_answer_is_a_grant_of_at_least_one_slot_or_a_refusal() {
        let granted = pb::AcquireResponse { allowed: true, retry_after_ms: 0, slot_ms: 42, granted: 5 };
        assert_eq!(Acquired::from(granted), Acquired::Granted { slot_ms: 42, granted: 5 });
        let one = pb::AcquireResponse { allowed: true, retry_after_ms: 0, slot_ms: 7, granted: 0 };
        assert_eq!(Acquired::from(one), Acquired::Granted { slot_ms: 7, granted: 1 });
        let refused = pb::AcquireResponse { allowed: false, retry_after_ms: 900, slot_ms: 0, granted: 0 };
        assert_eq!(Acquired::from(refused), Acquired::Refused { retry_after_ms: 900 });
    }
}
