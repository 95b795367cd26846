//! The gRPC services of `assent.v1`: one file per service, validation in `validate`, wire
//! conversions in `convert`.
//!
//! Architecture Invariant: handlers parse every request into domain types before doing
//! anything else, and report every failure through `crate::error::ApiError`, the one mapping to
//! gRPC status codes.

pub mod audit;
pub mod convert;
pub mod decisions;
pub mod subjects;
pub mod validate;

use tonic::metadata::MetadataMap;

use crate::audit::decision_log::DecisionLog;
use crate::cache::SubjectCache;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub cache: SubjectCache,
    pub decision_log: DecisionLog,
}

/// Who is calling and under which trace, read once per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    pub caller: String,
    pub trace_id: String,
}

impl CallContext {
    pub fn of<T>(request: &tonic::Request<T>) -> CallContext {
        CallContext {
            caller: caller_of(request),
            trace_id: trace_id_of(request.metadata()),
        }
    }
}

/// The identity of the calling service, set on the request by the authentication layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

/// The caller recorded in audit events when no authentication layer names one.
pub const ANONYMOUS_CALLER: &str = "anonymous";

pub fn caller_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.0.clone())
        .unwrap_or_else(|| ANONYMOUS_CALLER.to_owned())
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`), or empty
/// when there is none or it is malformed.
pub fn trace_id_of(metadata: &MetadataMap) -> String {
    let Some(header) = metadata
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
    else {
        return String::new();
    };
    let mut parts = header.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return String::new();
    };
    let is_hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && is_hex(flags, 2);
    if valid {
        trace_id.to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(traceparent: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("traceparent", traceparent.parse().unwrap());
        metadata
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(&metadata(valid)),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "garbage",
        ] {
            assert_eq!(trace_id_of(&metadata(invalid)), "", "{invalid}");
        }
        assert_eq!(trace_id_of(&MetadataMap::new()), "");
    }
}
