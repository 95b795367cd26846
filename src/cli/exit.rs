//! How a command ends: its exit status, and the error it reports on standard error, a line of
//! text or, with `--json`, one JSON object. The statuses are listed in `assent --help`
//! ([`EXIT_STATUS_HELP`]) and docs/operations.md ("Exit statuses").

use serde_json::{Map, Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// `assent`'s exit statuses, as scripts tell one failure from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    Success = 0,
    /// The command line cannot be acted on: clap's own errors (an unknown flag, a bad value, a
    /// missing argument), an unreadable input file, a malformed key or input document.
    Usage = 1,
    /// No server answered, or it did not let the caller in.
    Unreachable = 2,
    /// The check the command exists for failed: the audit chain, the state tables, an offline
    /// verification, a policy file, policy scenarios.
    CheckFailed = 3,
    /// The server answered the request as asked with a refusal (INVALID_ARGUMENT, NOT_FOUND, ...).
    Refused = 4,
    /// Anything else: the server's INTERNAL, UNKNOWN or DATA_LOSS, an answer the command cannot
    /// read, a file it cannot write.
    Error = 5,
}

/// The table of exit statuses and the JSON error's shape, at the end of `assent --help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  usage: a flag or argument that cannot be acted on (unknown flag, bad value, unreadable
     file, malformed key or input document)
  2  unreachable or unauthenticated: no server answered (connection refused or timed out,
     UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED, a health check not SERVING),
     or it did not let the caller in (UNAUTHENTICATED, PERMISSION_DENIED)
  3  a failed check: a broken audit chain, state tables that differ from the audit events, an
     offline verification that fails, an invalid policy file, failed policy scenarios
  4  refused: the server answered INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
     FAILED_PRECONDITION, OUT_OF_RANGE, ABORTED or UNIMPLEMENTED
  5  any other error (INTERNAL, UNKNOWN, DATA_LOSS, an answer that cannot be read, a file that
     cannot be written)

With --json, a failure is one JSON object on standard error:
  {\"error\": {\"code\": 4, \"kind\": \"refused\", \"message\": \"...\", \"grpc_status\": \"INVALID_ARGUMENT\",
   \"field_violations\": [{\"field\": \"...\", \"description\": \"...\"}]}}
(kind: usage, unreachable, unauthenticated, permission_denied, check_failed, refused, internal;
grpc_status and the google.rpc details only when the server answered with a status).";

/// A failure whose exit status the command knows; any other error exits with
/// [`ExitStatus::Error`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A command line that cannot be acted on.
    #[error("{0}")]
    Usage(String),
    /// No server accepted a connection, or one did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The check the command runs failed (its report is printed on standard output).
    #[error("{0}")]
    CheckFailed(String),
    /// The server answered a call with this status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Call(Box<tonic::Status>),
}

/// A failed command as it is reported: its exit status, the kind of failure, its message, and
/// the status the server answered, if it did.
#[derive(Debug)]
pub struct Failure {
    pub status: ExitStatus,
    pub kind: &'static str,
    /// Every cause, outermost first, joined by `: ` (as `{:#}` prints an `anyhow::Error`), a
    /// status by its message alone.
    pub message: String,
    /// What the text report says: the same, a status with its name first.
    text: String,
    call: Option<tonic::Status>,
}

impl Failure {
    /// What a command's error says, and how the command exits for it.
    pub fn of(error: &anyhow::Error) -> Failure {
        let known = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<CliError>());
        let (status, kind) = match known {
            Some(CliError::Usage(_)) => (ExitStatus::Usage, "usage"),
            Some(CliError::Unreachable(_)) => (ExitStatus::Unreachable, "unreachable"),
            Some(CliError::CheckFailed(_)) => (ExitStatus::CheckFailed, "check_failed"),
            Some(CliError::Call(call)) => of_code(call.code()),
            None => (ExitStatus::Error, "internal"),
        };
        let message: Vec<String> = error
            .chain()
            .map(|cause| match cause.downcast_ref::<CliError>() {
                Some(CliError::Call(call)) => call.message().to_owned(),
                _ => cause.to_string(),
            })
            .collect();
        let call = match known {
            Some(CliError::Call(call)) => Some(tonic::Status::clone(call)),
            _ => None,
        };
        Failure {
            status,
            kind,
            message: message.join(": "),
            text: format!("{error:#}"),
            call,
        }
    }

    /// A command line clap refused (`message` is clap's, without its `error: `).
    pub fn usage(message: String) -> Failure {
        Failure {
            status: ExitStatus::Usage,
            kind: "usage",
            text: message.clone(),
            message,
            call: None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.status as u8
    }

    /// `{"error": {...}}`, as `--json` prints a failure.
    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.exit_code()));
        error.insert("kind".into(), json!(self.kind));
        error.insert("message".into(), json!(self.message));
        if let Some(call) = &self.call {
            error.insert("grpc_status".into(), json!(code_name(call.code())));
            details_json(call, &mut error);
        }
        json!({ "error": error })
    }

    /// Prints the failure on standard error: `error: <message>` (a status's message after its
    /// name), or with `json` the object of [`Failure::to_json`].
    pub fn report(&self, json: bool) {
        if json {
            eprintln!("{}", self.to_json());
        } else {
            eprintln!("error: {}", self.text);
        }
    }
}

/// The exit status and kind of a status the server answered.
fn of_code(code: Code) -> (ExitStatus, &'static str) {
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            (ExitStatus::Unreachable, "unreachable")
        }
        Code::Unauthenticated => (ExitStatus::Unreachable, "unauthenticated"),
        Code::PermissionDenied => (ExitStatus::Unreachable, "permission_denied"),
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Aborted
        | Code::Unimplemented => (ExitStatus::Refused, "refused"),
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            (ExitStatus::Error, "internal")
        }
    }
}

/// A status code by its name in the gRPC specification: `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> String {
    let debug = format!("{code:?}");
    let mut name = String::new();
    for (index, character) in debug.chars().enumerate() {
        if character.is_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(character.to_ascii_uppercase());
    }
    name
}

/// The `google.rpc` details a status carries, as fields of the JSON error: `error_info`
/// (`ErrorInfo`), `field_violations` (`BadRequest`), `precondition_violations`
/// (`PreconditionFailure`) and `retry_delay_ms` (`RetryInfo`).
fn details_json(status: &tonic::Status, error: &mut Map<String, Value>) {
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        error.insert(
            "error_info".into(),
            json!({"reason": info.reason, "domain": info.domain, "metadata": info.metadata}),
        );
    }
    if let Some(bad_request) = details.bad_request() {
        let violations: Vec<Value> = bad_request
            .field_violations
            .iter()
            .map(
                |violation| json!({"field": violation.field, "description": violation.description}),
            )
            .collect();
        error.insert("field_violations".into(), Value::Array(violations));
    }
    if let Some(failure) = details.precondition_failure() {
        let violations: Vec<Value> = failure
            .violations
            .iter()
            .map(|violation| {
                json!({
                    "type": violation.r#type,
                    "subject": violation.subject,
                    "description": violation.description,
                })
            })
            .collect();
        error.insert("precondition_violations".into(), Value::Array(violations));
    }
    if let Some(delay) = details.retry_info().and_then(|retry| retry.retry_delay) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        error.insert("retry_delay_ms".into(), json!(millis));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn each_status_code_has_its_exit_status() {
        let exit = |code| of_code(code).0 as u8;
        assert_eq!(exit(Code::Unavailable), 2);
        assert_eq!(exit(Code::DeadlineExceeded), 2);
        assert_eq!(exit(Code::Unauthenticated), 2);
        assert_eq!(exit(Code::PermissionDenied), 2);
        assert_eq!(exit(Code::InvalidArgument), 4);
        assert_eq!(exit(Code::NotFound), 4);
        assert_eq!(exit(Code::FailedPrecondition), 4);
        assert_eq!(exit(Code::Internal), 5);
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn a_status_under_context_keeps_its_exit_status_and_details() {
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("subject_id", "must not be empty");
        let status =
            tonic::Status::with_error_details(Code::InvalidArgument, "subject_id: empty", details);
        let error = anyhow::Error::new(CliError::Call(Box::new(status))).context("cannot ask");
        let failure = Failure::of(&error);
        assert_eq!(failure.exit_code(), 4);
        assert_eq!(failure.message, "cannot ask: subject_id: empty");
        assert_eq!(
            failure.to_json(),
            json!({"error": {
                "code": 4,
                "kind": "refused",
                "message": "cannot ask: subject_id: empty",
                "grpc_status": "INVALID_ARGUMENT",
                "field_violations": [{"field": "subject_id", "description": "must not be empty"}],
            }})
        );
    }

    #[test]
    fn an_error_of_no_known_kind_exits_5() {
        let error = anyhow::anyhow!("disk full").context("cannot write out.json");
        let failure = Failure::of(&error);
        assert_eq!((failure.exit_code(), failure.kind), (5, "internal"));
        assert_eq!(failure.message, "cannot write out.json: disk full");
        let usage = Err::<(), _>(CliError::Usage("--key: not a key".into()))
            .context("verify")
            .unwrap_err();
        assert_eq!(Failure::of(&usage).exit_code(), 1);
    }
}
