//! The retention schedule of the privacy policy (§5 "How long do we keep your personal data?"):
//! for one category of data and the facts of its subject, how long it may be kept, whether it is
//! under legal hold, and the line of the policy that says so.
//!
//! Like the rest of `policy`, a pure function of its arguments: no I/O, no clock. Instants are
//! microseconds since the Unix epoch (UTC), as everywhere in assent. A [`Keep::Until`] instant
//! may lie in the past: the data is then due for deletion; [`Keep::is_due`] compares with a
//! `now` the caller supplies.
//!
//! Calendar conventions:
//! - a period in days is that many rolling 24-hour days after the instant (UTC has no DST);
//! - a period in years moves the civil date (UTC) by whole years and keeps the time of day; from
//!   29 February to a year that has none it lands on 28 February;
//! - the policy does not define its "financial year" (the sentence on invoices stops at
//!   "relevant financial yea"), so it is taken to be the calendar year: an invoice's financial
//!   year closes at the end of 31 December of its year (UTC), and "10 years from the close" ends
//!   at the first instant of 1 January eleven years after the invoice's year. An invoice dated
//!   2026-03-15 is kept until 2037-01-01T00:00:00Z, exclusive: through the whole of 2036.
//!
//! Account deletion and account termination are one event in assent (status DELETED; the policy
//! says "delete your account" for account data and "termination" for civil identity).
//!
//! The schedule exists twice, like the decision table. [`retention`] is §5 written by hand: the
//! reference. [`RetentionRule`] is one row of it as data, the `[retention.CATEGORY]` tables of a
//! policy file compiled (`compiled.rs`), so a new policy version can change the schedule;
//! `tests/retention.rs` checks that the default file's rows answer exactly like [`retention`].

use crate::calendar::{Date, MICROS_PER_DAY};
use crate::named::named_enum;

use super::vocabulary::{Choice, Purpose};

pub use super::vocabulary::DataCategory;

/// What the retention schedule says of one category of data in one situation. `section`
/// borrows from the schedule that answered (the policy version, for a compiled one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention<'a> {
    pub keep: Keep,
    /// The data is in a legal keeping period (privacy policy §5): no member of any team may
    /// access or use it, except to fulfil a legal obligation or in a dispute or litigation.
    pub legal_hold: bool,
    /// The line of the privacy policy the answer rests on.
    pub section: &'a str,
}

/// How long data may be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Not kept at all past its use (zero data retention, or a consent never given).
    NotKept,
    /// Kept while the present is before this instant (exclusive); deleted from it on. May be in
    /// the past: the data is due for deletion.
    Until(i64),
    /// Kept until the event happens; due for deletion as soon as it has.
    UntilEvent(Event),
    /// Kept until this period after an event that has not happened yet (or whose instant the
    /// facts do not give); once it has, the answer becomes [`Keep::Until`].
    AfterEvent(Event, Period),
}

impl Keep {
    /// Whether the data must be deleted at `now_micros`. Data waiting on an event is not due.
    pub const fn is_due(self, now_micros: i64) -> bool {
        match self {
            Keep::NotKept => true,
            Keep::Until(until) => now_micros >= until,
            Keep::UntilEvent(_) | Keep::AfterEvent(..) => false,
        }
    }
}

named_enum! {
    /// An event a retention period waits on or runs from.
    pub enum Event {
        ConversationOrAccountDeletion => "CONVERSATION_OR_ACCOUNT_DELETION",
        AccountTermination => "ACCOUNT_TERMINATION",
        /// The user deletes the data (from Mistral AI Studio) or terminates the account.
        UserDeletionOrAccountTermination => "USER_DELETION_OR_ACCOUNT_TERMINATION",
        ConsentWithdrawal => "CONSENT_WITHDRAWAL",
        Unsubscribe => "UNSUBSCRIBE",
        /// The API Output was generated.
        Generation => "GENERATION",
        Collection => "COLLECTION",
        Connection => "CONNECTION",
        InvoiceIssued => "INVOICE_ISSUED",
        ContractTermination => "CONTRACT_TERMINATION",
        AppealPeriodEnd => "APPEAL_PERIOD_END",
        RequestProcessed => "REQUEST_PROCESSED",
    }
}

impl Event {
    /// Which fact gives the event's instant.
    pub const fn source(self) -> EventSource {
        match self {
            Event::ConversationOrAccountDeletion | Event::UserDeletionOrAccountTermination => {
                EventSource::DataOrAccountDeletion
            }
            Event::AccountTermination => EventSource::AccountDeletion,
            Event::ConsentWithdrawal | Event::Unsubscribe => EventSource::Consent,
            Event::Generation
            | Event::Collection
            | Event::Connection
            | Event::InvoiceIssued
            | Event::ContractTermination
            | Event::AppealPeriodEnd
            | Event::RequestProcessed => EventSource::Record,
        }
    }

    /// When the event happened, as the facts tell it; `None` while it has not.
    pub fn instant(self, facts: &RetentionFacts) -> Option<i64> {
        match self.source() {
            EventSource::Record => facts.event_micros,
            EventSource::AccountDeletion => facts.account_deleted_micros,
            EventSource::DataOrAccountDeletion => {
                [facts.data_deleted_micros, facts.account_deleted_micros]
                    .into_iter()
                    .flatten()
                    .min()
            }
            EventSource::Consent => match facts.consent {
                Consent::WithdrawnAt(instant) => Some(instant),
                Consent::NotGiven | Consent::Granted => None,
            },
        }
    }
}

/// Where the instant of an [`Event`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventSource {
    /// The record's own event ([`RetentionFacts::event_micros`]): generation, collection,
    /// connection, invoice date, contract end, appeal period end, request processed. assent holds
    /// no such records; the caller names the instant.
    Record,
    /// The account's deletion ([`RetentionFacts::account_deleted_micros`]), from the store.
    AccountDeletion,
    /// The earlier of the user's own deletion of the data ([`RetentionFacts::data_deleted_micros`],
    /// named by the caller) and the account's deletion.
    DataOrAccountDeletion,
    /// The withdrawal of a consent ([`RetentionFacts::consent`]), from the subject's choices.
    Consent,
}

/// A retention period counted from an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// Rolling days of 24 hours.
    Days(u32),
    /// Whole calendar years (29 February → 28 February when needed).
    Years(u32),
    /// Whole years counted from the close of the event's financial year (the calendar year).
    YearsFromFinancialYearClose(u32),
}

impl Period {
    /// The end of the period that starts at `start_micros` (exclusive). Saturates rather than
    /// overflowing at the ends of the `i64` range.
    pub fn end(self, start_micros: i64) -> i64 {
        match self {
            Period::Days(days) => {
                start_micros.saturating_add(i64::from(days).saturating_mul(MICROS_PER_DAY))
            }
            Period::Years(years) => add_years(start_micros, years),
            Period::YearsFromFinancialYearClose(years) => {
                add_years(financial_year_close(start_micros), years)
            }
        }
    }

    /// The latest start such that every period started at or before it has ended by
    /// `now_micros`: data whose period started at or before it is due at `now_micros`. `None`
    /// when no start is that early.
    ///
    /// One case is not a cut-off: a period in whole years from 29 February to a year without
    /// one ends on 28 February at its own time of day, before periods that started later on 28
    /// February. Such data becomes due during that 28 February, while this cut-off passes 29
    /// February only at the end of the day: it never makes data due early, but may leave data of
    /// a 29 February due for up to a day before it covers it ([`Period::end`] is exact).
    pub fn latest_start_ended_by(self, now_micros: i64) -> Option<i64> {
        if self.latest_end_by(i64::MIN) > now_micros {
            return None;
        }
        // `latest_end_by` never decreases, so this is a binary search. Invariant:
        // latest_end_by(low) <= now < latest_end_by(high + 1); high starts at now (a period never
        // ends before it starts).
        let (mut low, mut high) = (i64::MIN, now_micros);
        while low < high {
            let middle = low.saturating_add_unsigned(high.abs_diff(low) / 2 + 1);
            if self.latest_end_by(middle) <= now_micros {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        Some(low)
    }

    /// The latest end of the periods started at or before `start_micros`: [`Period::end`] but
    /// on 29 February counted in whole years (see [`Period::latest_start_ended_by`]).
    fn latest_end_by(self, start_micros: i64) -> i64 {
        let end = self.end(start_micros);
        let date = Date::from_micros(start_micros);
        match self {
            Period::Years(_) if date.month == 2 && date.day == 29 => {
                end.max(self.end(start_of_day(date).saturating_sub(1)))
            }
            _ => end,
        }
    }
}

impl std::fmt::Display for Period {
    /// As a policy file writes it: `30d`, `3y`, `10y` (from the close of the financial year).
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Days(days) => write!(formatter, "{days}d"),
            Period::Years(years) => write!(formatter, "{years}y"),
            Period::YearsFromFinancialYearClose(years) => {
                write!(formatter, "{years}y from the close of the financial year")
            }
        }
    }
}

/// The state of the consent a category lasts for (NON_ESSENTIAL_COOKIES: the cookie consent;
/// MARKETING_CONTACT: MARKETING_EMAIL, the newsletter subscription).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consent {
    /// Never given: nothing may be kept.
    #[default]
    NotGiven,
    /// Given and in force.
    Granted,
    /// Given, then withdrawn (or unsubscribed) at this instant.
    WithdrawnAt(i64),
}

impl Consent {
    /// The consent that one or more choices make together, each with when it was made: withdrawn
    /// at the earliest refusal if any was refused, else given if any was granted, else never
    /// given. One category can rest on several consents (non-essential cookies: analytics and
    /// marketing cookies) without its data telling them apart, so withdrawing either makes the
    /// category's data due: deleting early is always allowed, keeping data without its consent
    /// never is. A refusal is read as a withdrawal even if no consent came before it: either
    /// way nothing may be kept from then on.
    pub fn of_choices(choices: impl IntoIterator<Item = (Choice, i64)>) -> Consent {
        let mut granted = false;
        let mut withdrawn: Option<i64> = None;
        for (choice, at_micros) in choices {
            match choice {
                Choice::Granted => granted = true,
                Choice::Refused => {
                    withdrawn = Some(withdrawn.map_or(at_micros, |earlier| earlier.min(at_micros)));
                }
            }
        }
        match (withdrawn, granted) {
            (Some(instant), _) => Consent::WithdrawnAt(instant),
            (None, true) => Consent::Granted,
            (None, false) => Consent::NotGiven,
        }
    }
}

/// The choices whose state is the consent a category lasts for, in the hand-written schedule:
/// the cookie consent is the choices on analytics and marketing cookies, the newsletter
/// subscription the choice on marketing e-mail. Empty for the other categories.
pub const fn consent_purposes(category: DataCategory) -> &'static [Purpose] {
    match category {
        DataCategory::NonEssentialCookies => {
            &[Purpose::AnalyticsCookies, Purpose::MarketingCookies]
        }
        DataCategory::MarketingContact => &[Purpose::MarketingEmail],
        _ => &[],
    }
}

/// The facts a retention question needs. Each category reads only some of them (see
/// [`retention`]); the others are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionFacts {
    /// The category's own event, `None` while it has not happened: when the API Output was
    /// generated (API_IO), the lead collected (LEAD_CONTACT), the connection made
    /// (TECHNICAL_DATA), the invoice dated (INVOICES), the contract terminated (CONTRACTS), the
    /// appeal period ended (DISPUTE_RESOLUTION), the request processed (PRIVACY_REQUESTS,
    /// SUPPORT_TICKETS).
    pub event_micros: Option<i64>,
    /// When the account was deleted (terminated), `None` while it is not.
    pub account_deleted_micros: Option<i64>,
    /// When the user deleted this data themselves: the conversation (CHAT_CONVERSATION), the
    /// fine-tuning data (FINE_TUNING_DATA).
    pub data_deleted_micros: Option<i64>,
    /// The API organisation has zero data retention (API_IO).
    pub zero_data_retention: bool,
    /// NON_ESSENTIAL_COOKIES, MARKETING_CONTACT.
    pub consent: Consent,
}

impl RetentionFacts {
    /// Facts with only the category's own event known.
    pub const fn at(event_micros: i64) -> RetentionFacts {
        RetentionFacts {
            event_micros: Some(event_micros),
            account_deleted_micros: None,
            data_deleted_micros: None,
            zero_data_retention: false,
            consent: Consent::NotGiven,
        }
    }
}

/// How one row of the schedule keeps data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepRule {
    /// Until the event happens (the conversation deleted, the appeal period over).
    UntilEvent(Event),
    /// For a period from the event (three years from collection, one year after deletion).
    AfterEvent(Event, Period),
    /// While the consent lasts: not at all without one, until its withdrawal (the event) once
    /// given.
    WhileConsented(Event),
}

impl KeepRule {
    /// The event the row waits on or runs from.
    pub const fn event(self) -> Event {
        match self {
            KeepRule::UntilEvent(event)
            | KeepRule::AfterEvent(event, _)
            | KeepRule::WhileConsented(event) => event,
        }
    }
}

named_enum! {
    /// The kinds of retention row.
    pub enum KeepKind {
        UntilEvent => "UNTIL_EVENT",
        AfterEvent => "AFTER_EVENT",
        WhileConsented => "WHILE_CONSENTED",
    }
}

named_enum! {
    /// When data of a row is on legal hold.
    pub enum LegalHold {
        Never => "NEVER",
        Always => "ALWAYS",
        /// Once the event the period runs from has happened: the legal keeping period has begun.
        FromEvent => "FROM_EVENT",
    }
}

/// One row of the retention schedule as data: what a policy file's `[retention.CATEGORY]`
/// compiles to (the checks that make it consistent are `compiled.rs`'s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionRule {
    pub keep: KeepRule,
    /// With zero data retention the data is not kept at all (API Input and Output).
    pub unless_zero_data_retention: bool,
    pub legal_hold: LegalHold,
    /// The choices whose state is the consent ([`Consent::of_choices`]); only for
    /// [`KeepRule::WhileConsented`].
    pub consent: Box<[Purpose]>,
    /// The line of the policy cited.
    pub section: Box<str>,
}

impl RetentionRule {
    /// What the row says in one situation. Data not kept is on hold under no row.
    pub fn apply(&self, facts: &RetentionFacts) -> Retention<'_> {
        let retention = |keep: Keep, legal_hold: bool| Retention {
            keep,
            legal_hold: legal_hold && keep != Keep::NotKept,
            section: &self.section,
        };
        if self.unless_zero_data_retention && facts.zero_data_retention {
            return retention(Keep::NotKept, false);
        }
        let event = self.keep.event();
        let instant = event.instant(facts);
        let keep = match self.keep {
            KeepRule::UntilEvent(_) => until_first(event, [instant]),
            KeepRule::AfterEvent(_, period) => after(event, instant, period),
            KeepRule::WhileConsented(_) => while_consented(event, facts.consent),
        };
        let legal_hold = match self.legal_hold {
            LegalHold::Never => false,
            LegalHold::Always => true,
            LegalHold::FromEvent => instant.is_some(),
        };
        retention(keep, legal_hold)
    }

    /// Whether the row reads the record's own event (the caller names its instant).
    pub fn reads_record_event(&self) -> bool {
        self.keep.event().source() == EventSource::Record
    }

    /// Whether the row reads the user's own deletion of the data (the caller names it).
    pub fn reads_data_deletion(&self) -> bool {
        self.keep.event().source() == EventSource::DataOrAccountDeletion
    }

    /// Whether the row reads when the account was deleted.
    pub fn reads_account_deletion(&self) -> bool {
        matches!(
            self.keep.event().source(),
            EventSource::AccountDeletion | EventSource::DataOrAccountDeletion
        )
    }

    /// Whether the row reads the subject's consent.
    pub fn reads_consent(&self) -> bool {
        matches!(self.keep, KeepRule::WhileConsented(_))
    }

    /// Whether the row reads anything the store holds of the subject.
    pub fn reads_subject(&self) -> bool {
        self.reads_account_deletion() || self.reads_consent() || self.unless_zero_data_retention
    }

    /// For a row that reads an instant of the record (its own event, or the user's deletion of
    /// it): the latest such instant whose data is due at `now_micros`, when the subject's state
    /// does not decide otherwise. `None` when the row reads no such instant, or no instant is
    /// that early.
    pub fn record_cutoff(&self, now_micros: i64) -> Option<i64> {
        if !(self.reads_record_event() || self.reads_data_deletion()) {
            return None;
        }
        match self.keep {
            KeepRule::UntilEvent(_) | KeepRule::WhileConsented(_) => Some(now_micros),
            KeepRule::AfterEvent(_, period) => period.latest_start_ended_by(now_micros),
        }
    }

    /// The latest account deletion whose data is due at `now_micros` under this row, for a row
    /// that reads the account's deletion (and ignoring what else it reads).
    pub fn account_deletion_cutoff(&self, now_micros: i64) -> Option<i64> {
        match self.keep {
            KeepRule::AfterEvent(_, period) => period.latest_start_ended_by(now_micros),
            KeepRule::UntilEvent(_) | KeepRule::WhileConsented(_) => Some(now_micros),
        }
    }
}

impl std::fmt::Display for RetentionRule {
    /// As a policy file writes the row (`keep = "AFTER_EVENT", event = "GENERATION", …`), so a
    /// row that changed between two versions reads as the edit that changed it.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.keep {
            KeepRule::UntilEvent(_) => KeepKind::UntilEvent,
            KeepRule::AfterEvent(..) => KeepKind::AfterEvent,
            KeepRule::WhileConsented(_) => KeepKind::WhileConsented,
        };
        write!(
            formatter,
            "keep = \"{}\", event = \"{}\"",
            kind.as_str(),
            self.keep.event()
        )?;
        match self.keep {
            KeepRule::AfterEvent(_, Period::YearsFromFinancialYearClose(years)) => write!(
                formatter,
                ", period = \"{years}y\", from_financial_year_close = true"
            )?,
            KeepRule::AfterEvent(_, period) => write!(formatter, ", period = \"{period}\"")?,
            KeepRule::UntilEvent(_) | KeepRule::WhileConsented(_) => {}
        }
        if !self.consent.is_empty() {
            let names: Vec<String> = self
                .consent
                .iter()
                .map(|purpose| format!("\"{purpose}\""))
                .collect();
            write!(formatter, ", consent = [{}]", names.join(", "))?;
        }
        if self.unless_zero_data_retention {
            formatter.write_str(", unless_zero_data_retention = true")?;
        }
        write!(
            formatter,
            ", legal_hold = \"{}\", section = {:?}",
            self.legal_hold.as_str(),
            &*self.section
        )
    }
}

/// The retention schedule: one arm per row of privacy policy §5.
pub fn retention(category: DataCategory, facts: &RetentionFacts) -> Retention<'static> {
    use DataCategory as Category;
    let RetentionFacts {
        event_micros: event,
        account_deleted_micros: account_deleted,
        data_deleted_micros: data_deleted,
        ..
    } = *facts;
    match category {
        // "until you delete your account or until you delete the conversation from Le Chat"
        Category::ChatConversation => Retention {
            keep: until_first(
                Event::ConversationOrAccountDeletion,
                [data_deleted, account_deleted],
            ),
            legal_hold: false,
            section: "privacy policy §5, Data we use to provide Le Chat to you",
        },
        // "for the period necessary to generate the Output and then for thirty (30) rolling days
        // to monitor abuse (unless zero data retention is activated)"
        Category::ApiIo => Retention {
            keep: if facts.zero_data_retention {
                Keep::NotKept
            } else {
                after(Event::Generation, event, Period::Days(30))
            },
            legal_hold: false,
            section: "privacy policy §5, Data we use to provide our APIs to you: Input and Output",
        },
        // "If you use our Agents API, we keep your Input and Output until you terminate your
        // account."
        Category::AgentsApiIo => Retention {
            keep: until_first(Event::AccountTermination, [account_deleted]),
            legal_hold: false,
            section: "privacy policy §5, Data we use to provide our APIs to you: Agents API",
        },
        // "until you delete it from Mistral AI Studio or until you terminate your account"
        Category::FineTuningData => Retention {
            keep: until_first(
                Event::UserDeletionOrAccountTermination,
                [data_deleted, account_deleted],
            ),
            legal_hold: false,
            section: "privacy policy §5, Data we use to provide our APIs to you: Fine-Tuning API",
        },
        // "only as long as you consent to their use"
        Category::NonEssentialCookies => Retention {
            keep: while_consented(Event::ConsentWithdrawal, facts.consent),
            legal_hold: false,
            section: "privacy policy §5, Non-essential cookies data",
        },
        // "only as long as you are subscribed to our newsletter"
        Category::MarketingContact => Retention {
            keep: while_consented(Event::Unsubscribe, facts.consent),
            legal_hold: false,
            section: "privacy policy §5, Your contact data (used for marketing operations)",
        },
        // "for 3 years from collection"
        Category::LeadContact => Retention {
            keep: after(Event::Collection, event, Period::Years(3)),
            legal_hold: false,
            section: "privacy policy §5, Leads identity and contact data",
        },
        // Kept longer for legal obligations from here on: legal hold once the legal keeping
        // period has begun.
        //
        // "for 5 years after the termination of your Mistral AI account"
        Category::CivilIdentity => Retention {
            keep: after(Event::AccountTermination, account_deleted, Period::Years(5)),
            legal_hold: account_deleted.is_some(),
            section: "privacy policy §5, Your Civil Identity Data",
        },
        // "for 1 year after you delete your account"
        Category::AccountData => Retention {
            keep: after(Event::AccountTermination, account_deleted, Period::Years(1)),
            legal_hold: account_deleted.is_some(),
            section: "privacy policy §5, Account Data",
        },
        // "for 1 rolling year from the date of connection"
        Category::TechnicalData => Retention {
            keep: after(Event::Connection, event, Period::Years(1)),
            legal_hold: true,
            section: "privacy policy §5, Technical data",
        },
        // "for 10 years from the close of the relevant financial year"
        Category::Invoices => Retention {
            keep: after(
                Event::InvoiceIssued,
                event,
                Period::YearsFromFinancialYearClose(10),
            ),
            legal_hold: true,
            section: "privacy policy §5, Invoices and related correspondence",
        },
        // "for the duration of the contract and for 5 years following the termination of the
        // contract"
        Category::Contracts => Retention {
            keep: after(Event::ContractTermination, event, Period::Years(5)),
            legal_hold: event.is_some(),
            section: "privacy policy §5, Contracts, commercial licenses to use our Models and \
                      contact details relating to both",
        },
        // "until the appeal period ends, provided that we may keep such data longer for archival
        // purpose"
        Category::DisputeResolution => Retention {
            keep: until_first(Event::AppealPeriodEnd, [event]),
            legal_hold: true,
            section: "privacy policy §5, Data relating to dispute resolution",
        },
        // "for the duration of processing the request and for 6 years following the request"
        Category::PrivacyRequests => Retention {
            keep: after(Event::RequestProcessed, event, Period::Years(6)),
            legal_hold: event.is_some(),
            section: "privacy policy §5, Data relating to your privacy requests",
        },
        // "until your request is processed and for 5 years for record-keeping"
        Category::SupportTickets => Retention {
            keep: after(Event::RequestProcessed, event, Period::Years(5)),
            legal_hold: event.is_some(),
            section: "privacy policy §5, Technical support data",
        },
    }
}

/// Kept until the earliest of the instants known, or until `event` while none is.
fn until_first<const N: usize>(event: Event, instants: [Option<i64>; N]) -> Keep {
    match instants.into_iter().flatten().min() {
        Some(instant) => Keep::Until(instant),
        None => Keep::UntilEvent(event),
    }
}

/// Kept for `period` from the event's instant, or until `period` after `event` while it is not
/// known.
fn after(event: Event, instant: Option<i64>, period: Period) -> Keep {
    match instant {
        Some(instant) => Keep::Until(period.end(instant)),
        None => Keep::AfterEvent(event, period),
    }
}

/// Kept while the consent lasts.
fn while_consented(withdrawal: Event, consent: Consent) -> Keep {
    match consent {
        Consent::NotGiven => Keep::NotKept,
        Consent::Granted => Keep::UntilEvent(withdrawal),
        Consent::WithdrawnAt(instant) => Keep::Until(instant),
    }
}

/// The first instant of the calendar year after the one `micros` falls in.
fn financial_year_close(micros: i64) -> i64 {
    let year = Date::from_micros(micros).year;
    start_of_day(Date {
        year: year.saturating_add(1),
        month: 1,
        day: 1,
    })
}

/// The same time of day, `years` later on the civil calendar (UTC).
fn add_years(micros: i64, years: u32) -> i64 {
    let date = Date::from_micros(micros);
    let time_of_day = micros.rem_euclid(MICROS_PER_DAY);
    let year = date
        .year
        .saturating_add(i32::try_from(years).unwrap_or(i32::MAX));
    let day = if date.month == 2 && date.day == 29 && !is_leap_year(year) {
        28
    } else {
        date.day
    };
    start_of_day(Date {
        year,
        month: date.month,
        day,
    })
    .saturating_add(time_of_day)
}

fn start_of_day(date: Date) -> i64 {
    date.to_days().saturating_mul(MICROS_PER_DAY)
}

const fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn at(year: i32, month: u32, day: u32) -> i64 {
        start_of_day(Date { year, month, day })
    }

    #[test]
    fn years_keep_the_time_of_day_and_clamp_the_leap_day() {
        assert_eq!(
            add_years(at(2026, 3, 15) + 5 * HOUR, 3),
            at(2029, 3, 15) + 5 * HOUR
        );
        assert_eq!(add_years(at(2024, 2, 29), 1), at(2025, 2, 28));
        assert_eq!(add_years(at(2024, 2, 29), 4), at(2028, 2, 29));
        assert_eq!(add_years(at(2096, 2, 29), 4), at(2100, 2, 28));
        assert_eq!(add_years(at(1996, 2, 29), 4), at(2000, 2, 29));
        assert_eq!(
            add_years(at(1969, 12, 31) + HOUR, 1),
            at(1970, 12, 31) + HOUR
        );
    }

    #[test]
    fn days_are_rolling_24_hours() {
        assert_eq!(
            Period::Days(30).end(at(2026, 2, 10) + HOUR),
            at(2026, 3, 12) + HOUR
        );
    }

    #[test]
    fn the_financial_year_is_the_calendar_year() {
        assert_eq!(financial_year_close(at(2026, 3, 15)), at(2027, 1, 1));
        assert_eq!(financial_year_close(at(2026, 1, 1)), at(2027, 1, 1));
        assert_eq!(financial_year_close(at(2027, 1, 1) - 1), at(2027, 1, 1));
        assert_eq!(
            Period::YearsFromFinancialYearClose(10).end(at(2026, 12, 31) + 23 * HOUR),
            at(2037, 1, 1)
        );
    }

    #[test]
    fn extreme_instants_saturate_instead_of_panicking() {
        for instant in [i64::MIN, i64::MIN / 2, -1, 0, i64::MAX / 2, i64::MAX] {
            for category in DataCategory::ALL {
                let facts = RetentionFacts {
                    event_micros: Some(instant),
                    account_deleted_micros: Some(instant),
                    data_deleted_micros: Some(instant),
                    zero_data_retention: false,
                    consent: Consent::WithdrawnAt(instant),
                };
                let _ = retention(*category, &facts);
            }
        }
    }

    #[test]
    fn until_is_exclusive() {
        assert!(!Keep::Until(10).is_due(9));
        assert!(Keep::Until(10).is_due(10));
        assert!(Keep::NotKept.is_due(i64::MIN));
        assert!(!Keep::UntilEvent(Event::Unsubscribe).is_due(i64::MAX));
        assert!(!Keep::AfterEvent(Event::Collection, Period::Years(3)).is_due(i64::MAX));
    }

    #[test]
    fn every_category_cites_privacy_policy_section_5() {
        for category in DataCategory::ALL {
            let answer = retention(*category, &RetentionFacts::default());
            assert!(
                answer.section.starts_with("privacy policy §5, "),
                "{category}: {}",
                answer.section
            );
        }
    }

    #[test]
    fn the_latest_start_ended_by_an_instant_inverts_the_period() {
        let periods = [
            Period::Days(30),
            Period::Years(1),
            Period::Years(3),
            Period::YearsFromFinancialYearClose(10),
        ];
        let instants = [
            at(2026, 3, 15) + 12 * HOUR,
            at(2027, 1, 1),
            at(2029, 2, 28) + 5,
            at(2029, 3, 1),
            at(2037, 1, 1) - 1,
            at(2037, 1, 1),
        ];
        for period in periods {
            for now in instants {
                let start = period.latest_start_ended_by(now).unwrap();
                assert!(period.end(start) <= now, "{period:?} {now}");
                assert!(period.end(start + 1) > now, "{period:?} {now}");
                for earlier in [start - 1, start - HOUR, start - 400 * MICROS_PER_DAY] {
                    assert!(period.end(earlier) <= now, "{period:?} {now} {earlier}");
                }
            }
        }
        // 29 February ends a year later on 28 February at its own time of day: the cut-off
        // passes it only once every period started before it has ended.
        let leap_day = at(2024, 2, 29);
        assert_eq!(
            Period::Years(1).end(leap_day + HOUR),
            at(2025, 2, 28) + HOUR
        );
        assert_eq!(
            Period::Years(1).latest_start_ended_by(at(2025, 2, 28) + HOUR),
            Some(at(2024, 2, 28) + HOUR)
        );
        assert_eq!(
            Period::Years(1).latest_start_ended_by(at(2025, 3, 1)),
            Some(at(2024, 3, 1))
        );
        assert_eq!(
            Period::Years(4).latest_start_ended_by(at(2028, 2, 29) + HOUR),
            Some(leap_day + HOUR)
        );
        assert_eq!(
            Period::YearsFromFinancialYearClose(10).latest_start_ended_by(at(2037, 1, 1)),
            Some(at(2027, 1, 1) - 1)
        );
        assert_eq!(Period::Days(1).latest_start_ended_by(i64::MIN), None);
    }

    #[test]
    fn choices_make_one_consent() {
        use Choice::{Granted, Refused};
        assert_eq!(Consent::of_choices([]), Consent::NotGiven);
        assert_eq!(Consent::of_choices([(Granted, 5)]), Consent::Granted);
        assert_eq!(
            Consent::of_choices([(Granted, 5), (Refused, 9)]),
            Consent::WithdrawnAt(9)
        );
        assert_eq!(
            Consent::of_choices([(Refused, 9), (Refused, 7), (Granted, 1)]),
            Consent::WithdrawnAt(7)
        );
    }

    #[test]
    fn a_rule_that_keeps_nothing_holds_nothing() {
        let rule = RetentionRule {
            keep: KeepRule::AfterEvent(Event::Connection, Period::Years(1)),
            unless_zero_data_retention: true,
            legal_hold: LegalHold::Always,
            consent: Box::new([]),
            section: "s".into(),
        };
        let kept = rule.apply(&RetentionFacts::at(0));
        assert_eq!(
            (kept.keep, kept.legal_hold),
            (Keep::Until(Period::Years(1).end(0)), true)
        );
        let zero = RetentionFacts {
            zero_data_retention: true,
            ..RetentionFacts::at(0)
        };
        let not_kept = rule.apply(&zero);
        assert_eq!((not_kept.keep, not_kept.legal_hold), (Keep::NotKept, false));
        assert_eq!(not_kept.section, "s");
    }

    #[test]
    fn record_cutoffs_say_which_records_are_due() {
        let day = MICROS_PER_DAY;
        let rule = |keep| RetentionRule {
            keep,
            unless_zero_data_retention: false,
            legal_hold: LegalHold::Never,
            consent: Box::new([]),
            section: "s".into(),
        };
        let now = at(2026, 6, 1);
        let api = rule(KeepRule::AfterEvent(Event::Generation, Period::Days(30)));
        assert_eq!(api.record_cutoff(now), Some(now - 30 * day));
        let dispute = rule(KeepRule::UntilEvent(Event::AppealPeriodEnd));
        assert_eq!(dispute.record_cutoff(now), Some(now));
        let chat = rule(KeepRule::UntilEvent(Event::ConversationOrAccountDeletion));
        assert_eq!(chat.record_cutoff(now), Some(now));
        assert!(chat.reads_account_deletion() && chat.reads_data_deletion());
        let account = rule(KeepRule::AfterEvent(
            Event::AccountTermination,
            Period::Years(1),
        ));
        assert_eq!(account.record_cutoff(now), None);
        assert_eq!(account.account_deletion_cutoff(now), Some(at(2025, 6, 1)));
        assert!(account.reads_subject() && !account.reads_record_event());
    }

    #[test]
    fn the_earliest_deletion_ends_a_conversation() {
        let facts = RetentionFacts {
            account_deleted_micros: Some(at(2026, 6, 1)),
            data_deleted_micros: Some(at(2026, 5, 1)),
            ..RetentionFacts::default()
        };
        assert_eq!(
            retention(DataCategory::ChatConversation, &facts).keep,
            Keep::Until(at(2026, 5, 1))
        );
    }
}
