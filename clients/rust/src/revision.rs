//! Revision tokens: the position of a state in the store's totally ordered change log.
//!
//! Every committed change gets the next revision. A write returns the revision it produced; a
//! caller that wants an answer "at least as fresh as my write" hands it back. On the wire a
//! revision is an opaque token; its text form is versioned so the encoding can change. This
//! crate is versioned with the server, so it reads the tokens of its own version (the local
//! cache compares them).

use std::fmt;

/// A position in the change log. Revision 0 is the empty store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(u64);

/// A token that [`Revision::parse_token`] refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedRevision;

impl fmt::Display for MalformedRevision {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("is not a revision token returned by assent")
    }
}

impl std::error::Error for MalformedRevision {}

const TOKEN_PREFIX: &str = "r1.";

impl Revision {
    pub const ZERO: Revision = Revision(0);

    pub const fn new(sequence: u64) -> Revision {
        Revision(sequence)
    }

    pub const fn sequence(self) -> u64 {
        self.0
    }

    pub const fn next(self) -> Revision {
        Revision(self.0 + 1)
    }

    /// The opaque token given to callers.
    pub fn to_token(self) -> String {
        format!("{TOKEN_PREFIX}{:x}", self.0)
    }

    /// Parses a token made by [`Revision::to_token`].
    pub fn parse_token(token: &str) -> Result<Revision, MalformedRevision> {
        let digits = token.strip_prefix(TOKEN_PREFIX).ok_or(MalformedRevision)?;
        let canonical = !digits.is_empty()
            && digits.len() <= 16
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(MalformedRevision);
        }
        u64::from_str_radix(digits, 16)
            .map(Revision)
            .map_err(|_| MalformedRevision)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for sequence in [0, 1, 15, 16, 4096, u64::MAX] {
            let revision = Revision::new(sequence);
            assert_eq!(Revision::parse_token(&revision.to_token()), Ok(revision));
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "r1.",
            "r1.G",
            "r1.01",
            "12",
            "r2.1",
            "r1.-1",
            "R1.1",
            " r1.1",
            "r1.10000000000000000",
        ] {
            assert_eq!(
                Revision::parse_token(bad),
                Err(MalformedRevision),
                "{bad:?}"
            );
        }
    }
}
