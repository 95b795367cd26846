//! `assent.v1.Retention`: the retention schedule of the policy version in force, asked about one
//! subject's data (Query) or about everything due at an instant (Due).
//!
//! The schedule's rows are pure (`policy::RetentionRule`); this file reads what they need from
//! the store: when the account was deleted (a DELETED subject's last write), zero data
//! retention, and the consent its choices make (`policy::Consent::of_choices`). A record's own
//! event (an invoice date, say) is not in the store: the caller names it.

use tonic::{Request, Response, Status};

use super::{AppState, convert, validate};
use crate::error::ApiError;
use crate::policy::{
    CompiledPolicy, Consent, DataCategory, Keep, Retention, RetentionFacts, RetentionRule,
};
use crate::proto;
use crate::store::{DueCandidates, RetentionSubject, now_micros};

#[derive(Clone, Debug)]
pub struct RetentionService {
    state: AppState,
}

impl RetentionService {
    pub fn new(state: AppState) -> RetentionService {
        RetentionService { state }
    }

    /// The version in force at `at_micros`, refusing an instant before the first one took
    /// effect (`field` names the request field the instant comes from).
    fn policy_at(&self, field: &str, at_micros: i64) -> Result<&'static CompiledPolicy, ApiError> {
        let policies = &self.state.policies;
        let first = policies.first_effective_micros();
        if at_micros < first {
            return Err(ApiError::invalid(
                field,
                format_args!(
                    "is before the first policy version took effect ({first} microseconds since \
                     the epoch): no retention schedule was in force"
                ),
            ));
        }
        Ok(policies.in_force(at_micros))
    }
}

/// What a row reads of a subject, as facts.
fn subject_facts(rule: &RetentionRule, subject: &RetentionSubject) -> RetentionFacts {
    let consent = Consent::of_choices(
        subject
            .choices
            .iter()
            .filter(|entry| rule.consent.contains(&entry.purpose))
            .map(|entry| (entry.choice, entry.updated_at_micros)),
    );
    RetentionFacts {
        event_micros: None,
        account_deleted_micros: subject.deleted_at_micros,
        data_deleted_micros: None,
        zero_data_retention: subject.zero_data_retention,
        consent,
    }
}

fn keep_to_proto(keep: Keep) -> proto::retention_query_response::Keep {
    use proto::retention_query_response::Keep as Wire;
    match keep {
        Keep::NotKept => Wire::NotKept(true),
        Keep::Until(until) => Wire::KeepUntil(convert::timestamp(until)),
        Keep::UntilEvent(event) => Wire::UntilEvent(proto::RetentionEvent::from(event).into()),
        Keep::AfterEvent(event, period) => Wire::AfterEvent(proto::AfterEvent {
            event: proto::RetentionEvent::from(event).into(),
            period: Some(convert::period(period)),
        }),
    }
}

/// Why a request field the row does not read is refused.
fn unread(field: &str, category: DataCategory, policy: &CompiledPolicy, what: &str) -> ApiError {
    ApiError::invalid(
        field,
        format_args!(
            "{category} under policy {} reads no {what} ({}); leave {field} unset",
            policy.version(),
            policy.retention_rule(category).keep.event()
        ),
    )
}

#[tonic::async_trait]
impl proto::retention_server::Retention for RetentionService {
    async fn query(
        &self,
        request: Request<proto::RetentionQueryRequest>,
    ) -> Result<Response<proto::RetentionQueryResponse>, Status> {
        let query = validate::retention_query(request.get_ref())?;
        let now = now_micros();
        let at = query.as_of.unwrap_or(now);
        let policy = self.policy_at("as_of", at)?;
        let category = query.category;
        let rule = policy.retention_rule(category);
        if query.event_micros.is_some() && !rule.reads_record_event() {
            return Err(unread("event_time", category, policy, "event of its own").into());
        }
        if query.data_deleted_micros.is_some() && !rule.reads_data_deletion() {
            return Err(unread(
                "data_deleted_at",
                category,
                policy,
                "deletion of the data by the user",
            )
            .into());
        }
        let mut facts = RetentionFacts::default();
        let mut revision = String::new();
        if rule.reads_subject() {
            let Some(subject_id) = &query.subject_id else {
                return Err(ApiError::invalid(
                    "subject_id",
                    format_args!(
                        "is required: {category} under policy {} depends on the subject's state",
                        policy.version()
                    ),
                )
                .into());
            };
            let store = &self.state.store;
            // A past instant is answered on the state then; now and later on the state now.
            let subject = if at < now {
                store.retention_subject_as_of(subject_id, at).await
            } else {
                store.retention_subject(subject_id).await
            }
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::SubjectNotFound(subject_id.clone()))?;
            facts = subject_facts(rule, &subject);
            revision = subject.revision.to_token();
        }
        facts.event_micros = query.event_micros;
        facts.data_deleted_micros = query.data_deleted_micros;
        let Retention {
            keep,
            legal_hold,
            section,
        } = rule.apply(&facts);
        Ok(Response::new(proto::RetentionQueryResponse {
            category: proto::DataCategory::from(category).into(),
            subject_id: request.get_ref().subject_id.clone(),
            keep: Some(keep_to_proto(keep)),
            legal_hold,
            section: section.to_owned(),
            policy_version: policy.version().to_owned(),
            due: keep.is_due(at),
            revision,
            as_of: Some(convert::timestamp(at)),
        }))
    }

    async fn due(
        &self,
        request: Request<proto::RetentionDueRequest>,
    ) -> Result<Response<proto::RetentionDueResponse>, Status> {
        let query = validate::retention_due(request.get_ref())?;
        let now = now_micros();
        // The pages after the first answer for the first one's instant, which the token keeps.
        let (before, after) = match (query.before, query.next) {
            (Some(before), Some(next)) if before != next.before => {
                return Err(ApiError::invalid(
                    "before",
                    "differs from the instant page_token's pages answer for; leave it unset when \
                     passing a page token",
                )
                .into());
            }
            (_, Some(next)) => (next.before, next.after),
            (Some(before), None) if before < now => {
                return Err(ApiError::invalid(
                    "before",
                    "is in the past: Due answers on the subjects' current state, for now (leave \
                     it unset) or a later instant; Query answers one subject as of a past instant",
                )
                .into());
            }
            (before, None) => (before.unwrap_or(now), String::new()),
        };
        let policy = self.policy_at("before", before)?;
        let category = query.category;
        let rule = policy.retention_rule(category);
        let record_cutoff = (rule.reads_record_event() || rule.reads_data_deletion()).then(|| {
            proto::RecordCutoff {
                event: proto::RetentionEvent::from(rule.keep.event()).into(),
                due_through: rule.record_cutoff(before).map(convert::timestamp),
            }
        });
        let mut subjects = Vec::new();
        let mut next_page_token = String::new();
        let mut revision = String::new();
        if rule.reads_subject() {
            let deleted_through = if rule.reads_account_deletion() {
                rule.account_deletion_cutoff(before)
            } else if rule.reads_consent() {
                // Deletion erases the choices, and with them the consent.
                Some(before)
            } else {
                None
            };
            let mut candidates = DueCandidates {
                deleted_through,
                zero_data_retention: rule.unless_zero_data_retention,
                refused: rule.consent.to_vec(),
                refused_through: before,
                after,
                limit: query.page_size,
            };
            'pages: loop {
                let page = self
                    .state
                    .store
                    .due_candidates(&candidates)
                    .await
                    .map_err(ApiError::from)?;
                if revision.is_empty() {
                    revision = page.revision.to_token();
                }
                for subject in &page.subjects {
                    let retention = rule.apply(&subject_facts(rule, subject));
                    if !retention.keep.is_due(before) {
                        continue;
                    }
                    subjects.push(proto::DueSubject {
                        subject_id: subject.subject_id.clone(),
                        keep_until: match retention.keep {
                            Keep::Until(until) => Some(convert::timestamp(until)),
                            _ => None,
                        },
                        legal_hold: retention.legal_hold,
                    });
                    if subjects.len() == query.page_size as usize {
                        next_page_token = validate::due_page_token(&validate::DuePosition {
                            before,
                            after: subject.subject_id.clone(),
                        });
                        break 'pages;
                    }
                }
                match page.subjects.last() {
                    Some(last) if page.full => candidates.after = last.subject_id.clone(),
                    _ => break,
                }
            }
        }
        Ok(Response::new(proto::RetentionDueResponse {
            category: proto::DataCategory::from(category).into(),
            before: Some(convert::timestamp(before)),
            policy_version: policy.version().to_owned(),
            record_cutoff,
            reads_subjects: rule.reads_subject(),
            subjects,
            next_page_token,
            revision,
        }))
    }
}
