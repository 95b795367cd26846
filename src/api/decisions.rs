//! `assent.v1.Decisions`: the read-only request path.

use futures_util::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use super::stream::{Answers, answers};
use super::validate::{self, CheckQuery, Freshness};
use super::{AppState, CallContext};
use crate::audit::Decided;
use crate::cache::Tier;
use crate::decision_log::DurableReceipt;
use crate::domain::{ConversationId, SubjectId};
use crate::error::ApiError;
use crate::policies::Policies;
use crate::policy::{CompiledPolicy, Purpose, Question, Ruling, SubjectState};
use crate::proto;
use crate::revision::Revision;
use crate::store::{DecisionState, StoreError, now_micros};
use crate::{metrics, telemetry};

/// How many checks of one BatchCheck may wait on the cache's slower tiers or the store at once.
const BATCH_READS_IN_FLIGHT: usize = 16;

/// How many times a Check that demanded freshness tries a store read that timed out: with the
/// default read deadline (and, for a revision token, the wait for the watermark before each
/// read), 200 ms at most, a gateway's authorization timeout.
const FRESH_READ_TRIES: u32 = 2;

/// How long a Check that demanded a revision waits for the policy versions applied up to it to
/// load on this replica (a reload reads one table and compiles only new versions).
const POLICIES_LOAD_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How many answers of a StreamCheck may wait for the client to read them.
const STREAM_BUFFER: usize = 256;

/// The states a batch's checks as of past instants read, by subject, conversation and instant:
/// each subject's read in one pass over its events for all its instants (a console's history
/// asks every purpose as of each of many changes).
type StatesAsOf =
    std::collections::HashMap<(SubjectId, Option<ConversationId>, i64), DecisionState>;

#[derive(Clone, Debug)]
pub struct DecisionsService {
    state: AppState,
}

/// What a check decided, before it is put on the wire or in the log.
#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    pub ruling: &'static Ruling,
    /// The policy version that decided.
    pub policy: &'static CompiledPolicy,
    /// The state revision the answer was computed from; `None` for a degraded answer.
    pub revision: Option<Revision>,
    pub decision_id: Uuid,
    /// Until when the answer cannot change by time alone (µs since the epoch); `None`: no
    /// such instant is ahead.
    pub valid_until: Option<i64>,
}

impl DecisionsService {
    pub fn new(state: AppState) -> DecisionsService {
        DecisionsService { state }
    }

    /// Decides one validated check (one as of a past instant on its state in `read`, when
    /// there).
    async fn decide(
        &self,
        query: &CheckQuery,
        ids: &DecisionIds,
        read: Option<&StatesAsOf>,
    ) -> Result<Verdict, ApiError> {
        if let Some(as_of) = query.as_of {
            let key = (
                query.subject_id.clone(),
                query.conversation_id.clone(),
                as_of,
            );
            let state = read.and_then(|states| states.get(&key)).copied();
            return self.decide_as_of(query, as_of, ids, state).await;
        }
        let conversation_id = query.conversation_id.as_ref();
        let lookup = crate::child_span!(
            "cache.lookup",
            assent.subject = %telemetry::subject_hash(query.subject_id.as_str()),
            assent.consistency = consistency_name(query),
            cache.tier = tracing::field::Empty,
        );
        let mut loaded = self
            .state
            .cache
            .decision_state(&query.subject_id, conversation_id, query.freshness)
            .instrument(lookup.clone())
            .await;
        // A Check that demanded freshness has no degraded answer to fall back on: a store read
        // cut short at the read deadline (under load, often while a connection was being
        // opened, which then joins the pool) is tried again, so such a Check fails UNAVAILABLE
        // only after `FRESH_READ_TRIES` read deadlines.
        let mut tries = 1;
        while query.freshness != Freshness::MinimizeLatency
            && tries < FRESH_READ_TRIES
            && matches!(loaded, Err(StoreError::TimedOut { .. }))
        {
            tries += 1;
            loaded = self
                .state
                .cache
                .decision_state(&query.subject_id, conversation_id, query.freshness)
                .instrument(lookup.clone())
                .await;
        }
        if let Ok((_, tier)) = &loaded {
            lookup.record("cache.tier", tier.as_str());
        }
        drop(lookup);
        // The state reflects the demanded revision; so must the policy versions: one applied
        // up to it may still be loading here (a client's cache asks at the revision of the
        // policy change it has just seen, and keeps the answer until its `valid_until`).
        if query.freshness != Freshness::MinimizeLatency && loaded.is_ok() {
            let applied = self.state.cache.latest_policy_revision();
            let policies = &self.state.policies;
            if !policies
                .wait_installed_through(applied, POLICIES_LOAD_WAIT)
                .await
            {
                return Err(ApiError::PoliciesLoading);
            }
        }
        self.judged(query, loaded, ids)
    }

    /// Decides a check as of a past instant: under the policy version then in force, on the
    /// subject's state then, rebuilt from its audit events.
    async fn decide_as_of(
        &self,
        query: &CheckQuery,
        as_of: i64,
        ids: &DecisionIds,
        read: Option<DecisionState>,
    ) -> Result<Verdict, ApiError> {
        let policies = &self.state.policies;
        validate::as_of_in_range(as_of, policies.first_effective_micros(), ids.micros())?;
        let state = match read {
            Some(state) => state,
            None => {
                let history = crate::child_span!(
                    "store.history",
                    assent.subject = %telemetry::subject_hash(query.subject_id.as_str()),
                );
                self.state
                    .store
                    .state_as_of(&query.subject_id, query.conversation_id.as_ref(), as_of)
                    .instrument(history)
                    .await?
            }
        };
        let policy = policies.in_force(as_of);
        Ok(self.judge(query, policy, state, as_of, ids))
    }

    /// The verdict on what the cache's tiers answered.
    fn judged(
        &self,
        query: &CheckQuery,
        loaded: Result<(DecisionState, Tier), StoreError>,
        ids: &DecisionIds,
    ) -> Result<Verdict, ApiError> {
        let now = ids.micros();
        // After a wait for the policy versions (a demanded revision), the one in force now.
        let policy = match query.freshness {
            Freshness::MinimizeLatency => ids.policy,
            _ => self.state.policies.in_force(now),
        };
        match loaded {
            Ok((state, _tier)) => {
                let valid_until = valid_until(state.subject.as_ref(), &self.state.policies, now);
                Ok(Verdict {
                    valid_until,
                    ..self.judge(query, policy, state, now, ids)
                })
            }
            // The fail-safe answer of POLICY.md, only when the caller asked for no particular
            // freshness: an answer that cannot honour a demanded revision is an error instead.
            Err(error)
                if error.is_unavailable() && query.freshness == Freshness::MinimizeLatency =>
            {
                let ruling = policy.degraded(query.purpose);
                metrics::record_decision(query.purpose, ruling.decision, ruling.reason);
                Ok(Verdict {
                    ruling,
                    policy,
                    revision: None,
                    decision_id: ids.next(),
                    // Made without the state: good for this instant only.
                    valid_until: Some(now),
                })
            }
            Err(error) => Err(ApiError::from(error)),
        }
    }

    /// Decides a check on a state read, as that state counts at `at_micros` (the call's
    /// instant, or its `as_of`): a choice expired by then is not answered from, whichever tier
    /// the state came from and whether or not the expiry has been recorded yet. The verdict
    /// says nothing of how long it holds (`valid_until` is `None`): that is the caller's to
    /// add, for an answer of the present.
    fn judge(
        &self,
        query: &CheckQuery,
        policy: &'static CompiledPolicy,
        state: DecisionState,
        at_micros: i64,
        ids: &DecisionIds,
    ) -> Verdict {
        let question = Question {
            purpose: query.purpose,
            source: query.source,
            conversation: state.conversation,
        };
        let subject = state.subject.map(|subject| subject.at(at_micros));
        let ruling = evaluate(policy, subject.as_ref(), &question);
        metrics::record_decision(query.purpose, ruling.decision, ruling.reason);
        Verdict {
            ruling,
            policy,
            revision: Some(state.revision),
            decision_id: ids.next(),
            valid_until: None,
        }
    }

    /// A check answered without waiting: from memory, not traced, no `require_audit`. `None`
    /// when it needs `check_one`.
    fn check_at_once(
        &self,
        query: &CheckQuery,
        context: &CallContext,
        ids: &DecisionIds,
    ) -> Option<Result<proto::CheckResponse, ApiError>> {
        if query.require_audit || query.as_of.is_some() || telemetry::layer::traced() {
            return None;
        }
        let loaded = self.state.cache.decision_state_in_memory(
            &query.subject_id,
            query.conversation_id.as_ref(),
            query.freshness,
        )?;
        Some(self.judged(query, Ok(loaded), ids).map(|verdict| {
            self.log(query, context, &verdict);
            response_to(query, &verdict)
        }))
    }

    /// Logs a decided check if the log's mode samples it.
    fn log(&self, query: &CheckQuery, context: &CallContext, verdict: &Verdict) {
        let log = &self.state.decision_log;
        let draw = verdict.decision_id.as_u128() as u32;
        if log.wants(verdict.ruling.decision, draw) {
            let _span = crate::child_span!("audit.decision_log", assent.durable = false).entered();
            log.record(&decided(query, verdict, context));
        }
    }

    /// Decides a check, records it as the decision log's mode asks, and answers it. A
    /// `require_audit` check hands back the receipt to wait on before answering.
    async fn check_one(
        &self,
        query: &CheckQuery,
        context: &CallContext,
        ids: &DecisionIds,
        read: Option<&StatesAsOf>,
    ) -> CheckAnswer {
        let (verdict, receipt) = self.decide_logged(query, context, ids, read).await?;
        Ok((response_to(query, &verdict), receipt))
    }

    /// Decides a check and records it as the decision log's mode asks; a `require_audit` check
    /// hands back the receipt to wait on before answering.
    async fn decide_logged(
        &self,
        query: &CheckQuery,
        context: &CallContext,
        ids: &DecisionIds,
        read: Option<&StatesAsOf>,
    ) -> Result<(Verdict, Option<DurableReceipt>), ApiError> {
        let verdict = self.decide(query, ids, read).await?;
        if !query.require_audit {
            self.log(query, context, &verdict);
            return Ok((verdict, None));
        }
        let span = crate::child_span!("audit.decision_log", assent.durable = true);
        let receipt = Box::pin(
            self.state
                .decision_log
                .record_durable(&decided(query, &verdict, context))
                .instrument(span),
        )
        .await
        .map_err(ApiError::AuditUnavailable)?;
        Ok((verdict, Some(receipt)))
    }

    /// Decides one validated check as `Check` does, recorded as the decision log's mode asks
    /// and, with `require_audit`, returned only once its record is committed: the verdict,
    /// for a caller that puts it on the wire in another shape (ext_authz).
    pub async fn verdict(
        &self,
        query: &CheckQuery,
        context: &CallContext,
    ) -> Result<Verdict, ApiError> {
        let (verdict, receipt) = self
            .decide_logged(
                query,
                context,
                &DecisionIds::now(&self.state.policies),
                None,
            )
            .await?;
        await_receipts(receipt).await?;
        Ok(verdict)
    }

    /// The answers to a batch's checks, in order. Checks answered from memory are answered in
    /// turn; those that wait on a slower tier or the decision log overlap, up to
    /// `BATCH_READS_IN_FLIGHT` at once.
    async fn check_all(
        &self,
        queries: &[CheckQuery],
        context: &CallContext,
    ) -> Result<(Vec<proto::CheckResponse>, Vec<DurableReceipt>), ApiError> {
        let ids = DecisionIds::now(&self.state.policies);
        let read = self.read_states_as_of(queries, &ids).await;
        let mut answers: Vec<Option<proto::CheckResponse>> = Vec::with_capacity(queries.len());
        let mut receipts = Vec::new();
        let mut waiting = futures_util::stream::FuturesUnordered::new();
        for (index, query) in queries.iter().enumerate() {
            if let Some(answer) = self.check_at_once(query, context, &ids) {
                answers.push(Some(answer?));
                continue;
            }
            answers.push(None);
            if waiting.len() == BATCH_READS_IN_FLIGHT
                && let Some(answered) = waiting.next().await
            {
                settle(&mut answers, &mut receipts, answered)?;
            }
            let ids = &ids;
            let read = Some(&read);
            waiting.push(async move { (index, self.check_one(query, context, ids, read).await) });
        }
        while let Some(answered) = waiting.next().await {
            settle(&mut answers, &mut receipts, answered)?;
        }
        let results = answers
            .into_iter()
            .map(|answer| answer.expect("every check of the batch was answered"))
            .collect();
        Ok((results, receipts))
    }
}

impl DecisionsService {
    /// The states of a batch's checks as of past instants, for each subject (and conversation)
    /// asked as of more than one instant: one pass over its events. A subject whose pass fails
    /// is left out, and its checks read as each check alone does (and fail as it would).
    /// Instants out of range are left to each check, which refuses them without a read.
    async fn read_states_as_of(&self, queries: &[CheckQuery], ids: &DecisionIds) -> StatesAsOf {
        let first = self.state.policies.first_effective_micros();
        let in_range = |as_of| validate::as_of_in_range(as_of, first, ids.micros()).is_ok();
        let mut instants: std::collections::HashMap<_, Vec<i64>> = Default::default();
        for query in queries {
            if let Some(as_of) = query.as_of.filter(|as_of| in_range(*as_of)) {
                instants
                    .entry((query.subject_id.clone(), query.conversation_id.clone()))
                    .or_default()
                    .push(as_of);
            }
        }
        let mut states = StatesAsOf::new();
        for ((subject_id, conversation_id), mut instants) in instants {
            instants.sort_unstable();
            instants.dedup();
            if instants.len() < 2 {
                continue;
            }
            let history = crate::child_span!(
                "store.history",
                assent.subject = %telemetry::subject_hash(subject_id.as_str()),
            );
            let read = self
                .state
                .store
                .states_as_of(&subject_id, conversation_id.as_ref(), &instants)
                .instrument(history)
                .await;
            if let Ok(read) = read {
                for (at, state) in instants.into_iter().zip(read) {
                    states.insert((subject_id.clone(), conversation_id.clone(), at), state);
                }
            }
        }
        states
    }
}

/// Until when answers on `subject`'s state, made at `now_micros`, cannot change by time alone:
/// the nearest expiry of one of its choices or the next policy version taking effect; `None`
/// when neither is ahead.
pub fn valid_until(
    subject: Option<&SubjectState>,
    policies: &Policies,
    now_micros: i64,
) -> Option<i64> {
    let expiry = subject.and_then(|subject| subject.next_expiry_after(now_micros));
    [expiry, policies.next_effective_after(now_micros)]
        .into_iter()
        .flatten()
        .min()
}

/// Puts a batch's check that waited, answered, in its place.
fn settle(
    answers: &mut [Option<proto::CheckResponse>],
    receipts: &mut Vec<DurableReceipt>,
    (at, answer): (usize, CheckAnswer),
) -> Result<(), ApiError> {
    let (response, receipt) = answer?;
    answers[at] = Some(response);
    receipts.extend(receipt);
    Ok(())
}

/// A check's answer, with the receipt to wait on when it asked for `require_audit`.
type CheckAnswer = Result<(proto::CheckResponse, Option<DurableReceipt>), ApiError>;

/// Makes the decision ids of one call: UUIDv7s that share one reading of the clock (a batch of
/// a thousand checks reads it once), each with 74 random bits of its own. The same reading
/// chooses the policy version in force.
struct DecisionIds {
    seconds: u64,
    nanos: u32,
    /// The policy version in force at the call's instant, looked up once per call (a batch's
    /// checks share it).
    policy: &'static CompiledPolicy,
}

impl DecisionIds {
    fn now(policies: &Policies) -> DecisionIds {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut ids = DecisionIds {
            seconds: since_epoch.as_secs(),
            nanos: since_epoch.subsec_nanos(),
            policy: CompiledPolicy::builtin(),
        };
        ids.policy = policies.in_force(ids.micros());
        ids
    }

    /// The call's instant, in microseconds since the epoch.
    fn micros(&self) -> i64 {
        i64::try_from(self.seconds)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(self.nanos / 1_000))
    }

    fn next(&self) -> Uuid {
        Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            self.seconds,
            self.nanos,
        ))
    }
}

/// Evaluates the policy, in a span of its own when the call is traced.
fn evaluate(
    policy: &'static CompiledPolicy,
    subject: Option<&SubjectState>,
    question: &Question,
) -> &'static Ruling {
    if !telemetry::layer::traced() {
        return policy.evaluate(subject, question);
    }
    let span = tracing::info_span!(
        "policy.evaluate",
        assent.purpose = question.purpose.as_str(),
        assent.decision = tracing::field::Empty,
        assent.reason = tracing::field::Empty,
        assent.rule = tracing::field::Empty,
        assent.policy_version = policy.version(),
    );
    let ruling = span.in_scope(|| policy.evaluate(subject, question));
    span.record("assent.decision", ruling.decision.as_str());
    span.record("assent.reason", ruling.reason.as_str());
    span.record("assent.rule", &*ruling.rule);
    ruling
}

/// Waits until every `require_audit` record of a call is committed.
async fn await_receipts(
    receipts: impl IntoIterator<Item = DurableReceipt>,
) -> Result<(), ApiError> {
    for receipt in receipts {
        let span = crate::child_span!("audit.decision_log.commit");
        Box::pin(receipt.committed().instrument(span))
            .await
            .map_err(ApiError::AuditUnavailable)?;
    }
    Ok(())
}

fn consistency_name(query: &CheckQuery) -> &'static str {
    if query.as_of.is_some() {
        return "as_of";
    }
    match query.freshness {
        Freshness::MinimizeLatency => "minimize_latency",
        Freshness::AtLeastAsFresh(_) => "at_least_as_fresh",
        Freshness::FullyConsistent => "fully_consistent",
    }
}

/// What the decision log records of a check.
fn decided<'a>(
    query: &'a CheckQuery,
    verdict: &'a Verdict,
    context: &'a CallContext,
) -> Decided<'a> {
    Decided {
        decided_at_micros: now_micros(),
        decision_id: verdict.decision_id,
        subject_id: query.subject_id.as_str(),
        purpose: query.purpose,
        conversation_id: query.conversation_id.as_ref().map(|id| id.as_str()),
        source: query.source,
        consistency: consistency_name(query),
        decision: verdict.ruling.decision,
        reason: verdict.ruling.reason,
        rule: &verdict.ruling.rule,
        policy_version: verdict.policy.version(),
        revision: verdict.revision.map(Revision::sequence),
        degraded: verdict.revision.is_none(),
        caller: &context.caller,
        trace_id: &context.trace_id,
    }
}

fn response_to(query: &CheckQuery, verdict: &Verdict) -> proto::CheckResponse {
    if query.bare {
        return bare_response(verdict.ruling, verdict.revision, verdict.valid_until);
    }
    let conversation_id = query
        .conversation_id
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    response(
        query.subject_id.as_str(),
        query.purpose,
        conversation_id,
        (verdict.policy, verdict.ruling),
        verdict.revision,
        verdict.decision_id,
        verdict.valid_until,
    )
}

/// The answer to a check that asked for a bare one: the decision alone, without the echoed
/// request, the policy version, the explanation or the decision id (none of them allocated).
fn bare_response(
    ruling: &Ruling,
    revision: Option<Revision>,
    valid_until: Option<i64>,
) -> proto::CheckResponse {
    proto::CheckResponse {
        decision: proto::Decision::from(ruling.decision) as i32,
        reason: proto::Reason::from(ruling.reason) as i32,
        basis: basis(ruling),
        rule: ruling.rule.to_string(),
        revision: revision.map(Revision::to_token).unwrap_or_default(),
        degraded: revision.is_none(),
        valid_until: valid_until.map(super::convert::timestamp),
        ..proto::CheckResponse::default()
    }
}

fn basis(ruling: &Ruling) -> i32 {
    ruling
        .basis
        .map_or(proto::LawfulBasis::Unspecified, proto::LawfulBasis::from) as i32
}

/// Builds a CheckResponse; shared by Check and by GetSubject's effective decisions. `revision`
/// is `None` for a degraded answer, made without reading any state.
pub fn response(
    subject_id: &str,
    purpose: Purpose,
    conversation_id: String,
    (policy, ruling): (&CompiledPolicy, &Ruling),
    revision: Option<Revision>,
    decision_id: Uuid,
    valid_until: Option<i64>,
) -> proto::CheckResponse {
    proto::CheckResponse {
        subject_id: subject_id.to_owned(),
        purpose: proto::Purpose::from(purpose) as i32,
        conversation_id,
        decision: proto::Decision::from(ruling.decision) as i32,
        reason: proto::Reason::from(ruling.reason) as i32,
        basis: basis(ruling),
        rule: ruling.rule.to_string(),
        policy_version: policy.version().to_owned(),
        revision: revision.map(Revision::to_token).unwrap_or_default(),
        explanation: ruling.explanation.to_string(),
        decision_id: decision_id.to_string(),
        degraded: revision.is_none(),
        valid_until: valid_until.map(super::convert::timestamp),
    }
}

#[tonic::async_trait]
impl proto::decisions_server::Decisions for DecisionsService {
    async fn check(
        &self,
        request: Request<proto::CheckRequest>,
    ) -> Result<Response<proto::CheckResponse>, Status> {
        let query = validate::check(request.get_ref())?;
        let context = CallContext::of(&request);
        let (response, receipt) = self
            .check_one(
                &query,
                &context,
                &DecisionIds::now(&self.state.policies),
                None,
            )
            .await?;
        await_receipts(receipt).await?;
        Ok(Response::new(response))
    }

    async fn batch_check(
        &self,
        request: Request<proto::BatchCheckRequest>,
    ) -> Result<Response<proto::BatchCheckResponse>, Status> {
        let queries = validate::batch(request.get_ref())?;
        let context = CallContext::of(&request);
        let (results, receipts) = self.check_all(&queries, &context).await?;
        await_receipts(receipts).await?;
        Ok(Response::new(proto::BatchCheckResponse { results }))
    }

    type StreamCheckStream = Answers<proto::CheckResponse>;

    async fn stream_check(
        &self,
        request: Request<Streaming<proto::CheckRequest>>,
    ) -> Result<Response<Self::StreamCheckStream>, Status> {
        let context = CallContext::of(&request);
        let mut requests = request.into_inner();
        let (mut sender, receiver) = answers(
            STREAM_BUFFER,
            self.state.limits.stream_idle,
            "send the checks not answered again on a new stream",
        );
        let service = self.clone();
        // The answers are made by a task of their own, still part of this call's trace.
        let call = telemetry::layer::current_call();
        let span = tracing::Span::current();
        let answer = async move {
            let mut position = 0_usize;
            loop {
                // A stream that receives no check for the idle limit is ended, so an abandoned
                // one does not keep its slots.
                let next = match sender.idle() {
                    None => requests.message().await,
                    Some(idle) => match tokio::time::timeout(idle, requests.message()).await {
                        Ok(next) => next,
                        Err(_) => {
                            sender.end_idle("no check was received").await;
                            break;
                        }
                    },
                };
                let result = match next {
                    Ok(Some(check_request)) => match validate::check(&check_request) {
                        Ok(query) => match service
                            .check_one(
                                &query,
                                &context,
                                &DecisionIds::now(&service.state.policies),
                                None,
                            )
                            .await
                        {
                            Ok((response, receipt)) => await_receipts(receipt)
                                .await
                                .map(|()| response)
                                .map_err(Status::from),
                            Err(error) => Err(error.into()),
                        },
                        Err(error) => Err(error.within(&format!("stream[{position}]")).into()),
                    },
                    Ok(None) => break,
                    Err(status) => Err(status),
                };
                position += 1;
                let failed = result.is_err();
                // Answers go out in request order; the stream ends at the first error, when
                // the client stops listening, or when it takes no answer for the idle limit.
                if !sender.send(result).await || failed {
                    break;
                }
            }
        };
        tokio::spawn(telemetry::layer::within_call(call, answer.instrument(span)));
        Ok(Response::new(receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::{DecisionIds, bare_response, response};
    use crate::policy::{CompiledPolicy, Purpose};
    use crate::proto;
    use crate::revision::Revision;

    /// A bare answer, degraded or not, carries the full answer's decision and nothing else.
    #[test]
    fn a_bare_answer_is_the_full_answer_without_its_echoes() {
        let policy = CompiledPolicy::builtin();
        let ids = DecisionIds::now(&crate::policies::Policies::default());
        for purpose in Purpose::ALL.iter().copied() {
            for revision in [None, Some(Revision::new(7))] {
                let ruling = policy.degraded(purpose);
                let full = response(
                    "u-1",
                    purpose,
                    "c-1".into(),
                    (policy, ruling),
                    revision,
                    ids.next(),
                    Some(1_000),
                );
                let bare = bare_response(ruling, revision, Some(1_000));
                assert_eq!(bare.degraded, revision.is_none());
                assert_eq!(
                    bare,
                    proto::CheckResponse {
                        subject_id: String::new(),
                        purpose: 0,
                        conversation_id: String::new(),
                        policy_version: String::new(),
                        explanation: String::new(),
                        decision_id: String::new(),
                        ..full
                    }
                );
            }
        }
    }

    #[test]
    fn decision_ids_of_one_call_share_the_time_and_differ() {
        let ids = DecisionIds::now(&crate::policies::Policies::default());
        let made: std::collections::HashSet<uuid::Uuid> = (0..10_000).map(|_| ids.next()).collect();
        assert_eq!(made.len(), 10_000);
        let first = made.iter().next().unwrap();
        assert_eq!(first.get_version_num(), 7);
        assert!(
            made.iter()
                .all(|id| id.get_timestamp() == first.get_timestamp())
        );
    }
}
