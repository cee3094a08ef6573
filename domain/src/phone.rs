//! Phone numbers in E.164 form: a `+`, a country code, and at most 15 digits in all.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Fewest digits of a dialable E.164 number (country code included); shorter is a typo.
const DIGITS_MIN: usize = 8;
/// Most digits of an E.164 number, by the standard.
const DIGITS_MAX: usize = 15;
/// Longest input accepted before normalizing, so separators cannot make parsing costly.
const TEXT_BYTES_MAX: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("phone number is not a valid E.164 number")]
pub struct InvalidPhoneNumber;

impl InvalidPhoneNumber {
    pub fn code(self) -> &'static str {
        "invalid_phone_number"
    }
}

/// A phone number normalized to E.164, such as `+254712345678`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts `+` followed by digits; spaces, dashes, dots and parentheses between digits are
    /// dropped. A number without its `+` and country code is refused rather than guessed.
    pub fn parse(text: &str) -> Result<PhoneNumber, InvalidPhoneNumber> {
        if text.len() > TEXT_BYTES_MAX {
            return Err(InvalidPhoneNumber);
        }
        let rest = text.trim().strip_prefix('+').ok_or(InvalidPhoneNumber)?;
        let mut digits = String::with_capacity(DIGITS_MAX);
        for character in rest.chars() {
            match character {
                '0'..='9' => digits.push(character),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(InvalidPhoneNumber),
            }
        }
        let length_ok = (DIGITS_MIN..=DIGITS_MAX).contains(&digits.len());
        if !length_ok || digits.starts_with('0') {
            return Err(InvalidPhoneNumber);
        }
        Ok(PhoneNumber(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = InvalidPhoneNumber;

    fn try_from(text: String) -> Result<PhoneNumber, InvalidPhoneNumber> {
        PhoneNumber::parse(&text)
    }
}

impl From<PhoneNumber> for String {
    fn from(phone: PhoneNumber) -> String {
        phone.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalized_to_e164() {
        let phone = PhoneNumber::parse("+1 (415) 555-2671").map(|phone| phone.0);
        assert_eq!(phone, Ok("+14155552671".to_owned()));
    }

    #[test]
    fn numbers_without_country_code_or_with_letters_are_refused() {
        for text in [
            "4155552671",
            "+0155552671",
            "+1415CALLME",
            "+123",
            "+1234567890123456",
            "",
        ] {
            assert_eq!(
                PhoneNumber::parse(text),
                Err(InvalidPhoneNumber),
                "{text:?}"
            );
        }
    }
}
