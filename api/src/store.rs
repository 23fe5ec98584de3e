//! The storage trait: a handful of methods, so a ScyllaDB backend is a swap.
//! Its errors are mapped here, once: to and from gRPC statuses (a code plus
//! a `StoreFailure` in the details) for both sides of store-svc's API, and
//! to the client's error ([`StoreError::client_error`]) for the router and
//! the edge alike. Chats and users are named by the `confab-common` id types; they are
//! strings only in the gRPC messages ([`RemoteStore`] and store-svc's
//! service convert them). Stored records are the proto types.

mod remote;

pub use remote::RemoteStore;

use crate::status::{outcome, Outcome};
use confab_common::{ChatId, UserId};
use confab_proto::v1 as pb;
use confab_proto::v1::{Chat, ChatSummary, Message, Profile};
use prost::Message as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The append did not follow the chat's last seq.
    #[error("seq conflict: chat is at {last_seq}, append started at {first_seq}")]
    SeqConflict { last_seq: u64, first_seq: u64 },
    #[error("invalid: {0}")]
    Invalid(String),
    /// Another writer claimed the chat since this one did.
    #[error("fenced: the chat has a newer owner")]
    Fenced,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl StoreError {
    /// The kind, as a metrics label.
    pub fn kind_name(&self) -> &'static str {
        match self {
            StoreError::NotFound => "NOT_FOUND",
            StoreError::SeqConflict { .. } => "SEQ_CONFLICT",
            StoreError::Invalid(_) => "INVALID",
            StoreError::Fenced => "FENCED",
            StoreError::Unavailable(_) => "UNAVAILABLE",
            StoreError::Internal(_) => "INTERNAL",
        }
    }
}

/// The store's answer as it crosses gRPC: a status whose code says the kind
/// coarsely and whose details carry the error itself (`pb::StoreFailure`),
/// so the client rebuilds the same `StoreError`, numbers included.
impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        use pb::StoreErrorKind as K;
        use tonic::Code;
        let (code, kind) = match &e {
            StoreError::NotFound => (Code::NotFound, K::NotFound),
            StoreError::SeqConflict { .. } => (Code::FailedPrecondition, K::SeqConflict),
            StoreError::Invalid(_) => (Code::InvalidArgument, K::Invalid),
            StoreError::Fenced => (Code::Aborted, K::Fenced),
            StoreError::Unavailable(_) => (Code::Unavailable, K::Unavailable),
            StoreError::Internal(_) => (Code::Internal, K::Internal),
        };
        let (last_seq, first_seq) = match &e {
            StoreError::SeqConflict { last_seq, first_seq } => (*last_seq, *first_seq),
            _ => (0, 0),
        };
        let detail = match &e {
            StoreError::Invalid(m) | StoreError::Unavailable(m) | StoreError::Internal(m) => m.clone(),
            _ => String::new(),
        };
        let failure = pb::StoreFailure { kind: kind as i32, last_seq, first_seq, detail };
        tonic::Status::with_details(code, e.to_string(), failure.encode_to_vec().into())
    }
}

/// A call's status as the client saw it, mapped once. A status this side
/// made from a failure of the call itself (it carries that error as its
/// source: the connection broke, the deadline passed) is `Unavailable`, as
/// the call may or may not have been applied. Otherwise the store's own
/// error from the details; a status without them (from a proxy, or the
/// server's framework) by its code, where every code that leaves the
/// outcome open (unavailable, deadline, cancelled, unknown, overloaded) is
/// `Unavailable` too.
impl From<tonic::Status> for StoreError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        if std::error::Error::source(&s).is_some() {
            return StoreError::Unavailable(s.message().to_string());
        }
        if let Some(e) = StoreError::from_details(s.details()) {
            return e;
        }
        let message = s.message().to_string();
        match s.code() {
            Code::NotFound => StoreError::NotFound,
            Code::Aborted => StoreError::Fenced,
            // A seq conflict without its numbers: nothing was written, and
            // the client retries as after an outage.
            Code::FailedPrecondition => StoreError::Unavailable(message),
            _ => match outcome(&s) {
                Outcome::Refused => StoreError::Invalid(message),
                Outcome::Unknown => StoreError::Unavailable(message),
                Outcome::Failed => StoreError::Internal(message),
            },
        }
    }
}

impl StoreError {
    /// The error a status's details carry, if they hold a `StoreFailure` of
    /// a kind this side knows.
    fn from_details(details: &[u8]) -> Option<Self> {
        use pb::StoreErrorKind as K;
        if details.is_empty() {
            return None;
        }
        let f = pb::StoreFailure::decode(details).ok()?;
        Some(match K::try_from(f.kind).ok()? {
            K::Unspecified => return None,
            K::NotFound => StoreError::NotFound,
            K::SeqConflict => StoreError::SeqConflict { last_seq: f.last_seq, first_seq: f.first_seq },
            K::Invalid => StoreError::Invalid(f.detail),
            K::Fenced => StoreError::Fenced,
            K::Unavailable => StoreError::Unavailable(f.detail),
            K::Internal => StoreError::Internal(f.detail),
        })
    }

    /// The error of a write that did not succeed, as its caller must treat
    /// it: unless the store refused the write outright (not found, invalid,
    /// fenced, a seq conflict, all known to have written nothing), it may or
    /// may not have been applied, which is `Unavailable` (retry with the
    /// same ids), never `Internal`.
    pub fn of_write(self) -> Self {
        match self {
            StoreError::Internal(m) => StoreError::Unavailable(format!("outcome unknown: {m}")),
            other => other,
        }
    }

    /// The client's error for this one (CONTRACT §3), the same whichever
    /// service met it and however the store was reached. A seq conflict or a
    /// fenced writer wrote nothing and an unavailable store may or may not
    /// have: all three are UNAVAILABLE, and the client retries with the same
    /// ids. The store's own words reach the client only for an invalid
    /// request.
    pub fn client_error(&self) -> pb::Error {
        let (code, message) = match self {
            StoreError::NotFound => (pb::ErrorCode::NotFound, "no such chat".to_string()),
            StoreError::Invalid(m) => (pb::ErrorCode::Validation, m.clone()),
            StoreError::SeqConflict { .. } | StoreError::Fenced | StoreError::Unavailable(_) => {
                (pb::ErrorCode::Unavailable, "storage unavailable, retry with the same ids".to_string())
            }
            StoreError::Internal(_) => (pb::ErrorCode::Internal, "storage error".to_string()),
        };
        pb::Error { code: code as i32, message, retry_after_ms: None }
    }
}

/// A chat to create.
#[derive(Debug, Clone)]
pub struct NewChat {
    /// "dm" or "group".
    pub kind: String,
    pub title: Option<String>,
    pub created_by: UserId,
    /// Every member in the order given, creator included; the creator is admin.
    pub member_ids: Vec<UserId>,
}

/// Messages of one chat to append, with consecutive seqs.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    pub chat_id: ChatId,
    pub messages: Vec<Message>,
    /// The writer's epoch from [`Store::claim`]; `None` skips the fence
    /// (tools and tests only: routers always pass theirs).
    pub epoch: Option<u64>,
    /// Idempotency (CONTRACT §5): a message whose sender already stored its
    /// client id at or after this time repeats that send, and the batch is
    /// refused with [`Appended::Repeats`]. `None` skips the check.
    pub repeats_since_ms: Option<i64>,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Durably written; the chat's new last seq.
    Written(u64),
    /// Nothing was written: some messages repeat earlier sends (by sender and
    /// client id). These are the stored messages they repeat.
    Repeats(Vec<Message>),
}

/// One page of history.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a chat; for a dm whose pair already has one, returns it and `false`.
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool), StoreError>;
    /// The chat and its last seq.
    async fn get_chat(&self, chat_id: &ChatId) -> Result<(Chat, u64), StoreError>;
    /// The user's chats, most recently active first, at most `limit`.
    async fn list_user_chats(&self, user_id: &UserId, limit: usize) -> Result<Vec<ChatSummary>, StoreError>;
    /// [`Store::list_user_chats`] for several users at once, in their order.
    async fn list_users_chats(&self, user_ids: &[UserId], limit: usize) -> Result<Vec<Vec<ChatSummary>>, StoreError> {
        let mut lists = Vec::with_capacity(user_ids.len());
        for user in user_ids {
            lists.push(self.list_user_chats(user, limit).await?);
        }
        Ok(lists)
    }
    /// Makes `owner` the chat's only writer; returns the new epoch.
    async fn claim(&self, chat_id: &ChatId, owner: &str) -> Result<u64, StoreError>;
    /// Durably appends the whole batch, or nothing if it repeats earlier
    /// sends; the idempotency check and the write are one transaction.
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError>;
    /// The message a sender sent with `client_id`, if not older than
    /// `not_before_ms` (for sends that are not appended: rate limited ones).
    async fn find_by_client_id(
        &self,
        chat_id: &ChatId,
        sender_id: &UserId,
        client_id: &str,
        not_before_ms: i64,
    ) -> Result<Option<Message>, StoreError>;
    /// One message by id, or by seq when `message_id` is empty.
    async fn get_message(&self, chat_id: &ChatId, message_id: &str, seq: u64) -> Result<Option<Message>, StoreError>;
    /// Replaces a stored message (same chat and seq); `NotFound` if absent.
    async fn put_message(&self, message: Message, epoch: Option<u64>) -> Result<(), StoreError>;
    /// Writes a chat's new state; `removed` members forget it; `delete`
    /// removes the chat (its id then answers `NotFound`).
    async fn save_chat(
        &self,
        chat: Chat,
        removed: Vec<UserId>,
        delete: bool,
        epoch: Option<u64>,
    ) -> Result<(), StoreError>;
    /// A member's read cursor (0 when never set).
    async fn get_cursor(&self, chat_id: &ChatId, user_id: &UserId) -> Result<u64, StoreError>;
    /// Moves a read cursor forward (never back); returns it after the call.
    async fn set_cursor(&self, chat_id: &ChatId, user_id: &UserId, seq: u64) -> Result<u64, StoreError>;
    /// Keeps each user's profile from their most recent token (CONTRACT
    /// §10.3), replacing the one before.
    async fn put_profiles(&self, profiles: Vec<(UserId, Profile)>) -> Result<(), StoreError>;
    /// The stored profiles of `users`; users without one are left out.
    async fn profiles(&self, users: &[UserId]) -> Result<Vec<(UserId, Profile)>, StoreError>;
    /// A page of history (CONTRACT §8.2).
    async fn history(
        &self,
        chat_id: &ChatId,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<History, StoreError>;
    /// Ends the store cleanly once nothing else will call it: what it holds
    /// only in a log or in memory is written where it lives for good, so the
    /// next start has nothing to redo. Calls after it fail. A store with
    /// nothing of the kind (a client of a remote one) has nothing to do.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    /// Every error the store answers, with its numbers and words.
    fn every_kind() -> Vec<StoreError> {
        vec![
            StoreError::NotFound,
            StoreError::SeqConflict { last_seq: 3, first_seq: 5 },
            StoreError::Invalid("a dm has exactly two members".into()),
            StoreError::Fenced,
            StoreError::Unavailable("the store did not answer within 5000 ms".into()),
            StoreError::Internal("corrupt record".into()),
        ]
    }

    #[test]
    fn each_kind_crosses_grpc_as_itself() {
        for e in every_kind() {
            let status = Status::from(e.clone());
            assert!(!status.details().is_empty(), "{e:?}");
            assert_eq!(StoreError::from(status), e);
        }
    }

    #[test]
    fn the_status_code_says_the_kind_coarsely() {
        let codes: Vec<Code> = every_kind().into_iter().map(|e| Status::from(e).code()).collect();
        assert_eq!(
            codes,
            [
                Code::NotFound,
                Code::FailedPrecondition,
                Code::InvalidArgument,
                Code::Aborted,
                Code::Unavailable,
                Code::Internal
            ]
        );
    }

    /// A status without details (a proxy's, or the server framework's) is
    /// read by its code.
    #[test]
    fn without_details_the_code_decides() {
        assert_eq!(StoreError::from(Status::not_found("x")), StoreError::NotFound);
        assert_eq!(StoreError::from(Status::aborted("x")), StoreError::Fenced);
        assert_eq!(StoreError::from(Status::invalid_argument("bad")), StoreError::Invalid("bad".into()));
        assert_eq!(StoreError::from(Status::out_of_range("far")), StoreError::Invalid("far".into()));
        assert_eq!(StoreError::from(Status::internal("x")), StoreError::Internal("x".into()));
        assert_eq!(StoreError::from(Status::data_loss("x")), StoreError::Internal("x".into()));
        assert_eq!(StoreError::from(Status::unimplemented("x")), StoreError::Internal("x".into()));
        // Without its numbers a seq conflict is retried like an outage.
        assert_eq!(StoreError::from(Status::failed_precondition("x")), StoreError::Unavailable("x".into()));
    }

    /// Details this side cannot read (a kind it does not know, or bytes
    /// that are no `StoreFailure`) count as absent.
    #[test]
    fn unreadable_details_fall_back_to_the_code() {
        let unknown_kind = pb::StoreFailure { kind: 99, ..Default::default() }.encode_to_vec();
        let status = Status::with_details(Code::NotFound, "x", unknown_kind.into());
        assert_eq!(StoreError::from(status), StoreError::NotFound);
        let unspecified = pb::StoreFailure::default().encode_to_vec();
        let status = Status::with_details(Code::Aborted, "x", unspecified.into());
        assert_eq!(StoreError::from(status), StoreError::Fenced);
        let garbage = Status::with_details(Code::InvalidArgument, "bad", vec![0xff, 0xff, 0xff].into());
        assert_eq!(StoreError::from(garbage), StoreError::Invalid("bad".into()));
    }

    #[test]
    fn a_call_whose_outcome_is_unknown_is_unavailable() {
        // Made on this side from a broken connection: it carries the error.
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset by peer")));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(matches!(StoreError::from(broken), StoreError::Unavailable(_)));
        for s in [
            Status::unavailable("down"),
            Status::deadline_exceeded("late"),
            Status::cancelled("gone"),
            Status::unknown("?"),
            Status::resource_exhausted("busy"),
        ] {
            let code = s.code();
            assert!(matches!(StoreError::from(s), StoreError::Unavailable(_)), "{code:?}");
        }
    }

    /// The router and the edge both answer with this: a seq conflict is
    /// UNAVAILABLE whether the store was embedded or remote.
    #[test]
    fn one_client_error_per_kind() {
        let code = |e: &StoreError| pb::ErrorCode::try_from(e.client_error().code).unwrap();
        let codes: Vec<pb::ErrorCode> = every_kind().iter().map(code).collect();
        assert_eq!(
            codes,
            [
                pb::ErrorCode::NotFound,
                pb::ErrorCode::Unavailable,
                pb::ErrorCode::Validation,
                pb::ErrorCode::Unavailable,
                pb::ErrorCode::Unavailable,
                pb::ErrorCode::Internal
            ]
        );
        for e in every_kind() {
            assert_eq!(StoreError::from(Status::from(e.clone())).client_error(), e.client_error());
        }
        // Only an invalid request's words reach the client.
        assert_eq!(StoreError::Internal("corrupt record".into()).client_error().message, "storage error");
    }

    #[test]
    fn a_failed_write_is_never_internal() {
        assert!(matches!(StoreError::Internal("disk".into()).of_write(), StoreError::Unavailable(_)));
        assert_eq!(StoreError::NotFound.of_write(), StoreError::NotFound);
        assert_eq!(StoreError::Invalid("x".into()).of_write(), StoreError::Invalid("x".into()));
        assert_eq!(StoreError::Fenced.of_write(), StoreError::Fenced);
    }
}
