//! `assent.v1.Policies`: policy versions applied, listed and compared without a restart.
//!
//! A version is validated by compiling it before anything is stored, stored with its audit
//! event in one transaction, installed on this replica at once and announced to the others
//! like any change (a change about no subject). A version may only take effect from now on:
//! one effective in the past would rewrite what earlier decisions were.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use tonic::{Request, Response, Status};

use super::{AppState, convert, trace_id_of, validate};
use crate::auth::{Scope, Scopes};
use crate::error::ApiError;
use crate::policy::{CompiledPolicy, DataCategory, Decision, Purpose, Question, Ruling};
use crate::proto;
use crate::rpc::caller_of;
use crate::store::{Changed, NewPolicy, StateGroup, WriteContext, now_micros};

/// The largest policy file accepted.
const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// The most distinct decision states a diff evaluates. Subjects are grouped by what a policy
/// reads of them (plan, status, flags, every purpose's choice), and each group is evaluated
/// once; past this many groups the smaller ones are left out and the answer says `truncated`.
const MAX_DIFF_STATES: u32 = 50_000;

/// How long a diff may spend reading more example subjects than the first of each group.
const EXAMPLES_TIME: std::time::Duration = std::time::Duration::from_millis(500);

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

/// Which checks a policy file from a request passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checks {
    /// A new version: every check.
    New,
    /// A version that may have been stored before a check existed (a diff's `old_source`).
    AsStored,
}

/// Compiles a policy file from a request field.
fn compile(field: &str, source: &str, checks: Checks) -> Result<CompiledPolicy, ApiError> {
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
    match checks {
        Checks::New => CompiledPolicy::compile(source),
        Checks::AsStored => CompiledPolicy::compile_stored(source),
    }
    .map_err(|error| ApiError::invalid(field, error))
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

impl PoliciesService {
    /// Fills each purpose's examples from the groups whose answer changes, largest first: the
    /// first subject of each group, read with the counts; then more subjects of the largest
    /// groups (one query each, by id with a `LIMIT`) while [`EXAMPLES_TIME`] lasts, so a group
    /// of rare subjects never costs a scan.
    async fn examples(
        &self,
        groups: &[StateGroup],
        changed_groups: &[Vec<(usize, &Ruling, &Ruling)>],
        purposes: &mut [proto::PurposeDiff],
        now: i64,
        max_examples: u32,
    ) -> Result<(), ApiError> {
        let max_examples = max_examples as usize;
        let deadline = tokio::time::Instant::now() + EXAMPLES_TIME;
        let mut fetched: HashMap<usize, Vec<String>> = HashMap::new();
        for (purpose, changed) in purposes.iter_mut().zip(changed_groups) {
            let example = |subject_id: &str, was: &Ruling, is: &Ruling| proto::DiffExample {
                subject_id: subject_id.to_owned(),
                old_decision: proto::Decision::from(was.decision).into(),
                new_decision: proto::Decision::from(is.decision).into(),
                old_rule: was.rule.to_string(),
                new_rule: is.rule.to_string(),
            };
            for &(index, was, is) in changed.iter().take(max_examples) {
                if let Some(first) = &groups[index].first_subject {
                    purpose.examples.push(example(first, was, is));
                }
            }
            for &(index, was, is) in changed {
                let wanted = max_examples - purpose.examples.len();
                if wanted == 0 {
                    break;
                }
                let group = &groups[index];
                if group.subjects < 2 {
                    continue;
                }
                let ids = match fetched.entry(index) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let query = self.state.store.subjects_in_state(
                            &group.state,
                            now,
                            max_examples as u32 + 1,
                        );
                        match tokio::time::timeout_at(deadline, query).await {
                            Ok(ids) => entry.insert(ids.map_err(ApiError::from)?),
                            Err(_) => break,
                        }
                    }
                };
                let more = ids
                    .iter()
                    .filter(|id| Some(*id) != group.first_subject.as_ref())
                    .take(wanted)
                    .map(|id| example(id, was, is));
                purpose.examples.extend(more);
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl proto::policies_server::Policies for PoliciesService {
    async fn apply_policy(
        &self,
        request: Request<proto::ApplyPolicyRequest>,
    ) -> Result<Response<proto::ApplyPolicyResponse>, Status> {
        let body = request.get_ref();
        let actor = validate::actor(body.actor.as_ref())?;
        let policies = &self.state.policies;
        // A text applied already changes nothing, even one stored before a check it would now
        // fail (an undeclared ALLOW): re-applying a deployment's files stays harmless.
        if let Some(known) = policies
            .all()
            .iter()
            .find(|known| known.source() == body.source)
        {
            let head = self
                .state
                .store
                .head_revision()
                .await
                .map_err(ApiError::from)?;
            return Ok(applied(known, head, false));
        }
        let policy = compile("source", &body.source, Checks::New)?;
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
            return Ok(applied(&policy, head, false));
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
            return Ok(applied(&policy, outcome.revision, false));
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
        Ok(applied(&policy, outcome.revision, true))
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
            compiled_old = compile("old_source", &body.old_source, Checks::AsStored)?;
            &compiled_old
        };
        let new = compile("new_source", &body.new_source, Checks::New)?;
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
        // Subject ids are subjects' data: listed only to a caller that may read subjects.
        let examples_withheld = !Scopes::of(&request).allows(Scope::SubjectsRead);
        let mut groups = self
            .state
            .store
            .state_groups(now, MAX_DIFF_STATES + 1, !examples_withheld)
            .await
            .map_err(ApiError::from)?;
        let truncated = groups.len() > MAX_DIFF_STATES as usize;
        groups.truncate(MAX_DIFF_STATES as usize);
        let mut diff = Diff::new();
        for (index, group) in groups.iter().enumerate() {
            diff.count(index, group, now, (old, &new));
        }
        let mut purposes = diff.purposes;
        if !examples_withheld {
            self.examples(
                &groups,
                &diff.changed_groups,
                &mut purposes,
                now,
                max_examples,
            )
            .await?;
        }
        Ok(Response::new(proto::DiffPolicyResponse {
            old_version: old.version().to_owned(),
            new_version: new.version().to_owned(),
            subjects_scanned: diff.subjects,
            purposes,
            retention: retention_diff(old, &new),
            examples_withheld,
            truncated,
            distinct_states: groups.len() as u64,
        }))
    }
}

/// What a diff counts, group of subjects by group.
struct Diff<'p> {
    subjects: u64,
    /// One per purpose, in purpose order.
    purposes: Vec<proto::PurposeDiff>,
    /// For each purpose, the groups whose answer changes, largest first, with the two rulings.
    changed_groups: Vec<Vec<(usize, &'p Ruling, &'p Ruling)>>,
}

impl<'p> Diff<'p> {
    fn new() -> Diff<'p> {
        Diff {
            subjects: 0,
            purposes: Purpose::ALL
                .iter()
                .map(|purpose| proto::PurposeDiff {
                    purpose: proto::Purpose::from(*purpose).into(),
                    ..proto::PurposeDiff::default()
                })
                .collect(),
            changed_groups: vec![Vec::new(); Purpose::ALL.len()],
        }
    }

    /// Evaluates one group's state once under each version and counts its subjects.
    fn count(
        &mut self,
        index: usize,
        group: &StateGroup,
        now: i64,
        (old, new): (&'p CompiledPolicy, &'p CompiledPolicy),
    ) {
        self.subjects += group.subjects;
        // The store left out the choices expired at `now`; `at` keeps the invariant visible
        // here (every decision on a stored state takes it).
        let state = &group.state.at(now);
        let purposes = Purpose::ALL.iter().zip(&mut self.purposes);
        for ((purpose, diff), changed) in purposes.zip(&mut self.changed_groups) {
            let question = Question::about(*purpose);
            let was = old.evaluate(Some(state), &question);
            let is = new.evaluate(Some(state), &question);
            if was.rule == is.rule && was.decision == is.decision {
                continue;
            }
            diff.changed += group.subjects;
            match (was.decision, is.decision) {
                (Decision::Allow, Decision::Deny) => diff.allow_to_deny += group.subjects,
                (Decision::Deny, Decision::Allow) => diff.deny_to_allow += group.subjects,
                _ => {}
            }
            changed.push((index, was, is));
        }
    }
}

/// ApplyPolicy's answer about `policy`, at `revision`.
fn applied(
    policy: &CompiledPolicy,
    revision: crate::revision::Revision,
    changed: bool,
) -> Response<proto::ApplyPolicyResponse> {
    Response::new(proto::ApplyPolicyResponse {
        version: policy.version().to_owned(),
        effective_from: Some(convert::timestamp(policy.effective_from_micros())),
        revision: revision.to_token(),
        changed,
    })
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
