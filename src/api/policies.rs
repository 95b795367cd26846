//! `assent.v1.Policies`: policy versions applied, listed and compared without a restart.
//!
//! A version is validated by compiling it before anything is stored, stored with its audit
//! event in one transaction, installed on this replica at once and announced to the others
//! like any change (a change about no subject). A version may only take effect from now on:
//! one effective in the past would rewrite what earlier decisions were.

use tonic::{Request, Response, Status};

use super::{AppState, convert, trace_id_of, validate};
use crate::error::ApiError;
use crate::policy::{CompiledPolicy, DataCategory, Purpose, Question};
use crate::proto;
use crate::rpc::caller_of;
use crate::store::{Changed, NewPolicy, WriteContext, now_micros};

/// The largest policy file accepted.
const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// Subjects read at a time by a diff.
const DIFF_PAGE: u32 = 1_000;

const DEFAULT_EXAMPLES: u32 = 5;
const MAX_EXAMPLES: u32 = 100;

#[derive(Clone, Debug)]
pub struct PoliciesService {
    state: AppState,
}

impl PoliciesService {
    pub fn new(state: AppState) -> PoliciesService {
        PoliciesService { state }
    }

    /// Reads the stored versions again and installs them on this replica.
    pub async fn reload(state: &AppState) -> Result<(), ApiError> {
        let stored = state.store.policy_versions().await?;
        state.policies.install(&stored).map_err(ApiError::from)
    }
}

/// Compiles a policy file from a request field.
fn compile(field: &str, source: &str) -> Result<CompiledPolicy, ApiError> {
    if source.trim().is_empty() {
        return Err(ApiError::invalid(
            field,
            "is required: a policy file (TOML)",
        ));
    }
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ApiError::invalid(
            field,
            format_args!(
                "is {} bytes; a policy file may have at most {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    CompiledPolicy::compile(source).map_err(|error| ApiError::invalid(field, error))
}

fn version_to_proto(
    policy: &CompiledPolicy,
    applied_at_micros: Option<i64>,
) -> proto::PolicyVersion {
    proto::PolicyVersion {
        version: policy.version().to_owned(),
        effective_from: Some(convert::timestamp(policy.effective_from_micros())),
        description: policy.description().to_owned(),
        source: String::new(),
        applied_at: applied_at_micros.map(convert::timestamp),
        builtin: std::ptr::eq(policy, CompiledPolicy::builtin()),
    }
}

#[tonic::async_trait]
impl proto::policies_server::Policies for PoliciesService {
    async fn apply_policy(
        &self,
        request: Request<proto::ApplyPolicyRequest>,
    ) -> Result<Response<proto::ApplyPolicyResponse>, Status> {
        let body = request.get_ref();
        let policy = compile("source", &body.source)?;
        let actor = validate::actor(body.actor.as_ref())?;
        let policies = &self.state.policies;
        let unchanged = |revision: crate::revision::Revision| {
            Response::new(proto::ApplyPolicyResponse {
                version: policy.version().to_owned(),
                effective_from: Some(convert::timestamp(policy.effective_from_micros())),
                revision: revision.to_token(),
                changed: false,
            })
        };
        if let Some(known) = policies.get(policy.version()) {
            if known.source() != policy.source() {
                return Err(ApiError::AlreadyExists {
                    field: "source".into(),
                    message: format!(
                        "policy version {} exists with another text; give the new text a new \
                         version",
                        policy.version()
                    ),
                }
                .into());
            }
            let head = self
                .state
                .store
                .head_revision()
                .await
                .map_err(ApiError::from)?;
            return Ok(unchanged(head));
        }
        let now = now_micros();
        if policy.effective_from_micros() < now {
            return Err(ApiError::FailedPrecondition {
                field: "source".into(),
                message: format!(
                    "effective_from of version {} is in the past; a new version can only take \
                     effect from now on (decisions already made stay made)",
                    policy.version()
                ),
            }
            .into());
        }
        if let Some(twin) = policies
            .all()
            .iter()
            .find(|known| known.effective_from_micros() == policy.effective_from_micros())
        {
            return Err(ApiError::FailedPrecondition {
                field: "source".into(),
                message: format!(
                    "version {} takes effect at the same instant as version {}; choose another \
                     effective_from",
                    policy.version(),
                    twin.version()
                ),
            }
            .into());
        }
        let context = WriteContext {
            caller: caller_of(&request),
            actor,
            trace_id: trace_id_of(request.metadata()),
            policy_version: policies.in_force(now).version().to_owned(),
        };
        let stored = NewPolicy {
            version: policy.version().to_owned(),
            effective_from_micros: policy.effective_from_micros(),
            description: policy.description().to_owned(),
            source: policy.source().to_owned(),
        };
        let outcome = self
            .state
            .store
            .apply_policy(&stored, &context)
            .await
            .map_err(ApiError::from)?;
        // Stored now or by another replica meanwhile: installed here either way.
        PoliciesService::reload(&self.state).await?;
        if !outcome.changed {
            return Ok(unchanged(outcome.revision));
        }
        self.state
            .cache
            .committed(Changed::PolicyVersion, outcome.revision);
        tracing::info!(
            version = policy.version(),
            effective_from_micros = policy.effective_from_micros(),
            revision = %outcome.revision,
            "policy version applied"
        );
        Ok(Response::new(proto::ApplyPolicyResponse {
            version: policy.version().to_owned(),
            effective_from: Some(convert::timestamp(policy.effective_from_micros())),
            revision: outcome.revision.to_token(),
            changed: true,
        }))
    }

    async fn list_policies(
        &self,
        _request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        let stored = self
            .state
            .store
            .policy_versions()
            .await
            .map_err(ApiError::from)?;
        let versions = self
            .state
            .policies
            .all()
            .iter()
            .map(|policy| {
                let applied_at = stored
                    .iter()
                    .find(|stored| stored.policy.version == policy.version())
                    .map(|stored| stored.applied_at_micros);
                version_to_proto(policy, applied_at)
            })
            .collect();
        Ok(Response::new(proto::ListPoliciesResponse {
            versions,
            in_force: self
                .state
                .policies
                .in_force(now_micros())
                .version()
                .to_owned(),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<proto::GetPolicyRequest>,
    ) -> Result<Response<proto::PolicyVersion>, Status> {
        let version = &request.get_ref().version;
        if version.is_empty() {
            return Err(ApiError::invalid("version", "is required").into());
        }
        let policy = self
            .state
            .policies
            .get(version)
            .ok_or_else(|| ApiError::NotFound {
                field: "version".into(),
                message: format!("policy version {version} is not known"),
            })?;
        let applied_at = self
            .state
            .store
            .policy_versions()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .find(|stored| stored.policy.version == policy.version())
            .map(|stored| stored.applied_at_micros);
        Ok(Response::new(proto::PolicyVersion {
            source: policy.source().to_owned(),
            ..version_to_proto(policy, applied_at)
        }))
    }

    async fn diff_policy(
        &self,
        request: Request<proto::DiffPolicyRequest>,
    ) -> Result<Response<proto::DiffPolicyResponse>, Status> {
        let body = request.get_ref();
        let now = now_micros();
        let compiled_old;
        let old = if body.old_source.is_empty() {
            self.state.policies.in_force(now)
        } else {
            compiled_old = compile("old_source", &body.old_source)?;
            &compiled_old
        };
        let new = compile("new_source", &body.new_source)?;
        let max_examples = match body.max_examples {
            0 => DEFAULT_EXAMPLES,
            count if count <= MAX_EXAMPLES => count,
            count => {
                return Err(ApiError::invalid(
                    "max_examples",
                    format_args!("must be 0-{MAX_EXAMPLES}, got {count}"),
                )
                .into());
            }
        };
        let mut diffs: Vec<proto::PurposeDiff> = Purpose::ALL
            .iter()
            .map(|purpose| proto::PurposeDiff {
                purpose: proto::Purpose::from(*purpose).into(),
                ..proto::PurposeDiff::default()
            })
            .collect();
        let store = &self.state.store;
        let mut scanned = 0_u64;
        let mut after = String::new();
        loop {
            let ids = store
                .subject_ids(&after, DIFF_PAGE)
                .await
                .map_err(ApiError::from)?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            for id in &ids {
                let subject_id = validate::subject_id(id)?;
                let Some(view) = store.subject(&subject_id).await.map_err(ApiError::from)? else {
                    continue;
                };
                scanned += 1;
                // As the subject's choices count now (expired ones dropped).
                let state = &view.record.state.at(now);
                for (purpose, diff) in Purpose::ALL.iter().zip(&mut diffs) {
                    let question = Question::about(*purpose);
                    let was = old.evaluate(Some(state), &question);
                    let is = new.evaluate(Some(state), &question);
                    if was.rule == is.rule && was.decision == is.decision {
                        continue;
                    }
                    diff.changed += 1;
                    match (was.decision, is.decision) {
                        (crate::policy::Decision::Allow, crate::policy::Decision::Deny) => {
                            diff.allow_to_deny += 1;
                        }
                        (crate::policy::Decision::Deny, crate::policy::Decision::Allow) => {
                            diff.deny_to_allow += 1;
                        }
                        _ => {}
                    }
                    if diff.examples.len() < max_examples as usize {
                        diff.examples.push(proto::DiffExample {
                            subject_id: id.clone(),
                            old_decision: proto::Decision::from(was.decision).into(),
                            new_decision: proto::Decision::from(is.decision).into(),
                            old_rule: was.rule.to_string(),
                            new_rule: is.rule.to_string(),
                        });
                    }
                }
            }
            if ids.len() < DIFF_PAGE as usize {
                break;
            }
        }
        Ok(Response::new(proto::DiffPolicyResponse {
            old_version: old.version().to_owned(),
            new_version: new.version().to_owned(),
            subjects_scanned: scanned,
            purposes: diffs,
            retention: retention_diff(old, &new),
        }))
    }
}

/// The rows of the retention schedule that differ between two versions, in category order.
fn retention_diff(old: &CompiledPolicy, new: &CompiledPolicy) -> Vec<proto::RetentionRowDiff> {
    DataCategory::ALL
        .iter()
        .filter_map(|&category| {
            let (was, is) = (old.retention_rule(category), new.retention_rule(category));
            (was != is).then(|| proto::RetentionRowDiff {
                category: proto::DataCategory::from(category).into(),
                old_row: was.to_string(),
                new_row: is.to_string(),
            })
        })
        .collect()
}
