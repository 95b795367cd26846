//! How commands print answers: aligned text for people, JSON for scripts (`--json`).
//!
//! An answer of the API is printed in JSON as its message, derived from `proto/` by its
//! descriptors (prost-reflect): the proto3 JSON mapping, as grpcurl prints it — lowerCamelCase
//! field names, enum values by name, 64-bit integers as strings, times in RFC 3339 — with every
//! field, those without presence at their default, and a message or `optional` field that is
//! not set left out. What is not a message of the API (the documents of docs/audit.md, reports
//! of work done without a server) is printed as its own documented object.

use std::sync::LazyLock;

use anyhow::Context as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::proto;

/// Prints to standard output as `println!` does, except that a reader that stopped reading
/// (`assent ... | head`) ends the command quietly, with status 0, as other Unix tools do, where
/// `println!` panics; any other failure to write ends it with status 5.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use out;

/// Writes to standard output (see [`out!`]).
pub fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {error}");
        std::process::exit(i32::from(super::ExitStatus::Error as u8));
    }
}

/// How a command prints what it has to say.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// `--json`: JSON on standard output, for scripts.
    pub json: bool,
}

impl Output {
    /// Prints an answer of the API: the message in JSON, or `text` of it.
    pub fn message<M: prost::Message>(
        self,
        message: &M,
        text: impl FnOnce(&M) -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            out!("{}", message_json(message)?);
        } else {
            print_text(&text(message));
        }
        Ok(())
    }

    /// Prints what is not a message of the API: `json`, or `text`.
    pub fn value(self, json: Value, text: &str) {
        if self.json {
            out!("{json}");
        } else {
            print_text(text);
        }
    }

    /// A hint for a person at a terminal, such as how to ask for the next page: on standard
    /// error, so that standard output holds the answer alone, and not with `--json`, whose
    /// objects carry what it says (`nextPageToken`).
    pub fn hint(self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }
}

/// Text as lines, each ended by a newline; nothing at all for an empty text.
fn print_text(text: &str) {
    let text = text.trim_end_matches('\n');
    if !text.is_empty() {
        out!("{text}");
    }
}

/// The descriptors of `proto/`, as the client crate encodes them for server reflection.
static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("the descriptors of proto/ decode")
});

/// A message of `assent.v1` in the proto3 JSON mapping (see the top of this file).
pub fn message_json<M: prost::Message>(message: &M) -> anyhow::Result<Value> {
    let name = message_name::<M>();
    let descriptor = DESCRIPTORS
        .get_message_by_name(&name)
        .with_context(|| format!("{name}: no such message in proto/"))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .with_context(|| format!("{name}: cannot read the answer"))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .with_context(|| format!("{name}: cannot print the answer as JSON"))
}

/// The full name of the message of a generated type: prost names each type after its message,
/// in the module of its package (`proto::CheckResponse` is `assent.v1.CheckResponse`).
fn message_name<M>() -> String {
    let path = std::any::type_name::<M>();
    let name = path.rsplit("::").next().unwrap_or(path);
    format!("assent.v1.{name}")
}

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

/// A time as RFC 3339 text with microseconds, `-` when unset (or before 1970 or after 9999,
/// which RFC 3339's four-digit years cannot write).
pub fn time_text(stamp: Option<&prost_types::Timestamp>) -> String {
    let Some(stamp) = stamp else {
        return "-".to_owned();
    };
    let Ok(seconds) = u64::try_from(stamp.seconds) else {
        return "-".to_owned();
    };
    if seconds > LAST_RFC3339_SECOND {
        return "-".to_owned();
    }
    let time = std::time::UNIX_EPOCH
        + std::time::Duration::new(seconds, u32::try_from(stamp.nanos).unwrap_or_default());
    humantime::format_rfc3339_micros(time).to_string()
}

/// 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// The value of a wire enum without its prefix, lower-case: `DECISION_ALLOW` → `allow`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
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

pub fn write_text(response: &proto::WriteResponse) -> String {
    if response.changed {
        format!("ok, revision {}", response.revision)
    } else {
        format!("ok, nothing to change, revision {}", response.revision)
    }
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

pub fn event_text(event: &proto::AuditEvent) -> String {
    let at = time_text(event.at.as_ref());
    let actor = event.actor.clone().unwrap_or_default();
    format!(
        "{revision:<8} {at}  {kind:<21} {subject}  by {caller}/{operator}  {detail}",
        revision = event.revision,
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

pub fn recorded_text(recorded: &proto::RecordedDecision) -> String {
    let at = time_text(recorded.decided_at.as_ref());
    let mut line = format!(
        "{at}  {decision:<5} {purpose:<22} {subject}  rule {rule}  by {caller}  {id}",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer a command prints finds its message among the descriptors.
    #[test]
    fn every_answer_printed_is_a_message_of_proto() {
        fn printed<M: prost::Message + Default>() {
            let name = message_name::<M>();
            message_json(&M::default()).unwrap_or_else(|error| panic!("{name}: {error:#}"));
        }
        printed::<proto::CheckResponse>();
        printed::<proto::WriteResponse>();
        printed::<proto::Subject>();
        printed::<proto::ConsentHistoryResponse>();
        printed::<proto::ListEventsResponse>();
        printed::<proto::ListDecisionsResponse>();
        printed::<proto::VerifyChainResponse>();
        printed::<proto::VerifyStateResponse>();
        printed::<proto::ErasePayloadsResponse>();
        printed::<proto::WatchResponse>();
        printed::<proto::ApplyPolicyResponse>();
        printed::<proto::ListPoliciesResponse>();
        printed::<proto::PolicyVersion>();
        printed::<proto::DiffPolicyResponse>();
        printed::<proto::RightsRequest>();
        printed::<proto::RightsWriteResponse>();
        printed::<proto::ListRightsResponse>();
        printed::<proto::RetentionQueryResponse>();
        printed::<proto::RetentionDueResponse>();
    }

    #[test]
    fn messages_are_printed_in_the_proto3_json_mapping() {
        let response = proto::VerifyChainResponse {
            ok: true,
            events_checked: 12,
            ..Default::default()
        };
        assert_eq!(
            message_json(&response).unwrap(),
            serde_json::json!({
                "ok": true,
                "eventsChecked": "12",
                "firstBadEventId": "",
                "rootHash": "",
            })
        );
        let record = proto::ConsentEvent {
            purpose: proto::Purpose::Memory as i32,
            recorded_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 123_456_000,
            }),
            ..Default::default()
        };
        let json = message_json(&record).unwrap();
        assert_eq!(json["purpose"], "PURPOSE_MEMORY");
        assert_eq!(json["recordedAt"], "2026-01-01T00:00:00.123456Z");
        assert_eq!(json["choice"], "CHOICE_UNSPECIFIED");
        // A message field that is not set is left out.
        assert!(json.get("expiresAt").is_none(), "{json}");
        assert!(json.get("actor").is_none(), "{json}");
    }
}
