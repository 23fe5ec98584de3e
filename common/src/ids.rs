//! Newtype ids, so a user id can't be passed where a chat id is meant.
//! They cross every crate boundary as these types (the service traits of
//! confab-api take them) and become plain strings only on the wire (gRPC
//! messages, JSON). Each reads as a `str` (`Deref`, `AsRef`, `Borrow`, so
//! a map keyed by one is searched with a `&str`) and prints as one.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s.into())
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        // Hash, Eq and Ord are those of the str (derived through Arc<str>),
        // as Borrow requires.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.as_str().into())
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0.to_string()
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

string_id!(
    /// A chat, as clients name it.
    ChatId
);
string_id!(
    /// A user: the `sub` (or `userId`) claim of their token.
    UserId
);
string_id!(
    /// One edge process; random per start.
    EdgeId
);

impl ChatId {
    /// A fresh, time-ordered chat id.
    pub fn generate() -> Self {
        Self::new(uuid::Uuid::now_v7().to_string())
    }
}

impl EdgeId {
    pub fn generate() -> Self {
        Self::new(format!("edge-{}", uuid::Uuid::new_v4().simple()))
    }
}

/// The longest user id, in characters (Unicode scalar values).
pub const USER_ID_MAX_CHARS: usize = 128;

/// Why a string is not a user id (see [`UserId::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserId {
    #[error("is empty")]
    Empty,
    #[error("is longer than {USER_ID_MAX_CHARS} characters")]
    TooLong,
    #[error("contains a control character")]
    Control,
    #[error("contains whitespace other than an inner space")]
    Whitespace,
}

impl UserId {
    /// The rule every user id follows (the token's `sub`, and every id a
    /// client names): 1..=128 characters, no control character (C0, DEL,
    /// C1: newline and NUL included), no whitespace but U+0020 SPACE, and
    /// that one neither first nor last (so no id is blank). Ids are compared
    /// as given: no case folding or normalisation.
    pub fn check(s: &str) -> Result<(), InvalidUserId> {
        if s.is_empty() {
            return Err(InvalidUserId::Empty);
        }
        let mut count = 0;
        for c in s.chars() {
            count += 1;
            if c.is_control() {
                return Err(InvalidUserId::Control);
            }
            if c.is_whitespace() && c != ' ' {
                return Err(InvalidUserId::Whitespace);
            }
        }
        if count > USER_ID_MAX_CHARS {
            return Err(InvalidUserId::TooLong);
        }
        if s.starts_with(' ') || s.ends_with(' ') {
            return Err(InvalidUserId::Whitespace);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn an_id_reads_hashes_and_prints_as_its_string() {
        let chat = ChatId::from("c-1");
        assert_eq!(&*chat, "c-1");
        assert_eq!(chat.len(), 3);
        assert_eq!(chat, "c-1");
        assert_eq!(chat.to_string(), "c-1");
        assert_eq!(String::from(chat.clone()), "c-1");
        assert_eq!(format!("{chat:?}"), "ChatId(\"c-1\")");
        let users: HashSet<UserId> = ["alice", "bob"].into_iter().map(UserId::from).collect();
        assert!(users.contains("alice") && !users.contains("carol"));
        let by_chat: HashMap<ChatId, u64> = HashMap::from([(chat, 7)]);
        assert_eq!(by_chat.get("c-1"), Some(&7));
    }

    #[test]
    fn user_ids_are_printable_and_not_padded() {
        for good in ["alice", "a", "Zoë Smith", "user@example.com", "日本", "👍🏽", &"x".repeat(128)] {
            assert_eq!(UserId::check(good), Ok(()), "{good:?}");
        }
        let too_long = "é".repeat(129);
        let cases = [
            ("", InvalidUserId::Empty),
            (too_long.as_str(), InvalidUserId::TooLong),
            ("w\nz", InvalidUserId::Control),
            ("a\0", InvalidUserId::Control),
            ("a\u{7f}", InvalidUserId::Control),
            ("a\u{85}b", InvalidUserId::Control),
            ("a\tb", InvalidUserId::Control),
            (" ", InvalidUserId::Whitespace),
            ("   ", InvalidUserId::Whitespace),
            (" alice", InvalidUserId::Whitespace),
            ("alice ", InvalidUserId::Whitespace),
            ("a\u{2028}b", InvalidUserId::Whitespace),
            ("a\u{3000}b", InvalidUserId::Whitespace),
            ("\u{a0}", InvalidUserId::Whitespace),
        ];
        for (bad, why) in cases {
            assert_eq!(UserId::check(bad), Err(why), "{bad:?}");
        }
    }
}
