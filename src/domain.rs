//! Identifiers and values parsed once at the edge. Everything past `api/` takes these types,
//! never a raw string from a request, so a malformed id cannot reach the store.

use std::fmt;

/// Why a value was refused; the caller adds the field name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("may only contain {allowed}")]
    BadCharacter { allowed: &'static str },
    #[error("must look like {example}")]
    BadFormat { example: &'static str },
}

const ID_MAX_LEN: usize = 128;
const ID_ALPHABET: &str = "letters, digits and . _ : @ -";

fn parse_identifier(text: &str) -> Result<(), InvalidValue> {
    if text.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if text.len() > ID_MAX_LEN {
        return Err(InvalidValue::TooLong { max: ID_MAX_LEN });
    }
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._:@-".contains(&byte);
    if !text.bytes().all(allowed) {
        return Err(InvalidValue::BadCharacter {
            allowed: ID_ALPHABET,
        });
    }
    Ok(())
}

/// An opaque user account id: 1-128 characters of `[A-Za-z0-9._:@-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId(String);

impl SubjectId {
    pub fn parse(text: &str) -> Result<SubjectId, InvalidValue> {
        parse_identifier(text)?;
        Ok(SubjectId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A conversation id, with the same alphabet as subject ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(String);

impl ConversationId {
    pub fn parse(text: &str) -> Result<ConversationId, InvalidValue> {
        parse_identifier(text)?;
        Ok(ConversationId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// An ISO 3166-1 alpha-2 country, optionally with an ISO 3166-2 subdivision: `FR`, `US-CA`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Jurisdiction(String);

impl Jurisdiction {
    pub fn parse(text: &str) -> Result<Jurisdiction, InvalidValue> {
        if text.is_empty() {
            return Err(InvalidValue::Empty);
        }
        let format = InvalidValue::BadFormat {
            example: "an ISO 3166 code such as FR or US-CA",
        };
        let (country, subdivision) = match text.split_once('-') {
            Some((country, subdivision)) => (country, Some(subdivision)),
            None => (text, None),
        };
        let country_ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
        let subdivision_ok = subdivision.is_none_or(|part| {
            (1..=3).contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
        if !(country_ok && subdivision_ok) {
            return Err(format);
        }
        Ok(Jurisdiction(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Who made a write, on whose behalf and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub operator_id: String,
    pub reason: String,
}

/// Why an actor was refused, naming the sub-field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidActor {
    #[error("operator_id {0}")]
    OperatorId(InvalidValue),
    #[error("reason {0}")]
    Reason(InvalidValue),
}

impl Actor {
    pub const OPERATOR_ID_MAX_LEN: usize = 256;
    pub const REASON_MAX_LEN: usize = 1024;

    pub fn parse(operator_id: &str, reason: &str) -> Result<Actor, InvalidActor> {
        if operator_id.trim().is_empty() {
            return Err(InvalidActor::OperatorId(InvalidValue::Empty));
        }
        if operator_id.chars().count() > Self::OPERATOR_ID_MAX_LEN {
            return Err(InvalidActor::OperatorId(InvalidValue::TooLong {
                max: Self::OPERATOR_ID_MAX_LEN,
            }));
        }
        if reason.chars().count() > Self::REASON_MAX_LEN {
            return Err(InvalidActor::Reason(InvalidValue::TooLong {
                max: Self::REASON_MAX_LEN,
            }));
        }
        let printable = |text: &str| !text.chars().any(char::is_control);
        if !printable(operator_id) {
            return Err(InvalidActor::OperatorId(InvalidValue::BadCharacter {
                allowed: "printable characters",
            }));
        }
        if !printable(reason) {
            return Err(InvalidActor::Reason(InvalidValue::BadCharacter {
                allowed: "printable characters",
            }));
        }
        Ok(Actor {
            operator_id: operator_id.to_owned(),
            reason: reason.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ids_follow_the_alphabet_and_length() {
        assert!(SubjectId::parse("user-42@example.com:a_b.c").is_ok());
        assert_eq!(SubjectId::parse(""), Err(InvalidValue::Empty));
        assert!(SubjectId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            SubjectId::parse(&"a".repeat(129)),
            Err(InvalidValue::TooLong { max: 128 })
        );
        for bad in ["a b", "a/b", "é", "a\n", "a;b"] {
            assert!(SubjectId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn jurisdictions_are_iso_3166_codes() {
        for good in ["FR", "US-CA", "GB-ENG", "IT-21"] {
            assert!(Jurisdiction::parse(good).is_ok(), "{good} refused");
        }
        for bad in ["", "fr", "FRA", "US-", "US-CALI", "U1", "US_CA"] {
            assert!(Jurisdiction::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn actors_need_an_operator() {
        assert!(Actor::parse("support:alice", "ticket 123").is_ok());
        assert!(Actor::parse("support:alice", "").is_ok());
        assert!(matches!(
            Actor::parse(" ", "x"),
            Err(InvalidActor::OperatorId(InvalidValue::Empty))
        ));
        assert!(matches!(
            Actor::parse("a", &"x".repeat(1025)),
            Err(InvalidActor::Reason(_))
        ));
    }
}
