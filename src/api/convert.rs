//! Conversions between the wire enums of `assent.v1` and the policy's own types.
//!
//! prost names each wire variant after the enum value without its prefix
//! (`PURPOSE_MODEL_TRAINING` → `ModelTraining`), the same names the policy uses, so each pair of
//! enums is mirrored by one macro line and a forgotten variant fails to compile.

use crate::error::ApiError;
use crate::policy;
use crate::proto;
use crate::store::ConsentCause;

macro_rules! mirror {
    ($domain:ty, $wire:ty, [$($variant:ident),+ $(,)?]) => {
        impl From<$domain> for $wire {
            fn from(value: $domain) -> $wire {
                match value { $(<$domain>::$variant => <$wire>::$variant,)+ }
            }
        }

        impl TryFrom<$wire> for $domain {
            type Error = ();

            fn try_from(value: $wire) -> Result<$domain, ()> {
                match value {
                    $(<$wire>::$variant => Ok(<$domain>::$variant),)+
                    #[allow(unreachable_patterns)]
                    _ => Err(()),
                }
            }
        }
    };
}

mirror!(
    policy::Purpose,
    proto::Purpose,
    [
        ModelTraining,
        Memory,
        SensitiveMemory,
        IpGeolocation,
        MarketingEmail,
        AnalyticsCookies,
        MarketingCookies,
        AbuseMonitoringRetention,
        ProductImprovement,
        ServiceDelivery,
    ]
);
mirror!(
    policy::Plan,
    proto::Plan,
    [Free, Pro, Student, Team, Enterprise, ApiFree, ApiPaid]
);
mirror!(policy::Status, proto::Status, [Active, Restricted, Deleted]);
mirror!(policy::Decision, proto::Decision, [Allow, Deny]);
mirror!(
    policy::Reason,
    proto::Reason,
    [
        UnknownSubject,
        SubjectDeleted,
        ProcessingRestricted,
        ConnectorDataExcluded,
        ModerationFlag,
        FeedbackGrant,
        PlanExcluded,
        ChoiceRefused,
        PlanDefault,
        PlanUnknown,
        LegitimateInterestDefault,
        ConsentGranted,
        ConsentRequired,
        ContractDefault,
        GpcSignal,
        ZeroDataRetention,
        StateUnavailable,
    ]
);
mirror!(
    policy::LawfulBasis,
    proto::LawfulBasis,
    [Consent, Contract, LegitimateInterest, LegalObligation,]
);
mirror!(policy::Source, proto::Source, [Conversation, Connector]);
mirror!(
    policy::ConsentMethod,
    proto::ConsentMethod,
    [
        Unspecified,
        SettingsPage,
        CookieBanner,
        GpcSignal,
        RightsRequest,
        ApiImport,
    ]
);
mirror!(policy::Rating, proto::Rating, [ThumbsUp, ThumbsDown]);
mirror!(
    policy::FlagKind,
    proto::FlagKind,
    [AutomatedModeration, UserReport]
);

mirror!(
    policy::rights::RightKind,
    proto::RightKind,
    [
        Access,
        Portability,
        Rectification,
        Deletion,
        Objection,
        ConsentWithdrawal,
        Restriction,
        PostMortem,
        Appeal,
    ]
);
mirror!(
    policy::rights::RequestState,
    proto::RequestState,
    [
        Received, Verifying, InProgress, Completed, Refused, Appealed
    ]
);
mirror!(policy::rights::Regime, proto::Regime, [Gdpr, UsState]);
mirror!(
    policy::DataCategory,
    proto::DataCategory,
    [
        ChatConversation,
        ApiIo,
        AgentsApiIo,
        FineTuningData,
        NonEssentialCookies,
        MarketingContact,
        LeadContact,
        CivilIdentity,
        AccountData,
        TechnicalData,
        Invoices,
        Contracts,
        DisputeResolution,
        PrivacyRequests,
        SupportTickets,
    ]
);
mirror!(
    policy::Event,
    proto::RetentionEvent,
    [
        ConversationOrAccountDeletion,
        AccountTermination,
        UserDeletionOrAccountTermination,
        ConsentWithdrawal,
        Unsubscribe,
        Generation,
        Collection,
        Connection,
        InvoiceIssued,
        ContractTermination,
        AppealPeriodEnd,
        RequestProcessed,
    ]
);

/// Parses a required enum field: an unknown number or `*_UNSPECIFIED` is refused, naming the
/// field.
pub fn required<Wire, Domain>(value: i32, field: &str) -> Result<Domain, ApiError>
where
    Wire: TryFrom<i32> + WireEnum,
    Domain: TryFrom<Wire>,
{
    let wire = Wire::try_from(value).map_err(|_| {
        ApiError::invalid(field, format_args!("unknown {} value {value}", Wire::NAME))
    })?;
    Domain::try_from(wire).map_err(|_| {
        ApiError::invalid(
            field,
            format_args!("must be set (not {}_UNSPECIFIED)", Wire::PREFIX),
        )
    })
}

/// The source of a check: UNSPECIFIED means CONVERSATION.
pub fn source(value: i32) -> Result<policy::Source, ApiError> {
    match proto::Source::try_from(value) {
        Ok(proto::Source::Unspecified) => Ok(policy::Source::Conversation),
        Ok(_) => required::<proto::Source, policy::Source>(value, "source"),
        Err(_) => Err(ApiError::invalid(
            "source",
            format_args!("unknown Source value {value}"),
        )),
    }
}

/// A choice to store: GRANTED or REFUSED, or `None` for CLEARED.
pub fn choice(value: i32) -> Result<Option<policy::Choice>, ApiError> {
    match proto::Choice::try_from(value) {
        Ok(proto::Choice::Granted) => Ok(Some(policy::Choice::Granted)),
        Ok(proto::Choice::Refused) => Ok(Some(policy::Choice::Refused)),
        Ok(proto::Choice::Cleared) => Ok(None),
        Ok(proto::Choice::Unspecified) => Err(ApiError::invalid(
            "choice",
            "must be set (not CHOICE_UNSPECIFIED)",
        )),
        Err(_) => Err(ApiError::invalid(
            "choice",
            format_args!("unknown Choice value {value}"),
        )),
    }
}

pub fn choice_to_proto(choice: policy::Choice) -> proto::Choice {
    match choice {
        policy::Choice::Granted => proto::Choice::Granted,
        policy::Choice::Refused => proto::Choice::Refused,
    }
}

/// How a choice was given: any known method, UNSPECIFIED included (callers that do not send
/// one).
pub fn consent_method(value: i32) -> Result<policy::ConsentMethod, ApiError> {
    proto::ConsentMethod::try_from(value)
        .ok()
        .and_then(|wire| policy::ConsentMethod::try_from(wire).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "method",
                format_args!("unknown ConsentMethod value {value}"),
            )
        })
}

pub fn consent_cause_to_proto(cause: ConsentCause) -> proto::ConsentEventReason {
    match cause {
        ConsentCause::SetByCaller => proto::ConsentEventReason::SetByCaller,
        ConsentCause::RightsRequest => proto::ConsentEventReason::RightsRequest,
        ConsentCause::Expired => proto::ConsentEventReason::Expired,
        ConsentCause::ErasedByDeletion => proto::ConsentEventReason::ErasedByDeletion,
    }
}

/// The names used in messages about a wire enum.
pub trait WireEnum {
    const NAME: &'static str;
    const PREFIX: &'static str;
}

macro_rules! wire_enum {
    ($wire:ty, $name:literal, $prefix:literal) => {
        impl WireEnum for $wire {
            const NAME: &'static str = $name;
            const PREFIX: &'static str = $prefix;
        }
    };
}

wire_enum!(proto::Purpose, "Purpose", "PURPOSE");
wire_enum!(proto::Plan, "Plan", "PLAN");
wire_enum!(proto::Rating, "Rating", "RATING");
wire_enum!(proto::FlagKind, "FlagKind", "FLAG_KIND");
wire_enum!(proto::Source, "Source", "SOURCE");
wire_enum!(proto::RightKind, "RightKind", "RIGHT_KIND");
wire_enum!(proto::RequestState, "RequestState", "REQUEST_STATE");
wire_enum!(proto::DataCategory, "DataCategory", "DATA_CATEGORY");

/// A retention period on the wire.
pub fn period(period: policy::Period) -> proto::RetentionPeriod {
    use proto::retention_period::Length;
    proto::RetentionPeriod {
        length: Some(match period {
            policy::Period::Days(days) => Length::Days(days),
            policy::Period::Years(years) => Length::Years(years),
            policy::Period::YearsFromFinancialYearClose(years) => {
                Length::YearsFromFinancialYearClose(years)
            }
        }),
    }
}

/// Microseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_value_has_a_wire_twin() {
        for purpose in policy::Purpose::ALL {
            let wire = proto::Purpose::from(*purpose);
            assert_eq!(wire.as_str_name(), format!("PURPOSE_{purpose}"));
            assert_eq!(policy::Purpose::try_from(wire), Ok(*purpose));
        }
        for reason in policy::Reason::ALL {
            let wire = proto::Reason::from(*reason);
            assert_eq!(wire.as_str_name(), format!("REASON_{reason}"));
        }
        for plan in policy::Plan::ALL {
            assert_eq!(
                proto::Plan::from(*plan).as_str_name(),
                format!("PLAN_{plan}")
            );
        }
        for basis in policy::LawfulBasis::ALL {
            let wire = proto::LawfulBasis::from(*basis);
            assert_eq!(wire.as_str_name(), format!("LAWFUL_BASIS_{basis}"));
        }
        for kind in policy::FlagKind::ALL {
            let wire = proto::FlagKind::from(*kind);
            assert_eq!(wire.as_str_name(), format!("FLAG_KIND_{kind}"));
        }
        for method in policy::ConsentMethod::ALL {
            let wire = proto::ConsentMethod::from(*method);
            assert_eq!(wire.as_str_name(), format!("CONSENT_METHOD_{method}"));
            assert_eq!(consent_method(wire as i32).unwrap(), *method);
        }
        for kind in policy::rights::RightKind::ALL {
            let wire = proto::RightKind::from(*kind);
            assert_eq!(wire.as_str_name(), format!("RIGHT_KIND_{kind}"));
        }
        for state in policy::rights::RequestState::ALL {
            let wire = proto::RequestState::from(*state);
            assert_eq!(wire.as_str_name(), format!("REQUEST_STATE_{state}"));
        }
        for regime in policy::rights::Regime::ALL {
            let wire = proto::Regime::from(*regime);
            assert_eq!(wire.as_str_name(), format!("REGIME_{regime}"));
        }
        for category in policy::DataCategory::ALL {
            let wire = proto::DataCategory::from(*category);
            assert_eq!(wire.as_str_name(), format!("DATA_CATEGORY_{category}"));
            assert_eq!(policy::DataCategory::try_from(wire), Ok(*category));
        }
        for event in policy::Event::ALL {
            let wire = proto::RetentionEvent::from(*event);
            assert_eq!(wire.as_str_name(), format!("RETENTION_EVENT_{event}"));
            assert_eq!(policy::Event::try_from(wire), Ok(*event));
        }
    }

    #[test]
    fn required_enums_refuse_unspecified_and_unknown_values() {
        let unspecified = required::<proto::Purpose, policy::Purpose>(0, "purpose").unwrap_err();
        assert_eq!(
            unspecified.to_string(),
            "purpose: must be set (not PURPOSE_UNSPECIFIED)"
        );
        let unknown = required::<proto::Purpose, policy::Purpose>(99, "purpose").unwrap_err();
        assert_eq!(unknown.to_string(), "purpose: unknown Purpose value 99");
        assert_eq!(source(0).unwrap(), policy::Source::Conversation);
        assert!(source(7).is_err());
        assert_eq!(choice(3).unwrap(), None);
        assert!(choice(0).is_err());
        assert_eq!(
            consent_method(0).unwrap(),
            policy::ConsentMethod::Unspecified
        );
        assert_eq!(
            consent_method(42).unwrap_err().to_string(),
            "method: unknown ConsentMethod value 42"
        );
    }

    #[test]
    fn timestamps_split_micros() {
        let stamp = timestamp(1_700_000_000_123_456);
        assert_eq!((stamp.seconds, stamp.nanos), (1_700_000_000, 123_456_000));
    }
}
