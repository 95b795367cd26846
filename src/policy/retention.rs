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

use crate::calendar::{Date, MICROS_PER_DAY};

pub use super::vocabulary::DataCategory;

/// What the retention schedule says of one category of data in one situation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub keep: Keep,
    /// The data is in a legal keeping period (privacy policy §5): no member of any team may
    /// access or use it, except to fulfil a legal obligation or in a dispute or litigation.
    pub legal_hold: bool,
    /// The line of the privacy policy the answer rests on.
    pub section: &'static str,
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

/// An event a retention period waits on or runs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    ConversationOrAccountDeletion,
    AccountTermination,
    /// The user deletes the data (from Mistral AI Studio) or terminates the account.
    UserDeletionOrAccountTermination,
    ConsentWithdrawal,
    Unsubscribe,
    /// The API Output was generated.
    Generation,
    Collection,
    Connection,
    InvoiceIssued,
    ContractTermination,
    AppealPeriodEnd,
    RequestProcessed,
}

impl Event {
    /// The canonical upper-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::ConversationOrAccountDeletion => "CONVERSATION_OR_ACCOUNT_DELETION",
            Event::AccountTermination => "ACCOUNT_TERMINATION",
            Event::UserDeletionOrAccountTermination => "USER_DELETION_OR_ACCOUNT_TERMINATION",
            Event::ConsentWithdrawal => "CONSENT_WITHDRAWAL",
            Event::Unsubscribe => "UNSUBSCRIBE",
            Event::Generation => "GENERATION",
            Event::Collection => "COLLECTION",
            Event::Connection => "CONNECTION",
            Event::InvoiceIssued => "INVOICE_ISSUED",
            Event::ContractTermination => "CONTRACT_TERMINATION",
            Event::AppealPeriodEnd => "APPEAL_PERIOD_END",
            Event::RequestProcessed => "REQUEST_PROCESSED",
        }
    }
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

/// The retention schedule: one arm per row of privacy policy §5.
pub fn retention(category: DataCategory, facts: &RetentionFacts) -> Retention {
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
