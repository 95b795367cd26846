//! A policy file compiled into lookup tables: the decision policy as data.
//!
//! Compiling parses the file (`file.rs`) and checks it: every rule used is defined and every
//! rule defined is used, an ALLOW has a lawful basis and a DENY none, every input of every
//! purpose is decided, and no entry is shadowed by the entries before it. What a rule can test
//! is finite: whether the subject was ever seen and its status, its plan, GPC, zero data
//! retention, the choice of the purpose asked about and of one other purpose, the source, and
//! whether the conversation carries a moderation flag or feedback. So each purpose's ordered
//! rule list is decided ahead of time for every input and kept as a table; evaluating reads no
//! rule at all. A status that decides alone (as G1-G3 do) is answered from a four-entry table;
//! any other input is packed, without branches, into two keys of a few bits, and two table
//! loads (the row of the first key, then the cell of the second) give the ruling, however many
//! rules the policy has.
//!
//! The hand-written [`super::evaluate`] stays as the reference the tables are tested against
//! (`tests/policy_file.rs`). Like the rest of `policy`, this module does no I/O, and
//! [`CompiledPolicy::evaluate`] allocates nothing and cannot fail: a policy that could leave an
//! input undecided is refused when it is compiled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use super::file::{
    self, Condition, Named, PeriodText, PolicyError, PolicyFile, RetentionEntry, RuleDefinition,
    Template,
};
use super::retention::{
    EventSource, KeepKind, KeepRule, LegalHold, Period, Retention, RetentionFacts, RetentionRule,
};
use super::vocabulary::{
    Choice, DataCategory, Decision, LawfulBasis, PURPOSE_COUNT, Plan, Purpose, Rating, Reason,
    Source, Status,
};
use super::{BUILTIN_POLICY, ConversationFacts, Question, SubjectState};

/// One rule as a policy decides it for one purpose (explanation expanded).
#[derive(Debug, PartialEq, Eq)]
pub struct Ruling {
    pub rule: Box<str>,
    pub decision: Decision,
    pub reason: Reason,
    pub basis: Option<LawfulBasis>,
    pub explanation: Box<str>,
}

/// A policy file, checked and compiled: one lookup table per purpose.
pub struct CompiledPolicy {
    tables: [PurposeTable; PURPOSE_COUNT],
    version: Box<str>,
    effective_from_micros: i64,
    description: Box<str>,
    source: Box<str>,
    rule_ids: Box<[Box<str>]>,
    /// The retention schedule, one row per data category in [`DataCategory::ALL`] order.
    retention: Box<[RetentionRule]>,
}

/// One purpose's decisions for every input.
///
/// An input is read as two keys of a few bits each ([`SUBJECT_KEY`], [`QUESTION_KEY`]).
/// `cells` is made of rows of [`QUESTION_KEYS`] cells, indexed by the question key: one row for
/// each combination of the subject key's inputs that the purpose's rules read, and `rows` gives
/// the start of the row of every subject key. A status that decides alone (as G1-G3 do) is
/// answered before either key is made.
struct PurposeTable {
    /// The ruling of each status code that decides alone, else [`UNDECIDED`].
    by_status: [u16; STATUS_CODES],
    /// The start in `cells` of the row of each subject key.
    rows: [u16; SUBJECT_KEYS],
    /// The other purpose whose choice the rules read (the purpose itself if none).
    other: Purpose,
    /// The position in `rulings` of the ruling of every input.
    cells: Box<[u16]>,
    /// The rulings the purpose gives, the fail-safe one first ([`DEGRADED`]).
    rulings: Box<[Ruling]>,
}

/// The position in a purpose's rulings of the one given when the state cannot be read.
const DEGRADED: u16 = 0;

/// In [`PurposeTable::by_status`], a status that does not decide alone.
const UNDECIDED: u16 = u16::MAX;

static BUILTIN: LazyLock<CompiledPolicy> = LazyLock::new(|| {
    CompiledPolicy::compile(BUILTIN_POLICY)
        .unwrap_or_else(|error| panic!("the built-in policy does not compile: {error}"))
});

/// The state an unknown subject is read as: nothing set.
static UNKNOWN_SUBJECT: SubjectState = SubjectState::new();

impl CompiledPolicy {
    /// Parses, checks and compiles a policy file: every check, for a new version (applied,
    /// compared, validated). Among them, no ALLOW it was not told of: when the subject's state
    /// cannot be read, and for a DELETED or RESTRICTED subject, the file may allow only the
    /// purposes it names in `degraded.allow`, `deleted.allow` and `restricted.allow`.
    pub fn compile(source: &str) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::compile_with(source, Declarations::Required)
    }

    /// Compiles a version already stored: every check of [`CompiledPolicy::compile`] but the
    /// declarations of its ALLOWs, which versions stored before that check existed do not
    /// make. A deployment's stored versions keep loading; a new version must declare them.
    pub fn compile_stored(source: &str) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::compile_with(source, Declarations::AsStored)
    }

    fn compile_with(
        source: &str,
        declarations: Declarations,
    ) -> Result<CompiledPolicy, PolicyError> {
        let document = file::parse(source)?;
        if document.version.trim().is_empty() {
            return Err(PolicyError::EmptyVersion);
        }
        let effective_from_micros = file::micros_since_epoch(&document.effective_from)
            .map_err(PolicyError::EffectiveFrom)?;
        let rules = Rules::check(&document)?;
        let retention = compile_retention(&document)?;
        let every_purpose: Vec<Listed<'_>> = document
            .every_purpose
            .iter()
            .enumerate()
            .map(|(index, entry)| Listed {
                place: Place::EveryPurpose(index),
                rule: &entry.rule,
                when: &entry.when,
            })
            .collect();
        let mut own_lists = Vec::with_capacity(PURPOSE_COUNT);
        for &purpose in Purpose::ALL {
            let entries = document
                .purposes
                .get(&Named(purpose))
                .ok_or(PolicyError::MissingPurpose { purpose })?;
            own_lists.push(
                entries
                    .iter()
                    .enumerate()
                    .map(|(index, entry)| Listed {
                        place: Place::Purpose(purpose, index),
                        rule: &entry.rule,
                        when: &entry.when,
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let rule_ids = used_rules(&document, &rules, &every_purpose, &own_lists)?;

        let mut every_purpose_reached = vec![false; every_purpose.len()];
        let mut every_purpose_matched = vec![false; every_purpose.len()];
        let mut tables = Vec::with_capacity(PURPOSE_COUNT);
        for (&purpose, own) in Purpose::ALL.iter().zip(&own_lists) {
            let entries: Vec<Listed<'_>> = every_purpose.iter().chain(own).copied().collect();
            let compiled =
                compile_purpose(purpose, &entries, &rules, document.degraded.rule(purpose))?;
            let shared = every_purpose.len();
            for index in 0..shared {
                every_purpose_reached[index] |= compiled.reached[index];
                every_purpose_matched[index] |= compiled.matched[index];
            }
            unreached(
                &entries[shared..],
                &compiled.reached[shared..],
                &compiled.matched[shared..],
            )?;
            tables.push(compiled.table);
        }
        unreached(
            &every_purpose,
            &every_purpose_reached,
            &every_purpose_matched,
        )?;
        let Ok(tables) = tables.try_into() else {
            unreachable!("one table per purpose")
        };
        let policy = CompiledPolicy {
            tables,
            version: document.version.as_str().into(),
            effective_from_micros,
            description: document.description.as_str().into(),
            source: source.into(),
            rule_ids: rule_ids.into_iter().map(Box::from).collect(),
            retention,
        };
        if declarations == Declarations::Required {
            undeclared_allows(&document, &policy, &every_purpose, &own_lists)?;
        }
        Ok(policy)
    }

    /// The default policy, `policies/2026-01-01.toml`, compiled once.
    pub fn builtin() -> &'static CompiledPolicy {
        &BUILTIN
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// When the policy takes effect, in microseconds since the Unix epoch (UTC).
    pub fn effective_from_micros(&self) -> i64 {
        self.effective_from_micros
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The policy file, as given to [`CompiledPolicy::compile`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Decides one question. `subject` is `None` for a subject never seen.
    ///
    /// Always inlined: a few dozen instructions, and without the call the caller's loads
    /// overlap with them.
    #[inline(always)]
    pub fn evaluate(&self, subject: Option<&SubjectState>, question: &Question) -> &Ruling {
        let table = &self.tables[question.purpose.index()];
        let (state, status) = match subject {
            Some(state) => (state, status_code(Some(state.status))),
            None => (&UNKNOWN_SUBJECT, status_code(None)),
        };
        let decided = table.by_status[status];
        if decided != UNDECIDED {
            return &table.rulings[usize::from(decided)];
        }
        // `|` rather than `||` (as in `has_moderation_flag`): both flags are read, no branch.
        let (moderation_flag, feedback) = match &question.conversation {
            Some(conversation) => (
                conversation.automated_moderation | conversation.user_report,
                conversation.feedback.is_some(),
            ),
            None => (false, false),
        };
        let subject_key = pack(
            &SUBJECT_KEY,
            [
                choice_code(state.choices.get(question.purpose)),
                status,
                plan_code(state.plan),
                usize::from(state.gpc),
                usize::from(state.zero_data_retention),
            ],
        );
        let question_key = pack(
            &QUESTION_KEY,
            [
                choice_code(state.choices.get(table.other)),
                question.source as usize,
                usize::from(moderation_flag),
                usize::from(feedback),
            ],
        );
        let cell = usize::from(table.rows[subject_key]) + question_key;
        &table.rulings[usize::from(table.cells[cell])]
    }

    /// The fail-safe ruling when the subject's state cannot be read.
    pub fn degraded(&self, purpose: Purpose) -> &Ruling {
        &self.tables[purpose.index()].rulings[usize::from(DEGRADED)]
    }

    /// Every rule id of the policy, in the order the policy first uses them (`every_purpose`,
    /// then the purposes, then `degraded`).
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rule_ids.iter().map(|id| &**id)
    }

    /// The row of the retention schedule of one category of data.
    pub fn retention_rule(&self, category: DataCategory) -> &RetentionRule {
        &self.retention[category as usize]
    }

    /// What the retention schedule says of one category of data in one situation.
    pub fn retention(&self, category: DataCategory, facts: &RetentionFacts) -> Retention<'_> {
        self.retention_rule(category).apply(facts)
    }
}

/// Whether a file must declare the ALLOWs it gives where the state says to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Declarations {
    /// A new version: every such ALLOW is declared.
    Required,
    /// A version stored before declarations existed: loaded as it was accepted.
    AsStored,
}

/// The statuses under which a subject is allowed nothing unless the file says so, with the
/// table that says so.
const STOPPED: [(Status, &str); 2] = [
    (Status::Deleted, "deleted"),
    (Status::Restricted, "restricted"),
];

/// Refuses an ALLOW the file does not declare: a degraded rule, or the answer to any question
/// about a DELETED or RESTRICTED subject. Read from the compiled tables, input by input, so
/// whatever the entries (an ALLOW placed before G2, a status test left out), what the policy
/// would answer is what is checked; the error names the entry that gives it.
fn undeclared_allows(
    document: &PolicyFile,
    policy: &CompiledPolicy,
    every_purpose: &[Listed<'_>],
    own_lists: &[Vec<Listed<'_>>],
) -> Result<(), PolicyError> {
    for (&purpose, own) in Purpose::ALL.iter().zip(own_lists) {
        let degraded = policy.degraded(purpose);
        if degraded.decision == Decision::Allow
            && !file::declared("degraded", &document.degraded.allow, purpose)?
        {
            let named = document.degraded.purposes.contains_key(&Named(purpose));
            return Err(PolicyError::DegradedAllow {
                place: Place::Degraded(named.then_some(purpose)).to_string(),
                rule: degraded.rule.to_string(),
                purpose,
            });
        }
        let other = policy.tables[purpose.index()].other;
        for (status, table) in STOPPED {
            let allowance = match status {
                Status::Deleted => &document.deleted,
                _ => &document.restricted,
            };
            if file::declared(table, &allowance.allow, purpose)? {
                continue;
            }
            let allowed = inputs_of_status(status, purpose, other).find(|input| {
                let (state, question) = input.as_question(purpose);
                policy.evaluate(Some(&state), &question).decision == Decision::Allow
            });
            if let Some(input) = allowed {
                let entry = every_purpose
                    .iter()
                    .chain(own)
                    .find(|entry| matches(entry.when, purpose, &input))
                    .expect("a compiled purpose decides every possible input");
                return Err(PolicyError::StoppedAllow {
                    place: entry.place.to_string(),
                    rule: entry.rule.to_owned(),
                    purpose,
                    status,
                    table,
                });
            }
        }
    }
    Ok(())
}

/// Every input a question about `purpose` can have for a known subject of `status`: each code
/// of every other axis.
fn inputs_of_status(
    status: Status,
    purpose: Purpose,
    other: Purpose,
) -> impl Iterator<Item = Input> {
    let count: usize = Axis::ALL
        .iter()
        .filter(|axis| **axis != Axis::Status)
        .map(|axis| axis.size())
        .product();
    (0..count).filter_map(move |mut index| {
        let mut codes = [0; AXES];
        for axis in Axis::ALL {
            codes[axis as usize] = if axis == Axis::Status {
                status as usize
            } else {
                let code = index % axis.size();
                index /= axis.size();
                code
            };
        }
        let input = Input::from_codes(&codes, purpose, other);
        // With no other purpose read, the other slot is the own one: counted once.
        let repeated = other == purpose && codes[Axis::OtherChoice as usize] != NO_CHOICE;
        (input.is_possible() && !repeated).then_some(input)
    })
}

/// Checks the retention schedule (every category once, each row consistent) and compiles it.
/// A file with no schedule at all (a version stored before schedules were part of a policy
/// file) keeps the built-in one, so every stored version still compiles.
fn compile_retention(document: &PolicyFile) -> Result<Box<[RetentionRule]>, PolicyError> {
    if document.retention.is_empty() && document.version != super::POLICY_VERSION {
        return Ok(CompiledPolicy::builtin().retention.clone());
    }
    DataCategory::ALL
        .iter()
        .map(|&category| {
            let entry = document
                .retention
                .get(&Named(category))
                .ok_or(PolicyError::MissingRetention { category })?;
            retention_rule(category, entry)
        })
        .collect()
}

fn retention_rule(
    category: DataCategory,
    entry: &RetentionEntry,
) -> Result<RetentionRule, PolicyError> {
    let fail = |field: &'static str, message: String| PolicyError::Retention {
        category,
        field,
        message,
    };
    let Named(kind) = entry.keep;
    let Named(event) = entry.event;
    let consent_event = event.source() == EventSource::Consent;
    match kind {
        KeepKind::WhileConsented if !consent_event => {
            return Err(fail(
                "event",
                format!(
                    "`{event}` withdraws no consent; a WHILE_CONSENTED row ends with \
                     CONSENT_WITHDRAWAL or UNSUBSCRIBE"
                ),
            ));
        }
        KeepKind::UntilEvent | KeepKind::AfterEvent if consent_event => {
            return Err(fail(
                "event",
                format!(
                    "`{event}` is the withdrawal of a consent; use keep = \"WHILE_CONSENTED\" \
                     with the choices in `consent`"
                ),
            ));
        }
        _ => {}
    }
    let keep = match (kind, entry.period) {
        (KeepKind::AfterEvent, None) => {
            return Err(fail(
                "period",
                "missing; an AFTER_EVENT row needs one, such as \"30d\" or \"3y\"".to_owned(),
            ));
        }
        (KeepKind::UntilEvent | KeepKind::WhileConsented, Some(_)) => {
            return Err(fail(
                "period",
                format!(
                    "only an AFTER_EVENT row has a period; a {} row has none",
                    kind.as_str()
                ),
            ));
        }
        (KeepKind::AfterEvent, Some(period)) => {
            let period = match (period, entry.from_financial_year_close) {
                (PeriodText::Days(days), false) => Period::Days(days),
                (PeriodText::Years(years), false) => Period::Years(years),
                (PeriodText::Years(years), true) => Period::YearsFromFinancialYearClose(years),
                (PeriodText::Days(_), true) => {
                    return Err(fail(
                        "from_financial_year_close",
                        "counts whole years from the close of the financial year; give the \
                         period in years"
                            .to_owned(),
                    ));
                }
            };
            KeepRule::AfterEvent(event, period)
        }
        (KeepKind::UntilEvent, None) => KeepRule::UntilEvent(event),
        (KeepKind::WhileConsented, None) => KeepRule::WhileConsented(event),
    };
    if entry.from_financial_year_close && kind != KeepKind::AfterEvent {
        return Err(fail(
            "from_financial_year_close",
            "only an AFTER_EVENT row has a period to count".to_owned(),
        ));
    }
    let mut consent: Vec<Purpose> = Vec::new();
    for &Named(purpose) in &entry.consent {
        if !purpose.accepts_choice() {
            return Err(fail(
                "consent",
                format!("{purpose} takes no choice, so it can give no consent"),
            ));
        }
        if consent.contains(&purpose) {
            return Err(fail("consent", format!("{purpose} is named twice")));
        }
        consent.push(purpose);
    }
    match (kind, consent.is_empty()) {
        (KeepKind::WhileConsented, true) => {
            return Err(fail(
                "consent",
                "missing; a WHILE_CONSENTED row names the choices that are its consent, such as \
                 [\"MARKETING_EMAIL\"]"
                    .to_owned(),
            ));
        }
        (KeepKind::UntilEvent | KeepKind::AfterEvent, false) => {
            return Err(fail(
                "consent",
                "only a WHILE_CONSENTED row reads a consent".to_owned(),
            ));
        }
        _ => {}
    }
    let Named(legal_hold) = entry.legal_hold;
    if legal_hold == LegalHold::FromEvent && kind != KeepKind::AfterEvent {
        return Err(fail(
            "legal_hold",
            format!(
                "FROM_EVENT holds data once its keeping period has begun, and a {} row has none; \
                 use NEVER or ALWAYS",
                kind.as_str()
            ),
        ));
    }
    if entry.section.trim().is_empty() {
        return Err(fail("section", "must not be empty".to_owned()));
    }
    Ok(RetentionRule {
        keep,
        unless_zero_data_retention: entry.unless_zero_data_retention,
        legal_hold,
        consent: consent.into(),
        section: entry.section.as_str().into(),
    })
}

impl fmt::Debug for CompiledPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CompiledPolicy")
            .field("version", &self.version)
            .field("effective_from_micros", &self.effective_from_micros)
            .field("rule_ids", &self.rule_ids)
            .finish_non_exhaustive()
    }
}

/// The inputs a rule can test, each read as a small integer code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Axis {
    /// Each [`Status`] by position, then [`UNKNOWN_STATUS`].
    Status,
    /// Each [`Plan`] by position, then [`NO_PLAN`].
    Plan,
    Gpc,
    ZeroDataRetention,
    /// The choice of the purpose asked about: each [`Choice`] by position, then [`NO_CHOICE`].
    OwnChoice,
    /// The choice of the one other purpose the rules read, coded alike.
    OtherChoice,
    Source,
    ModerationFlag,
    Feedback,
}

const AXES: usize = Axis::ALL.len();
const UNKNOWN_STATUS: usize = Status::ALL.len();
const NO_PLAN: usize = Plan::ALL.len();
const NO_CHOICE: usize = Choice::ALL.len();

impl Axis {
    const ALL: [Axis; 9] = [
        Axis::Status,
        Axis::Plan,
        Axis::Gpc,
        Axis::ZeroDataRetention,
        Axis::OwnChoice,
        Axis::OtherChoice,
        Axis::Source,
        Axis::ModerationFlag,
        Axis::Feedback,
    ];

    /// How many codes the axis has.
    const fn size(self) -> usize {
        match self {
            Axis::Status => UNKNOWN_STATUS + 1,
            Axis::Plan => NO_PLAN + 1,
            Axis::OwnChoice | Axis::OtherChoice => NO_CHOICE + 1,
            Axis::Gpc
            | Axis::ZeroDataRetention
            | Axis::Source
            | Axis::ModerationFlag
            | Axis::Feedback => 2,
        }
    }

    /// The code compiling assumes for an axis the purpose does not read: one every subject
    /// can have, a subject never seen included.
    const fn unread(self) -> usize {
        match self {
            Axis::Plan => NO_PLAN,
            Axis::OwnChoice | Axis::OtherChoice => NO_CHOICE,
            _ => 0,
        }
    }

    /// How many bits a code of the axis takes in a key.
    const fn bits(self) -> u32 {
        usize::BITS - (self.size() - 1).leading_zeros()
    }
}

/// The inputs packed in the subject key, lowest bits first: the choice of the purpose asked
/// about, status, plan, GPC, zero data retention.
const SUBJECT_KEY: [Axis; 5] = [
    Axis::OwnChoice,
    Axis::Status,
    Axis::Plan,
    Axis::Gpc,
    Axis::ZeroDataRetention,
];

/// The inputs packed in the question key, lowest bits first: the choice of the other purpose
/// read, source, moderation flag, feedback.
const QUESTION_KEY: [Axis; 4] = [
    Axis::OtherChoice,
    Axis::Source,
    Axis::ModerationFlag,
    Axis::Feedback,
];

const SUBJECT_KEYS: usize = key_count(&SUBJECT_KEY);
const QUESTION_KEYS: usize = key_count(&QUESTION_KEY);
const STATUS_CODES: usize = Axis::Status.size();

/// How many keys the bits of `axes` make.
const fn key_count<const N: usize>(axes: &[Axis; N]) -> usize {
    let mut bits = 0;
    let mut index = 0;
    while index < N {
        bits += axes[index].bits();
        index += 1;
    }
    1 << bits
}

/// The key of one code per axis.
#[inline(always)]
fn pack<const N: usize>(axes: &[Axis; N], codes: [usize; N]) -> usize {
    let mut key = 0;
    let mut shift = 0;
    for (axis, code) in axes.iter().zip(codes) {
        key |= code << shift;
        shift += axis.bits();
    }
    key & (key_count(axes) - 1)
}

/// The codes of a key; `None` if one of them is no code of its axis (no input has the key).
fn unpack<const N: usize>(axes: &[Axis; N], key: usize) -> Option<[usize; N]> {
    let mut codes = [0; N];
    let mut shift = 0;
    for (code, axis) in codes.iter_mut().zip(axes) {
        *code = key >> shift & ((1 << axis.bits()) - 1);
        if *code >= axis.size() {
            return None;
        }
        shift += axis.bits();
    }
    Some(codes)
}

#[inline(always)]
fn status_code(status: Option<Status>) -> usize {
    match status {
        Some(status) => status as usize,
        None => UNKNOWN_STATUS,
    }
}

#[inline(always)]
fn plan_code(plan: Option<Plan>) -> usize {
    match plan {
        Some(plan) => plan as usize,
        None => NO_PLAN,
    }
}

#[inline(always)]
fn choice_code(choice: Option<Choice>) -> usize {
    match choice {
        Some(choice) => choice as usize,
        None => NO_CHOICE,
    }
}

/// One point of a purpose's input space, as its conditions see it.
struct Input {
    /// `None` for a subject never seen.
    status: Option<Status>,
    plan: Option<Plan>,
    gpc: bool,
    zero_data_retention: bool,
    /// The choice of the purpose asked about, then of the other purpose read.
    choices: [(Purpose, Option<Choice>); 2],
    source: Source,
    moderation_flag: bool,
    feedback: bool,
}

impl Input {
    /// The input of one code per axis.
    fn from_codes(codes: &[usize; AXES], purpose: Purpose, other: Purpose) -> Input {
        let code = |axis: Axis| codes[axis as usize];
        Input {
            status: Status::ALL.get(code(Axis::Status)).copied(),
            plan: Plan::ALL.get(code(Axis::Plan)).copied(),
            gpc: code(Axis::Gpc) == 1,
            zero_data_retention: code(Axis::ZeroDataRetention) == 1,
            choices: [
                (purpose, Choice::ALL.get(code(Axis::OwnChoice)).copied()),
                (other, Choice::ALL.get(code(Axis::OtherChoice)).copied()),
            ],
            source: Source::ALL[code(Axis::Source)],
            moderation_flag: code(Axis::ModerationFlag) == 1,
            feedback: code(Axis::Feedback) == 1,
        }
    }

    /// The subject and the question of a known subject with this input.
    fn as_question(&self, purpose: Purpose) -> (SubjectState, Question) {
        let mut state = SubjectState {
            plan: self.plan,
            status: self.status.unwrap_or(Status::Active),
            gpc: self.gpc,
            zero_data_retention: self.zero_data_retention,
            ..SubjectState::new()
        };
        // The other purpose last: when it is the purpose itself, its slot is the own choice.
        for (slot, choice) in self.choices.iter().rev() {
            state.choices.set(*slot, *choice);
        }
        let conversation = (self.moderation_flag || self.feedback).then_some(ConversationFacts {
            feedback: self.feedback.then_some(Rating::ThumbsUp),
            automated_moderation: self.moderation_flag,
            user_report: false,
        });
        let question = Question {
            purpose,
            source: self.source,
            conversation,
        };
        (state, question)
    }

    fn choice(&self, purpose: Purpose) -> Option<Choice> {
        self.choices
            .iter()
            .find(|(slot, _)| *slot == purpose)
            .and_then(|(_, choice)| *choice)
    }

    /// Whether a question can have this input: a subject never seen has nothing set, and a
    /// purpose that takes no choice (refused at the edge) has none.
    fn is_possible(&self) -> bool {
        let blank = self.plan.is_none()
            && !self.gpc
            && !self.zero_data_retention
            && self.choices.iter().all(|(_, choice)| choice.is_none());
        (self.status.is_some() || blank)
            && self
                .choices
                .iter()
                .all(|(purpose, choice)| purpose.accepts_choice() || choice.is_none())
    }

    /// The input in a policy's words, naming only the axes read.
    fn describe(&self, read: &[bool; AXES]) -> String {
        let mut parts = Vec::new();
        let choice_name = |choice: Option<Choice>| choice.map_or("NONE", Choice::as_str);
        for (index, axis) in Axis::ALL.into_iter().enumerate() {
            if !read[index] {
                continue;
            }
            parts.push(match axis {
                Axis::Status => match self.status {
                    Some(status) => format!("status {status}"),
                    None => "a subject never seen".to_owned(),
                },
                Axis::Plan => format!("plan {}", self.plan.map_or("NONE", Plan::as_str)),
                Axis::Gpc => format!("gpc {}", self.gpc),
                Axis::ZeroDataRetention => {
                    format!("zero_data_retention {}", self.zero_data_retention)
                }
                Axis::OwnChoice | Axis::OtherChoice => {
                    let (purpose, choice) = self.choices[usize::from(axis == Axis::OtherChoice)];
                    format!("choice of {purpose} {}", choice_name(choice))
                }
                Axis::Source => format!("source {}", self.source),
                Axis::ModerationFlag => format!("moderation_flag {}", self.moderation_flag),
                Axis::Feedback => format!("feedback {}", self.feedback),
            });
        }
        if parts.is_empty() {
            "any input".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Whether a condition holds for an input of a purpose.
fn matches(when: &Condition, purpose: Purpose, input: &Input) -> bool {
    when.known
        .is_none_or(|known| known == input.status.is_some())
        && when.status.as_ref().is_none_or(|test| {
            input
                .status
                .map_or(test.accepts_absent(), |status| test.accepts(status))
        })
        && when
            .plan
            .as_ref()
            .is_none_or(|test| test.accepts(input.plan))
        && when.gpc.is_none_or(|gpc| gpc == input.gpc)
        && when
            .zero_data_retention
            .is_none_or(|zero| zero == input.zero_data_retention)
        && when
            .choice
            .as_ref()
            .is_none_or(|test| test.accepts(input.choice(purpose)))
        && when
            .choice_of
            .iter()
            .all(|(Named(other), test)| test.accepts(input.choice(*other)))
        && when
            .source
            .as_ref()
            .is_none_or(|test| test.accepts(input.source))
        && when
            .moderation_flag
            .is_none_or(|flag| flag == input.moderation_flag)
        && when
            .feedback
            .is_none_or(|feedback| feedback == input.feedback)
}

/// Where a rule is named in the file, for error messages.
#[derive(Clone, Copy, Debug)]
enum Place {
    EveryPurpose(usize),
    Purpose(Purpose, usize),
    Degraded(Option<Purpose>),
}

impl fmt::Display for Place {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::EveryPurpose(index) => write!(formatter, "every_purpose[{index}]"),
            Place::Purpose(purpose, index) => write!(formatter, "purposes.{purpose}[{index}]"),
            Place::Degraded(None) => formatter.write_str("degraded.default"),
            Place::Degraded(Some(purpose)) => write!(formatter, "degraded.purposes.{purpose}"),
        }
    }
}

/// One entry of a purpose's list, with where it is written.
#[derive(Clone, Copy)]
struct Listed<'a> {
    place: Place,
    rule: &'a str,
    when: &'a Condition,
}

/// The rule definitions, checked, with their explanations parsed.
struct Rules<'a> {
    version: &'a str,
    definitions: BTreeMap<&'a str, (&'a RuleDefinition, Template)>,
}

impl<'a> Rules<'a> {
    fn check(document: &'a PolicyFile) -> Result<Rules<'a>, PolicyError> {
        let mut definitions = BTreeMap::new();
        for (id, definition) in &document.rules {
            let rule = || id.clone();
            if !is_rule_id(id) {
                return Err(PolicyError::InvalidRuleId { rule: rule() });
            }
            match (definition.decision.0, &definition.basis) {
                (Decision::Allow, None) => {
                    return Err(PolicyError::AllowWithoutBasis { rule: rule() });
                }
                (Decision::Deny, Some(_)) => {
                    return Err(PolicyError::DenyWithBasis { rule: rule() });
                }
                _ => {}
            }
            if definition.explanation.trim().is_empty() {
                return Err(PolicyError::EmptyExplanation { rule: rule() });
            }
            let template = Template::parse(&definition.explanation).map_err(|message| {
                PolicyError::Template {
                    rule: rule(),
                    message,
                }
            })?;
            definitions.insert(id.as_str(), (definition, template));
        }
        Ok(Rules {
            version: &document.version,
            definitions,
        })
    }

    fn ruling(&self, id: &str, purpose: Purpose) -> Ruling {
        let (definition, template) = &self.definitions[id];
        Ruling {
            rule: id.into(),
            decision: definition.decision.0,
            reason: definition.reason.0,
            basis: definition.basis.map(|Named(basis)| basis),
            explanation: template.render(purpose, self.version).into(),
        }
    }
}

fn is_rule_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
}

/// Every rule named in the lists and `degraded` is defined and every defined rule is named;
/// the rule ids in order of first use.
fn used_rules<'a>(
    document: &'a PolicyFile,
    rules: &Rules<'_>,
    every_purpose: &[Listed<'a>],
    own_lists: &[Vec<Listed<'a>>],
) -> Result<Vec<&'a str>, PolicyError> {
    let degraded = std::iter::once((Place::Degraded(None), document.degraded.default.as_str()))
        .chain(
            document
                .degraded
                .purposes
                .iter()
                .map(|(Named(purpose), rule)| (Place::Degraded(Some(*purpose)), rule.as_str())),
        );
    let listed = every_purpose
        .iter()
        .chain(own_lists.iter().flatten())
        .map(|entry| (entry.place, entry.rule));
    let mut used: Vec<&str> = Vec::new();
    for (place, rule) in listed.chain(degraded) {
        if !rules.definitions.contains_key(rule) {
            return Err(PolicyError::UndefinedRule {
                place: place.to_string(),
                rule: rule.to_owned(),
            });
        }
        if !used.contains(&rule) {
            used.push(rule);
        }
    }
    match document
        .rules
        .keys()
        .find(|id| !used.contains(&id.as_str()))
    {
        Some(unused) => Err(PolicyError::UnusedRule {
            rule: unused.clone(),
        }),
        None => Ok(used),
    }
}

/// A purpose's table, and which of its entries some possible input reaches (is decided by) and
/// matches.
struct CompiledPurpose {
    table: PurposeTable,
    reached: Vec<bool>,
    matched: Vec<bool>,
}

fn compile_purpose(
    purpose: Purpose,
    entries: &[Listed<'_>],
    rules: &Rules<'_>,
    degraded_rule: &str,
) -> Result<CompiledPurpose, PolicyError> {
    let mut read = [false; AXES];
    let mut others: Vec<Purpose> = Vec::new();
    for entry in entries {
        let when = entry.when;
        read[Axis::Status as usize] |= when.known.is_some() || when.status.is_some();
        read[Axis::Plan as usize] |= when.plan.is_some();
        read[Axis::Gpc as usize] |= when.gpc.is_some();
        read[Axis::ZeroDataRetention as usize] |= when.zero_data_retention.is_some();
        read[Axis::Source as usize] |= when.source.is_some();
        read[Axis::ModerationFlag as usize] |= when.moderation_flag.is_some();
        read[Axis::Feedback as usize] |= when.feedback.is_some();
        read[Axis::OwnChoice as usize] |=
            when.choice.is_some() || when.choice_of.contains_key(&Named(purpose));
        for &Named(other) in when.choice_of.keys() {
            if other != purpose && !others.contains(&other) {
                others.push(other);
            }
        }
    }
    if others.len() > 1 {
        let names: Vec<&str> = std::iter::once(purpose)
            .filter(|_| read[Axis::OwnChoice as usize])
            .chain(others)
            .map(Purpose::as_str)
            .collect();
        return Err(PolicyError::TooManyChoices {
            purpose,
            purposes: names.join(", "),
        });
    }
    read[Axis::OtherChoice as usize] = !others.is_empty();
    let other = others.first().copied().unwrap_or(purpose);

    // One row per combination of the subject key's axes read: how far one step along each of
    // them moves, 0 for an axis not read.
    let mut strides = [0; AXES];
    let mut row_count = 1;
    for axis in SUBJECT_KEY {
        if read[axis as usize] {
            strides[axis as usize] = row_count;
            row_count *= axis.size();
        }
    }
    let mut rows = [0; SUBJECT_KEYS];
    for (key, start) in rows.iter_mut().enumerate() {
        if let Some(codes) = unpack(&SUBJECT_KEY, key) {
            let row: usize = SUBJECT_KEY
                .iter()
                .zip(codes)
                .map(|(axis, code)| code * strides[*axis as usize])
                .sum();
            *start = u16::try_from(row * QUESTION_KEYS).expect("at most 16,384 cells");
        }
    }

    let mut reached = vec![false; entries.len()];
    let mut matched = vec![false; entries.len()];
    // The fail-safe ruling comes first: see DEGRADED.
    let mut rule_ids = vec![degraded_rule];
    // The rulings of the inputs of each status code a question can have.
    let mut status_rulings = [const { BTreeSet::new() }; STATUS_CODES];
    let mut cells = Vec::with_capacity(row_count * QUESTION_KEYS);
    let mut codes = [0; AXES];
    for row in 0..row_count {
        for axis in SUBJECT_KEY {
            codes[axis as usize] = match strides[axis as usize] {
                0 => axis.unread(),
                stride => row / stride % axis.size(),
            };
        }
        for question_key in 0..QUESTION_KEYS {
            let Some(question_codes) = unpack(&QUESTION_KEY, question_key) else {
                cells.push(DEGRADED);
                continue;
            };
            for (axis, code) in QUESTION_KEY.into_iter().zip(question_codes) {
                codes[axis as usize] = code;
            }
            let input = Input::from_codes(&codes, purpose, other);
            let possible = input.is_possible();
            let mut first = None;
            for (index, entry) in entries.iter().enumerate() {
                if matches(entry.when, purpose, &input) {
                    first.get_or_insert(index);
                    if !possible {
                        break;
                    }
                    matched[index] = true;
                }
            }
            if possible {
                match first {
                    Some(index) => reached[index] = true,
                    None => {
                        return Err(PolicyError::Uncovered {
                            purpose,
                            example: input.describe(&read),
                        });
                    }
                }
            }
            // An input no question can have still gets a ruling: the first match, else the
            // fail-safe one.
            let rule = first.map_or(degraded_rule, |index| entries[index].rule);
            let position = match rule_ids.iter().position(|id| *id == rule) {
                Some(position) => position,
                None => {
                    rule_ids.push(rule);
                    rule_ids.len() - 1
                }
            };
            let position = u16::try_from(position).expect("at most one rule per cell");
            cells.push(position);
            // A subject never seen is read as one with nothing set; a known one may have any
            // code, even one the edge refuses.
            let statuses = if read[Axis::Status as usize] {
                codes[Axis::Status as usize]..codes[Axis::Status as usize] + 1
            } else {
                0..STATUS_CODES
            };
            for status in statuses {
                if status != UNKNOWN_STATUS || possible {
                    status_rulings[status].insert(position);
                }
            }
        }
    }
    let by_status = status_rulings.map(|rulings| match rulings.first() {
        Some(&position) if rulings.len() == 1 => position,
        _ => UNDECIDED,
    });
    Ok(CompiledPurpose {
        table: PurposeTable {
            by_status,
            rows,
            other,
            cells: cells.into(),
            rulings: rule_ids
                .iter()
                .map(|id| rules.ruling(id, purpose))
                .collect(),
        },
        reached,
        matched,
    })
}

/// The first entry no possible input reaches, if any, as an error.
fn unreached(
    entries: &[Listed<'_>],
    reached: &[bool],
    matched: &[bool],
) -> Result<(), PolicyError> {
    let found = entries
        .iter()
        .zip(reached.iter().zip(matched))
        .find(|(_, (reached, _))| !**reached);
    match found {
        None => Ok(()),
        Some((entry, (_, true))) => Err(PolicyError::Shadowed {
            place: entry.place.to_string(),
            rule: entry.rule.to_owned(),
        }),
        Some((entry, (_, false))) => Err(PolicyError::MatchesNothing {
            place: entry.place.to_string(),
            rule: entry.rule.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;
    use crate::policy::{self, ConversationFacts, Rating, Rule};

    /// A small policy: every purpose allowed by rule OK unless `lists` says otherwise, to
    /// deleted and restricted subjects too (declared), `top` inserted before the first table,
    /// `rules` appended.
    fn small(top: &str, lists: &[(Purpose, &str)], rules: &str) -> String {
        let mut text = format!(
            "version = \"test\"\neffective_from = 2026-01-01\ndescription = \"a test\"\n{top}\n[purposes]\n"
        );
        for purpose in Purpose::ALL {
            let list = lists
                .iter()
                .find(|(listed, _)| listed == purpose)
                .map_or(r#"[{ rule = "OK" }]"#, |(_, list)| list);
            writeln!(text, "{purpose} = {list}").unwrap();
        }
        text.push_str(
            r#"
[degraded]
default = "U"

[deleted]
allow = ["MODEL_TRAINING", "MEMORY", "SENSITIVE_MEMORY", "IP_GEOLOCATION", "MARKETING_EMAIL", "ANALYTICS_COOKIES", "MARKETING_COOKIES", "ABUSE_MONITORING_RETENTION", "PRODUCT_IMPROVEMENT", "SERVICE_DELIVERY"]

[restricted]
allow = ["MODEL_TRAINING", "MEMORY", "SENSITIVE_MEMORY", "IP_GEOLOCATION", "MARKETING_EMAIL", "ANALYTICS_COOKIES", "MARKETING_COOKIES", "ABUSE_MONITORING_RETENTION", "PRODUCT_IMPROVEMENT", "SERVICE_DELIVERY"]

[rules.OK]
decision = "ALLOW"
reason = "CONTRACT_DEFAULT"
basis = "CONTRACT"
explanation = "{purpose} allowed under {version}"

[rules.U]
decision = "DENY"
reason = "STATE_UNAVAILABLE"
explanation = "unavailable"

[rules.NO]
decision = "DENY"
reason = "CHOICE_REFUSED"
explanation = "{purpose} denied"
"#,
        );
        text.push_str(retention_schedule());
        text.push_str(rules);
        text
    }

    /// `small` with MEMORY deciding by `list`, NO used there.
    /// The default policy's retention schedule, the last part of its file.
    fn retention_schedule() -> &'static str {
        let start = BUILTIN_POLICY
            .find("\n[retention.")
            .expect("the default policy has a retention schedule");
        &BUILTIN_POLICY[start..]
    }

    fn memory(list: &str) -> String {
        small("", &[(Purpose::Memory, list)], "")
    }

    fn error(source: &str) -> String {
        match CompiledPolicy::compile(source) {
            Ok(_) => panic!("compiled: {source}"),
            Err(error) => error.to_string(),
        }
    }

    /// Each source fails to compile with an error that starts as given.
    fn assert_errors(cases: &[(String, &str)]) {
        for (source, expected) in cases {
            let error = error(source);
            assert!(
                error.starts_with(expected),
                "{error:?} does not start with {expected:?}"
            );
        }
    }

    const REFUSED_THEN_OK: &str =
        r#"[{ rule = "NO", when = { choice = "REFUSED" } }, { rule = "OK" }]"#;

    #[test]
    fn the_builtin_policy_compiles_with_the_builtin_rules() {
        let policy = CompiledPolicy::builtin();
        assert_eq!(policy.version(), policy::POLICY_VERSION);
        assert_eq!(
            policy.effective_from_micros(),
            20_454 * crate::calendar::MICROS_PER_DAY
        );
        assert!(
            policy
                .description()
                .contains("privacy policy effective 2026-01-01")
        );
        assert_eq!(policy.source(), BUILTIN_POLICY);
        let ids: Vec<&str> = policy.rule_ids().collect();
        let builtin: Vec<&str> = Rule::ALL.iter().map(|rule| rule.id()).collect();
        assert_eq!(ids, builtin);
        assert!(format!("{policy:?}").starts_with("CompiledPolicy { version: \"2026-01-01\""));
    }

    #[test]
    fn input_codes_are_positions_in_the_vocabulary() {
        for (position, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status_code(Some(*status)), position);
        }
        for (position, plan) in Plan::ALL.iter().enumerate() {
            assert_eq!(plan_code(Some(*plan)), position);
        }
        for (position, choice) in Choice::ALL.iter().enumerate() {
            assert_eq!(choice_code(Some(*choice)), position);
        }
        for (position, source) in Source::ALL.iter().enumerate() {
            assert_eq!(*source as usize, position);
        }
        assert_eq!(status_code(None), Axis::Status.size() - 1);
        assert_eq!(plan_code(None), Axis::Plan.size() - 1);
        assert_eq!(choice_code(None), Axis::OwnChoice.size() - 1);
    }

    #[test]
    fn explanations_are_expanded_per_purpose_when_compiling() {
        let policy = CompiledPolicy::compile(&memory(REFUSED_THEN_OK)).unwrap();
        let state = SubjectState::new();
        let ruling = policy.evaluate(Some(&state), &Question::about(Purpose::IpGeolocation));
        assert_eq!(&*ruling.rule, "OK");
        assert_eq!(&*ruling.explanation, "IP geolocation allowed under test");
        let mut refused = SubjectState::new();
        refused.choices.set(Purpose::Memory, Some(Choice::Refused));
        let ruling = policy.evaluate(Some(&refused), &Question::about(Purpose::Memory));
        assert_eq!(
            ruling,
            &Ruling {
                rule: "NO".into(),
                decision: Decision::Deny,
                reason: Reason::ChoiceRefused,
                basis: None,
                explanation: "memory denied".into(),
            }
        );
        assert_eq!(&*policy.degraded(Purpose::Memory).rule, "U");
    }

    #[test]
    fn a_subject_never_seen_has_no_status_and_nothing_set() {
        let source = small(
            r#"every_purpose = [{ rule = "NO", when = { status = { not = "ACTIVE" } } }]"#,
            &[(
                Purpose::ModelTraining,
                r#"[{ rule = "U", when = { plan = "NONE", gpc = false, choice = "NONE" } }, { rule = "OK" }]"#,
            )],
            "",
        );
        let policy = CompiledPolicy::compile(&source).unwrap();
        let training = Question::about(Purpose::ModelTraining);
        assert_eq!(&*policy.evaluate(None, &training).rule, "NO");
        let active = SubjectState::new();
        assert_eq!(&*policy.evaluate(Some(&active), &training).rule, "U");
        let deleted = SubjectState {
            status: Status::Deleted,
            ..SubjectState::new()
        };
        assert_eq!(&*policy.evaluate(Some(&deleted), &training).rule, "NO");
    }

    /// The rule of the first entry that matches, read from the document entry by entry.
    fn first_match(
        document: &PolicyFile,
        policy: &CompiledPolicy,
        subject: Option<&SubjectState>,
        question: &Question,
    ) -> String {
        let purpose = question.purpose;
        let other = policy.tables[purpose.index()].other;
        let state = subject.copied().unwrap_or_default();
        let input = Input {
            status: subject.map(|state| state.status),
            plan: state.plan,
            gpc: state.gpc,
            zero_data_retention: state.zero_data_retention,
            choices: [
                (purpose, state.choices.get(purpose)),
                (other, state.choices.get(other)),
            ],
            source: question.source,
            moderation_flag: question
                .conversation
                .is_some_and(|facts| facts.has_moderation_flag()),
            feedback: question
                .conversation
                .is_some_and(|facts| facts.has_feedback()),
        };
        document
            .every_purpose
            .iter()
            .chain(&document.purposes[&Named(purpose)])
            .find(|entry| matches(&entry.when, purpose, &input))
            .map_or_else(
                || document.degraded.rule(purpose).to_owned(),
                |entry| entry.rule.clone(),
            )
    }

    #[test]
    fn the_tables_give_the_first_matching_entry() {
        let sources = [
            BUILTIN_POLICY.to_owned(),
            small(
                r#"every_purpose = [{ rule = "NO", when = { known = false, source = "CONNECTOR" } }, { rule = "U", when = { status = { not = ["ACTIVE", "RESTRICTED"] }, moderation_flag = false } }]"#,
                &[
                    (
                        Purpose::SensitiveMemory,
                        r#"[{ rule = "NO", when = { choice_of = { MEMORY = { not = "GRANTED" } }, choice = ["NONE", "REFUSED"] } }, { rule = "OK" }]"#,
                    ),
                    (
                        Purpose::ModelTraining,
                        r#"[{ rule = "NO", when = { plan = ["NONE", "FREE"], gpc = true } }, { rule = "U", when = { zero_data_retention = true, feedback = true } }, { rule = "OK" }]"#,
                    ),
                    (
                        Purpose::ServiceDelivery,
                        r#"[{ rule = "NO", when = { choice_of = { MEMORY = "REFUSED" }, status = "RESTRICTED" } }, { rule = "OK" }]"#,
                    ),
                ],
                "",
            ),
        ];
        let choices = [None, Some(Choice::Granted), Some(Choice::Refused)];
        let mut rng = fastrand::Rng::with_seed(7);
        for source in sources {
            let document = file::parse(&source).unwrap();
            let policy = CompiledPolicy::compile(&source).unwrap();
            for _ in 0..20_000 {
                let subject = (rng.u8(..4) != 0).then(|| {
                    let mut state = SubjectState {
                        plan: Plan::ALL.get(rng.usize(..=Plan::ALL.len())).copied(),
                        status: Status::ALL[rng.usize(..Status::ALL.len())],
                        gpc: rng.bool(),
                        zero_data_retention: rng.bool(),
                        ..SubjectState::new()
                    };
                    for purpose in Purpose::ALL {
                        state.choices.set(*purpose, choices[rng.usize(..3)]);
                    }
                    state
                });
                let question = Question {
                    purpose: Purpose::ALL[rng.usize(..Purpose::ALL.len())],
                    source: Source::ALL[rng.usize(..Source::ALL.len())],
                    conversation: rng.bool().then(|| ConversationFacts {
                        feedback: rng.bool().then_some(Rating::ThumbsDown),
                        automated_moderation: rng.bool(),
                        user_report: rng.bool(),
                    }),
                };
                assert_eq!(
                    &*policy.evaluate(subject.as_ref(), &question).rule,
                    first_match(&document, &policy, subject.as_ref(), &question),
                    "{subject:?} {question:?}"
                );
            }
        }
    }

    #[test]
    fn every_input_a_question_can_have_is_decided() {
        let source = memory(r#"[{ rule = "NO", when = { choice = "REFUSED" } }]"#);
        assert_eq!(
            error(&source),
            "purposes.MEMORY: no rule decides choice of MEMORY GRANTED; end the list with an entry without `when`"
        );
        let source = small(
            r#"every_purpose = [{ rule = "NO", when = { known = false } }]"#,
            &[(
                Purpose::ModelTraining,
                r#"[{ rule = "OK", when = { status = "ACTIVE", source = "CONVERSATION" } }, { rule = "NO", when = { status = ["DELETED", "RESTRICTED"] } }]"#,
            )],
            "",
        );
        assert_eq!(
            error(&source),
            "purposes.MODEL_TRAINING: no rule decides status ACTIVE, source CONNECTOR; end the list with an entry without `when`"
        );
    }

    #[test]
    fn a_choice_the_edge_refuses_is_never_set() {
        // SERVICE_DELIVERY takes no choice, so only NONE needs a rule ...
        let source = small(
            "",
            &[
                (Purpose::Memory, REFUSED_THEN_OK),
                (
                    Purpose::ServiceDelivery,
                    r#"[{ rule = "OK", when = { choice = "NONE" } }]"#,
                ),
            ],
            "",
        );
        let policy = CompiledPolicy::compile(&source).unwrap();
        // ... and a state that has one anyway gets the fail-safe ruling.
        let mut state = SubjectState::new();
        state
            .choices
            .set(Purpose::ServiceDelivery, Some(Choice::Granted));
        let delivery = Question::about(Purpose::ServiceDelivery);
        assert_eq!(&*policy.evaluate(Some(&state), &delivery).rule, "U");
        // A rule testing for one is never reached.
        let source = small(
            "",
            &[
                (Purpose::Memory, REFUSED_THEN_OK),
                (
                    Purpose::ServiceDelivery,
                    r#"[{ rule = "NO", when = { choice = "GRANTED" } }, { rule = "OK" }]"#,
                ),
            ],
            "",
        );
        assert_eq!(
            error(&source),
            "purposes.SERVICE_DELIVERY[0]: rule `NO` matches no input a question can have"
        );
    }

    #[test]
    fn an_entry_shadowed_by_earlier_ones_is_refused() {
        let source = memory(r#"[{ rule = "OK" }, { rule = "NO", when = { choice = "REFUSED" } }]"#);
        assert_eq!(
            error(&source),
            "purposes.MEMORY[1]: rule `NO` is never reached: the entries before it (every_purpose first) decide every input it matches"
        );
        let source = small(r#"every_purpose = [{ rule = "NO" }]"#, &[], "");
        assert!(
            error(&source).starts_with("purposes.MODEL_TRAINING[0]: rule `OK` is never reached")
        );
        let source = small(
            r#"every_purpose = [{ rule = "NO", when = { gpc = true } }, { rule = "NO", when = { gpc = true, plan = "FREE" } }]"#,
            &[],
            "",
        );
        assert!(error(&source).starts_with("every_purpose[1]: rule `NO` is never reached"));
    }

    #[test]
    fn an_entry_matching_nothing_is_refused() {
        let source = small(
            r#"every_purpose = [{ rule = "NO", when = { known = false, plan = "FREE" } }]"#,
            &[],
            "",
        );
        assert_eq!(
            error(&source),
            "every_purpose[0]: rule `NO` matches no input a question can have"
        );
    }

    #[test]
    fn a_purpose_reads_its_own_choice_and_one_other() {
        let source = memory(
            r#"[{ rule = "NO", when = { choice = "REFUSED", choice_of = { MARKETING_EMAIL = "GRANTED", ANALYTICS_COOKIES = "REFUSED" } } }, { rule = "OK" }]"#,
        );
        assert_eq!(
            error(&source),
            "purposes.MEMORY: the rules read the choices of MEMORY, MARKETING_EMAIL, ANALYTICS_COOKIES; besides its own choice, a purpose's rules can read the choice of one other purpose"
        );
        let source = memory(
            r#"[{ rule = "NO", when = { choice = "REFUSED", choice_of = { MARKETING_EMAIL = { not = "GRANTED" } } } }, { rule = "OK" }]"#,
        );
        let policy = CompiledPolicy::compile(&source).unwrap();
        let mut state = SubjectState::new();
        state.choices.set(Purpose::Memory, Some(Choice::Refused));
        let asked = Question::about(Purpose::Memory);
        assert_eq!(&*policy.evaluate(Some(&state), &asked).rule, "NO");
        state
            .choices
            .set(Purpose::MarketingEmail, Some(Choice::Granted));
        assert_eq!(&*policy.evaluate(Some(&state), &asked).rule, "OK");
    }

    #[test]
    fn rules_are_defined_once_used_and_well_formed() {
        let cases = [
            (
                memory(r#"[{ rule = "NOPE" }]"#),
                "purposes.MEMORY[0]: rule `NOPE` is not defined under [rules]",
            ),
            (
                small("", &[], "").replace(
                    r#"default = "U""#,
                    r#"default = "U"
purposes = { MEMORY = "GONE" }"#,
                ),
                "degraded.purposes.MEMORY: rule `GONE` is not defined under [rules]",
            ),
            (
                memory(r#"[{ rule = "OK" }]"#),
                "rules.NO: defined but used by no purpose and not by `degraded`",
            ),
            (
                small("", &[(Purpose::Memory, r#"[{ rule = "bad id" }]"#)], "")
                    .replace("[rules.NO]", "[rules.\"bad id\"]"),
                "rules.bad id: a rule id is 1 to 32 letters, digits, `_`, `-` or `.`",
            ),
            (
                memory(REFUSED_THEN_OK).replace("basis = \"CONTRACT\"\n", ""),
                "rules.OK: an ALLOW needs a lawful basis (`basis`)",
            ),
            (
                memory(REFUSED_THEN_OK).replace(
                    "reason = \"CHOICE_REFUSED\"\n",
                    "reason = \"CHOICE_REFUSED\"\nbasis = \"CONSENT\"\n",
                ),
                "rules.NO: a DENY never carries a lawful basis; remove `basis`",
            ),
            (
                memory(REFUSED_THEN_OK).replace("\"unavailable\"", "\"  \""),
                "rules.U.explanation: must not be empty",
            ),
            (
                memory(REFUSED_THEN_OK)
                    .replace("\"{purpose} denied\"", "\"{purpose} denied for {subject}\""),
                "rules.NO.explanation: unknown placeholder `{subject}`, expected `{purpose}` or `{version}`",
            ),
            (
                memory(REFUSED_THEN_OK).replace("MARKETING_EMAIL = [{ rule = \"OK\" }]\n", ""),
                "purposes.MARKETING_EMAIL: missing; every purpose needs its list of rules",
            ),
            (
                memory(REFUSED_THEN_OK).replace("version = \"test\"", "version = \" \""),
                "version: must not be empty",
            ),
            (
                memory(REFUSED_THEN_OK).replace(
                    "effective_from = 2026-01-01",
                    "effective_from = 2026-01-01T10:00:00",
                ),
                "effective_from: `2026-01-01T10:00:00` has no offset",
            ),
            (
                memory(REFUSED_THEN_OK).replace(
                    "effective_from = 2026-01-01",
                    "effective_from = \"2026-01-01\"",
                ),
                "effective_from (line 2, column 18): invalid type: string",
            ),
        ];
        assert_errors(&cases);
    }

    #[test]
    fn effective_from_may_be_an_instant() {
        let source = memory(REFUSED_THEN_OK).replace(
            "effective_from = 2026-01-01",
            "effective_from = 2026-11-23T15:40:00Z",
        );
        let policy = CompiledPolicy::compile(&source).unwrap();
        assert_eq!(
            policy.effective_from_micros(),
            20_780 * crate::calendar::MICROS_PER_DAY + (15 * 3_600 + 40 * 60) * 1_000_000
        );
    }

    #[test]
    fn a_file_without_a_schedule_keeps_the_built_in_one() {
        let start = BUILTIN_POLICY.find("\n[retention.").unwrap();
        let source = BUILTIN_POLICY[..start].replacen(
            "version = \"2026-01-01\"",
            "version = \"2026-02-01\"",
            1,
        );
        let policy = CompiledPolicy::compile(&source).unwrap();
        for category in DataCategory::ALL {
            assert_eq!(
                policy.retention_rule(*category),
                CompiledPolicy::builtin().retention_rule(*category)
            );
        }
    }

    #[test]
    fn the_retention_schedule_is_checked_row_by_row() {
        let row = |category: &str| {
            let start = BUILTIN_POLICY
                .find(&format!("[retention.{category}]"))
                .unwrap();
            let end = BUILTIN_POLICY[start + 1..]
                .find("\n[")
                .map_or(BUILTIN_POLICY.len(), |end| start + 1 + end);
            BUILTIN_POLICY[start..end].to_owned()
        };
        let replaced = |category: &str, old: &str, new: &str| {
            let original = row(category);
            assert!(original.contains(old), "{category} lost {old:?}");
            small("", &[], "").replacen(&original, &original.replacen(old, new, 1), 1)
        };
        let cases = [
            (
                small("", &[], "").replacen(&row("LEAD_CONTACT"), "", 1),
                "retention.LEAD_CONTACT: missing; every data category needs its row",
            ),
            (
                replaced("API_IO", "period = \"30d\"\n", ""),
                "retention.API_IO.period: missing; an AFTER_EVENT row needs one",
            ),
            (
                replaced(
                    "AGENTS_API_IO",
                    "keep = \"UNTIL_EVENT\"",
                    "keep = \"UNTIL_EVENT\"\nperiod = \"1y\"",
                ),
                "retention.AGENTS_API_IO.period: only an AFTER_EVENT row has a period",
            ),
            (
                replaced("API_IO", "\"30d\"", "\"30w\""),
                "retention.API_IO.period (line ",
            ),
            (
                replaced("API_IO", "\"30d\"", "\"0d\""),
                "retention.API_IO.period (line ",
            ),
            (
                replaced(
                    "LEAD_CONTACT",
                    "\"3y\"",
                    "\"3d\"\nfrom_financial_year_close = true",
                ),
                "retention.LEAD_CONTACT.from_financial_year_close: counts whole years",
            ),
            (
                replaced("MARKETING_CONTACT", "\"UNSUBSCRIBE\"", "\"COLLECTION\""),
                "retention.MARKETING_CONTACT.event: `COLLECTION` withdraws no consent",
            ),
            (
                replaced(
                    "AGENTS_API_IO",
                    "\"ACCOUNT_TERMINATION\"",
                    "\"UNSUBSCRIBE\"",
                ),
                "retention.AGENTS_API_IO.event: `UNSUBSCRIBE` is the withdrawal of a consent",
            ),
            (
                replaced("MARKETING_CONTACT", "consent = [\"MARKETING_EMAIL\"]\n", ""),
                "retention.MARKETING_CONTACT.consent: missing",
            ),
            (
                replaced(
                    "MARKETING_CONTACT",
                    "[\"MARKETING_EMAIL\"]",
                    "[\"SERVICE_DELIVERY\"]",
                ),
                "retention.MARKETING_CONTACT.consent: SERVICE_DELIVERY takes no choice",
            ),
            (
                replaced(
                    "MARKETING_CONTACT",
                    "[\"MARKETING_EMAIL\"]",
                    "[\"MARKETING_EMAIL\", \"MARKETING_EMAIL\"]",
                ),
                "retention.MARKETING_CONTACT.consent: MARKETING_EMAIL is named twice",
            ),
            (
                replaced(
                    "LEAD_CONTACT",
                    "period = \"3y\"",
                    "period = \"3y\"\nconsent = [\"MEMORY\"]",
                ),
                "retention.LEAD_CONTACT.consent: only a WHILE_CONSENTED row reads a consent",
            ),
            (
                replaced("DISPUTE_RESOLUTION", "\"ALWAYS\"", "\"FROM_EVENT\""),
                "retention.DISPUTE_RESOLUTION.legal_hold: FROM_EVENT holds data once",
            ),
            (
                replaced(
                    "INVOICES",
                    "section = \"privacy policy §5, Invoices and related correspondence\"",
                    "section = \" \"",
                ),
                "retention.INVOICES.section: must not be empty",
            ),
            (
                replaced("INVOICES", "[retention.INVOICES]", "[retention.INVOICE]"),
                "retention.INVOICE (line ",
            ),
            (
                replaced("INVOICES", "\"INVOICE_ISSUED\"", "\"INVOICED\""),
                "retention.INVOICES.event (line ",
            ),
            (
                replaced(
                    "INVOICES",
                    "legal_hold = \"ALWAYS\"",
                    "legal_hold = \"ALWAYS\"\nnote = 1",
                ),
                "retention.INVOICES.note (line ",
            ),
        ];
        assert_errors(&cases);
        assert!(error(&replaced("API_IO", "\"30d\"", "\"30w\"")).contains("invalid period `30w`"));
        assert!(
            error(&replaced("INVOICES", "\"INVOICE_ISSUED\"", "\"INVOICED\""))
                .contains("unknown event `INVOICED`, expected one of")
        );
        let twice = format!("{}\n{}", small("", &[], ""), row("API_IO"));
        assert!(error(&twice).contains("duplicate"), "{}", error(&twice));
    }

    #[test]
    fn a_retention_row_compiles_to_its_rule() {
        let policy = CompiledPolicy::builtin();
        let invoices = policy.retention_rule(DataCategory::Invoices);
        assert_eq!(
            invoices.keep,
            KeepRule::AfterEvent(
                super::super::Event::InvoiceIssued,
                Period::YearsFromFinancialYearClose(10)
            )
        );
        assert_eq!(invoices.legal_hold, LegalHold::Always);
        let cookies = policy.retention_rule(DataCategory::NonEssentialCookies);
        assert_eq!(
            &*cookies.consent,
            [Purpose::AnalyticsCookies, Purpose::MarketingCookies]
        );
        assert!(
            policy
                .retention_rule(DataCategory::ApiIo)
                .unless_zero_data_retention
        );
    }

    #[test]
    fn each_retention_row_reads_as_the_policy_file_line_that_compiles_back_to_it() {
        let builtin = CompiledPolicy::builtin();
        let start = BUILTIN_POLICY.len() - retention_schedule().len();
        let mut source = format!("{}\n[retention]\n", &BUILTIN_POLICY[..start]);
        for &category in DataCategory::ALL {
            let row = builtin.retention_rule(category).to_string();
            source.push_str(&format!("{} = {{ {row} }}\n", category.as_str()));
        }
        let rewritten = CompiledPolicy::compile(&source).expect("the rows as written compile");
        for &category in DataCategory::ALL {
            assert_eq!(
                rewritten.retention_rule(category),
                builtin.retention_rule(category),
                "{}",
                category.as_str()
            );
        }
        assert_eq!(
            builtin.retention_rule(DataCategory::Invoices).to_string(),
            "keep = \"AFTER_EVENT\", event = \"INVOICE_ISSUED\", period = \"10y\", \
             from_financial_year_close = true, legal_hold = \"ALWAYS\", section = \"privacy \
             policy §5, Invoices and related correspondence\""
        );
    }

    #[test]
    fn an_allow_where_the_state_says_stop_must_be_declared() {
        let declaration = "allow = [\"SERVICE_DELIVERY\"]\n";
        assert!(BUILTIN_POLICY.contains(declaration));
        let undeclared = BUILTIN_POLICY.replacen(declaration, "", 1);
        let all_but = |purpose: &str| {
            Purpose::ALL
                .iter()
                .map(|named| format!("\"{named}\""))
                .filter(|named| named.trim_matches('"') != purpose)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cases = [
            (
                undeclared.clone(),
                "degraded.purposes.SERVICE_DELIVERY: rule `U2` allows SERVICE_DELIVERY when the \
                 subject's state cannot be read; a degraded ALLOW must be declared: add \
                 SERVICE_DELIVERY to `degraded.allow` if that is meant",
            ),
            (
                memory(REFUSED_THEN_OK).replacen(
                    "default = \"U\"",
                    "default = \"OK\"\npurposes = { SERVICE_DELIVERY = \"U\" }",
                    1,
                ),
                "degraded.default: rule `OK` allows MODEL_TRAINING when the subject's state \
                 cannot be read",
            ),
            (
                memory(REFUSED_THEN_OK).replacen(
                    "default = \"U\"",
                    "default = \"OK\"\npurposes = { SERVICE_DELIVERY = \"U\" }\nallow = [\"MODEL_TRAINING\"]",
                    1,
                ),
                "degraded.default: rule `OK` allows MEMORY when",
            ),
            // An ALLOW placed before G2 answers a deleted subject whose conversation is
            // flagged: the tables are read, not the rule names.
            (
                BUILTIN_POLICY
                    .replacen("  { rule = \"T2\", when = { moderation_flag = true } },\n", "", 1)
                    .replacen(
                        "{ rule = \"G2\", when = { status = \"DELETED\" } },",
                        "{ rule = \"T2\", when = { moderation_flag = true } },\n  { rule = \"G2\", when = { status = \"DELETED\" } },",
                        1,
                    ),
                "every_purpose[1]: rule `T2` allows MODEL_TRAINING for a DELETED subject; a \
                 DELETED subject is allowed nothing unless declared: add MODEL_TRAINING to \
                 `deleted.allow` if that is meant",
            ),
            // G3 narrowed to subjects without GPC: a restricted subject with GPC reaches the
            // purposes' own lists.
            (
                BUILTIN_POLICY.replacen(
                    "{ rule = \"G3\", when = { status = \"RESTRICTED\" } }",
                    "{ rule = \"G3\", when = { status = \"RESTRICTED\", gpc = false } }",
                    1,
                ),
                "purposes.MODEL_TRAINING[5]: rule `T6` allows MODEL_TRAINING for a RESTRICTED \
                 subject",
            ),
            (
                memory(REFUSED_THEN_OK).replacen(
                    &format!("[restricted]\nallow = [{}]", all_but("")),
                    &format!("[restricted]\nallow = [{}]", all_but("SERVICE_DELIVERY")),
                    1,
                ),
                "purposes.SERVICE_DELIVERY[0]: rule `OK` allows SERVICE_DELIVERY for a \
                 RESTRICTED subject",
            ),
            (
                memory(REFUSED_THEN_OK).replacen(
                    "[deleted]\nallow = [",
                    "[deleted]\nallow = [\"MEMORY\", ",
                    1,
                ),
                "deleted.allow: MEMORY is named twice",
            ),
            (
                memory(REFUSED_THEN_OK).replacen("[deleted]\n", "[deleted]\nkeep = true\n", 1),
                "deleted.keep (line ",
            ),
        ];
        assert_errors(&cases);
        // The same text, stored before declarations were required, still loads, and answers
        // as it did.
        let stored = CompiledPolicy::compile_stored(&undeclared).unwrap();
        assert_eq!(&*stored.degraded(Purpose::ServiceDelivery).rule, "U2");
        assert!(
            CompiledPolicy::compile(&undeclared)
                .unwrap_err()
                .is_undeclared_allow()
        );
        // Declared, every ALLOW compiles: the small policy allows everything to everyone.
        let policy = CompiledPolicy::compile(&memory(REFUSED_THEN_OK)).unwrap();
        let deleted = SubjectState {
            status: Status::Deleted,
            ..SubjectState::new()
        };
        let asked = Question::about(Purpose::Memory);
        assert_eq!(
            policy.evaluate(Some(&deleted), &asked).decision,
            Decision::Allow
        );
    }

    #[test]
    fn every_input_of_a_stopped_status_is_tried_once() {
        // Training reads no other choice: 8 plans, 2 × 2 flags, 3 choices, 2 sources,
        // 2 × 2 conversation facts.
        let training = inputs_of_status(
            Status::Deleted,
            Purpose::ModelTraining,
            Purpose::ModelTraining,
        );
        assert_eq!(training.count(), 8 * 4 * 3 * 2 * 4);
        // Sensitive memory reads MEMORY's choice too; service delivery takes no choice.
        let sensitive = inputs_of_status(
            Status::Restricted,
            Purpose::SensitiveMemory,
            Purpose::Memory,
        );
        assert_eq!(sensitive.count(), 8 * 4 * 3 * 3 * 2 * 4);
        let delivery = inputs_of_status(
            Status::Deleted,
            Purpose::ServiceDelivery,
            Purpose::ServiceDelivery,
        );
        assert!(
            delivery
                .inspect(|input| assert_eq!(input.choice(Purpose::ServiceDelivery), None))
                .count()
                == 8 * 4 * 2 * 4
        );
    }

    #[test]
    fn a_compiled_policy_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<CompiledPolicy>();
    }
}
