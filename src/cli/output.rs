//! How client commands print answers: aligned text for people, JSON for scripts. JSON uses the
//! proto3 JSON mapping (lowerCamelCase names, enum value names, RFC 3339 times), as grpcurl
//! prints it, with every field present.

use serde_json::{Value, json};

use crate::proto;

fn enum_name<E: TryFrom<i32>>(value: i32, name: fn(&E) -> &'static str) -> String {
    E::try_from(value)
        .map(|known| name(&known).to_owned())
        .unwrap_or_else(|_| value.to_string())
}

fn purpose(value: i32) -> String {
    enum_name::<proto::Purpose>(value, |value| value.as_str_name())
}

fn decision(value: i32) -> String {
    enum_name::<proto::Decision>(value, |value| value.as_str_name())
}

fn reason(value: i32) -> String {
    enum_name::<proto::Reason>(value, |value| value.as_str_name())
}

fn basis(value: i32) -> String {
    enum_name::<proto::LawfulBasis>(value, |value| value.as_str_name())
}

pub fn timestamp(stamp: Option<&prost_types::Timestamp>) -> Value {
    let Some(stamp) = stamp else {
        return Value::Null;
    };
    // RFC 3339 has four-digit years: a time before 1970 or after 9999 prints as null.
    let Ok(seconds) = u64::try_from(stamp.seconds) else {
        return Value::Null;
    };
    if seconds > LAST_RFC3339_SECOND {
        return Value::Null;
    }
    let time = std::time::UNIX_EPOCH
        + std::time::Duration::new(seconds, u32::try_from(stamp.nanos).unwrap_or_default());
    Value::String(humantime::format_rfc3339_micros(time).to_string())
}

/// 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// A time as RFC 3339 text, `-` when unset.
pub fn time_text(stamp: Option<&prost_types::Timestamp>) -> String {
    match timestamp(stamp) {
        Value::String(text) => text,
        _ => "-".to_owned(),
    }
}

/// The value of a wire enum without its prefix, lower-case: `DECISION_ALLOW` → `allow`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

pub fn check_json(response: &proto::CheckResponse) -> Value {
    json!({
        "subjectId": response.subject_id,
        "purpose": purpose(response.purpose),
        "conversationId": response.conversation_id,
        "decision": decision(response.decision),
        "reason": reason(response.reason),
        "basis": basis(response.basis),
        "rule": response.rule,
        "policyVersion": response.policy_version,
        "revision": response.revision,
        "explanation": response.explanation,
        "decisionId": response.decision_id,
        "degraded": response.degraded,
    })
}

pub fn check_text(response: &proto::CheckResponse) -> String {
    let decision = short(&decision(response.decision), "DECISION_").to_ascii_uppercase();
    let mut line = format!(
        "{decision:<5}  {purpose}",
        purpose = short(&purpose(response.purpose), "PURPOSE_")
    );
    if !response.conversation_id.is_empty() {
        line.push_str(&format!(" (conversation {})", response.conversation_id));
    }
    line.push_str(&format!(
        "  rule {} {}",
        response.rule,
        reason(response.reason).trim_start_matches("REASON_")
    ));
    if response.basis != 0 {
        line.push_str(&format!(
            ", basis {}",
            basis(response.basis).trim_start_matches("LAWFUL_BASIS_")
        ));
    }
    if response.degraded {
        line.push_str(", DEGRADED");
    }
    format!("{line}\n       {}", response.explanation)
}

pub fn write_json(response: &proto::WriteResponse) -> Value {
    json!({"revision": response.revision, "changed": response.changed})
}

pub fn write_text(response: &proto::WriteResponse) -> String {
    if response.changed {
        format!("ok, revision {}", response.revision)
    } else {
        format!("ok, nothing to change, revision {}", response.revision)
    }
}

pub fn subject_json(subject: &proto::Subject) -> Value {
    json!({
        "subjectId": subject.subject_id,
        "plan": enum_name::<proto::Plan>(subject.plan, |value| value.as_str_name()),
        "jurisdiction": subject.jurisdiction,
        "status": enum_name::<proto::Status>(subject.status, |value| value.as_str_name()),
        "gpc": subject.gpc,
        "zeroDataRetention": subject.zero_data_retention,
        "choices": subject.choices.iter().map(|choice| json!({
            "purpose": purpose(choice.purpose),
            "choice": enum_name::<proto::Choice>(choice.choice, |value| value.as_str_name()),
            "updatedAt": timestamp(choice.updated_at.as_ref()),
            "noticeVersion": choice.notice_version,
            "method": method(choice.method),
            "caller": choice.caller,
            "expiresAt": timestamp(choice.expires_at.as_ref()),
        })).collect::<Vec<_>>(),
        "effective": subject.effective.iter().map(check_json).collect::<Vec<_>>(),
        "revision": subject.revision,
    })
}

pub fn subject_text(subject: &proto::Subject) -> String {
    let plan = enum_name::<proto::Plan>(subject.plan, |value| value.as_str_name());
    let status = enum_name::<proto::Status>(subject.status, |value| value.as_str_name());
    let mut text = format!(
        "subject       {}\nstatus        {}\nplan          {}\njurisdiction  {}\ngpc           {}\nzero data ret {}\nrevision      {}\n",
        subject.subject_id,
        short(&status, "STATUS_"),
        if subject.plan == 0 {
            "unknown".to_owned()
        } else {
            short(&plan, "PLAN_")
        },
        if subject.jurisdiction.is_empty() {
            "-"
        } else {
            &subject.jurisdiction
        },
        subject.gpc,
        subject.zero_data_retention,
        subject.revision,
    );
    text.push_str("choices\n");
    if subject.choices.is_empty() {
        text.push_str("  (none: the defaults apply)\n");
    }
    for choice in &subject.choices {
        let value = enum_name::<proto::Choice>(choice.choice, |value| value.as_str_name());
        text.push_str(&format!(
            "  {:<28} {:<8} {}\n",
            short(&purpose(choice.purpose), "PURPOSE_"),
            short(&value, "CHOICE_"),
            provenance_text(
                &choice.notice_version,
                choice.method,
                &choice.caller,
                choice.expires_at.as_ref()
            ),
        ));
    }
    text.push_str("effective decisions\n");
    for decision_response in &subject.effective {
        text.push_str(&format!(
            "  {:<28} {:<5} {} {}\n",
            short(&purpose(decision_response.purpose), "PURPOSE_"),
            short(&decision(decision_response.decision), "DECISION_").to_ascii_uppercase(),
            decision_response.rule,
            reason(decision_response.reason).trim_start_matches("REASON_"),
        ));
    }
    text
}

fn method(value: i32) -> String {
    enum_name::<proto::ConsentMethod>(value, |value| value.as_str_name())
}

/// `notice V, by METHOD via CALLER, until T` (the parts known).
fn provenance_text(
    notice_version: &str,
    method_value: i32,
    caller: &str,
    expires_at: Option<&prost_types::Timestamp>,
) -> String {
    let mut parts = Vec::new();
    if !notice_version.is_empty() {
        parts.push(format!("notice {notice_version}"));
    }
    if method_value != 0 {
        parts.push(format!(
            "by {}",
            short(&method(method_value), "CONSENT_METHOD_")
        ));
    }
    if !caller.is_empty() {
        parts.push(format!("via {caller}"));
    }
    if expires_at.is_some() {
        parts.push(format!("until {}", time_text(expires_at)));
    }
    parts.join(", ")
}

pub fn consent_json(record: &proto::ConsentEvent) -> Value {
    let actor = record.actor.clone().unwrap_or_default();
    json!({
        "purpose": purpose(record.purpose),
        "choice": enum_name::<proto::Choice>(record.choice, |value| value.as_str_name()),
        "noticeVersion": record.notice_version,
        "method": method(record.method),
        "caller": record.caller,
        "actor": {"operatorId": actor.operator_id, "reason": actor.reason},
        "expiresAt": timestamp(record.expires_at.as_ref()),
        "recordedAt": timestamp(record.recorded_at.as_ref()),
        "revision": record.revision,
        "why": enum_name::<proto::ConsentEventReason>(record.why, |value| value.as_str_name()),
    })
}

pub fn consent_text(record: &proto::ConsentEvent) -> String {
    let choice = enum_name::<proto::Choice>(record.choice, |value| value.as_str_name());
    let why = enum_name::<proto::ConsentEventReason>(record.why, |value| value.as_str_name());
    let actor = record.actor.clone().unwrap_or_default();
    let expired = record.why == proto::ConsentEventReason::Expired as i32;
    let provenance = if expired {
        format!("expiry {} passed", time_text(record.expires_at.as_ref()))
    } else {
        provenance_text(
            &record.notice_version,
            record.method,
            &record.caller,
            record.expires_at.as_ref(),
        )
    };
    format!(
        "{revision:<8} {at}  {purpose:<28} {choice:<8} {why:<19} {provenance}  by {operator}",
        revision = record.revision,
        at = time_text(record.recorded_at.as_ref()),
        purpose = short(&purpose(record.purpose), "PURPOSE_"),
        choice = short(&choice, "CHOICE_"),
        why = short(&why, "CONSENT_EVENT_REASON_"),
        operator = actor.operator_id,
    )
}

pub fn event_json(event: &proto::AuditEvent) -> Value {
    let actor = event.actor.clone().unwrap_or_default();
    json!({
        "eventId": event.event_id,
        "revision": event.revision,
        "at": timestamp(event.at.as_ref()),
        "subjectId": event.subject_id,
        "kind": event.kind,
        "caller": event.caller,
        "actor": {"operatorId": actor.operator_id, "reason": actor.reason},
        "detailJson": event.detail_json,
        "policyVersion": event.policy_version,
        "traceId": event.trace_id,
        "prevHash": event.prev_hash,
        "hash": event.hash,
        "payloadSha256": event.payload_sha256,
        "payloadSalt": event.payload_salt,
        "payloadErased": event.payload_erased,
        "leafHash": event.leaf_hash,
    })
}

pub fn event_text(event: &proto::AuditEvent) -> String {
    let at = timestamp(event.at.as_ref());
    let actor = event.actor.clone().unwrap_or_default();
    format!(
        "{revision:<8} {at}  {kind:<21} {subject}  by {caller}/{operator}  {detail}",
        revision = event.revision,
        at = at.as_str().unwrap_or("-"),
        kind = event.kind,
        subject = event.subject_id,
        caller = event.caller,
        operator = actor.operator_id,
        detail = if event.payload_erased {
            "(payload erased)"
        } else {
            &event.detail_json
        },
    )
}

pub fn recorded_json(recorded: &proto::RecordedDecision) -> Value {
    json!({
        "decisionId": recorded.decision_id,
        "decidedAt": timestamp(recorded.decided_at.as_ref()),
        "subjectId": recorded.subject_id,
        "purpose": purpose(recorded.purpose),
        "conversationId": recorded.conversation_id,
        "source": enum_name::<proto::Source>(recorded.source, |value| value.as_str_name()),
        "consistency": recorded.consistency,
        "decision": decision(recorded.decision),
        "reason": reason(recorded.reason),
        "rule": recorded.rule,
        "policyVersion": recorded.policy_version,
        "revision": recorded.revision,
        "degraded": recorded.degraded,
        "caller": recorded.caller,
        "traceId": recorded.trace_id,
    })
}

pub fn recorded_text(recorded: &proto::RecordedDecision) -> String {
    let at = timestamp(recorded.decided_at.as_ref());
    let mut line = format!(
        "{at}  {decision:<5} {purpose:<22} {subject}  rule {rule}  by {caller}  {id}",
        at = at.as_str().unwrap_or("-"),
        decision = short(&decision(recorded.decision), "DECISION_").to_ascii_uppercase(),
        purpose = short(&purpose(recorded.purpose), "PURPOSE_"),
        subject = recorded.subject_id,
        rule = recorded.rule,
        caller = recorded.caller,
        id = recorded.decision_id,
    );
    if recorded.degraded {
        line.push_str("  (degraded)");
    }
    line
}

pub fn verify_json(response: &proto::VerifyChainResponse) -> Value {
    json!({
        "ok": response.ok,
        "eventsChecked": response.events_checked.to_string(),
        "firstBadEventId": response.first_bad_event_id,
        "rootHash": response.root_hash,
    })
}

pub fn verify_text(response: &proto::VerifyChainResponse) -> String {
    if response.ok {
        format!(
            "ok: the audit chain verifies ({} events)",
            response.events_checked
        )
    } else {
        format!(
            "BROKEN: the audit chain does not verify at event {} ({} events checked)",
            response.first_bad_event_id, response.events_checked
        )
    }
}

pub fn verify_state_json(response: &proto::VerifyStateResponse) -> Value {
    json!({
        "ok": response.ok,
        "subjectsChecked": response.subjects_checked.to_string(),
        "subjectsUnverifiable": response.subjects_unverifiable.to_string(),
        "mismatches": response.mismatches.iter().map(|mismatch| json!({
            "subjectId": mismatch.subject_id,
            "differences": mismatch.differences,
        })).collect::<Vec<_>>(),
        "truncated": response.truncated,
    })
}

/// One line for the outcome, then each differing subject and its differences, indented.
pub fn verify_state_text(response: &proto::VerifyStateResponse) -> String {
    if response.ok {
        let unverifiable = match response.subjects_unverifiable {
            0 => String::new(),
            count => format!("; {count} with erased payloads not compared"),
        };
        return format!(
            "ok: the state tables match the audit events ({} subjects{unverifiable})",
            response.subjects_checked
        );
    }
    let mut text = format!(
        "MISMATCH: {}{} of {} subjects differ from their audit events",
        response.mismatches.len(),
        if response.truncated { "+" } else { "" },
        response.subjects_checked
    );
    for mismatch in &response.mismatches {
        text.push_str(&format!("\n{}", mismatch.subject_id));
        for difference in &mismatch.differences {
            text.push_str(&format!("\n  {difference}"));
        }
    }
    if response.truncated {
        text.push_str("\n(more subjects differ; the server logs each one by its hash)");
    }
    text
}

fn flip_json(flip: &proto::DecisionFlip) -> Value {
    json!({
        "purpose": purpose(flip.purpose),
        "conversationId": flip.conversation_id,
        "before": decision(flip.before),
        "after": decision(flip.after),
        "beforeRule": flip.before_rule,
        "afterRule": flip.after_rule,
        "beforeReason": reason(flip.before_reason),
        "afterReason": reason(flip.after_reason),
    })
}

pub fn change_json(change: &proto::ChangeEvent) -> Value {
    json!({
        "revision": change.revision,
        "subjectId": change.subject_id,
        "kind": change.kind,
        "at": timestamp(change.at.as_ref()),
        "beforeJson": change.before_json,
        "afterJson": change.after_json,
        "flipped": change.flipped.iter().map(flip_json).collect::<Vec<_>>(),
        "policyVersion": change.policy_version,
        "eventId": change.event_id,
        "conversationId": change.conversation_id,
    })
}

pub fn change_text(change: &proto::ChangeEvent) -> String {
    let mut text = format!(
        "{:<8} {}  {:<21} {}",
        change.revision,
        time_text(change.at.as_ref()),
        change.kind,
        change.subject_id
    );
    if !change.conversation_id.is_empty() {
        text.push_str(&format!(" conversation {}", change.conversation_id));
    }
    for flip in &change.flipped {
        text.push_str(&format!(
            "  {} {}->{} ({}->{})",
            short(&purpose(flip.purpose), "PURPOSE_"),
            short(&decision(flip.before), "DECISION_").to_ascii_uppercase(),
            short(&decision(flip.after), "DECISION_").to_ascii_uppercase(),
            flip.before_rule,
            flip.after_rule,
        ));
    }
    text
}

pub fn diff_json(response: &proto::DiffPolicyResponse) -> Value {
    let purposes: Vec<Value> = response
        .purposes
        .iter()
        .map(|diff| {
            let examples: Vec<Value> = diff
                .examples
                .iter()
                .map(|example| {
                    json!({
                        "subjectId": example.subject_id,
                        "oldDecision": decision(example.old_decision),
                        "newDecision": decision(example.new_decision),
                        "oldRule": example.old_rule,
                        "newRule": example.new_rule,
                    })
                })
                .collect();
            json!({
                "purpose": purpose(diff.purpose),
                "changed": diff.changed.to_string(),
                "allowToDeny": diff.allow_to_deny.to_string(),
                "denyToAllow": diff.deny_to_allow.to_string(),
                "examples": examples,
            })
        })
        .collect();
    json!({
        "oldVersion": response.old_version,
        "newVersion": response.new_version,
        "subjectsScanned": response.subjects_scanned.to_string(),
        "distinctStates": response.distinct_states.to_string(),
        "examplesWithheld": response.examples_withheld,
        "truncated": response.truncated,
        "purposes": purposes,
        "retention": response
            .retention
            .iter()
            .map(|row| {
                json!({
                    "category": category(row.category),
                    "oldRow": row.old_row,
                    "newRow": row.new_row,
                })
            })
            .collect::<Vec<Value>>(),
    })
}

pub fn diff_text(response: &proto::DiffPolicyResponse) -> String {
    let mut text = format!(
        "{} -> {}: {} subjects compared (a check naming no conversation, per purpose)\n",
        response.old_version, response.new_version, response.subjects_scanned
    );
    if response.truncated {
        text.push_str(&format!(
            "  truncated: only the {} largest groups of subjects sharing a state were compared\n",
            response.distinct_states
        ));
    }
    if response.examples_withheld {
        text.push_str("  examples withheld: subject ids need the subjects:read scope\n");
    }
    for diff in &response.purposes {
        text.push_str(&format!(
            "  {:<28} {:>8} changed  {:>8} ALLOW->DENY  {:>8} DENY->ALLOW\n",
            short(&purpose(diff.purpose), "PURPOSE_"),
            diff.changed,
            diff.allow_to_deny,
            diff.deny_to_allow
        ));
        for example in &diff.examples {
            text.push_str(&format!(
                "      e.g. {}: {} {} -> {} {}\n",
                example.subject_id,
                short(&decision(example.old_decision), "DECISION_").to_ascii_uppercase(),
                example.old_rule,
                short(&decision(example.new_decision), "DECISION_").to_ascii_uppercase(),
                example.new_rule
            ));
        }
    }
    if response.retention.is_empty() {
        text.push_str("retention schedule: the same\n");
    } else {
        text.push_str("retention schedule: rows that change\n");
    }
    for row in &response.retention {
        text.push_str(&format!(
            "  {}\n    - {}\n    + {}\n",
            short(&category(row.category), "DATA_CATEGORY_"),
            row.old_row,
            row.new_row
        ));
    }
    text
}

fn category(value: i32) -> String {
    enum_name::<proto::DataCategory>(value, |value| value.as_str_name())
}

fn retention_event(value: i32) -> String {
    enum_name::<proto::RetentionEvent>(value, |value| value.as_str_name())
}

fn period_json(period: Option<&proto::RetentionPeriod>) -> Value {
    use proto::retention_period::Length;
    match period.and_then(|period| period.length) {
        Some(Length::Days(days)) => json!({ "days": days }),
        Some(Length::Years(years)) => json!({ "years": years }),
        Some(Length::YearsFromFinancialYearClose(years)) => {
            json!({ "yearsFromFinancialYearClose": years })
        }
        None => json!({}),
    }
}

fn period_text(period: Option<&proto::RetentionPeriod>) -> String {
    use proto::retention_period::Length;
    let plural =
        |count: u32, unit: &str| format!("{count} {unit}{}", if count == 1 { "" } else { "s" });
    match period.and_then(|period| period.length) {
        Some(Length::Days(days)) => plural(days, "day"),
        Some(Length::Years(years)) => plural(years, "year"),
        Some(Length::YearsFromFinancialYearClose(years)) => format!(
            "{} from the close of the financial year of",
            plural(years, "year")
        ),
        None => "?".to_owned(),
    }
}

pub fn retention_json(response: &proto::RetentionQueryResponse) -> Value {
    use proto::retention_query_response::Keep;
    let mut object = json!({
        "category": category(response.category),
        "subjectId": response.subject_id,
        "legalHold": response.legal_hold,
        "section": response.section,
        "policyVersion": response.policy_version,
        "due": response.due,
        "revision": response.revision,
        "asOf": timestamp(response.as_of.as_ref()),
    });
    let (name, value) = match &response.keep {
        Some(Keep::KeepUntil(until)) => ("keepUntil", timestamp(Some(until))),
        Some(Keep::UntilEvent(event)) => ("untilEvent", json!(retention_event(*event))),
        Some(Keep::AfterEvent(after)) => (
            "afterEvent",
            json!({
                "event": retention_event(after.event),
                "period": period_json(after.period.as_ref()),
            }),
        ),
        Some(Keep::NotKept(not_kept)) => ("notKept", json!(not_kept)),
        None => return object,
    };
    object[name] = value;
    object
}

pub fn retention_text(response: &proto::RetentionQueryResponse) -> String {
    use proto::retention_query_response::Keep;
    let event = |value: i32| short(&retention_event(value), "RETENTION_EVENT_");
    let keep = match &response.keep {
        Some(Keep::KeepUntil(until)) => format!("kept until {}", time_text(Some(until))),
        Some(Keep::UntilEvent(value)) => format!("kept until {}", event(*value)),
        Some(Keep::AfterEvent(after)) => format!(
            "kept {} after {}",
            period_text(after.period.as_ref()),
            event(after.event)
        ),
        Some(Keep::NotKept(_)) => "not kept".to_owned(),
        None => "-".to_owned(),
    };
    let mut text = format!(
        "{}  {keep}  {}",
        short(&category(response.category), "DATA_CATEGORY_"),
        if response.due { "DUE" } else { "not due" }
    );
    if response.legal_hold {
        text.push_str("  legal hold");
    }
    text.push_str(&format!(
        "\n  {} (policy {}, as of {})",
        response.section,
        response.policy_version,
        time_text(response.as_of.as_ref())
    ));
    text
}

pub fn due_json(response: &proto::RetentionDueResponse) -> Value {
    let subjects: Vec<Value> = response
        .subjects
        .iter()
        .map(|subject| {
            json!({
                "subjectId": subject.subject_id,
                "keepUntil": timestamp(subject.keep_until.as_ref()),
                "legalHold": subject.legal_hold,
            })
        })
        .collect();
    json!({
        "category": category(response.category),
        "before": timestamp(response.before.as_ref()),
        "policyVersion": response.policy_version,
        "recordCutoff": response.record_cutoff.as_ref().map(|cutoff| json!({
            "event": retention_event(cutoff.event),
            "dueThrough": timestamp(cutoff.due_through.as_ref()),
        })),
        "readsSubjects": response.reads_subjects,
        "subjects": subjects,
        "nextPageToken": response.next_page_token,
        "revision": response.revision,
    })
}

pub fn due_text(response: &proto::RetentionDueResponse) -> String {
    let mut text = format!(
        "{} due at {} (policy {})\n",
        short(&category(response.category), "DATA_CATEGORY_"),
        time_text(response.before.as_ref()),
        response.policy_version
    );
    if let Some(cutoff) = &response.record_cutoff {
        let event = short(&retention_event(cutoff.event), "RETENTION_EVENT_");
        match &cutoff.due_through {
            Some(through) => text.push_str(&format!(
                "  records: every one whose {event} is at or before {}\n",
                time_text(Some(through))
            )),
            None => text.push_str(&format!("  records: none yet, whatever their {event}\n")),
        }
    }
    if response.reads_subjects {
        text.push_str(&format!(
            "  subjects whose data is due: {}\n",
            response.subjects.len()
        ));
    }
    for subject in &response.subjects {
        let since = match &subject.keep_until {
            Some(until) => format!("since {}", time_text(Some(until))),
            None => "not kept at all".to_owned(),
        };
        text.push_str(&format!(
            "    {:<32} {since}{}\n",
            subject.subject_id,
            if subject.legal_hold {
                "  legal hold"
            } else {
                ""
            }
        ));
    }
    text
}
