//! `assent.v1.Changes`: the change log as a stream, with the decisions each change flipped.
//!
//! A watch reads the audit log of the store of record page by page from the revision it
//! resumes after, so any replica serves any watcher and a reconnecting watcher misses nothing:
//! revisions are gap-free and commit in order (one chain head, locked by every write), so
//! "every event after the last one sent" is exactly what remains. Once caught up it waits for
//! this replica to learn of a newer revision (the cache's watermark), polling the store at least
//! every second, and sends a heartbeat with its position when nothing was sent for an interval.
//!
//! A watch replays at most `watch_max_replay` changes: one resuming further back is refused
//! with FAILED_PRECONDITION (resync), as one older than the change log is. A watcher that takes
//! no message for the idle limit has its watch ended with UNAVAILABLE ([`super::stream`]); it
//! resumes from the last revision it received.
//!
//! What a change flipped is found by replaying: the watch keeps the state of the subjects it
//! has seen (rebuilt from their events the first time, see [`crate::store::replay`]) and asks
//! the policy in force at the change's commit time about every purpose before and after it.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::stream::{AnswerSender, Answers, answers};
use super::validate::{self, WatchQuery};
use super::{AppState, convert};
use crate::audit::{AuditEvent, EventKind};
use crate::error::ApiError;
use crate::policy::{ConversationFacts, Purpose, Question, SubjectState};
use crate::proto;
use crate::revision::Revision;
use crate::store::EventQuery;
use crate::store::replay::{ReplayError, Replayed};

/// Events read from the store at a time.
const PAGE: u32 = 200;

/// How long a caught-up watch waits for news of a change before reading the store anyway.
const POLL: Duration = Duration::from_secs(1);

/// How many messages may wait for the watcher to read them.
const STREAM_BUFFER: usize = 32;

/// How many subjects' states a watch keeps; past it, it forgets them all and rebuilds the
/// ones it meets again.
const KNOWN_SUBJECTS: usize = 10_000;

/// How many events of one subject are read at a time to rebuild its state.
const HISTORY_PAGE: u32 = 1_000;

#[derive(Clone, Debug)]
pub struct ChangesService {
    state: AppState,
}

impl ChangesService {
    pub fn new(state: AppState) -> ChangesService {
        ChangesService { state }
    }
}

#[tonic::async_trait]
impl proto::changes_server::Changes for ChangesService {
    type WatchStream = Answers<proto::WatchResponse>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let query = validate::watch(request.get_ref())?;
        let (first, head) = self
            .state
            .store
            .change_log_bounds()
            .await
            .map_err(ApiError::from)?;
        let since = query.since.unwrap_or(head);
        resumable(since, first, head)?;
        within_replay(since, head, self.state.limits.watch_max_replay)?;
        let (sender, receiver) = answers(
            STREAM_BUFFER,
            self.state.limits.stream_idle,
            "watch again from the revision of the last change or heartbeat received",
        );
        let watch = Watch {
            state: self.state.clone(),
            since,
            query,
            subjects: HashMap::new(),
        };
        tokio::spawn(watch.run(sender));
        Ok(Response::new(receiver))
    }
}

/// Whether a watch from `since` replays at most `max_replay` changes (0: any number) to reach
/// `head`.
fn within_replay(since: Revision, head: Revision, max_replay: u64) -> Result<(), ApiError> {
    let behind = head.sequence().saturating_sub(since.sequence());
    if max_replay > 0 && behind > max_replay {
        return Err(ApiError::FailedPrecondition {
            field: "since_revision".into(),
            message: format!(
                "{} is {behind} changes behind the latest revision {}, more than this server \
                 replays (watch_max_replay {max_replay}): resync (read the subjects again) and \
                 watch from the revision of that read",
                since.to_token(),
                head.to_token()
            ),
        });
    }
    Ok(())
}

/// Whether a watch can resume after `since`, given the change log's bounds.
fn resumable(since: Revision, first: Revision, head: Revision) -> Result<(), ApiError> {
    if since < first {
        return Err(ApiError::FailedPrecondition {
            field: "since_revision".into(),
            message: format!(
                "{} is older than the change log, which starts after {}: resync (read the \
                 subjects again) and watch from the revision of that read",
                since.to_token(),
                first.to_token()
            ),
        });
    }
    if since > head {
        return Err(ApiError::FailedPrecondition {
            field: "since_revision".into(),
            message: format!(
                "{} is newer than this store's latest revision {} (a token of another or a \
                 restored store): resync and watch from the revision of that read",
                since.to_token(),
                head.to_token()
            ),
        });
    }
    Ok(())
}

/// One watcher's stream.
struct Watch {
    state: AppState,
    /// The revision the stream starts after.
    since: Revision,
    query: WatchQuery,
    /// The state of the subjects met so far, as of the last change sent.
    subjects: HashMap<String, Replayed>,
}

type Sender = AnswerSender<proto::WatchResponse>;

impl Watch {
    async fn run(mut self, mut sender: Sender) {
        if let Err(error) = self.send_changes(&mut sender).await {
            // The watcher may be gone already; nothing else to tell.
            sender.send(Err(error.into())).await;
        }
    }

    /// Sends changes until the watcher leaves or stops reading (`Ok`) or the store fails
    /// (`Err`).
    async fn send_changes(&mut self, sender: &mut Sender) -> Result<(), ApiError> {
        let mut position = self.since;
        let mut last_sent = Instant::now();
        // The first heartbeat goes out as soon as the replay is done: a watcher (a client's
        // cache) knows then that it has every change up to now.
        let mut caught_up = false;
        loop {
            let page = self
                .state
                .store
                .events(&EventQuery {
                    subject_id: None,
                    after_sequence: position.sequence(),
                    limit: PAGE,
                })
                .await?;
            if page.is_empty() {
                if !caught_up || last_sent.elapsed() >= self.query.heartbeat {
                    if !send(sender, heartbeat(position)).await {
                        return Ok(());
                    }
                    last_sent = Instant::now();
                    caught_up = true;
                }
                let wait = POLL.min(self.query.heartbeat.saturating_sub(last_sent.elapsed()));
                tokio::select! {
                    _ = self.state.cache.wait_for_revision(position.next(), wait) => {}
                    () = sender.closed() => return Ok(()),
                }
                continue;
            }
            for event in &page {
                if let Some(change) = self.change(event).await? {
                    if !send(sender, proto::watch_response::Event::Change(change)).await {
                        return Ok(());
                    }
                    last_sent = Instant::now();
                }
                position = Revision::new(event.sequence);
            }
        }
    }

    /// The change an event records, or `None` when the purposes filter leaves it out.
    async fn change(&mut self, event: &AuditEvent) -> Result<Option<proto::ChangeEvent>, ApiError> {
        let detail: Value = if event.payload_erased {
            Value::Null
        } else {
            serde_json::from_str(&event.detail_json)
                .map_err(|error| ReplayError::of(event, format!("detail is not JSON: {error}")))?
        };
        let conversation_id = detail["conversation_id"].as_str().unwrap_or_default();
        let flipped = if event.kind == EventKind::PolicyApplied {
            // A policy version applied: it is about no subject, and always sent.
            Vec::new()
        } else if event.payload_erased || event.kind == EventKind::PayloadErased {
            // An erased change has nothing left to compare (its subject is deleted: nothing
            // flips any more), and an erasure changes no decision.
            self.subjects.remove(&event.subject_id);
            if !self.query.purposes.is_empty() {
                return Ok(None);
            }
            Vec::new()
        } else {
            // A recorded expiry compares the answers with the choice still counting (as just
            // before its expiry) against those after: the flip the expiry made.
            let expired = (event.kind == EventKind::ConsentExpired)
                .then(|| detail["purpose"].as_str().and_then(Purpose::from_name))
                .flatten();
            let flipped = self
                .flipped(event, &detail, conversation_id, expired)
                .await?;
            if flipped.is_empty() && !self.query.purposes.is_empty() {
                return Ok(None);
            }
            flipped
        };
        Ok(Some(proto::ChangeEvent {
            revision: Revision::new(event.sequence).to_token(),
            subject_id: event.subject_id.clone(),
            kind: event.kind.as_str().to_owned(),
            at: Some(convert::timestamp(event.at_micros)),
            before_json: detail["before"].to_string(),
            after_json: detail["after"].to_string(),
            flipped,
            policy_version: self
                .state
                .policies
                .in_force(event.at_micros)
                .version()
                .to_owned(),
            event_id: event.event_id.clone(),
            conversation_id: conversation_id.to_owned(),
        }))
    }

    /// The answers the event turned (`detail`: its detail, parsed once by the caller), comparing
    /// the subject's state before and after it, both
    /// as they count at the commit (choices expired by then dropped, except the one whose
    /// expiry the event records, `expired`).
    async fn flipped(
        &mut self,
        event: &AuditEvent,
        detail: &Value,
        conversation_id: &str,
        expired: Option<Purpose>,
    ) -> Result<Vec<proto::DecisionFlip>, ApiError> {
        let mut subject = match self.subjects.remove(&event.subject_id) {
            Some(subject) => subject,
            None => self.rebuild(&event.subject_id, event.sequence).await?,
        };
        let policy = self.state.policies.in_force(event.at_micros);
        let purposes = match self.query.purposes.as_slice() {
            [] => Purpose::ALL,
            some => some,
        };
        let conversation = |subject: &Replayed| {
            (!conversation_id.is_empty()).then(|| subject.conversation(conversation_id))
        };
        let before_conversation = conversation(&subject);
        let at = event.at_micros;
        let before = subject
            .subject
            .as_ref()
            .map(|record| counted_before(&record.state, at, expired));
        subject.apply_parsed(event, detail)?;
        let after_conversation = conversation(&subject);
        let after = subject.subject.as_ref().map(|record| record.state.at(at));
        if self.subjects.len() >= KNOWN_SUBJECTS {
            self.subjects.clear();
        }
        self.subjects.insert(event.subject_id.clone(), subject);

        let mut flipped = Vec::new();
        for &purpose in purposes {
            let ask = |state: &Option<SubjectState>, facts: Option<Option<ConversationFacts>>| {
                let question = Question {
                    purpose,
                    conversation: facts.flatten(),
                    ..Question::about(purpose)
                };
                policy.evaluate(state.as_ref(), &question)
            };
            let was = ask(&before, before_conversation);
            let is = ask(&after, after_conversation);
            if was.decision != is.decision {
                flipped.push(proto::DecisionFlip {
                    purpose: proto::Purpose::from(purpose).into(),
                    conversation_id: conversation_id.to_owned(),
                    before: proto::Decision::from(was.decision).into(),
                    after: proto::Decision::from(is.decision).into(),
                    before_rule: was.rule.to_string(),
                    after_rule: is.rule.to_string(),
                    before_reason: proto::Reason::from(was.reason).into(),
                    after_reason: proto::Reason::from(is.reason).into(),
                });
            }
        }
        Ok(flipped)
    }

    /// A subject's state just before revision `before`, from its events.
    async fn rebuild(&self, subject_id: &str, before: u64) -> Result<Replayed, ApiError> {
        let subject_id = validate::subject_id(subject_id)?;
        let mut replayed = Replayed::default();
        let mut after_sequence = 0;
        loop {
            let events = self
                .state
                .store
                .events(&EventQuery {
                    subject_id: Some(subject_id.clone()),
                    after_sequence,
                    limit: HISTORY_PAGE,
                })
                .await?;
            let full_page = events.len() == HISTORY_PAGE as usize;
            for event in events {
                if event.sequence >= before {
                    return Ok(replayed);
                }
                replayed.apply(&event)?;
                after_sequence = event.sequence;
            }
            if !full_page {
                return Ok(replayed);
            }
        }
    }
}

/// The state before a change committed at `at`, as it counted then; with `expired`, that
/// purpose's choice still counting (the change is its expiry).
fn counted_before(state: &SubjectState, at: i64, expired: Option<Purpose>) -> SubjectState {
    let mut counted = state.at(at);
    if let Some(purpose) = expired {
        counted.choices.set(purpose, state.choices.get(purpose));
        counted.expiries.set(purpose, state.expiries.get(purpose));
    }
    counted
}

fn heartbeat(position: Revision) -> proto::watch_response::Event {
    proto::watch_response::Event::Heartbeat(proto::Heartbeat {
        revision: position.to_token(),
        at: Some(convert::timestamp(crate::store::now_micros())),
    })
}

/// Sends one message; `false` when the watcher has left or took nothing for the idle limit.
async fn send(sender: &mut Sender, event: proto::watch_response::Event) -> bool {
    sender
        .send(Ok(proto::WatchResponse { event: Some(event) }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_revisions_in_the_change_log_resume() {
        let (first, head) = (Revision::new(10), Revision::new(20));
        for since in [10, 15, 20] {
            assert!(
                resumable(Revision::new(since), first, head).is_ok(),
                "{since}"
            );
        }
        for since in [0, 9, 21] {
            let error = resumable(Revision::new(since), first, head).unwrap_err();
            assert_eq!(error.code(), tonic::Code::FailedPrecondition);
            assert!(error.to_string().starts_with("since_revision: "), "{error}");
            assert!(error.to_string().contains("resync"), "{error}");
        }
    }

    #[test]
    fn a_watch_replays_at_most_its_limit() {
        let head = Revision::new(1_000);
        assert!(within_replay(Revision::new(0), head, 1_000).is_ok());
        assert!(within_replay(Revision::new(0), head, 0).is_ok());
        let error = within_replay(Revision::new(0), head, 999).unwrap_err();
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
        let message = error.to_string();
        assert!(message.starts_with("since_revision: "), "{message}");
        assert!(message.contains("watch_max_replay 999"), "{message}");
        assert!(message.contains("resync"), "{message}");
    }

    #[test]
    fn an_expiry_flips_what_its_choice_allowed_and_nothing_else() {
        use crate::policy::tests::granted_until;
        use crate::policy::{Choice, Rule, evaluate};
        let mut state = granted_until(1_000);
        state.set_choice(Purpose::MarketingEmail, Some(Choice::Granted), Some(900));
        let cookies = Question::about(Purpose::AnalyticsCookies);
        let email = Question::about(Purpose::MarketingEmail);
        // The expiry of the analytics grant, recorded at 1,500: before it, the grant counts.
        let before = counted_before(&state, 1_500, Some(Purpose::AnalyticsCookies));
        assert_eq!(evaluate(Some(&before), &cookies), Rule::A1);
        // The e-mail grant expired earlier: it does not count before this change either.
        assert_eq!(evaluate(Some(&before), &email), Rule::E2);
        // Any other change after both expiries sees neither.
        let unrelated = counted_before(&state, 1_500, None);
        assert_eq!(evaluate(Some(&unrelated), &cookies), Rule::A2);
        assert_eq!(counted_before(&state, 800, None), state);
    }
}
