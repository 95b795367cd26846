//! The state tables checked against their audit events: every subject's rows rebuilt from its
//! events (the replay `as_of` uses) and compared, column by column.
//!
//! Every change writes its rows and its event in one transaction, so a subject's rows are what
//! its events make them; a row written past the write path (an `UPDATE choices` by hand, a
//! restored backup of one table) is not, and the hash chain cannot see it: the chain covers the
//! events only. This check does, and reports what differs by subject; it never changes a row.
//!
//! The check pages through subject ids in the database's order; each page (its ids, its rows
//! and its events, ordered by subject and sequence and read in pages of their own) is read in
//! one read transaction, so no write can fall between a subject's rows and its events, and no
//! transaction stays open for the whole check.
//!
//! Besides the state itself, the columns a write sets from its event are compared too: each
//! row's `revision` (the event that last wrote it), `updated_at` (that event's instant), a
//! subject's `created_at` and a choice's `caller`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::StoreError;
use super::replay::Replayed;
use super::rows::{self, from_i64};
use super::sql::Connection;
use crate::audit::{AuditEvent, EventKind};
use crate::policy::{ConversationFacts, PURPOSE_COUNT, Purpose, Rating};

/// How much of the store one statement of the check reads.
#[derive(Clone, Copy, Debug)]
pub(super) struct Paging {
    /// Subjects per page (one read transaction).
    pub subjects: u32,
    /// Audit events per statement.
    pub events: u32,
}

impl Default for Paging {
    fn default() -> Paging {
        Paging {
            subjects: 500,
            events: 5_000,
        }
    }
}

/// One subject whose rows differ from its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMismatch {
    pub subject_id: String,
    /// What differs, one line each, such as `choices.MODEL_TRAINING: stored GRANTED, events
    /// REFUSED`.
    pub differences: Vec<String>,
}

/// What a whole check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateReport {
    /// Subjects compared (those with rows, events or both), the unverifiable ones excepted.
    pub subjects_checked: u64,
    /// Subjects whose rows differ from their events.
    pub mismatched: u64,
    /// Subjects with an event whose payload was erased: their state cannot be rebuilt, so
    /// they are not compared.
    pub unverifiable: u64,
    /// The first mismatches in subject id order, at most the number asked for.
    pub mismatches: Vec<StateMismatch>,
    /// More subjects differ than are listed.
    pub truncated: bool,
}

impl StateReport {
    /// Every subject compared matches its events.
    pub fn ok(&self) -> bool {
        self.mismatched == 0
    }
}

/// What one subject's comparison found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Matches,
    Differs(Vec<String>),
    /// An event's payload was erased: the state cannot be rebuilt.
    Unverifiable,
}

/// One page of the check: each subject after the previous page's last, in id order.
#[derive(Debug)]
pub(super) struct Page {
    pub verdicts: Vec<(String, Verdict)>,
    /// The last subject id of the page: where the next one starts.
    pub last: Option<String>,
    /// The page held as many subjects as asked: more may follow.
    pub full: bool,
}

/// Checks the subjects after `after`, at most `limit`, inside an open read transaction.
pub(super) async fn page_in(
    connection: &mut Connection,
    after: &str,
    paging: Paging,
) -> Result<Page, StoreError> {
    let limit = i64::from(paging.subjects.max(1));
    // The first `limit` ids of the union are the first `limit` of the two bounded branches'
    // union, so each branch reads no more than the page from its index.
    let ids: Vec<(String,)> = connection
        .query(
            "SELECT subject_id FROM (
                 SELECT subject_id FROM (
                     SELECT subject_id FROM subjects WHERE subject_id > $1
                     ORDER BY subject_id LIMIT $2) AS stored
                 UNION
                 SELECT subject_id FROM (
                     SELECT DISTINCT subject_id FROM audit_events WHERE subject_id > $1
                     ORDER BY subject_id LIMIT $2) AS logged
             ) AS ids ORDER BY subject_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all_as()
        .await?;
    let Some((last,)) = ids.last().cloned() else {
        return Ok(Page {
            verdicts: Vec::new(),
            last: None,
            full: false,
        });
    };
    let mut stored: HashMap<String, Tables> = HashMap::new();
    read_subjects(&mut *connection, after, &last, &mut stored).await?;
    read_choices(&mut *connection, after, &last, &mut stored).await?;
    read_conversations(&mut *connection, after, &last, &mut stored).await?;
    let rebuilt = rebuild(&mut *connection, after, &last, paging.events).await?;

    let mut verdicts = Vec::with_capacity(ids.len());
    let mut rebuilt = rebuilt;
    for (subject_id,) in &ids {
        let rows = stored.remove(subject_id).unwrap_or_default();
        let events = rebuilt.remove(subject_id).unwrap_or_default();
        verdicts.push((subject_id.clone(), events.compare(&rows)));
    }
    // Ids the union did not list (none, unless the database compares ids inconsistently):
    // checked all the same, never skipped.
    let mut extra: Vec<String> = stored.keys().chain(rebuilt.keys()).cloned().collect();
    extra.sort();
    extra.dedup();
    for subject_id in extra {
        let rows = stored.remove(&subject_id).unwrap_or_default();
        let events = rebuilt.remove(&subject_id).unwrap_or_default();
        verdicts.push((subject_id, events.compare(&rows)));
    }
    Ok(Page {
        verdicts,
        full: ids.len() as i64 == limit,
        last: Some(last),
    })
}

/// A row as the comparison sees it: each compared column's value as text (`none` for NULL).
type Columns = BTreeMap<&'static str, String>;

/// A subject's rows in the state tables, or as its events make them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Tables {
    pub subject: Option<Columns>,
    /// By purpose name.
    pub choices: BTreeMap<String, Columns>,
    /// By conversation id.
    pub conversations: BTreeMap<String, Columns>,
}

/// What differs between the stored rows and the rows the events make, one line each.
pub(super) fn differences(stored: &Tables, events: &Tables) -> Vec<String> {
    let mut lines = Vec::new();
    match (&stored.subject, &events.subject) {
        (Some(stored), Some(events)) => compare_columns("", stored, events, &mut lines),
        (stored, events) if stored != events => lines.push(format!(
            "subject: stored {}, events {}",
            summary(stored.as_ref(), "status"),
            summary(events.as_ref(), "status")
        )),
        _ => {}
    }
    compare_rows(
        "choices.",
        "choice",
        &stored.choices,
        &events.choices,
        &mut lines,
    );
    compare_rows(
        "conversation_facts.",
        "",
        &stored.conversations,
        &events.conversations,
        &mut lines,
    );
    lines
}

/// `none`, the named column of a row, or (with no column named) every column.
fn summary(row: Option<&Columns>, column: &str) -> String {
    match row {
        None => "none".to_owned(),
        Some(row) => match row.get(column) {
            Some(value) => value.clone(),
            None => {
                let columns: Vec<String> = row
                    .iter()
                    .map(|(name, value)| format!("{name} {value}"))
                    .collect();
                format!("({})", columns.join(", "))
            }
        },
    }
}

/// Rows keyed by `prefix` + key: a row on one side only is one line (its `main` column, or
/// every column), a row on both a line per differing column (`main` under the row's own name).
fn compare_rows(
    prefix: &str,
    main: &str,
    stored: &BTreeMap<String, Columns>,
    events: &BTreeMap<String, Columns>,
    lines: &mut Vec<String>,
) {
    let mut keys: Vec<&String> = stored.keys().chain(events.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let name = format!("{prefix}{key}");
        match (stored.get(key), events.get(key)) {
            (Some(stored), Some(events)) => {
                if let (Some(before), Some(after)) = (stored.get(main), events.get(main))
                    && before != after
                {
                    lines.push(format!("{name}: stored {before}, events {after}"));
                }
                let mut rest_stored = stored.clone();
                let mut rest_events = events.clone();
                rest_stored.remove(main);
                rest_events.remove(main);
                compare_columns(&format!("{name}."), &rest_stored, &rest_events, lines);
            }
            (stored, events) => lines.push(format!(
                "{name}: stored {}, events {}",
                summary(stored, main),
                summary(events, main)
            )),
        }
    }
}

fn compare_columns(prefix: &str, stored: &Columns, events: &Columns, lines: &mut Vec<String>) {
    let none = "none".to_owned();
    let mut names: Vec<&&str> = stored.keys().chain(events.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let before = stored.get(*name).unwrap_or(&none);
        let after = events.get(*name).unwrap_or(&none);
        if before != after {
            lines.push(format!("{prefix}{name}: stored {before}, events {after}"));
        }
    }
}

/// The event that last wrote a row: its sequence and instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stamp {
    sequence: u64,
    at_micros: i64,
}

/// A subject rebuilt from its events, with the stamps of the rows they wrote.
#[derive(Clone, Debug, Default)]
pub(super) struct Rebuilt {
    replayed: Replayed,
    /// The first event that wrote the subject row (its creation).
    created: Option<Stamp>,
    /// The last event that wrote the subject row.
    written: Option<Stamp>,
    /// The event that stored each purpose's current choice, with its calling service.
    choices: [Option<(Stamp, String)>; PURPOSE_COUNT],
    conversations: HashMap<String, Stamp>,
    problem: Option<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    /// An event's payload was erased.
    Erased,
    /// An event that does not replay: what is wrong with it.
    Invalid(String),
}

impl Rebuilt {
    /// Applies the subject's next event (events in sequence order). Past an event that cannot
    /// be replayed, the rest are ignored: the subject's verdict is already decided.
    pub(super) fn apply(&mut self, event: &AuditEvent) {
        if self.problem.is_some() {
            return;
        }
        if event.payload_erased {
            self.problem = Some(Problem::Erased);
            return;
        }
        let detail: Value = match serde_json::from_str(&event.detail_json) {
            Ok(detail) => detail,
            Err(error) => {
                self.invalid(format!(
                    "audit event {} ({}): detail is not JSON: {error}",
                    event.sequence, event.kind
                ));
                return;
            }
        };
        let before = self.replayed.subject.clone();
        if let Err(error) = self.replayed.apply_parsed(event, &detail) {
            self.invalid(error.to_string());
            return;
        }
        let stamp = Stamp {
            sequence: event.sequence,
            at_micros: event.at_micros,
        };
        if !writes_subject_row(event.kind) {
            return;
        }
        self.created.get_or_insert(stamp);
        self.written = Some(stamp);
        if let Some(after) = &self.replayed.subject {
            for purpose in Purpose::ALL {
                let choice_of = |record: &super::SubjectRecord| {
                    (
                        record.state.choices.get(*purpose),
                        record.state.expiries.get(*purpose),
                        record.provenance(*purpose).clone(),
                    )
                };
                let changed = before.as_ref().map(choice_of) != Some(choice_of(after));
                if changed {
                    self.choices[purpose.index()] = after
                        .state
                        .choices
                        .get(*purpose)
                        .map(|_| (stamp, event.caller.clone()));
                }
            }
        }
        match event.kind {
            EventKind::SubjectDeleted => self.conversations.clear(),
            EventKind::FeedbackRecorded | EventKind::ConversationFlagged => {
                if let Some(conversation_id) = detail["conversation_id"].as_str() {
                    self.conversations.insert(conversation_id.to_owned(), stamp);
                }
            }
            _ => {}
        }
    }

    /// Marks the subject's events as not replayable, for a reason found outside `apply` (a row
    /// of `audit_events` this binary cannot read).
    pub(super) fn invalid(&mut self, problem: String) {
        if self.problem.is_none() {
            self.problem = Some(Problem::Invalid(problem));
        }
    }

    /// The verdict on the subject's stored rows.
    pub(super) fn compare(&self, stored: &Tables) -> Verdict {
        match &self.problem {
            Some(Problem::Erased) => Verdict::Unverifiable,
            Some(Problem::Invalid(problem)) => Verdict::Differs(vec![format!(
                "events: {problem}; stored {}",
                summary(stored.subject.as_ref(), "status")
            )]),
            None => {
                let lines = differences(stored, &self.tables());
                if lines.is_empty() {
                    Verdict::Matches
                } else {
                    Verdict::Differs(lines)
                }
            }
        }
    }

    /// The rows the events make.
    pub(super) fn tables(&self) -> Tables {
        let Some(record) = &self.replayed.subject else {
            return Tables::default();
        };
        let state = &record.state;
        let stamp = self.written.unwrap_or_default();
        let mut subject = Columns::new();
        subject.insert("plan", name(state.plan.map(|plan| plan.as_str())));
        subject.insert("jurisdiction", text(record.jurisdiction.as_deref()));
        subject.insert("status", state.status.as_str().to_owned());
        subject.insert("gpc", state.gpc.to_string());
        subject.insert("zero_data_retention", state.zero_data_retention.to_string());
        let created = self.created.unwrap_or_default();
        subject.insert("created_at", created.at_micros.to_string());
        subject.insert("updated_at", stamp.at_micros.to_string());
        subject.insert("revision", stamp.sequence.to_string());
        let mut choices = BTreeMap::new();
        for (purpose, choice) in state.choices.iter() {
            let provenance = record.provenance(purpose);
            let (stamp, caller) = self.choices[purpose.index()].clone().unwrap_or_default();
            let mut row = Columns::new();
            row.insert("choice", choice.as_str().to_owned());
            row.insert("notice_version", text(Some(&provenance.notice_version)));
            row.insert("method", provenance.method.as_str().to_owned());
            row.insert("caller", text(Some(&caller)));
            row.insert("expires_at", number(state.expiries.get(purpose)));
            row.insert("updated_at", stamp.at_micros.to_string());
            row.insert("revision", stamp.sequence.to_string());
            choices.insert(purpose.as_str().to_owned(), row);
        }
        let conversations = self
            .replayed
            .conversations
            .iter()
            .map(|(conversation_id, facts)| {
                let stamp = self
                    .conversations
                    .get(conversation_id)
                    .copied()
                    .unwrap_or_default();
                (conversation_id.clone(), conversation_columns(facts, stamp))
            })
            .collect();
        Tables {
            subject: Some(subject),
            choices,
            conversations,
        }
    }
}

/// Whether an event of this kind rewrote its subject's row (each change does: the row carries
/// the subject's revision); the rest change no subject.
fn writes_subject_row(kind: EventKind) -> bool {
    match kind {
        EventKind::SubjectUpserted
        | EventKind::ChoiceSet
        | EventKind::FeedbackRecorded
        | EventKind::ConversationFlagged
        | EventKind::RestrictionSet
        | EventKind::SubjectDeleted
        | EventKind::ConsentExpired => true,
        EventKind::PolicyApplied
        | EventKind::RightsRequestFiled
        | EventKind::RightsRequestAdvanced
        | EventKind::RightsRequestExtended
        | EventKind::PayloadErased => false,
    }
}

fn conversation_columns(facts: &ConversationFacts, stamp: Stamp) -> Columns {
    let mut row = Columns::new();
    row.insert("feedback", name(facts.feedback.map(Rating::as_str)));
    row.insert(
        "automated_moderation",
        facts.automated_moderation.to_string(),
    );
    row.insert("user_report", facts.user_report.to_string());
    row.insert("updated_at", stamp.at_micros.to_string());
    row.insert("revision", stamp.sequence.to_string());
    row
}

/// A name of the vocabulary as stored, or `none`.
fn name(value: Option<&str>) -> String {
    value.map_or_else(|| "none".to_owned(), str::to_owned)
}

/// Free text, quoted (so that an empty value shows), or `none`.
fn text(value: Option<&str>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| format!("{value:?}"))
}

fn number(value: Option<i64>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| value.to_string())
}

async fn read_subjects(
    connection: &mut Connection,
    after: &str,
    last: &str,
    stored: &mut HashMap<String, Tables>,
) -> Result<(), StoreError> {
    let rows = connection
        .query(
            "SELECT subject_id, plan, jurisdiction, status, gpc, zero_data_retention,
                    created_at, updated_at, revision
             FROM subjects WHERE subject_id > $1 AND subject_id <= $2",
        )
        .bind(after)
        .bind(last)
        .fetch_all()
        .await?;
    for row in &rows {
        let subject_id: String = row.try_get("subject_id")?;
        let mut columns = Columns::new();
        columns.insert(
            "plan",
            name(row.try_get::<Option<String>>("plan")?.as_deref()),
        );
        columns.insert(
            "jurisdiction",
            text(row.try_get::<Option<String>>("jurisdiction")?.as_deref()),
        );
        columns.insert("status", row.try_get("status")?);
        columns.insert("gpc", row.try_get::<bool>("gpc")?.to_string());
        columns.insert(
            "zero_data_retention",
            row.try_get::<bool>("zero_data_retention")?.to_string(),
        );
        for column in ["created_at", "updated_at", "revision"] {
            columns.insert(column, row.try_get::<i64>(column)?.to_string());
        }
        stored.entry(subject_id).or_default().subject = Some(columns);
    }
    Ok(())
}

async fn read_choices(
    connection: &mut Connection,
    after: &str,
    last: &str,
    stored: &mut HashMap<String, Tables>,
) -> Result<(), StoreError> {
    let rows = connection
        .query(
            "SELECT subject_id, purpose, choice, notice_version, method, caller, expires_at,
                    updated_at, revision
             FROM choices WHERE subject_id > $1 AND subject_id <= $2",
        )
        .bind(after)
        .bind(last)
        .fetch_all()
        .await?;
    for row in &rows {
        let subject_id: String = row.try_get("subject_id")?;
        let purpose: String = row.try_get("purpose")?;
        let mut columns = Columns::new();
        columns.insert("choice", row.try_get("choice")?);
        columns.insert(
            "notice_version",
            text(Some(&row.try_get::<String>("notice_version")?)),
        );
        columns.insert("method", row.try_get("method")?);
        columns.insert("caller", text(Some(&row.try_get::<String>("caller")?)));
        columns.insert("expires_at", number(row.try_get("expires_at")?));
        columns.insert("updated_at", row.try_get::<i64>("updated_at")?.to_string());
        columns.insert("revision", row.try_get::<i64>("revision")?.to_string());
        stored
            .entry(subject_id)
            .or_default()
            .choices
            .insert(purpose, columns);
    }
    Ok(())
}

async fn read_conversations(
    connection: &mut Connection,
    after: &str,
    last: &str,
    stored: &mut HashMap<String, Tables>,
) -> Result<(), StoreError> {
    let rows = connection
        .query(
            "SELECT subject_id, conversation_id, feedback, automated_moderation, user_report,
                    updated_at, revision
             FROM conversation_facts WHERE subject_id > $1 AND subject_id <= $2",
        )
        .bind(after)
        .bind(last)
        .fetch_all()
        .await?;
    for row in &rows {
        let subject_id: String = row.try_get("subject_id")?;
        let conversation_id: String = row.try_get("conversation_id")?;
        let mut columns = Columns::new();
        columns.insert(
            "feedback",
            name(row.try_get::<Option<String>>("feedback")?.as_deref()),
        );
        columns.insert(
            "automated_moderation",
            row.try_get::<bool>("automated_moderation")?.to_string(),
        );
        columns.insert(
            "user_report",
            row.try_get::<bool>("user_report")?.to_string(),
        );
        columns.insert("updated_at", row.try_get::<i64>("updated_at")?.to_string());
        columns.insert("revision", row.try_get::<i64>("revision")?.to_string());
        stored
            .entry(subject_id)
            .or_default()
            .conversations
            .insert(conversation_id, columns);
    }
    Ok(())
}

/// Replays the events of the subjects in `(after, last]`, read in pages ordered by subject and
/// sequence (the `audit_events_by_subject` index), so each subject's events come in order.
async fn rebuild(
    connection: &mut Connection,
    after: &str,
    last: &str,
    page: u32,
) -> Result<HashMap<String, Rebuilt>, StoreError> {
    let page = i64::from(page.max(1));
    let mut rebuilt: HashMap<String, Rebuilt> = HashMap::new();
    // The last (subject, sequence) read; the sequence i64::MAX: past every event of `after`.
    let mut cursor = (after.to_owned(), i64::MAX);
    loop {
        let rows = connection
            .query(
                "SELECT e.*, p.salt, p.detail_json FROM audit_events AS e
                 LEFT JOIN audit_payloads AS p ON p.sequence = e.sequence
                 WHERE e.subject_id >= $1 AND (e.subject_id > $1 OR e.sequence > $2)
                   AND e.subject_id <= $3
                 ORDER BY e.subject_id, e.sequence LIMIT $4",
            )
            .bind(cursor.0.as_str())
            .bind(cursor.1)
            .bind(last)
            .bind(page)
            .fetch_all()
            .await?;
        for row in &rows {
            let subject_id: String = row.try_get("subject_id")?;
            let sequence: i64 = row.try_get("sequence")?;
            let subject = rebuilt.entry(subject_id.clone()).or_default();
            match rows::event_from_row(row) {
                Ok(event) => subject.apply(&event),
                // A row rewritten beyond what this binary reads: that subject's finding.
                Err(StoreError::Corrupt(problem)) => {
                    subject.invalid(format!("audit event {}: {problem}", from_i64(sequence)))
                }
                Err(error) => return Err(error),
            }
            cursor = (subject_id, sequence);
        }
        if (rows.len() as i64) < page {
            return Ok(rebuilt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Choice, ConsentMethod, Plan};
    use crate::store::change::{Command, ConsentMeta, SubjectFields, plan_change};
    use crate::store::replay::tests::event;

    /// Rebuilds a subject from `commands` applied the way the store applies them.
    fn rebuilt(commands: &[Command]) -> Rebuilt {
        let mut record = None;
        let mut rebuilt = Rebuilt::default();
        for (index, command) in commands.iter().enumerate() {
            let change = plan_change(record.as_ref(), None, command)
                .unwrap()
                .unwrap();
            let mut event = event(index as u64 + 1, change.kind, &change.detail.to_string());
            event.at_micros = (index as i64 + 1) * 10;
            event.caller = "billing".to_owned();
            rebuilt.apply(&event);
            record = Some(change.subject);
        }
        rebuilt
    }

    fn training(choice: Choice) -> Command {
        Command::SetChoice {
            purpose: Purpose::ModelTraining,
            choice: Some(choice),
            consent: ConsentMeta {
                notice_version: "n-1".to_owned(),
                method: ConsentMethod::SettingsPage,
                expires_at_micros: None,
            },
        }
    }

    fn upsert() -> Command {
        Command::Upsert(SubjectFields {
            plan: Some(Plan::Pro),
            ..SubjectFields::default()
        })
    }

    #[test]
    fn the_rows_the_events_make_carry_the_stamps_of_their_events() {
        let rebuilt = rebuilt(&[upsert(), training(Choice::Refused), upsert_free()]);
        let tables = rebuilt.tables();
        let subject = tables.subject.as_ref().unwrap();
        assert_eq!(subject["plan"], "FREE");
        assert_eq!(subject["created_at"], "10");
        assert_eq!(subject["updated_at"], "30");
        assert_eq!(subject["revision"], "3");
        let choice = &tables.choices["MODEL_TRAINING"];
        assert_eq!(choice["choice"], "REFUSED");
        assert_eq!(choice["revision"], "2");
        assert_eq!(choice["updated_at"], "20");
        assert_eq!(choice["caller"], "\"billing\"");
        assert_eq!(choice["notice_version"], "\"n-1\"");
        assert_eq!(choice["method"], "SETTINGS_PAGE");
        assert_eq!(choice["expires_at"], "none");
        assert_eq!(rebuilt.compare(&tables), Verdict::Matches);
    }

    fn upsert_free() -> Command {
        Command::Upsert(SubjectFields {
            plan: Some(Plan::Free),
            ..SubjectFields::default()
        })
    }

    #[test]
    fn each_difference_is_one_readable_line() {
        let rebuilt = rebuilt(&[upsert(), training(Choice::Refused)]);
        let events = rebuilt.tables();
        let mut stored = events.clone();
        let choice = stored.choices.get_mut("MODEL_TRAINING").unwrap();
        choice.insert("choice", "GRANTED".to_owned());
        choice.insert("method", "API_IMPORT".to_owned());
        stored
            .subject
            .as_mut()
            .unwrap()
            .insert("plan", "ENTERPRISE".to_owned());
        let mut memory = Columns::new();
        memory.insert("choice", "GRANTED".to_owned());
        stored.choices.insert("MEMORY".to_owned(), memory);
        assert_eq!(
            rebuilt.compare(&stored),
            Verdict::Differs(vec![
                "plan: stored ENTERPRISE, events PRO".to_owned(),
                "choices.MEMORY: stored GRANTED, events none".to_owned(),
                "choices.MODEL_TRAINING: stored GRANTED, events REFUSED".to_owned(),
                "choices.MODEL_TRAINING.method: stored API_IMPORT, events SETTINGS_PAGE".to_owned(),
            ])
        );
        assert_eq!(
            differences(&Tables::default(), &events),
            vec![
                "subject: stored none, events ACTIVE".to_owned(),
                "choices.MODEL_TRAINING: stored none, events REFUSED".to_owned(),
            ]
        );
    }

    #[test]
    fn an_erased_payload_makes_the_subject_unverifiable_and_a_bad_event_a_difference() {
        let mut erased = rebuilt(&[upsert()]);
        let mut gone = event(2, EventKind::ChoiceSet, "");
        gone.payload_erased = true;
        erased.apply(&gone);
        assert_eq!(erased.compare(&Tables::default()), Verdict::Unverifiable);

        let mut orphan = Rebuilt::default();
        orphan.apply(&event(
            1,
            EventKind::ChoiceSet,
            r#"{"purpose": "MEMORY", "before": null, "after": "REFUSED"}"#,
        ));
        let Verdict::Differs(lines) = orphan.compare(&Tables::default()) else {
            panic!("an event that does not replay is a difference");
        };
        assert!(lines[0].contains("creation"), "{lines:?}");
    }
}
