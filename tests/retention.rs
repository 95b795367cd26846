//! The retention schedule (privacy policy §5) as a table: one row per category, then the special
//! cases (zero data retention, invoices, legal hold after deletion, before and after an event).
//! Every row is asked of the hand-written schedule and of the default policy file's, which must
//! also answer alike over many combinations of facts; a second version changes one period and
//! exactly what it governs.

use assent::calendar::{Date, MICROS_PER_DAY};
use assent::policy::{
    BUILTIN_POLICY, CompiledPolicy, Consent, DataCategory, Event, Keep, Period, RetentionFacts,
    consent_purposes, retention,
};

const HOUR: i64 = 3_600_000_000;

/// Midnight UTC of a `YYYYMMDD` date.
fn day(compact: &str) -> i64 {
    Date::parse_compact(compact).unwrap().to_days() * MICROS_PER_DAY
}

struct Row {
    name: &'static str,
    category: DataCategory,
    facts: RetentionFacts,
    keep: Keep,
    legal_hold: bool,
}

fn facts() -> RetentionFacts {
    RetentionFacts::default()
}

fn rows() -> Vec<Row> {
    let noon = day("20260315") + 12 * HOUR;
    vec![
        // One row per category.
        Row {
            name: "chat: until the conversation or the account is deleted",
            category: DataCategory::ChatConversation,
            facts: facts(),
            keep: Keep::UntilEvent(Event::ConversationOrAccountDeletion),
            legal_hold: false,
        },
        Row {
            name: "api io: 30 rolling days after generation",
            category: DataCategory::ApiIo,
            facts: RetentionFacts::at(noon),
            keep: Keep::Until(day("20260414") + 12 * HOUR),
            legal_hold: false,
        },
        Row {
            name: "agents api io: until account termination",
            category: DataCategory::AgentsApiIo,
            facts: facts(),
            keep: Keep::UntilEvent(Event::AccountTermination),
            legal_hold: false,
        },
        Row {
            name: "fine-tuning data: until the user deletes it or terminates the account",
            category: DataCategory::FineTuningData,
            facts: facts(),
            keep: Keep::UntilEvent(Event::UserDeletionOrAccountTermination),
            legal_hold: false,
        },
        Row {
            name: "non-essential cookies: while the consent lasts",
            category: DataCategory::NonEssentialCookies,
            facts: RetentionFacts {
                consent: Consent::Granted,
                ..facts()
            },
            keep: Keep::UntilEvent(Event::ConsentWithdrawal),
            legal_hold: false,
        },
        Row {
            name: "marketing contact: while subscribed",
            category: DataCategory::MarketingContact,
            facts: RetentionFacts {
                consent: Consent::Granted,
                ..facts()
            },
            keep: Keep::UntilEvent(Event::Unsubscribe),
            legal_hold: false,
        },
        Row {
            name: "lead contact: 3 years from collection",
            category: DataCategory::LeadContact,
            facts: RetentionFacts::at(noon),
            keep: Keep::Until(day("20290315") + 12 * HOUR),
            legal_hold: false,
        },
        Row {
            name: "civil identity: 5 years after a termination still to come",
            category: DataCategory::CivilIdentity,
            facts: facts(),
            keep: Keep::AfterEvent(Event::AccountTermination, Period::Years(5)),
            legal_hold: false,
        },
        Row {
            name: "account data: 1 year after a deletion still to come",
            category: DataCategory::AccountData,
            facts: facts(),
            keep: Keep::AfterEvent(Event::AccountTermination, Period::Years(1)),
            legal_hold: false,
        },
        Row {
            name: "technical data: 1 rolling year from the connection",
            category: DataCategory::TechnicalData,
            facts: RetentionFacts::at(noon),
            keep: Keep::Until(day("20270315") + 12 * HOUR),
            legal_hold: true,
        },
        Row {
            name: "invoices: 10 years from the close of the financial year",
            category: DataCategory::Invoices,
            facts: RetentionFacts::at(day("20260315")),
            keep: Keep::Until(day("20370101")),
            legal_hold: true,
        },
        Row {
            name: "contracts: 5 years after the contract ends",
            category: DataCategory::Contracts,
            facts: RetentionFacts::at(day("20260630")),
            keep: Keep::Until(day("20310630")),
            legal_hold: true,
        },
        Row {
            name: "dispute resolution: until the appeal period ends",
            category: DataCategory::DisputeResolution,
            facts: facts(),
            keep: Keep::UntilEvent(Event::AppealPeriodEnd),
            legal_hold: true,
        },
        Row {
            name: "privacy requests: 6 years after processing",
            category: DataCategory::PrivacyRequests,
            facts: RetentionFacts::at(noon),
            keep: Keep::Until(day("20320315") + 12 * HOUR),
            legal_hold: true,
        },
        Row {
            name: "support tickets: 5 years after processing",
            category: DataCategory::SupportTickets,
            facts: RetentionFacts::at(noon),
            keep: Keep::Until(day("20310315") + 12 * HOUR),
            legal_hold: true,
        },
        // Zero data retention.
        Row {
            name: "api io with zero data retention is not kept after generation",
            category: DataCategory::ApiIo,
            facts: RetentionFacts {
                zero_data_retention: true,
                ..RetentionFacts::at(noon)
            },
            keep: Keep::NotKept,
            legal_hold: false,
        },
        Row {
            name: "api io across the end of February",
            category: DataCategory::ApiIo,
            facts: RetentionFacts::at(day("20260210")),
            keep: Keep::Until(day("20260312")),
            legal_hold: false,
        },
        // Invoices: the last instant of the financial year, and the first of the next one.
        Row {
            name: "invoice of the last day of the year",
            category: DataCategory::Invoices,
            facts: RetentionFacts::at(day("20270101") - 1),
            keep: Keep::Until(day("20370101")),
            legal_hold: true,
        },
        Row {
            name: "invoice of the first day of the year",
            category: DataCategory::Invoices,
            facts: RetentionFacts::at(day("20270101")),
            keep: Keep::Until(day("20380101")),
            legal_hold: true,
        },
        // Legal hold once the account is deleted.
        Row {
            name: "civil identity after termination: 5 years, legal hold",
            category: DataCategory::CivilIdentity,
            facts: RetentionFacts {
                account_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(day("20310315") + 12 * HOUR),
            legal_hold: true,
        },
        Row {
            name: "account data after deletion: 1 year, legal hold",
            category: DataCategory::AccountData,
            facts: RetentionFacts {
                account_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(day("20270315") + 12 * HOUR),
            legal_hold: true,
        },
        Row {
            name: "account data deleted on a leap day: 28 February next year",
            category: DataCategory::AccountData,
            facts: RetentionFacts {
                account_deleted_micros: Some(day("20280229")),
                ..facts()
            },
            keep: Keep::Until(day("20290228")),
            legal_hold: true,
        },
        // Waiting on an event, then the event has happened: due at its instant.
        Row {
            name: "chat after the conversation was deleted",
            category: DataCategory::ChatConversation,
            facts: RetentionFacts {
                data_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(noon),
            legal_hold: false,
        },
        Row {
            name: "chat after the account was deleted",
            category: DataCategory::ChatConversation,
            facts: RetentionFacts {
                account_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(noon),
            legal_hold: false,
        },
        Row {
            name: "agents api io after termination",
            category: DataCategory::AgentsApiIo,
            facts: RetentionFacts {
                account_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(noon),
            legal_hold: false,
        },
        Row {
            name: "fine-tuning data after the account was terminated",
            category: DataCategory::FineTuningData,
            facts: RetentionFacts {
                account_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(noon),
            legal_hold: false,
        },
        Row {
            name: "fine-tuning data deleted by the user before the termination",
            category: DataCategory::FineTuningData,
            facts: RetentionFacts {
                data_deleted_micros: Some(noon - HOUR),
                account_deleted_micros: Some(noon),
                ..facts()
            },
            keep: Keep::Until(noon - HOUR),
            legal_hold: false,
        },
        Row {
            name: "cookies after the consent was withdrawn",
            category: DataCategory::NonEssentialCookies,
            facts: RetentionFacts {
                consent: Consent::WithdrawnAt(noon),
                ..facts()
            },
            keep: Keep::Until(noon),
            legal_hold: false,
        },
        Row {
            name: "cookies never consented to",
            category: DataCategory::NonEssentialCookies,
            facts: facts(),
            keep: Keep::NotKept,
            legal_hold: false,
        },
        Row {
            name: "marketing contact after unsubscribing",
            category: DataCategory::MarketingContact,
            facts: RetentionFacts {
                consent: Consent::WithdrawnAt(noon),
                ..facts()
            },
            keep: Keep::Until(noon),
            legal_hold: false,
        },
        Row {
            name: "contract still running",
            category: DataCategory::Contracts,
            facts: facts(),
            keep: Keep::AfterEvent(Event::ContractTermination, Period::Years(5)),
            legal_hold: false,
        },
        Row {
            name: "privacy request being processed",
            category: DataCategory::PrivacyRequests,
            facts: facts(),
            keep: Keep::AfterEvent(Event::RequestProcessed, Period::Years(6)),
            legal_hold: false,
        },
        Row {
            name: "support ticket being processed",
            category: DataCategory::SupportTickets,
            facts: facts(),
            keep: Keep::AfterEvent(Event::RequestProcessed, Period::Years(5)),
            legal_hold: false,
        },
        Row {
            name: "dispute after the appeal period ended",
            category: DataCategory::DisputeResolution,
            facts: RetentionFacts::at(noon),
            keep: Keep::Until(noon),
            legal_hold: true,
        },
    ]
}

#[test]
fn the_schedule_row_by_row() {
    let compiled = CompiledPolicy::builtin();
    let mut failures = Vec::new();
    for row in rows() {
        let answers = [
            ("hand-written", retention(row.category, &row.facts)),
            ("policy file", compiled.retention(row.category, &row.facts)),
        ];
        for (schedule, answer) in answers {
            if answer.keep != row.keep || answer.legal_hold != row.legal_hold {
                failures.push(format!(
                    "{} ({schedule}): got {:?} (legal hold {}), want {:?} (legal hold {})",
                    row.name, answer.keep, answer.legal_hold, row.keep, row.legal_hold
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Instants around the edges the schedule cares about: leap days, the turn of a year, the ends
/// of the range.
fn instants() -> Vec<Option<i64>> {
    let mut instants = vec![None];
    for compact in ["20240229", "20260101", "20260315", "20261231", "20280228"] {
        let midnight = day(compact);
        instants.extend([
            Some(midnight),
            Some(midnight - 1),
            Some(midnight + 13 * HOUR),
        ]);
    }
    instants.extend([Some(i64::MIN), Some(-1), Some(0), Some(i64::MAX)]);
    instants
}

fn consents() -> Vec<Consent> {
    let mut consents = vec![Consent::NotGiven, Consent::Granted];
    consents.extend(instants().into_iter().flatten().map(Consent::WithdrawnAt));
    consents
}

/// Every combination of the instants, flags and consents above, for every category.
fn sweep(mut check: impl FnMut(DataCategory, &RetentionFacts)) {
    let instants = instants();
    let few = [None, Some(day("20260315")), Some(day("20240229") + HOUR)];
    for category in DataCategory::ALL {
        for event in &instants {
            for account_deleted in &instants {
                for data_deleted in few {
                    for zero_data_retention in [false, true] {
                        for consent in
                            [Consent::NotGiven, Consent::Granted, Consent::WithdrawnAt(5)]
                        {
                            check(
                                *category,
                                &RetentionFacts {
                                    event_micros: *event,
                                    account_deleted_micros: *account_deleted,
                                    data_deleted_micros: data_deleted,
                                    zero_data_retention,
                                    consent,
                                },
                            );
                        }
                    }
                }
            }
            for consent in consents() {
                check(
                    *category,
                    &RetentionFacts {
                        consent,
                        ..RetentionFacts {
                            event_micros: *event,
                            ..RetentionFacts::default()
                        }
                    },
                );
            }
        }
    }
}

#[test]
fn the_default_files_schedule_answers_like_the_hand_written_one() {
    let compiled = CompiledPolicy::builtin();
    let mut compared = 0;
    sweep(|category, facts| {
        assert_eq!(
            compiled.retention(category, facts),
            retention(category, facts),
            "{category} {facts:?}"
        );
        compared += 1;
    });
    assert!(compared > 100_000, "{compared}");
    let mut rng = fastrand::Rng::with_seed(0x5eed_0005);
    let instant = |rng: &mut fastrand::Rng| {
        rng.bool()
            .then(|| rng.i64(day("19700101")..day("21000101")))
    };
    for _ in 0..100_000 {
        let category = DataCategory::ALL[rng.usize(..DataCategory::ALL.len())];
        let facts = RetentionFacts {
            event_micros: instant(&mut rng),
            account_deleted_micros: instant(&mut rng),
            data_deleted_micros: instant(&mut rng),
            zero_data_retention: rng.bool(),
            consent: match rng.u8(..3) {
                0 => Consent::NotGiven,
                1 => Consent::Granted,
                _ => Consent::WithdrawnAt(rng.i64(..)),
            },
        };
        assert_eq!(
            compiled.retention(category, &facts),
            retention(category, &facts),
            "{category} {facts:?}"
        );
    }
    for category in DataCategory::ALL {
        assert_eq!(
            &*compiled.retention_rule(*category).consent,
            consent_purposes(*category),
            "{category}"
        );
    }
}

/// The default policy changed by `replacements`, each of which must apply.
fn edited(replacements: &[(&str, &str)]) -> String {
    let mut source = BUILTIN_POLICY.to_owned();
    for (old, new) in replacements {
        assert!(source.contains(old), "the default policy lost {old:?}");
        source = source.replacen(old, new, 1);
    }
    source
}

#[test]
fn a_second_version_changes_one_period_and_only_what_it_governs() {
    // API Input and Output kept 45 rolling days instead of 30.
    let api_io =
        "[retention.API_IO]\nkeep = \"AFTER_EVENT\"\nevent = \"GENERATION\"\nperiod = \"30d\"";
    let source = edited(&[
        (r#"version = "2026-01-01""#, r#"version = "2026-12-01""#),
        ("effective_from = 2026-01-01", "effective_from = 2026-12-01"),
        (api_io, &api_io.replace("30d", "45d")),
    ]);
    let december = CompiledPolicy::compile(&source).unwrap();
    let mut changed = 0;
    sweep(|category, facts| {
        let before = retention(category, facts);
        let after = december.retention(category, facts);
        let expected_keep = match (category, before.keep) {
            (DataCategory::ApiIo, Keep::Until(_)) => {
                changed += 1;
                Keep::Until(Period::Days(45).end(facts.event_micros.unwrap()))
            }
            (DataCategory::ApiIo, Keep::AfterEvent(event, Period::Days(30))) => {
                changed += 1;
                Keep::AfterEvent(event, Period::Days(45))
            }
            (_, keep) => keep,
        };
        assert_eq!(after.keep, expected_keep, "{category} {facts:?}");
        assert_eq!(after.legal_hold, before.legal_hold, "{category} {facts:?}");
        assert_eq!(after.section, before.section, "{category} {facts:?}");
    });
    assert!(changed > 0);
    let noon = day("20260315") + 12 * HOUR;
    assert_eq!(
        december
            .retention(DataCategory::ApiIo, &RetentionFacts::at(noon))
            .keep,
        Keep::Until(day("20260429") + 12 * HOUR)
    );
}

#[test]
fn every_category_has_a_row() {
    let rows = rows();
    for category in DataCategory::ALL {
        assert!(
            rows.iter().any(|row| row.category == *category),
            "no row for {category}"
        );
    }
    assert_eq!(DataCategory::ALL.len(), 15);
}

#[test]
fn an_invoice_of_march_2026_is_kept_through_the_whole_of_2036() {
    let invoice = retention(DataCategory::Invoices, &RetentionFacts::at(day("20260315")));
    assert!(!invoice.keep.is_due(day("20370101") - 1));
    assert!(invoice.keep.is_due(day("20370101")));
    assert_eq!(
        invoice.section,
        "privacy policy §5, Invoices and related correspondence"
    );
}

#[test]
fn a_category_waiting_on_an_event_becomes_due_once_it_happened() {
    let deleted_at = day("20260315");
    let before = retention(DataCategory::AgentsApiIo, &RetentionFacts::default());
    assert!(!before.keep.is_due(i64::MAX));
    let after = retention(
        DataCategory::AgentsApiIo,
        &RetentionFacts {
            account_deleted_micros: Some(deleted_at),
            ..RetentionFacts::default()
        },
    );
    assert!(!after.keep.is_due(deleted_at - 1));
    assert!(after.keep.is_due(deleted_at));
}

#[test]
fn a_known_deletion_puts_account_and_civil_identity_data_on_legal_hold() {
    let open = RetentionFacts::default();
    let deleted = RetentionFacts {
        account_deleted_micros: Some(day("20260315")),
        ..RetentionFacts::default()
    };
    for category in [DataCategory::AccountData, DataCategory::CivilIdentity] {
        assert!(!retention(category, &open).legal_hold, "{category}");
        assert!(retention(category, &deleted).legal_hold, "{category}");
    }
}
