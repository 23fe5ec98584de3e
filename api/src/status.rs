//! What a gRPC status means to the side that made the call, read once for
//! the typed errors of every client in this crate.

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
