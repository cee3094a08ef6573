//! Usernames: which strings are allowed and how uniqueness is decided.
//!
//! A username is kept exactly as the user typed it, but two usernames that differ only in
//! case are the same user: uniqueness and login go through [`Username::key`], the ASCII
//! lowercase form stored in its own uniquely indexed column.

use crate::error::ApiError;

/// Shortest username, in characters; shorter names are easy to guess and to confuse.
pub const USERNAME_CHARS_MIN: usize = 3;

/// Longest username, in characters; room for an e-mail address used as a name.
pub const USERNAME_CHARS_MAX: usize = 64;

/// A username that follows the rules: 3 to 64 characters of `A-Z a-z 0-9 . _ @ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Checks the rules; fails with 400 `invalid_username`.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let length_ok = (USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&raw.len());
        if length_ok && raw.chars().all(is_username_char) {
            return Ok(Self(raw.to_owned()));
        }
        Err(ApiError::invalid(
            "invalid_username",
            format!(
                "a username has {USERNAME_CHARS_MIN} to {USERNAME_CHARS_MAX} characters \
                 of letters, digits and . _ @ -"
            ),
        ))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive identity of the name, used for uniqueness and lookup.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// The allowed alphabet is ASCII only, so a character count is also a byte count.
fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_address_is_a_valid_username() {
        let username = Username::parse("Ada.Lovelace@example.org").expect("valid");
        assert_eq!(username.as_str(), "Ada.Lovelace@example.org");
        assert_eq!(username.key(), "ada.lovelace@example.org");
    }

    #[test]
    fn names_too_short_too_long_or_with_spaces_are_invalid() {
        for raw in ["ab", &"a".repeat(65), "ada lovelace", "adä", ""] {
            let error = Username::parse(raw).expect_err(raw);
            assert_eq!(error.kind().code, "invalid_username");
        }
    }
}
