//! The `google.rpc` error details every refusal carries (the gRPC richer error model), for
//! clients that act on an error rather than read it: `ErrorInfo` says which error it is,
//! `RetryInfo` when to try again. `error::ApiError` adds a handler failure's field; this module
//! holds what the layers below it share.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `ErrorInfo` assent sends.
pub const ERROR_DOMAIN: &str = "assent";

/// The details naming an error: an `ErrorInfo` with `reason` (upper snake case, stable for
/// clients) in [`ERROR_DOMAIN`], and `metadata`.
pub fn error_info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

/// A call refused before any work because the server, or its caller, is at a limit:
/// RESOURCE_EXHAUSTED with an `ErrorInfo` (`reason`, and the setting as `limit`), a
/// `QuotaFailure` naming the setting (and the caller, for a caller's own limit), and a
/// `RetryInfo` with the pause before trying again. Nothing was done, so even a write is safe to
/// retry.
pub fn shed(
    reason: &str,
    limit: &str,
    caller: Option<&str>,
    message: String,
    retry_after: Duration,
) -> Status {
    let mut metadata = HashMap::from([("limit".to_owned(), limit.to_owned())]);
    if let Some(caller) = caller {
        metadata.insert("caller".to_owned(), caller.to_owned());
    }
    let mut details = error_info(reason, metadata);
    let subject = match caller {
        Some(caller) => format!("caller:{caller}"),
        None => "server".to_owned(),
    };
    details.add_quota_failure_violation(subject, limit);
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// An UNAVAILABLE that is safe to retry after `retry_after`, with its `ErrorInfo`.
pub fn unavailable(reason: &str, message: String, retry_after: Duration) -> Status {
    let mut details = error_info(reason, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(Code::Unavailable, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client decodes is what was sent: the reason, the setting, the caller, the pause.
    #[test]
    fn a_shed_call_says_which_limit_and_when_to_retry() {
        let status = shed(
            "WRITE_RATE_LIMIT",
            "writes_per_second",
            Some("billing"),
            "rate: over".into(),
            Duration::from_millis(250),
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "rate: over");
        let details = status.get_error_details();
        let info = details.error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "WRITE_RATE_LIMIT");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["limit"], "writes_per_second");
        assert_eq!(info.metadata["caller"], "billing");
        let retry = details.retry_info().expect("a RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
        let quota = details.quota_failure().expect("a QuotaFailure");
        assert_eq!(quota.violations[0].subject, "caller:billing");
        assert_eq!(quota.violations[0].description, "writes_per_second");
    }
}
