//! What a gRPC status means to the side that made the call, read once for
//! the typed errors of every client in this crate, and [`CallError`], the
//! error of the presence and router clients.

use tonic::Code;

/// The outcome of a failed call, as far as its caller can know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The service refused the arguments: nothing was done.
    Refused,
    /// The call itself failed (this side made the status from a broken
    /// connection or a passed deadline, and carries that error as its
    /// source), or the service could not serve it now: it may or may not
    /// have been applied.
    Unknown,
    /// The service failed in a way no retry mends.
    Failed,
}

pub(crate) fn outcome(s: &tonic::Status) -> Outcome {
    if std::error::Error::source(s).is_some() {
        return Outcome::Unknown;
    }
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => Outcome::Refused,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::Unknown
        | Code::ResourceExhausted => Outcome::Unknown,
        Code::Ok
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => Outcome::Failed,
    }
}

/// Why a call to presence-svc or a router failed (their clients' error;
/// the store has its own, with the store's own kinds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The call was refused as malformed: nothing was done.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The service could not be reached or did not answer, or the stream
    /// broke: the call may or may not have been applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The service failed in a way no retry mends.
    #[error("internal: {0}")]
    Internal(String),
}

/// A status mapped once, by [`outcome`].
impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_string();
        match outcome(&s) {
            Outcome::Refused => CallError::Invalid(message),
            Outcome::Unknown => CallError::Unavailable(message),
            Outcome::Failed => CallError::Internal(message),
        }
    }
}
