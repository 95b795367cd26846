//! The gRPC services of `assent.v1`: one file per service, validation in `validate`, wire
//! conversions in `convert`.
//!
//! Architecture Invariant: handlers parse every request into domain types before doing
//! anything else, and report every failure through `crate::error::ApiError`, the one mapping to
//! gRPC status codes.

pub mod audit;
pub mod changes;
pub mod convert;
pub mod decisions;
pub mod ext_authz;
pub mod policies;
pub mod retention;
pub mod rights;
pub mod stream;
pub mod subjects;
pub mod validate;

use tonic::metadata::MetadataMap;

use std::sync::Arc;

use crate::cache::SubjectCache;
use crate::decision_log::DecisionLog;
use crate::domain::Actor;
use crate::limits::LimitSettings;
use crate::policies::Policies;
use crate::rpc::caller_of;
use crate::store::{Store, WriteContext, now_micros};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub cache: SubjectCache,
    pub decision_log: DecisionLog,
    /// The policy versions known, for choosing the one in force.
    pub policies: Arc<Policies>,
    /// The limits of streams (idle time, Watch replay) the handlers apply themselves.
    pub limits: LimitSettings,
    /// The signer of audit checkpoints, where a key is configured.
    pub checkpoints: Option<crate::checkpoints::Checkpoints>,
}

impl AppState {
    /// What a write by `actor` records of itself, under the policy version in force now.
    pub fn write_context(&self, call: CallContext, actor: Actor) -> WriteContext {
        WriteContext {
            caller: call.caller,
            actor,
            trace_id: call.trace_id,
            policy_version: self.policies.in_force(now_micros()).version().to_owned(),
        }
    }
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

/// The call's W3C trace id: the caller's `traceparent`, or the trace assent started for a
/// traced call without one; empty when there is neither (or the header is malformed).
pub fn trace_id_of(metadata: &MetadataMap) -> String {
    let trace_id = crate::telemetry::layer::call_trace_id();
    if !trace_id.is_empty() {
        return trace_id;
    }
    metadata
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(crate::telemetry::layer::trace_id_of_traceparent)
        .unwrap_or_default()
}
