//! The one mapping from the service's errors to gRPC status codes.
//!
//! Messages are lower-case, have no trailing period, and start with the field they are about,
//! so a caller can tell which part of its request to fix. The same facts travel as the standard
//! `google.rpc` error details (the richer error model), for clients that act on them rather
//! than read them: an `ErrorInfo` on every error (its `reason` says which of this enum it is),
//! a `BadRequest` field violation on INVALID_ARGUMENT, a `PreconditionFailure` on
//! FAILED_PRECONDITION, and a `RetryInfo` on an UNAVAILABLE that is safe to retry after a pause.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::status::error_info;

use crate::decision_log::DecisionLogError;
use crate::domain::SubjectId;
use crate::policies::InstallError;
use crate::store::StoreError;
use crate::store::replay::ReplayError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is empty, malformed or out of range.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The subject was never seen.
    #[error("subject_id: subject {0} not found")]
    SubjectNotFound(SubjectId),
    /// A write to a deleted subject.
    #[error("subject_id: subject {0} is deleted; a deleted account stays deleted")]
    SubjectDeleted(SubjectId),
    /// A field names a capability this server does not offer.
    #[error("{field}: {message}")]
    Unimplemented { field: String, message: String },
    /// The request is valid but cannot be served in the state things are in (a revision no
    /// longer in the change log, say); the message tells the caller what to do instead.
    #[error("{field}: {message}")]
    FailedPrecondition { field: String, message: String },
    /// A named thing (other than a subject) does not exist.
    #[error("{field}: {message}")]
    NotFound { field: String, message: String },
    /// The request would overwrite something that exists.
    #[error("{field}: {message}")]
    AlreadyExists { field: String, message: String },
    /// The caller holds the method's scope but not the one an effect of the call needs.
    #[error("authorization: {0}")]
    PermissionDenied(String),
    /// The store of record cannot be reached.
    #[error("the store of record is unavailable; retry later")]
    StoreUnavailable(#[source] StoreError),
    /// A Check demanded a revision this replica has reached, but the policy versions applied up
    /// to it are still being loaded here.
    #[error(
        "consistency: the policy versions applied up to the demanded revision are still being \
         loaded on this replica; retry"
    )]
    PoliciesLoading,
    /// A write sent to the store whose commit was never confirmed: it may have been applied.
    #[error(
        "the store of record did not confirm the write: it may or may not have been applied; \
         read it back before writing again"
    )]
    WriteUnconfirmed(#[source] StoreError),
    /// A `require_audit` check whose record could not be made durable: no answer without it.
    #[error("require_audit: the decision could not be recorded durably ({0}); retry later")]
    AuditUnavailable(DecisionLogError),
    /// The decision log's database of its own (`decision_log_database_url`) has not been
    /// reached since the start.
    #[error("the decision log's database is not reachable yet; retry later")]
    DecisionLogUnavailable,
    /// The store's audit log is not an extension of the last signed checkpoint: history was
    /// rewritten or lost, and nothing more is signed until someone looks.
    #[error("checkpoint: {0}")]
    AuditLogInconsistent(String),
    /// Anything else: logged in full, reported without detail.
    #[error("internal error")]
    Internal(#[source] InternalError),
}

/// What failed behind an [`ApiError::Internal`].
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error(transparent)]
    Store(StoreError),
    /// An audit event's detail is not what its kind records.
    #[error(transparent)]
    Replay(ReplayError),
    /// The stored policy versions cannot be installed.
    #[error(transparent)]
    Policies(InstallError),
    /// A checkpoint could not be signed or published (the key, the directory).
    #[error(transparent)]
    Checkpoint(crate::checkpoints::CheckpointError),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> ApiError {
        ApiError::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The same error about a field nested under `prefix` (for example `checks[3]`).
    pub fn within(self, prefix: &str) -> ApiError {
        match self {
            ApiError::InvalidArgument { field, message } => ApiError::InvalidArgument {
                field: format!("{prefix}.{field}"),
                message,
            },
            ApiError::Unimplemented { field, message } => ApiError::Unimplemented {
                field: format!("{prefix}.{field}"),
                message,
            },
            other => other,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::SubjectNotFound(_) | ApiError::NotFound { .. } => Code::NotFound,
            ApiError::SubjectDeleted(_) | ApiError::FailedPrecondition { .. } => {
                Code::FailedPrecondition
            }
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Unimplemented { .. } => Code::Unimplemented,
            ApiError::StoreUnavailable(_)
            | ApiError::PoliciesLoading
            | ApiError::WriteUnconfirmed(_)
            | ApiError::AuditUnavailable(_)
            | ApiError::DecisionLogUnavailable => Code::Unavailable,
            ApiError::AuditLogInconsistent(_) => Code::DataLoss,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

/// The one mapping of store errors: the subject a refusal is about travels inside it.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound(subject_id) => ApiError::SubjectNotFound(subject_id),
            StoreError::SubjectDeleted(subject_id) => ApiError::SubjectDeleted(subject_id),
            StoreError::Unavailable(_)
            | StoreError::GroupUnavailable(_)
            | StoreError::TimedOut { .. } => ApiError::StoreUnavailable(error),
            StoreError::CommitUnknown { .. } => ApiError::WriteUnconfirmed(error),
            StoreError::RequestNotFound(request_id) => ApiError::NotFound {
                field: "request_id".into(),
                message: format!("rights request {request_id} not found"),
            },
            StoreError::RightsStep(refusal) => ApiError::FailedPrecondition {
                field: refusal.field().into(),
                message: refusal.to_string(),
            },
            StoreError::NoJurisdiction => ApiError::FailedPrecondition {
                field: "jurisdiction".into(),
                message: "is required: the subject has no jurisdiction on record to compute \
                          the deadlines in"
                    .into(),
            },
            StoreError::EffectNotAllowed { effect } => ApiError::PermissionDenied(format!(
                "the caller lacks the scope {}, which a rights step that would {effect} its \
                 subject needs besides {}; nothing was written",
                crate::auth::Scope::SubjectsWrite.as_str(),
                crate::auth::Scope::RightsWrite.as_str(),
            )),
            StoreError::PolicyConflict(version) => ApiError::AlreadyExists {
                field: "source".into(),
                message: format!(
                    "policy version {version} exists with another text; give the new text a \
                     new version"
                ),
            },
            StoreError::NotDeleted(_) => ApiError::FailedPrecondition {
                field: "subject_id".into(),
                message: "the subject is not deleted: payloads are erased only of a deleted \
                          subject"
                    .into(),
            },
            StoreError::TreeNotBuilt
            | StoreError::Abandoned
            | StoreError::Query(_)
            | StoreError::Migration(_)
            | StoreError::MigrationNotPermitted(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::SchemaTooOld { .. }
            | StoreError::GrantRefused { .. }
            | StoreError::DataDirectory { .. }
            | StoreError::Corrupt(_)
            | StoreError::Replay(_) => ApiError::Internal(InternalError::Store(error)),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(error: ReplayError) -> ApiError {
        ApiError::Internal(InternalError::Replay(error))
    }
}

impl From<InstallError> for ApiError {
    fn from(error: InstallError) -> ApiError {
        ApiError::Internal(InternalError::Policies(error))
    }
}

/// How long a caller should wait before retrying a call refused because the store, or the
/// decision log's database, could not be reached: about the time a connection is retried in.
pub const RETRY_STORE: Duration = Duration::from_secs(1);

/// How long before retrying a check that found the policy versions still loading.
pub const RETRY_POLICIES_LOADING: Duration = Duration::from_millis(100);

impl ApiError {
    /// The `ErrorInfo.reason`: which error this is, in upper snake case, stable for clients.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument { .. } => "INVALID_FIELD",
            ApiError::SubjectNotFound(_) => "SUBJECT_NOT_FOUND",
            ApiError::SubjectDeleted(_) => "SUBJECT_DELETED",
            ApiError::Unimplemented { .. } => "UNIMPLEMENTED_FIELD",
            ApiError::FailedPrecondition { .. } => "FAILED_PRECONDITION",
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::AlreadyExists { .. } => "ALREADY_EXISTS",
            ApiError::PermissionDenied(_) => "SCOPE_MISSING",
            ApiError::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            ApiError::PoliciesLoading => "POLICIES_LOADING",
            ApiError::WriteUnconfirmed(_) => "WRITE_UNCONFIRMED",
            ApiError::AuditUnavailable(_) => "AUDIT_UNAVAILABLE",
            ApiError::DecisionLogUnavailable => "DECISION_LOG_UNAVAILABLE",
            ApiError::AuditLogInconsistent(_) => "AUDIT_LOG_INCONSISTENT",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    /// The `google.rpc` details of the error's status.
    ///
    /// A write whose commit went unconfirmed carries no `RetryInfo`: it may have been applied,
    /// and is to be read back rather than sent again.
    pub fn details(&self) -> ErrorDetails {
        let field = match self {
            ApiError::InvalidArgument { field, .. }
            | ApiError::Unimplemented { field, .. }
            | ApiError::FailedPrecondition { field, .. }
            | ApiError::NotFound { field, .. }
            | ApiError::AlreadyExists { field, .. } => Some(field.as_str()),
            ApiError::SubjectNotFound(_) | ApiError::SubjectDeleted(_) => Some("subject_id"),
            _ => None,
        };
        let metadata = field
            .map(|field| HashMap::from([("field".to_owned(), field.to_owned())]))
            .unwrap_or_default();
        let mut details = error_info(self.reason(), metadata);
        match self {
            ApiError::InvalidArgument { field, message } => {
                details.add_bad_request_violation(field.clone(), message.clone());
            }
            ApiError::FailedPrecondition { field, message } => {
                details.add_precondition_failure_violation(
                    self.reason(),
                    field.clone(),
                    message.clone(),
                );
            }
            ApiError::SubjectDeleted(_) => {
                details.add_precondition_failure_violation(
                    self.reason(),
                    "subject_id",
                    "a deleted account stays deleted",
                );
            }
            ApiError::StoreUnavailable(_)
            | ApiError::AuditUnavailable(_)
            | ApiError::DecisionLogUnavailable => {
                details.set_retry_info(Some(RETRY_STORE));
            }
            ApiError::PoliciesLoading => {
                details.set_retry_info(Some(RETRY_POLICIES_LOADING));
            }
            _ => {}
        }
        details
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let code = error.code();
        if matches!(code, Code::Internal | Code::Unavailable) {
            let trace_id = crate::telemetry::layer::call_trace_id();
            tracing::error!(error = %crate::telemetry::error_chain(&error), %trace_id, "request failed");
        }
        Status::with_error_details(code, error.to_string(), error.details())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store past its deadline is UNAVAILABLE; a write whose commit went unconfirmed is too,
    /// and says it may have been applied rather than that it failed.
    #[test]
    fn timeouts_are_unavailable_and_an_unconfirmed_commit_says_so() {
        let timed_out = || StoreError::TimedOut {
            operation: "write",
            after: std::time::Duration::from_millis(800),
        };
        let status = Status::from(ApiError::from(timed_out()));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "the store of record is unavailable; retry later"
        );
        let unconfirmed = StoreError::CommitUnknown {
            operation: "write",
            cause: Box::new(timed_out()),
        };
        assert!(unconfirmed.is_unavailable());
        let status = Status::from(ApiError::from(unconfirmed));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .contains("may or may not have been applied; read it back"),
            "{}",
            status.message()
        );
    }
}
