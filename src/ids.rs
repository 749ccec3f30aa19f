//! A conversation's identifiers: its session and its turns, each with
//! `parse`. Steward mints both as UUIDv7; a caller of the orchestrator's
//! HTTP routes may name its own, within one alphabet. (A tenant is named by
//! `identity::TenantId`.)

use crate::error::{Code, ErrorCode};

/// An id that is not 1–128 of `[A-Za-z0-9_-]`.
#[derive(Debug, thiserror::Error)]
#[error("{what} must be 1-128 of A-Z a-z 0-9 - _")]
pub struct InvalidId {
    what: &'static str,
}

impl ErrorCode for InvalidId {
    fn code(&self) -> Code {
        Code::InvalidRequest
    }
}

/// Whether `s` may be an id: 1–128 of `[A-Za-z0-9_-]` (every UUID is).
fn well_formed(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

macro_rules! conversation_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String)]
        pub struct $name(String);

        impl $name {
            /// A new id: a UUIDv7, so ids sort by when they were minted.
            pub fn mint() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if well_formed(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId { what: $what })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(id: uuid::Uuid) -> Self {
                Self(id.to_string())
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

conversation_id!(
    /// A session: the turns of one conversation, owned by one tenant.
    SessionId,
    "session_id"
);

conversation_id!(
    /// One turn of a session: a user message and its answer.
    TurnId,
    "turn_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_parse_back_as_themselves() {
        let (session, turn) = (SessionId::mint(), TurnId::mint());
        assert_eq!(SessionId::parse(session.as_str()).unwrap(), session);
        assert_eq!(TurnId::parse(turn.as_str()).unwrap(), turn);
    }

    #[test]
    fn ids_outside_the_alphabet_or_length_are_refused() {
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?}");
            assert!(TurnId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TurnId::parse(&"x".repeat(128)).is_ok());
    }
}
