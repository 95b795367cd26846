//! The words of the policy: purposes, plans, statuses, choices, and the parts of a decision.
//!
//! Each enum knows its canonical upper-case name (the name used in POLICY.md, in the audit log
//! and in the scenario fixtures), so the store and the API convert through one place.

use crate::named::named_enum;

named_enum! {
    /// What the data would be processed for.
    pub enum Purpose {
        ModelTraining => "MODEL_TRAINING",
        Memory => "MEMORY",
        SensitiveMemory => "SENSITIVE_MEMORY",
        IpGeolocation => "IP_GEOLOCATION",
        MarketingEmail => "MARKETING_EMAIL",
        AnalyticsCookies => "ANALYTICS_COOKIES",
        MarketingCookies => "MARKETING_COOKIES",
        AbuseMonitoringRetention => "ABUSE_MONITORING_RETENTION",
        ProductImprovement => "PRODUCT_IMPROVEMENT",
        ServiceDelivery => "SERVICE_DELIVERY",
    }
}

/// The number of purposes; choices are kept in an array indexed by purpose.
pub const PURPOSE_COUNT: usize = Purpose::ALL.len();

impl Purpose {
    /// The position of the purpose in [`Purpose::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether any rule of this purpose reads a choice. A choice on a purpose whose rules never
    /// read one is refused at the edge, so nothing is stored that the policy would ignore.
    pub const fn accepts_choice(self) -> bool {
        !matches!(
            self,
            Purpose::ServiceDelivery | Purpose::AbuseMonitoringRetention
        )
    }
}

named_enum! {
    /// The subscription of the account.
    pub enum Plan {
        Free => "FREE",
        Pro => "PRO",
        Student => "STUDENT",
        Team => "TEAM",
        Enterprise => "ENTERPRISE",
        ApiFree => "API_FREE",
        ApiPaid => "API_PAID",
    }
}

named_enum! {
    /// The lifecycle status of an account.
    pub enum Status {
        Active => "ACTIVE",
        /// The user asked to freeze processing (GDPR art. 18).
        Restricted => "RESTRICTED",
        /// The account was deleted; the subject is kept as a tombstone.
        Deleted => "DELETED",
    }
}

named_enum! {
    /// What the user said about one purpose. No choice at all means the default applies.
    pub enum Choice {
        Granted => "GRANTED",
        Refused => "REFUSED",
    }
}

named_enum! {
    /// How a choice was given: the means by which the user said it, recorded with the choice
    /// (the policy's rules do not read it).
    #[derive(Default)]
    pub enum ConsentMethod {
        /// Not said by the caller (writes made before the method was recorded, or callers that
        /// do not send it).
        #[default]
        Unspecified => "UNSPECIFIED",
        SettingsPage => "SETTINGS_PAGE",
        CookieBanner => "COOKIE_BANNER",
        /// The browser's Global Privacy Control signal.
        GpcSignal => "GPC_SIGNAL",
        /// A data-subject rights request (an objection, a withdrawal).
        RightsRequest => "RIGHTS_REQUEST",
        /// Imported from another system through the API.
        ApiImport => "API_IMPORT",
    }
}

named_enum! {
    pub enum Decision {
        Allow => "ALLOW",
        Deny => "DENY",
    }
}

named_enum! {
    /// Why a decision was made; one per rule outcome of POLICY.md.
    pub enum Reason {
        UnknownSubject => "UNKNOWN_SUBJECT",
        SubjectDeleted => "SUBJECT_DELETED",
        ProcessingRestricted => "PROCESSING_RESTRICTED",
        ConnectorDataExcluded => "CONNECTOR_DATA_EXCLUDED",
        ModerationFlag => "MODERATION_FLAG",
        FeedbackGrant => "FEEDBACK_GRANT",
        PlanExcluded => "PLAN_EXCLUDED",
        ChoiceRefused => "CHOICE_REFUSED",
        PlanDefault => "PLAN_DEFAULT",
        PlanUnknown => "PLAN_UNKNOWN",
        LegitimateInterestDefault => "LEGITIMATE_INTEREST_DEFAULT",
        ConsentGranted => "CONSENT_GRANTED",
        ConsentRequired => "CONSENT_REQUIRED",
        ContractDefault => "CONTRACT_DEFAULT",
        GpcSignal => "GPC_SIGNAL",
        ZeroDataRetention => "ZERO_DATA_RETENTION",
        StateUnavailable => "STATE_UNAVAILABLE",
    }
}

named_enum! {
    /// The GDPR art. 6 ground an ALLOW rests on. A DENY never carries one.
    pub enum LawfulBasis {
        Consent => "CONSENT",
        Contract => "CONTRACT",
        LegitimateInterest => "LEGITIMATE_INTEREST",
        LegalObligation => "LEGAL_OBLIGATION",
    }
}

named_enum! {
    /// Where the data of a training check comes from.
    pub enum Source {
        Conversation => "CONVERSATION",
        /// Content from a third-party service the user connected.
        Connector => "CONNECTOR",
    }
}

named_enum! {
    /// Feedback on a conversation: either rating grants training on it.
    pub enum Rating {
        ThumbsUp => "THUMBS_UP",
        ThumbsDown => "THUMBS_DOWN",
    }
}

named_enum! {
    /// How a conversation came to carry a moderation flag.
    pub enum FlagKind {
        AutomatedModeration => "AUTOMATED_MODERATION",
        UserReport => "USER_REPORT",
    }
}

named_enum! {
    /// A category of personal data with its own row in the retention schedule (privacy policy §5).
    pub enum DataCategory {
        /// Le Chat conversations (Input and Output).
        ChatConversation => "CHAT_CONVERSATION",
        /// Input and Output of the APIs other than the Agents and Fine-Tuning APIs.
        ApiIo => "API_IO",
        AgentsApiIo => "AGENTS_API_IO",
        FineTuningData => "FINE_TUNING_DATA",
        NonEssentialCookies => "NON_ESSENTIAL_COOKIES",
        /// Contact data used for marketing operations (the newsletter).
        MarketingContact => "MARKETING_CONTACT",
        LeadContact => "LEAD_CONTACT",
        CivilIdentity => "CIVIL_IDENTITY",
        AccountData => "ACCOUNT_DATA",
        TechnicalData => "TECHNICAL_DATA",
        /// Invoices and related correspondence.
        Invoices => "INVOICES",
        /// Contracts, commercial licenses to use the models, and the contact details of both.
        Contracts => "CONTRACTS",
        DisputeResolution => "DISPUTE_RESOLUTION",
        PrivacyRequests => "PRIVACY_REQUESTS",
        /// Technical support data.
        SupportTickets => "SUPPORT_TICKETS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_value() {
        for purpose in Purpose::ALL {
            assert_eq!(Purpose::from_name(purpose.as_str()), Some(*purpose));
        }
        for reason in Reason::ALL {
            assert_eq!(Reason::from_name(reason.as_str()), Some(*reason));
        }
        for plan in Plan::ALL {
            assert_eq!(Plan::from_name(plan.as_str()), Some(*plan));
        }
        for category in DataCategory::ALL {
            assert_eq!(DataCategory::from_name(category.as_str()), Some(*category));
        }
        for method in ConsentMethod::ALL {
            assert_eq!(ConsentMethod::from_name(method.as_str()), Some(*method));
        }
        assert_eq!(Purpose::from_name("model_training"), None);
    }

    #[test]
    fn purpose_index_matches_position() {
        for (position, purpose) in Purpose::ALL.iter().enumerate() {
            assert_eq!(purpose.index(), position);
        }
        assert_eq!(PURPOSE_COUNT, 10);
    }
}
