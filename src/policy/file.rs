//! The policy file: the decision policy as a versioned TOML document that policy authors read
//! and write. The format is described in docs/policy.md; the default policy is
//! `policies/2026-01-01.toml`.
//!
//! This module is the document alone: its serde structures (unknown fields refused), the
//! policy's words as they are spelled in it, explanation templates, the effective date, and
//! parse errors that name the path of the bad field (`purposes.MEMORY[1].when.choice`). What a
//! document means (coverage, reachability, the lookup tables) is `compiled.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use toml::value::{Datetime, Offset};

use super::retention::{Event, KeepKind, LegalHold};
use super::vocabulary::{
    Choice, DataCategory, Decision, LawfulBasis, Plan, Purpose, Reason, Source, Status,
};
use crate::calendar::{self, MICROS_PER_DAY};

/// Why a policy file was refused. Each message starts with the path of what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or not the shape of a policy file: an unknown field, a missing one, a value of
    /// the wrong type, or a name that is not one of the policy's words.
    #[error("{location}: {message}")]
    Parse { location: String, message: String },
    #[error("version: must not be empty")]
    EmptyVersion,
    #[error("effective_from: {0}")]
    EffectiveFrom(String),
    #[error("rules.{rule}: a rule id is 1 to 32 letters, digits, `_`, `-` or `.`")]
    InvalidRuleId { rule: String },
    #[error("rules.{rule}: an ALLOW needs a lawful basis (`basis`)")]
    AllowWithoutBasis { rule: String },
    #[error("rules.{rule}: a DENY never carries a lawful basis; remove `basis`")]
    DenyWithBasis { rule: String },
    #[error("rules.{rule}.explanation: must not be empty")]
    EmptyExplanation { rule: String },
    #[error("rules.{rule}.explanation: {message}")]
    Template { rule: String, message: String },
    #[error("{place}: rule `{rule}` is not defined under [rules]")]
    UndefinedRule { place: String, rule: String },
    #[error("rules.{rule}: defined but used by no purpose and not by `degraded`")]
    UnusedRule { rule: String },
    #[error("purposes.{purpose}: missing; every purpose needs its list of rules")]
    MissingPurpose { purpose: Purpose },
    #[error(
        "purposes.{purpose}: the rules read the choices of {purposes}; besides its own choice, a purpose's rules can read the choice of one other purpose"
    )]
    TooManyChoices { purpose: Purpose, purposes: String },
    #[error(
        "purposes.{purpose}: no rule decides {example}; end the list with an entry without `when`"
    )]
    Uncovered { purpose: Purpose, example: String },
    #[error(
        "{place}: rule `{rule}` is never reached: the entries before it (every_purpose first) decide every input it matches"
    )]
    Shadowed { place: String, rule: String },
    #[error("{place}: rule `{rule}` matches no input a question can have")]
    MatchesNothing { place: String, rule: String },
    #[error(
        "{place}: rule `{rule}` allows {purpose} when the subject's state cannot be read; a degraded ALLOW must be declared: add {purpose} to `degraded.allow` if that is meant"
    )]
    DegradedAllow {
        place: String,
        rule: String,
        purpose: Purpose,
    },
    #[error(
        "{place}: rule `{rule}` allows {purpose} for a {status} subject; a {status} subject is allowed nothing unless declared: add {purpose} to `{table}.allow` if that is meant"
    )]
    StoppedAllow {
        place: String,
        rule: String,
        purpose: Purpose,
        status: Status,
        table: &'static str,
    },
    #[error("{table}.allow: {purpose} is named twice")]
    AllowedTwice {
        table: &'static str,
        purpose: Purpose,
    },
    #[error("retention.{category}: missing; every data category needs its row of the schedule")]
    MissingRetention { category: DataCategory },
    #[error("retention.{category}.{field}: {message}")]
    Retention {
        category: DataCategory,
        field: &'static str,
        message: String,
    },
}

impl PolicyError {
    /// Whether the file was refused only for allowing, without declaring it, a purpose when the
    /// state cannot be read or to a deleted or restricted subject. A version stored before
    /// the check existed is still loaded (see `CompiledPolicy::compile_stored`).
    pub const fn is_undeclared_allow(&self) -> bool {
        matches!(
            self,
            PolicyError::DegradedAllow { .. } | PolicyError::StoppedAllow { .. }
        )
    }
}

/// A policy document as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Names the policy in decisions and in the audit log, such as `"2026-01-01"`.
    pub version: String,
    /// When the policy takes effect: a date (midnight UTC) or a date-time with an offset.
    pub effective_from: Datetime,
    pub description: String,
    /// Entries tried first for every purpose, before the purpose's own.
    #[serde(default)]
    pub every_purpose: Vec<Entry>,
    /// Each purpose's entries, tried in order after `every_purpose`; the first that matches
    /// decides.
    pub purposes: BTreeMap<Named<Purpose>, Vec<Entry>>,
    /// The rules that decide when the subject's state cannot be read.
    pub degraded: Degraded,
    /// The purposes a DELETED subject may be allowed (none unless declared).
    #[serde(default)]
    pub deleted: Allowance,
    /// The purposes a RESTRICTED subject may be allowed (none unless declared).
    #[serde(default)]
    pub restricted: Allowance,
    /// Every rule, by id.
    pub rules: BTreeMap<String, RuleDefinition>,
    /// The retention schedule (privacy policy §5): one row per data category. A file without
    /// any row (written before schedules were part of a version) keeps the built-in schedule.
    #[serde(default)]
    pub retention: BTreeMap<Named<DataCategory>, RetentionEntry>,
}

/// One row of the retention schedule: how long a category of data is kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionEntry {
    pub keep: Named<KeepKind>,
    /// The event the row waits on (`UNTIL_EVENT`), runs from (`AFTER_EVENT`) or that withdraws
    /// the consent (`WHILE_CONSENTED`).
    pub event: Named<Event>,
    /// `AFTER_EVENT` only: how long after the event.
    pub period: Option<PeriodText>,
    /// The period (in years) counts from the close of the event's financial year.
    #[serde(default)]
    pub from_financial_year_close: bool,
    /// `WHILE_CONSENTED` only: the choices whose state is the consent.
    #[serde(default)]
    pub consent: Vec<Named<Purpose>>,
    /// Not kept at all when the subject has zero data retention.
    #[serde(default)]
    pub unless_zero_data_retention: bool,
    pub legal_hold: Named<LegalHold>,
    /// The line of the policy the row rests on, cited in every answer.
    pub section: String,
}

/// A retention period as written: `30d` (rolling days) or `3y` (calendar years).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeriodText {
    Days(u32),
    Years(u32),
}

/// The longest periods a file may give (a thousand years).
const MAX_DAYS: u32 = 365_250;
const MAX_YEARS: u32 = 1_000;

impl PeriodText {
    pub fn parse(text: &str) -> Result<PeriodText, String> {
        let invalid = || {
            format!(
                "invalid period `{text}`, expected a whole number of days or years such as `30d` \
                 or `3y`"
            )
        };
        let (count, unit) = text.split_at(text.len().saturating_sub(1));
        if count.is_empty() || !count.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        let count: u32 = count.parse().map_err(|_| invalid())?;
        let (period, max) = match unit {
            "d" => (PeriodText::Days(count), MAX_DAYS),
            "y" => (PeriodText::Years(count), MAX_YEARS),
            _ => return Err(invalid()),
        };
        if count == 0 {
            return Err(format!(
                "invalid period `{text}`: a period of zero keeps nothing after the event; use \
                 keep = \"UNTIL_EVENT\""
            ));
        }
        if count > max {
            return Err(format!(
                "invalid period `{text}`: longer than a thousand years"
            ));
        }
        Ok(period)
    }
}

impl<'de> Deserialize<'de> for PeriodText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PeriodVisitor;

        impl Visitor<'_> for PeriodVisitor {
            type Value = PeriodText;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a period such as \"30d\" or \"3y\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<PeriodText, E> {
                PeriodText::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(PeriodVisitor)
    }
}

/// One line of a purpose's list: a rule and when it applies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub rule: String,
    /// Every test given must hold; no test at all matches every input.
    #[serde(default)]
    pub when: Condition,
}

/// Tests of one question's inputs, all of which must hold. A subject never seen has no status,
/// no plan and no choices, and neither GPC nor zero data retention.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Whether the subject was ever seen.
    pub known: Option<bool>,
    /// The status of a known subject; a subject never seen matches only a negated test.
    pub status: Option<Test<Status>>,
    /// The plan, `NONE` for no plan set.
    pub plan: Option<Test<Option<Plan>>>,
    pub gpc: Option<bool>,
    pub zero_data_retention: Option<bool>,
    /// The choice of the purpose asked about, `NONE` for no choice.
    pub choice: Option<Test<Option<Choice>>>,
    /// The choices of other purposes, by purpose.
    #[serde(default)]
    pub choice_of: BTreeMap<Named<Purpose>, Test<Option<Choice>>>,
    pub source: Option<Test<Source>>,
    /// The conversation named carries a moderation flag (automated or a user report).
    pub moderation_flag: Option<bool>,
    /// The conversation named was rated.
    pub feedback: Option<bool>,
}

/// The rules that decide when the subject's state cannot be read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Degraded {
    pub default: String,
    /// Purposes decided by another rule than `default`.
    #[serde(default)]
    pub purposes: BTreeMap<Named<Purpose>, String>,
    /// The purposes whose degraded rule may be an ALLOW: a fail-open answer is declared,
    /// never an accident of the rule names.
    #[serde(default)]
    pub allow: Vec<Named<Purpose>>,
}

/// `[deleted]` and `[restricted]`: the purposes a subject of that status may be allowed. The
/// compiler refuses a file whose rules allow anything else to such a subject.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    #[serde(default)]
    pub allow: Vec<Named<Purpose>>,
}

/// Whether `allowed` (the `allow` list of `table`) names `purpose`; a purpose named twice is
/// refused.
pub fn declared(
    table: &'static str,
    allowed: &[Named<Purpose>],
    purpose: Purpose,
) -> Result<bool, PolicyError> {
    match allowed
        .iter()
        .filter(|Named(named)| *named == purpose)
        .count()
    {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(PolicyError::AllowedTwice { table, purpose }),
    }
}

impl Degraded {
    /// The rule that decides a purpose.
    pub fn rule(&self, purpose: Purpose) -> &str {
        self.purposes.get(&Named(purpose)).unwrap_or(&self.default)
    }
}

/// What a rule decides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDefinition {
    pub decision: Named<Decision>,
    pub reason: Named<Reason>,
    pub basis: Option<Named<LawfulBasis>>,
    /// A template: see [`Template`].
    pub explanation: String,
}

/// A value of the policy's vocabulary, read from its canonical name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Named<T>(pub T);

/// A test of one input: `"X"` (equal), `["X", "Y"]` (any of) or `{ not = "X" }` /
/// `{ not = ["X", "Y"] }` (none of).
#[derive(Debug)]
pub struct Test<T> {
    values: Vec<T>,
    negated: bool,
}

impl<T: Copy + PartialEq> Test<T> {
    pub fn accepts(&self, value: T) -> bool {
        self.values.contains(&value) != self.negated
    }

    /// Whether the test accepts a value outside its vocabulary (the status of a subject never
    /// seen): only a negated test does.
    pub fn accepts_absent(&self) -> bool {
        self.negated
    }
}

/// A word of the policy's vocabulary as spelled in a policy file.
pub trait Word: Copy + PartialEq + Sized {
    /// What the word names, for error messages.
    const WHAT: &'static str;

    fn from_word(text: &str) -> Option<Self>;

    /// Every spelling, for error messages.
    fn words() -> Vec<&'static str>;

    fn parse_word<E: de::Error>(text: &str) -> Result<Self, E> {
        Self::from_word(text).ok_or_else(|| {
            E::custom(format!(
                "unknown {} `{text}`, expected one of {}",
                Self::WHAT,
                Self::words().join(", ")
            ))
        })
    }
}

macro_rules! word {
    ($type:ty, $what:literal) => {
        impl Word for $type {
            const WHAT: &'static str = $what;

            fn from_word(text: &str) -> Option<Self> {
                <$type>::from_name(text)
            }

            fn words() -> Vec<&'static str> {
                <$type>::ALL.iter().map(|value| value.as_str()).collect()
            }
        }
    };
}

word!(Purpose, "purpose");
word!(Status, "status");
word!(Source, "source");
word!(Decision, "decision");
word!(Reason, "reason");
word!(LawfulBasis, "lawful basis");
word!(DataCategory, "data category");
word!(Event, "event");
word!(LegalHold, "legal hold");
word!(KeepKind, "kind of retention");

/// How a policy file says "no plan" and "no choice".
const NONE: &str = "NONE";

word!(Plan, "plan");
word!(Choice, "choice");

/// A word or its absence, spelled `NONE`.
impl<T: Word> Word for Option<T> {
    const WHAT: &'static str = T::WHAT;

    fn from_word(text: &str) -> Option<Self> {
        match text {
            NONE => Some(None),
            other => T::from_word(other).map(Some),
        }
    }

    fn words() -> Vec<&'static str> {
        let mut words = T::words();
        words.push(NONE);
        words
    }
}

impl<'de, T: Word> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<T>(PhantomData<T>);

        impl<T: Word> Visitor<'_> for NameVisitor<T> {
            type Value = Named<T>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "a {} name", T::WHAT)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Named<T>, E> {
                T::parse_word(text).map(Named)
            }
        }

        deserializer.deserialize_str(NameVisitor(PhantomData))
    }
}

/// Reads a [`Test`]; `negation` is false inside `not`, which cannot nest.
struct TestSeed<T> {
    negation: bool,
    marker: PhantomData<T>,
}

impl<'de, T: Word> Deserialize<'de> for Test<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TestSeed {
            negation: true,
            marker: PhantomData,
        }
        .deserialize(deserializer)
    }
}

impl<'de, T: Word> DeserializeSeed<'de> for TestSeed<T> {
    type Value = Test<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Test<T>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Word> Visitor<'de> for TestSeed<T> {
    type Value = Test<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "a {} name or a list of them", T::WHAT)?;
        if self.negation {
            formatter.write_str(", or `{ not = ... }`")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Test<T>, E> {
        Ok(Test {
            values: vec![T::parse_word(text)?],
            negated: false,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Test<T>, A::Error> {
        let mut values = Vec::new();
        while let Some(Named(value)) = sequence.next_element::<Named<T>>()? {
            values.push(value);
        }
        if values.is_empty() {
            return Err(de::Error::custom(
                "an empty list matches nothing; leave the test out to match anything",
            ));
        }
        Ok(Test {
            values,
            negated: false,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Test<T>, A::Error> {
        if !self.negation {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        const NOT: &[&str] = &["not"];
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field("not"));
        };
        if key != "not" {
            return Err(de::Error::unknown_field(&key, NOT));
        }
        let values = map.next_value_seed(TestSeed::<T> {
            negation: false,
            marker: PhantomData,
        })?;
        if let Some(key) = map.next_key::<String>()? {
            return Err(de::Error::unknown_field(&key, NOT));
        }
        Ok(Test {
            values: values.values,
            negated: true,
        })
    }
}

/// Parses a policy document; an error names the path, line and column of the bad field.
pub fn parse(source: &str) -> Result<PolicyFile, PolicyError> {
    toml::from_str(source).map_err(|error| {
        let location = match error.span() {
            Some(span) => {
                let (line, column) = line_and_column(source, span.start);
                match path_at(source, span.start) {
                    Some(path) => format!("{path} (line {line}, column {column})"),
                    None => format!("line {line}, column {column}"),
                }
            }
            None => "the top level".to_owned(),
        };
        PolicyError::Parse {
            location,
            message: error.message().trim_end().to_owned(),
        }
    })
}

/// One-based line and column (in characters) of a byte offset.
fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..source.floor_char_boundary(offset)];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// The path of the deepest key or value at a byte offset of a syntactically valid document,
/// such as `purposes.MEMORY[1].when`.
fn path_at(source: &str, offset: usize) -> Option<String> {
    let document = DeTable::parse(source).ok()?;
    let mut segments = Vec::new();
    if !table_path(document.get_ref(), offset, &mut segments) {
        return None;
    }
    let mut path = String::new();
    for segment in segments {
        if !path.is_empty() && !segment.starts_with('[') {
            path.push('.');
        }
        path.push_str(&segment);
    }
    Some(path)
}

fn table_path(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if key.span().contains(&offset) || value_path(value, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn value_path(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    let inside = match value.get_ref() {
        DeValue::Table(table) => table_path(table, offset, path),
        DeValue::Array(array) => array.iter().enumerate().any(|(index, item)| {
            path.push(format!("[{index}]"));
            let found = value_path(item, offset, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    };
    inside || value.span().contains(&offset)
}

/// `effective_from` as microseconds since the Unix epoch: a date is midnight UTC, a date-time
/// needs its offset.
pub fn micros_since_epoch(datetime: &Datetime) -> Result<i64, String> {
    let Some(date) = datetime.date else {
        return Err(format!(
            "`{datetime}` is a time of day without a date; write a date such as 2026-01-01"
        ));
    };
    let days = calendar::Date {
        year: i32::from(date.year),
        month: u32::from(date.month),
        day: u32::from(date.day),
    }
    .to_days();
    let mut micros = days * MICROS_PER_DAY;
    match (datetime.time, datetime.offset) {
        (None, _) => {}
        (Some(_), None) => {
            return Err(format!(
                "`{datetime}` has no offset, so it names no instant; add `Z` (UTC) or one such as +01:00"
            ));
        }
        (Some(time), Some(offset)) => {
            let seconds = i64::from(time.hour) * 3_600
                + i64::from(time.minute) * 60
                + i64::from(time.second.unwrap_or(0));
            let offset_minutes = match offset {
                Offset::Z => 0,
                Offset::Custom { minutes } => i64::from(minutes),
            };
            micros += (seconds - offset_minutes * 60) * 1_000_000
                + i64::from(time.nanosecond.unwrap_or(0) / 1_000);
        }
    }
    Ok(micros)
}

/// An explanation with its placeholders found: `{purpose}` (the purpose's human name, see
/// [`human_name`]) and `{version}` (the policy's); `{{` and `}}` stand for braces.
#[derive(Debug)]
pub struct Template(Vec<Piece>);

#[derive(Debug)]
enum Piece {
    Text(String),
    Purpose,
    Version,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut characters = text.chars().peekable();
        while let Some(character) = characters.next() {
            match character {
                '{' if characters.next_if_eq(&'{').is_some() => literal.push('{'),
                '}' if characters.next_if_eq(&'}').is_some() => literal.push('}'),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match characters.next() {
                            Some('}') => break,
                            Some(next) => name.push(next),
                            None => {
                                return Err(
                                    "`{` without a closing `}`; write `{{` for a brace".to_owned()
                                );
                            }
                        }
                    }
                    let piece = match name.as_str() {
                        "purpose" => Piece::Purpose,
                        "version" => Piece::Version,
                        _ => {
                            return Err(format!(
                                "unknown placeholder `{{{name}}}`, expected `{{purpose}}` or `{{version}}`"
                            ));
                        }
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                }
                '}' => return Err("`}` without an opening `{`; write `}}` for a brace".to_owned()),
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    pub fn render(&self, purpose: Purpose, version: &str) -> String {
        let mut text = String::new();
        for piece in &self.0 {
            text.push_str(match piece {
                Piece::Text(literal) => literal,
                Piece::Purpose => human_name(purpose),
                Piece::Version => version,
            });
        }
        text
    }
}

/// The purpose as a sentence names it, such as "model training".
pub const fn human_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::ModelTraining => "model training",
        Purpose::Memory => "memory",
        Purpose::SensitiveMemory => "sensitive memory",
        Purpose::IpGeolocation => "IP geolocation",
        Purpose::MarketingEmail => "marketing e-mail",
        Purpose::AnalyticsCookies => "analytics cookies",
        Purpose::MarketingCookies => "marketing cookies",
        Purpose::AbuseMonitoringRetention => "abuse-monitoring retention",
        Purpose::ProductImprovement => "product improvement",
        Purpose::ServiceDelivery => "service delivery",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BUILTIN_POLICY;

    /// The default policy with one piece of text replaced.
    fn builtin_with(old: &str, new: &str) -> String {
        assert!(
            BUILTIN_POLICY.contains(old),
            "the default policy lost {old:?}"
        );
        BUILTIN_POLICY.replacen(old, new, 1)
    }

    fn parse_error(source: &str) -> String {
        match parse(source) {
            Ok(_) => panic!("parsed: {source}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn the_default_policy_parses() {
        let document = parse(BUILTIN_POLICY).unwrap();
        assert_eq!(document.version, "2026-01-01");
        assert_eq!(document.every_purpose.len(), 3);
        assert_eq!(document.purposes.len(), Purpose::ALL.len());
        assert_eq!(document.degraded.rule(Purpose::ServiceDelivery), "U2");
        assert_eq!(document.degraded.rule(Purpose::Memory), "U1");
    }

    #[test]
    fn errors_name_the_path_of_the_bad_field() {
        let cases = [
            (
                builtin_with(
                    r#"{ rule = "M1", when = { choice = "REFUSED" } }"#,
                    r#"{ rule = "M1", when = { choise = "REFUSED" } }"#,
                ),
                "purposes.MEMORY[0].when.choise",
                "unknown field `choise`, expected one of `known`, `status`, `plan`",
            ),
            (
                builtin_with(
                    r#"{ rule = "M1", when = { choice = "REFUSED" } }"#,
                    r#"{ rule = "M1", when = { choice = "MAYBE" } }"#,
                ),
                "purposes.MEMORY[0].when.choice",
                "unknown choice `MAYBE`, expected one of GRANTED, REFUSED, NONE",
            ),
            (
                builtin_with(r#"plan = "NONE""#, r#"plan = ["NONE", "GOLD"]"#),
                "purposes.MODEL_TRAINING[6].when.plan[1]",
                "unknown plan `GOLD`, expected one of FREE, PRO, STUDENT, TEAM, ENTERPRISE, API_FREE, API_PAID, NONE",
            ),
            (
                builtin_with(r#"plan = "NONE""#, "plan = []"),
                "purposes.MODEL_TRAINING[6].when.plan",
                "an empty list matches nothing",
            ),
            (
                builtin_with(r#"plan = "NONE""#, r#"plan = { not = { not = "NONE" } }"#),
                "purposes.MODEL_TRAINING[6].when.plan.not",
                "invalid type: map, expected a plan name or a list of them",
            ),
            (
                builtin_with(r#"plan = "NONE""#, r#"plan = { never = "NONE" }"#),
                "purposes.MODEL_TRAINING[6].when.plan",
                "unknown field `never`, expected `not`",
            ),
            (
                builtin_with("SERVICE_DELIVERY = [", "DELIVERY = ["),
                "purposes.DELIVERY",
                "unknown purpose `DELIVERY`, expected one of MODEL_TRAINING, MEMORY",
            ),
            (
                builtin_with("gpc = true", "gpc = \"yes\""),
                "purposes.MARKETING_COOKIES[0].when.gpc",
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                builtin_with(r#"reason = "GPC_SIGNAL""#, r#"reason = "GPC""#),
                "rules.K1.reason",
                "unknown reason `GPC`, expected one of UNKNOWN_SUBJECT",
            ),
            (
                builtin_with(r#"basis = "CONSENT""#, r#"basis = "CONSENTED""#),
                "rules.S2.basis",
                "unknown lawful basis `CONSENTED`, expected one of CONSENT, CONTRACT",
            ),
            (
                builtin_with(r#"decision = "ALLOW""#, r#"decision = "YES""#),
                "rules.T2.decision",
                "unknown decision `YES`, expected one of ALLOW, DENY",
            ),
            (
                builtin_with(r#"{ rule = "D1" }"#, r#"{ when = { gpc = true } }"#),
                "purposes.SERVICE_DELIVERY[0]",
                "missing field `rule`",
            ),
            (
                builtin_with("[rules.U2]", "[rules.U2]\nnote = \"x\""),
                "rules.U2.note",
                "unknown field `note`",
            ),
            (
                builtin_with("version = ", "versions = "),
                "versions",
                "unknown field `versions`",
            ),
        ];
        let failures: Vec<String> = cases
            .iter()
            .map(|(source, path, message)| (parse_error(source), path, message))
            .filter(|(error, path, message)| {
                !(error.starts_with(&format!("{path} (line ")) && error.contains(*message))
            })
            .map(|(error, path, message)| {
                format!("{error:?}: not at {path:?} or lacks {message:?}")
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn errors_give_line_and_column() {
        let source = "version = \"x\"\n\n[rules.A]\n  reason = \"NOPE\"\n";
        assert!(
            parse_error(source)
                .starts_with("rules.A.reason (line 4, column 12): unknown reason `NOPE`")
        );
        let source = "version = \"x\"\n[degraded\n";
        assert_eq!(
            parse_error(source),
            "line 2, column 10: unclosed table, expected `]`"
        );
        assert_eq!(line_and_column("é\nab§c", 7), (2, 4));
    }

    #[test]
    fn a_test_is_one_value_a_list_or_a_negation() {
        let source = builtin_with(
            r#"{ rule = "T7", when = { plan = "NONE" } }"#,
            r#"{ rule = "T7", when = { plan = "NONE", choice = { not = ["GRANTED", "REFUSED"] }, status = { not = "DELETED" } } }"#,
        );
        let document = parse(&source).unwrap();
        let when = &document.purposes[&Named(Purpose::ModelTraining)][6].when;
        let plan = when.plan.as_ref().unwrap();
        assert!(plan.accepts(None) && !plan.accepts(Some(Plan::Free)));
        let choice = when.choice.as_ref().unwrap();
        assert!(choice.accepts(None));
        assert!(!choice.accepts(Some(Choice::Granted)) && !choice.accepts(Some(Choice::Refused)));
        let status = when.status.as_ref().unwrap();
        assert!(status.accepts(Status::Active) && !status.accepts(Status::Deleted));
        assert!(status.accepts_absent());
        let t4 = &document.purposes[&Named(Purpose::ModelTraining)][3].when;
        let plans = t4.plan.as_ref().unwrap();
        assert!(plans.accepts(Some(Plan::Team)) && plans.accepts(Some(Plan::ApiPaid)));
        assert!(!plans.accepts(Some(Plan::Pro)) && !plans.accepts(None));
        assert!(!plans.accepts_absent());
    }

    #[test]
    fn templates_expand_purpose_and_version() {
        let template =
            Template::parse("{purpose} denied under policy {version} {{not a placeholder}}")
                .unwrap();
        assert_eq!(
            template.render(Purpose::IpGeolocation, "2026-12-01"),
            "IP geolocation denied under policy 2026-12-01 {not a placeholder}"
        );
        assert_eq!(
            Template::parse("plain")
                .unwrap()
                .render(Purpose::Memory, "v"),
            "plain"
        );
        assert_eq!(
            Template::parse("{purpose}")
                .unwrap()
                .render(Purpose::ModelTraining, "v"),
            "model training"
        );
    }

    #[test]
    fn templates_refuse_unknown_placeholders_and_stray_braces() {
        assert_eq!(
            Template::parse("denied for {subject}").unwrap_err(),
            "unknown placeholder `{subject}`, expected `{purpose}` or `{version}`"
        );
        assert!(
            Template::parse("denied {purpose")
                .unwrap_err()
                .contains("without a closing")
        );
        assert!(
            Template::parse("denied }")
                .unwrap_err()
                .contains("without an opening")
        );
    }

    #[test]
    fn every_purpose_has_a_human_name() {
        for purpose in Purpose::ALL {
            let name = human_name(*purpose);
            assert!(!name.is_empty() && !name.contains('_'), "{purpose}: {name}");
        }
    }

    fn micros(text: &str) -> Result<i64, String> {
        micros_since_epoch(&text.parse::<Datetime>().unwrap())
    }

    #[test]
    fn effective_from_is_a_date_at_midnight_utc_or_an_instant() {
        const DAY: i64 = MICROS_PER_DAY;
        const HOUR: i64 = 3_600_000_000;
        assert_eq!(micros("1970-01-01"), Ok(0));
        assert_eq!(micros("2026-01-01"), Ok(20_454 * DAY));
        let afternoon = 20_780 * DAY + 15 * HOUR + 40 * 60_000_000;
        assert_eq!(micros("2026-11-23T15:40:00Z"), Ok(afternoon));
        assert_eq!(micros("2026-11-23T16:40:00+01:00"), Ok(afternoon));
        assert_eq!(micros("2026-11-23T10:10:00-05:30"), Ok(afternoon));
        assert_eq!(
            micros("2026-11-23T15:40:00.123456789Z"),
            Ok(afternoon + 123_456)
        );
        assert_eq!(micros("1969-12-31T23:59:59Z"), Ok(-1_000_000));
    }

    #[test]
    fn effective_from_without_an_instant_is_refused() {
        assert!(
            micros("2026-11-23T15:40:00")
                .unwrap_err()
                .contains("has no offset")
        );
        assert!(micros("15:40:00").unwrap_err().contains("without a date"));
    }
}
