//! The console's pages, as HTML: what each shows, from the answers of the API.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use crate::auth::Scope;
use crate::calendar::{Date, MICROS_PER_DAY};
use crate::proto;

/// Every purpose, in enum order.
pub(super) const PURPOSES: [proto::Purpose; 10] = [
    proto::Purpose::ModelTraining,
    proto::Purpose::Memory,
    proto::Purpose::SensitiveMemory,
    proto::Purpose::IpGeolocation,
    proto::Purpose::MarketingEmail,
    proto::Purpose::AnalyticsCookies,
    proto::Purpose::MarketingCookies,
    proto::Purpose::AbuseMonitoringRetention,
    proto::Purpose::ProductImprovement,
    proto::Purpose::ServiceDelivery,
];

/// The instant an "as of" field names, in UTC: the last microsecond of the day
/// (`YYYY-MM-DD`), minute (`YYYY-MM-DDTHH:MM`) or second (`YYYY-MM-DDTHH:MM:SS`) it gives, as
/// the browser's date-and-time picker sends it.
pub(super) fn parse_as_of(text: &str) -> Option<i64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let compact: String = date.split('-').collect();
    if date.len() != 10 || compact.len() != 8 {
        return None;
    }
    let day = Date::parse_compact(&compact)?;
    let Some(time) = time else {
        return Some(day.end_micros());
    };
    let fields: Vec<&str> = time.split(':').collect();
    let number = |field: &str, below: i64| {
        (field.len() == 2 && field.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| field.parse::<i64>().ok())
            .flatten()
            .filter(|value| *value < below)
    };
    let (seconds, length) = match fields.as_slice() {
        [hours, minutes] => (number(hours, 24)? * 3600 + number(minutes, 60)? * 60, 60),
        [hours, minutes, seconds] => (
            number(hours, 24)? * 3600 + number(minutes, 60)? * 60 + number(seconds, 60)?,
            1,
        ),
        _ => return None,
    };
    Some(day.start_micros() + (seconds + length) * 1_000_000 - 1)
}

/// Whether a filter (empty: any) keeps a value.
pub(super) fn matches(filter: &str, value: &str) -> bool {
    filter.is_empty() || filter == value
}

/// Whether an audit event is a step of rights request `request_id`.
pub(super) fn names_request(event: &proto::AuditEvent, request_id: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(&event.detail_json).is_ok_and(|detail| {
        detail["request_id"].as_str() == Some(request_id)
            || detail["rights_request"].as_str() == Some(request_id)
    })
}

/// An export as the CLI writes it, or the reason it cannot be made.
pub(super) fn export_json(export: proto::SubjectExport) -> Result<String, String> {
    let document = crate::audit::offline::SubjectExport::from_served(export)
        .map_err(|problem| format!("the export holds {problem}"))?;
    serde_json::to_string_pretty(&document).map_err(|error| error.to_string())
}

/// The purposes whose answer (decision or rule) differs from `before` to `after` (one answer
/// per purpose each, in the same order): `purpose: ALLOW (T1) → DENY (T5)`.
pub(super) fn flips(
    before: &[proto::CheckResponse],
    after: &[proto::CheckResponse],
) -> Vec<String> {
    let answer = |check: &proto::CheckResponse| {
        format!(
            "{} ({})",
            short(check.decision().as_str_name(), "DECISION_"),
            check.rule
        )
    };
    before
        .iter()
        .zip(after)
        .filter(|(before, after)| before.decision != after.decision || before.rule != after.rule)
        .map(|(before, after)| {
            format!(
                "{}: {} → {}",
                purpose_name(after.purpose),
                answer(before),
                answer(after)
            )
        })
        .collect()
}

/// `DECISION_ALLOW` → `ALLOW`; `PURPOSE_MODEL_TRAINING` → `model training`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn words(name: &str, prefix: &str) -> String {
    short(name, prefix).to_lowercase().replace('_', " ")
}

fn purpose_name(purpose: i32) -> String {
    proto::Purpose::try_from(purpose)
        .map(|purpose| words(purpose.as_str_name(), "PURPOSE_"))
        .unwrap_or_else(|_| format!("purpose {purpose}"))
}

/// A timestamp in microseconds since the epoch.
pub(super) fn micros(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000)
}

/// `2026-12-06 21:58 UTC`.
fn instant(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return "—".to_owned();
    };
    let micros = micros(timestamp);
    let date = Date::from_micros(micros);
    let minutes = micros.rem_euclid(MICROS_PER_DAY) / 60_000_000;
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        date.year,
        date.month,
        date.day,
        minutes / 60,
        minutes % 60
    )
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// A URL query value, percent-encoded.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Subjects,
    Rights,
    Audit,
    Policies,
    None,
}

fn layout(title: &str, viewer: Option<&Viewer>, section: Section, body: Markup) -> Markup {
    let link = |href: &str, label: &str, here: Section| {
        html! {
            a href=(href) aria-current=[(section == here).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · assent" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    nav aria-label="Sections" {
                        span class="brand" { "assent" }
                        (link("/subjects", "Subjects", Section::Subjects))
                        (link("/rights", "Rights requests", Section::Rights))
                        (link("/audit", "Audit", Section::Audit))
                        (link("/policies", "Policies", Section::Policies))
                    }
                    @if let Some(viewer) = viewer {
                        p class="viewer" { "Signed in as " strong { (viewer.name) } }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub(super) fn refusal(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    layout(
        title,
        None,
        Section::None,
        html! {
            p class="error" role="alert" { (message) }
            p { a href="/subjects" { "Back to the subjects" } }
        },
    )
}

fn subject_form(id: &str, as_of: &str) -> Markup {
    html! {
        form class="search" method="get" action="/subjects" role="search" {
            label for="id" { "Subject id" }
            input id="id" name="id" type="search" value=(id) required
                autocomplete="off" spellcheck="false" maxlength="128";
            label for="as_of" { "Decisions as of (UTC)" }
            input id="as_of" name="as_of" type="datetime-local" step="1" value=(as_of);
            button type="submit" { "Show" }
        }
    }
}

pub(super) fn subject_search(viewer: &Viewer) -> Markup {
    layout(
        "Subjects",
        Some(viewer),
        Section::Subjects,
        html! {
            (subject_form("", ""))
            p class="hint" {
                "A subject's status, its decisions for every purpose and why, its history, "
                "and its rights requests. Leave the instant empty for the decisions now."
            }
        },
    )
}

/// The facts every rule reads of a subject, as `dt`/`dd` pairs.
fn subject_facts(subject: &proto::Subject) -> Markup {
    html! {
        dt { "Status" } dd { (short(subject.status().as_str_name(), "STATUS_")) }
        dt { "Plan" } dd { (short(subject.plan().as_str_name(), "PLAN_")) }
        dt { "Jurisdiction" } dd { (subject.jurisdiction) }
        dt { "Global Privacy Control" } dd { (yes_no(subject.gpc)) }
        dt { "Zero data retention" } dd { (yes_no(subject.zero_data_retention)) }
    }
}

/// What the subject page shows.
pub(super) struct SubjectView<'a> {
    pub subject: &'a proto::Subject,
    pub decisions: &'a [proto::CheckResponse],
    /// The instant picked (as the field sent it), when the decisions are as of then.
    pub as_of: Option<String>,
    pub timeline: &'a proto::ListEventsResponse,
    /// The decisions each event of the timeline flipped, when asked for (or why they could not
    /// be had).
    pub flips: Option<Result<&'a [Vec<String>], &'a str>>,
    pub page: &'a str,
    /// `None`: the viewer may not read rights requests.
    pub requests: Option<&'a [proto::RightsRequest]>,
    pub now_micros: i64,
}

pub(super) fn subject(viewer: &Viewer, view: &SubjectView) -> Markup {
    let subject = view.subject;
    let as_of = view.as_of.clone().unwrap_or_default();
    let choice_of = |purpose: i32| {
        subject
            .choices
            .iter()
            .find(|choice| choice.purpose == purpose)
    };
    let decisions_heading = match &view.as_of {
        Some(instant) => format!("Decisions as of {} UTC", instant.replace('T', " ")),
        None => "Decisions now".to_owned(),
    };
    layout(
        &format!("Subject {}", subject.subject_id),
        Some(viewer),
        Section::Subjects,
        html! {
            (subject_form(&subject.subject_id, &as_of))
            section aria-labelledby="facts" {
                h2 id="facts" { "Facts now" }
                dl class="facts" {
                    (subject_facts(subject))
                    dt { "Revision" } dd { code { (subject.revision) } }
                }
            }
            section aria-labelledby="decisions" {
                h2 id="decisions" { (decisions_heading) }
                (table(
                    "Decisions",
                    &["Purpose", "Decision", "Rule", "Reason", "Lawful basis"],
                    html! {
                        @for decision in view.decisions {
                            @let allow = decision.decision() == proto::Decision::Allow;
                            tr {
                                th scope="row" { (purpose_name(decision.purpose)) }
                                td {
                                    span class=(if allow { "badge allow" } else { "badge deny" }) {
                                        (short(decision.decision().as_str_name(), "DECISION_"))
                                    }
                                    @if decision.degraded { " (degraded)" }
                                }
                                td { code { (decision.rule) } }
                                td { (words(decision.reason().as_str_name(), "REASON_")) }
                                td {
                                    @if decision.basis() == proto::LawfulBasis::Unspecified {
                                        "none (nothing is processed)"
                                    } @else {
                                        (words(decision.basis().as_str_name(), "LAWFUL_BASIS_"))
                                    }
                                }
                            }
                        }
                    },
                ))
                h3 { "Why" }
                @for decision in view.decisions {
                    details class="why" {
                        summary {
                            (purpose_name(decision.purpose)) ": "
                            (short(decision.decision().as_str_name(), "DECISION_"))
                            " by rule " (decision.rule)
                        }
                        p class="cited" { (decision.explanation) }
                        p { "The inputs the rule read:" }
                        dl class="facts" {
                            (subject_facts(subject))
                            dt { "Choice for this purpose" }
                            dd {
                                @match choice_of(decision.purpose) {
                                    Some(choice) => {
                                        (short(choice.choice().as_str_name(), "CHOICE_"))
                                        " on " (instant(choice.updated_at.as_ref()))
                                        " by " (choice.caller)
                                        @if !choice.notice_version.is_empty() {
                                            ", notice " (choice.notice_version)
                                        }
                                        @if choice.expires_at.is_some() {
                                            ", expires " (instant(choice.expires_at.as_ref()))
                                        }
                                    }
                                    None => "none recorded",
                                }
                            }
                            dt { "Policy version" } dd { (decision.policy_version) }
                            dt { "State revision" } dd { code { (decision.revision) } }
                        }
                        @if view.as_of.is_some() {
                            p class="hint" {
                                "The facts shown are today's; the decision is from the facts "
                                "and the policy in force at the instant picked."
                            }
                        }
                    }
                }
            }
            (timeline(view))
            @if let Some(requests) = view.requests {
                section aria-labelledby="requests" {
                    h2 id="requests" { "Rights requests" }
                    @if requests.is_empty() {
                        p { "None." }
                    } @else {
                        (request_table(requests, view.now_micros))
                    }
                }
            }
            @if viewer.may(Scope::AuditRead) {
                p {
                    a href={ "/audit/export?subject=" (encode(&subject.subject_id)) } {
                        "Export this subject's audit events with their proofs (JSON)"
                    }
                }
            }
        },
    )
}

fn timeline(view: &SubjectView) -> Markup {
    let subject_id = &view.subject.subject_id;
    let as_of = view.as_of.clone().unwrap_or_default();
    html! {
        section aria-labelledby="history" {
            h2 id="history" { "History" }
            p class="hint" {
                "Every change of this subject, newest first: what it changed, who made it, and "
                "why. Pick an instant above to see the decisions as they stood then."
            }
            @match view.flips {
                None => {
                    p {
                        a href={
                            "/subjects?id=" (encode(subject_id)) "&as_of=" (as_of)
                            "&page=" (encode(view.page)) "&flips=1#history"
                        } { "Show the decisions each change flipped" }
                        " (a check of every purpose as of each change and just before it)"
                    }
                    (events_table("History", &view.timeline.events, false, None))
                }
                Some(Err(message)) => {
                    p class="error" role="alert" { "The decisions flipped could not be read: " (message) }
                    (events_table("History", &view.timeline.events, false, None))
                }
                Some(Ok(flips)) => (events_table("History", &view.timeline.events, false, Some(flips))),
            }
            nav class="pages" aria-label="History pages" {
                @if !view.page.is_empty() {
                    a href={ "/subjects?id=" (encode(subject_id)) "&as_of=" (as_of) } { "Newest changes" }
                }
                @if !view.timeline.next_page_token.is_empty() {
                    a href={
                        "/subjects?id=" (encode(subject_id)) "&as_of=" (as_of)
                        "&page=" (encode(&view.timeline.next_page_token))
                    } { "Older changes" }
                }
            }
        }
    }
}

/// What an event changed, from its detail: `before → after` of the fields it names.
fn change_summary(event: &proto::AuditEvent) -> String {
    if event.payload_erased {
        return "(erased)".to_owned();
    }
    let Ok(detail) = serde_json::from_str::<serde_json::Value>(&event.detail_json) else {
        return String::new();
    };
    let show = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "none".to_owned(),
        serde_json::Value::String(text) => text.to_lowercase(),
        other => other.to_string(),
    };
    let mut parts = Vec::new();
    if let Some(purpose) = detail["purpose"].as_str() {
        parts.push(purpose.to_lowercase().replace('_', " "));
    }
    match (&detail["before"], &detail["after"]) {
        (serde_json::Value::Object(before), serde_json::Value::Object(after)) => {
            for (field, value) in after {
                let old = before.get(field).unwrap_or(&serde_json::Value::Null);
                if old != value {
                    parts.push(format!("{field}: {} → {}", show(old), show(value)));
                }
            }
        }
        (before, after) if !after.is_object() && (!before.is_null() || !after.is_null()) => {
            parts.push(format!("{} → {}", show(before), show(after)));
        }
        (serde_json::Value::Null, serde_json::Value::Object(after)) => {
            for (field, value) in after {
                parts.push(format!("{field}: {}", show(value)));
            }
        }
        _ => {}
    }
    for key in ["request_id", "rights_request", "state", "conversation_id"] {
        if let Some(value) = detail[key].as_str() {
            parts.push(format!("{}: {value}", key.replace('_', " ")));
        }
    }
    parts.join("; ")
}

/// A table under `label`, scrolling sideways on a narrow screen (and taking keyboard focus to
/// do so), with a header row of `columns` and the rows given.
fn table(label: &str, columns: &[&str], rows: Markup) -> Markup {
    html! {
        div class="table" tabindex="0" role="region" aria-label=(label) {
            table {
                thead { tr { @for column in columns { th scope="col" { (column) } } } }
                tbody { (rows) }
            }
        }
    }
}

/// Whole days left before `due_at`, and the urgency class: overdue, within a week, later.
fn days_left(request: &proto::RightsRequest, now_micros: i64) -> (i64, &'static str) {
    let due = request.due_at.as_ref().map(micros).unwrap_or(now_micros);
    let left = (due - now_micros).div_euclid(MICROS_PER_DAY);
    let class = if due < now_micros {
        "urgent"
    } else if left < 7 {
        "soon"
    } else {
        "later"
    };
    (left, class)
}

fn request_table(requests: &[proto::RightsRequest], now_micros: i64) -> Markup {
    let refs: Vec<&proto::RightsRequest> = requests.iter().collect();
    request_rows(&refs, now_micros)
}

fn request_rows(requests: &[&proto::RightsRequest], now_micros: i64) -> Markup {
    html! {
        (table(
            "Rights requests",
            &["Request", "Subject", "Kind", "Regime", "State", "Due", "Days left"],
            html! {
                @for request in requests {
                    @let (left, urgency) = days_left(request, now_micros);
                    @let open = !matches!(request.state(), proto::RequestState::Completed | proto::RequestState::Refused);
                    tr {
                        td { a href={ "/rights/" (encode(&request.request_id)) } { (request.request_id) } }
                        td { a href={ "/subjects?id=" (encode(&request.subject_id)) } { (request.subject_id) } }
                        td { (words(request.kind().as_str_name(), "RIGHT_KIND_")) }
                        td { (short(request.regime().as_str_name(), "REGIME_")) }
                        td { (words(request.state().as_str_name(), "REQUEST_STATE_")) }
                        td { (instant(request.due_at.as_ref())) }
                        td {
                            @if open {
                                span class={ "badge " (urgency) } {
                                    @if left < 0 { "overdue by " ((-left)) " d" } @else { (left) " d" }
                                }
                            } @else { "answered" }
                        }
                    }
                }
            },
        ))
    }
}

/// What the queue shows.
pub(super) struct QueueView<'a> {
    pub requests: &'a [&'a proto::RightsRequest],
    pub state: &'a str,
    pub kind: &'a str,
    pub regime: &'a str,
    /// More open requests than the page read.
    pub more: bool,
    pub now_micros: i64,
}

fn select(name: &str, label: &str, current: &str, options: &[&str], prefix: &str) -> Markup {
    html! {
        label for=(name) { (label) }
        select id=(name) name=(name) {
            option value="" selected[current.is_empty()] { "any" }
            @for option in options {
                option value=(option) selected[current == *option] { (words(option, prefix)) }
            }
        }
    }
}

pub(super) fn queue(viewer: &Viewer, view: &QueueView) -> Markup {
    let states = [
        "REQUEST_STATE_RECEIVED",
        "REQUEST_STATE_VERIFYING",
        "REQUEST_STATE_IN_PROGRESS",
        "REQUEST_STATE_APPEALED",
    ];
    let kinds: Vec<&str> = (1..=9)
        .filter_map(|value| proto::RightKind::try_from(value).ok())
        .map(|kind| kind.as_str_name())
        .collect();
    let regimes = ["REGIME_GDPR", "REGIME_US_STATE"];
    layout(
        "Rights requests",
        Some(viewer),
        Section::Rights,
        html! {
            p class="hint" {
                "Every request still owed an answer, the nearest deadline first. Red: overdue; "
                "amber: due within a week."
            }
            form class="filters" method="get" action="/rights" {
                (select("state", "State", view.state, &states, "REQUEST_STATE_"))
                (select("kind", "Kind", view.kind, &kinds, "RIGHT_KIND_"))
                (select("regime", "Regime", view.regime, &regimes, "REGIME_"))
                button type="submit" { "Filter" }
            }
            @if view.requests.is_empty() {
                p { "No open request matches." }
            } @else {
                (request_rows(view.requests, view.now_micros))
            }
            @if view.more {
                p class="hint" { "Only the 1,000 nearest deadlines are read." }
            }
        },
    )
}

/// What a rights request's page shows.
pub(super) struct RequestView<'a> {
    pub request: &'a proto::RightsRequest,
    /// Its audit events.
    pub steps: &'a [proto::AuditEvent],
    pub now_micros: i64,
    /// What the viewer just did, if anything.
    pub done: Option<&'a str>,
}

pub(super) fn rights_request(viewer: &Viewer, view: &RequestView) -> Markup {
    let request = view.request;
    let (left, urgency) = days_left(request, view.now_micros);
    let state = request.state();
    let open = !matches!(
        state,
        proto::RequestState::Completed | proto::RequestState::Refused
    );
    let next: &[proto::RequestState] = match state {
        proto::RequestState::Received => &[
            proto::RequestState::Verifying,
            proto::RequestState::InProgress,
        ],
        proto::RequestState::Verifying => &[proto::RequestState::InProgress],
        proto::RequestState::InProgress | proto::RequestState::Appealed => {
            &[proto::RequestState::Completed]
        }
        _ => &[],
    };
    let action = format!("/rights/{}", encode(&request.request_id));
    layout(
        &format!("Rights request {}", request.request_id),
        Some(viewer),
        Section::Rights,
        html! {
            @if let Some(done) = view.done {
                p class="done" role="status" { (done) }
            }
            dl class="facts" {
                dt { "Subject" }
                dd { a href={ "/subjects?id=" (encode(&request.subject_id)) } { (request.subject_id) } }
                dt { "Kind" } dd { (words(request.kind().as_str_name(), "RIGHT_KIND_")) }
                dt { "Regime" } dd { (short(request.regime().as_str_name(), "REGIME_")) " (" (request.jurisdiction) ")" }
                dt { "State" } dd { (words(state.as_str_name(), "REQUEST_STATE_")) }
                dt { "Received" } dd { (instant(request.received_at.as_ref())) }
                dt { "Due" }
                dd {
                    (instant(request.due_at.as_ref()))
                    @if open {
                        " " span class={ "badge " (urgency) } {
                            @if left < 0 { "overdue by " ((-left)) " d" } @else { (left) " d left" }
                        }
                    }
                }
                dt { "Identity verified" } dd { (yes_no(request.identity_verified)) }
                dt { "Extended" }
                dd {
                    (yes_no(request.extended))
                    @if !request.extension_reason.is_empty() { ": " (request.extension_reason) }
                }
                @if !request.refusal_reason.is_empty() {
                    dt { "Refused because" } dd { (request.refusal_reason) }
                }
                dt { "Effect applied" } dd { (yes_no(request.effect_applied)) }
                dt { "Revision" } dd { code { (request.revision) } }
            }
            @if open && viewer.may(Scope::RightsWrite) {
                section aria-labelledby="actions" class="actions" {
                    h2 id="actions" { "Actions" }
                    form method="post" action={ (action) "/advance" } {
                        input type="hidden" name="csrf" value=(viewer.csrf());
                        label for="state" { "Move to" }
                        select id="state" name="state" {
                            @for next in next {
                                option value=(next.as_str_name()) { (words(next.as_str_name(), "REQUEST_STATE_")) }
                            }
                            option value="REQUEST_STATE_REFUSED" { "refused" }
                        }
                        label class="check" {
                            input type="checkbox" name="identity_verified" value="1"
                                checked[request.identity_verified];
                            " Identity verified"
                        }
                        label for="advance-reason" { "Reason (required to refuse; told to the requester)" }
                        input id="advance-reason" name="reason" type="text" maxlength="1024";
                        button type="submit" { "Advance" }
                    }
                    @if !request.extended {
                        form method="post" action={ (action) "/extend" } {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            label for="extend-reason" { "Reason for the extension (told to the requester)" }
                            input id="extend-reason" name="reason" type="text" required maxlength="1024";
                            button type="submit" { "Extend the deadline" }
                        }
                    }
                }
            }
            section aria-labelledby="steps" {
                h2 id="steps" { "Steps" }
                @if !viewer.may(Scope::AuditRead) {
                    p class="hint" { "Reading the steps needs the audit:read scope." }
                } @else if view.steps.is_empty() {
                    p { "None recorded." }
                } @else {
                    (events_table("Steps", view.steps, true, None))
                }
            }
        },
    )
}

/// Audit events, a row each: when, what kind, (whose, with `with_subject`,) what it changed, (the
/// decisions it flipped, with `flips`, one list per event,) the caller, the operator and their
/// reason, the revision.
fn events_table(
    label: &str,
    events: &[proto::AuditEvent],
    with_subject: bool,
    flips: Option<&[Vec<String>]>,
) -> Markup {
    let mut columns = vec!["When", "Event"];
    if with_subject {
        columns.push("Subject");
    }
    columns.push("What changed");
    if flips.is_some() {
        columns.push("Decisions flipped");
    }
    columns.extend(["Caller", "Operator and reason", "Revision"]);
    html! {
        (table(
            label,
            &columns,
            html! {
                @for (index, event) in events.iter().enumerate() {
                    @let actor = event.actor.clone().unwrap_or_default();
                    tr {
                        td { (instant(event.at.as_ref())) }
                        td { (event.kind.replace('_', " ")) }
                        @if with_subject {
                            td { a href={ "/subjects?id=" (encode(&event.subject_id)) } { (event.subject_id) } }
                        }
                        td { (change_summary(event)) }
                        @if let Some(flips) = flips {
                            td {
                                @match flips.get(index).filter(|flipped| !flipped.is_empty()) {
                                    Some(flipped) => {
                                        @for flip in flipped { (flip) br; }
                                    }
                                    None => "none",
                                }
                            }
                        }
                        td { (event.caller) }
                        td {
                            (actor.operator_id)
                            @if !actor.reason.is_empty() { ": " (actor.reason) }
                        }
                        td { code { (event.revision) } }
                    }
                }
            },
        ))
    }
}

/// What the audit page shows.
pub(super) struct AuditView<'a> {
    pub events: &'a proto::ListEventsResponse,
    pub page: &'a str,
    /// The chain's verification, or why it could not be run; `None` when not asked for.
    pub chain: Option<Result<&'a proto::VerifyChainResponse, &'a str>>,
    pub checkpoint: Option<&'a proto::Checkpoint>,
}

pub(super) fn audit(viewer: &Viewer, view: &AuditView) -> Markup {
    layout(
        "Audit",
        Some(viewer),
        Section::Audit,
        html! {
            section aria-labelledby="chain" {
                h2 id="chain" { "Chain" }
                @match view.chain {
                    None => {
                        p {
                            a href="/audit?verify=1" { "Verify the chain now" }
                            " (every event's hash, link, payload and leaf, read from the store)"
                        }
                    }
                    Some(Ok(chain)) if chain.ok => {
                        p class="done" role="status" {
                            "Verified: " (chain.events_checked) " events, every hash, link, "
                            "payload and leaf."
                        }
                        p { "Root " code class="hash" { (chain.root_hash) } }
                    }
                    Some(Ok(chain)) => {
                        p class="error" role="alert" {
                            "Does not verify: the first bad event is " (chain.first_bad_event_id) "."
                        }
                    }
                    Some(Err(message)) => p class="error" role="alert" { "Not verified: " (message) },
                }
                @match view.checkpoint {
                    Some(checkpoint) => {
                        p { "Latest signed checkpoint: " (checkpoint.tree_size) " events, origin " (checkpoint.origin) "." }
                        pre { (checkpoint.note) }
                    }
                    None => p class="hint" { "No signed checkpoint (no signing key is configured)." },
                }
            }
            section aria-labelledby="export" {
                h2 id="export" { "Export a subject" }
                form class="search" method="get" action="/audit/export" {
                    label for="subject" { "Subject id" }
                    input id="subject" name="subject" type="text" required maxlength="128"
                        autocomplete="off" spellcheck="false";
                    button type="submit" { "Export (JSON)" }
                }
                p class="hint" {
                    "Every event of the subject with its inclusion proof against the latest "
                    "signed checkpoint, as " code { "assent audit export" } " writes it; "
                    code { "assent audit verify-offline" } " checks it."
                }
            }
            section aria-labelledby="events" {
                h2 id="events" { "Events, newest first" }
                (events_table("Audit events", &view.events.events, true, None))
                nav class="pages" aria-label="Event pages" {
                    @if !view.page.is_empty() { a href="/audit" { "Newest events" } }
                    @if !view.events.next_page_token.is_empty() {
                        a href={ "/audit?page=" (encode(&view.events.next_page_token)) } { "Older events" }
                    }
                }
            }
        },
    )
}

pub(super) fn policies(
    viewer: &Viewer,
    versions: &proto::ListPoliciesResponse,
    diff: Option<Result<&proto::DiffPolicyResponse, &str>>,
) -> Markup {
    layout(
        "Policies",
        Some(viewer),
        Section::Policies,
        html! {
            section aria-labelledby="versions" {
                h2 id="versions" { "Versions" }
                (table(
                    "Policy versions",
                    &["Version", "In force from", "Stored", "Description"],
                    html! {
                        @for version in &versions.versions {
                            tr {
                                th scope="row" {
                                    (version.version)
                                    @if version.version == versions.in_force { " " span class="badge allow" { "in force" } }
                                    @if version.builtin { " (built in)" }
                                }
                                td { (instant(version.effective_from.as_ref())) }
                                td { (instant(version.applied_at.as_ref())) }
                                td { (version.description) }
                            }
                        }
                    },
                ))
            }
            section aria-labelledby="diff" {
                h2 id="diff" { "Compare a new file with the version in force" }
                form method="post" action="/policies/diff" {
                    input type="hidden" name="csrf" value=(viewer.csrf());
                    label for="policy_toml" { "Policy file (TOML)" }
                    textarea id="policy_toml" name="policy_toml" rows="10" required {}
                    button type="submit" { "Compare" }
                }
                @match diff {
                    None => {}
                    Some(Err(message)) => p class="error" role="alert" { (message) },
                    Some(Ok(diff)) => (diff_table(diff)),
                }
            }
        },
    )
}

fn diff_table(diff: &proto::DiffPolicyResponse) -> Markup {
    html! {
        p role="status" {
            "From " (diff.old_version) " to " (diff.new_version) ": " (diff.subjects_scanned)
            " subjects counted"
            @if diff.truncated { " (the smallest groups of states left out)" }
            "."
        }
        (table(
            "Answers changed",
            &["Purpose", "Answers changed", "ALLOW → DENY", "DENY → ALLOW", "Examples"],
            html! {
                @for purpose in &diff.purposes {
                    tr {
                        th scope="row" { (purpose_name(purpose.purpose)) }
                        td { (purpose.changed) }
                        td { (purpose.allow_to_deny) }
                        td { (purpose.deny_to_allow) }
                        td {
                            @for example in &purpose.examples {
                                a href={ "/subjects?id=" (encode(&example.subject_id)) } { (example.subject_id) }
                                " (" (example.old_rule) " → " (example.new_rule) ") "
                            }
                        }
                    }
                }
            },
        ))
        @if diff.examples_withheld {
            p class="hint" { "Examples are shown to callers that may read subjects." }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_as_of_field_names_the_end_of_its_day_minute_or_second() {
        let day = Date {
            year: 2026,
            month: 2,
            day: 28,
        };
        assert_eq!(parse_as_of("2026-02-28"), Some(day.end_micros()));
        let second = day.start_micros() + (13 * 3600 + 5 * 60 + 9) * 1_000_000;
        assert_eq!(parse_as_of("2026-02-28T13:05:09"), Some(second + 999_999));
        assert_eq!(
            parse_as_of("2026-02-28T13:05"),
            Some(second - 9_000_000 + 59_999_999)
        );
        for bad in [
            "2026-02-30",
            "20260228",
            "2026-2-28",
            "2026-02-28T24:00",
            "2026-02-28T1:05",
            "2026-02-28T13:05:60",
            "",
        ] {
            assert_eq!(parse_as_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("user-1@example.com"), "user-1%40example.com");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn a_choice_event_reads_as_its_purpose_and_the_change() {
        let event = proto::AuditEvent {
            detail_json: r#"{"purpose":"MODEL_TRAINING","before":"GRANTED","after":"REFUSED"}"#
                .into(),
            ..Default::default()
        };
        assert_eq!(change_summary(&event), "model training; granted → refused");
        let erased = proto::AuditEvent {
            payload_erased: true,
            ..Default::default()
        };
        assert_eq!(change_summary(&erased), "(erased)");
    }
}
