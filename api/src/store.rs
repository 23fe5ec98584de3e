//! The storage trait: a handful of methods, so a ScyllaDB backend is a swap.
//! Its errors map to and from gRPC statuses here, once, for both sides of
//! store-svc's API. Chats and users are named by the `confab-common` id
//! types; they are strings only in the gRPC messages ([`RemoteStore`] and
//! store-svc's service convert them). Stored records are the proto types.

mod remote;

pub use remote::RemoteStore;

use confab_common::{ChatId, UserId};
use confab_proto::v1::{Chat, ChatSummary, Message};

#[derive(Debug, thiserror::Error)]
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

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => tonic::Status::not_found("not found"),
            StoreError::SeqConflict { .. } => tonic::Status::failed_precondition(e.to_string()),
            StoreError::Invalid(m) => tonic::Status::invalid_argument(m),
            StoreError::Fenced => tonic::Status::aborted("fenced"),
            StoreError::Unavailable(m) => tonic::Status::unavailable(m),
            StoreError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// A call's status as the client saw it, mapped once: a status this side
/// made from a failure of the call itself (it carries that error as its
/// source: the connection broke, the deadline passed) or one that says the
/// service could not serve it (unavailable, deadline, cancelled, unknown,
/// overloaded) is `Unavailable`, since the call may or may not have been
/// applied; the store's own answers keep their kind.
impl From<tonic::Status> for StoreError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        if std::error::Error::source(&s).is_some() {
            return StoreError::Unavailable(s.message().to_string());
        }
        match s.code() {
            Code::NotFound => StoreError::NotFound,
            // The server answers ABORTED for a fenced write and nothing else.
            Code::Aborted => StoreError::Fenced,
            Code::InvalidArgument | Code::OutOfRange => StoreError::Invalid(s.message().to_string()),
            // A seq conflict: nothing was written; the writer reloads and the
            // client retries.
            Code::FailedPrecondition => StoreError::Unavailable(s.message().to_string()),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::ResourceExhausted => {
                StoreError::Unavailable(s.message().to_string())
            }
            Code::Ok
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => StoreError::Internal(s.message().to_string()),
        }
    }
}

impl StoreError {
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
    use tonic::Status;

    fn kind(e: &StoreError) -> &'static str {
        match e {
            StoreError::NotFound => "not found",
            StoreError::SeqConflict { .. } => "seq conflict",
            StoreError::Invalid(_) => "invalid",
            StoreError::Fenced => "fenced",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Internal(_) => "internal",
        }
    }

    #[test]
    fn a_call_that_may_have_been_served_is_unavailable() {
        // Made on this side from a broken connection: it carries the error.
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset by peer")));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert_eq!(kind(&broken.into()), "unavailable");
        for s in [
            Status::unavailable("down"),
            Status::deadline_exceeded("late"),
            Status::cancelled("gone"),
            Status::unknown("?"),
            Status::resource_exhausted("busy"),
            Status::failed_precondition("seq conflict"),
        ] {
            let code = s.code();
            assert_eq!(kind(&s.into()), "unavailable", "{code:?}");
        }
    }

    #[test]
    fn the_stores_own_answers_keep_their_kind() {
        assert_eq!(kind(&Status::not_found("x").into()), "not found");
        assert_eq!(kind(&Status::invalid_argument("x").into()), "invalid");
        assert_eq!(kind(&Status::aborted("x").into()), "fenced");
        assert_eq!(kind(&Status::internal("x").into()), "internal");
        assert_eq!(kind(&Status::data_loss("x").into()), "internal");
        // Both ways round.
        assert_eq!(kind(&tonic::Status::from(StoreError::Fenced).into()), "fenced");
        let conflict = StoreError::SeqConflict { last_seq: 3, first_seq: 5 };
        assert_eq!(kind(&tonic::Status::from(conflict).into()), "unavailable");
    }

    #[test]
    fn a_failed_write_is_never_internal() {
        assert_eq!(kind(&StoreError::Internal("disk".into()).of_write()), "unavailable");
        assert_eq!(kind(&StoreError::NotFound.of_write()), "not found");
        assert_eq!(kind(&StoreError::Invalid("x".into()).of_write()), "invalid");
        assert_eq!(kind(&StoreError::Fenced.of_write()), "fenced");
    }
}
