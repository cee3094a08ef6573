//! Phone numbers in E.164 form: a `+`, a country code, and at most 15 digits in all.
//!
//! The country calling code is read off the number by ITU-T E.164's own rule: the codes are
//! prefix-free, one to three digits long, so the short codes listed here settle every number
//! and the rest take three digits. No national numbering plan is consulted, so `+1` (the
//! North American plan) and `+7` stay one code each, whichever country within them is dialled.

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

/// The one-digit country calling codes of E.164: the North American plan and Russia with
/// Kazakhstan.
const CALLING_CODES_ONE_DIGIT: [&str; 2] = ["1", "7"];

/// The two-digit country calling codes of E.164 (ITU-T's list of assigned codes). Every other
/// number that starts with neither a one- nor a two-digit code has a three-digit one.
const CALLING_CODES_TWO_DIGITS: [&str; 44] = [
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
    "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65",
    "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
];

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

    /// The country calling code, without its `+`: `254` for `+254712345678`, `1` for any
    /// number of the North American plan.
    pub fn calling_code(&self) -> &str {
        calling_code(&self.0[1..])
    }
}

/// The calling code that starts `digits`, the digits of an E.164 number after its `+`.
fn calling_code(digits: &str) -> &str {
    let prefix = |length: usize| digits.get(..length).unwrap_or(digits);
    if CALLING_CODES_ONE_DIGIT.contains(&prefix(1)) {
        return prefix(1);
    }
    if CALLING_CODES_TWO_DIGITS.contains(&prefix(2)) {
        return prefix(2);
    }
    prefix(3)
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
    fn the_calling_code_takes_as_many_digits_as_e164_assigns_it() {
        let code =
            |text: &str| PhoneNumber::parse(text).map(|phone| phone.calling_code().to_owned());
        for (number, expected) in [
            ("+14155552671", "1"),
            ("+79161234567", "7"),
            ("+447911123456", "44"),
            ("+27821234567", "27"),
            ("+254712345678", "254"),
            ("+2348031234567", "234"),
            ("+35312345678", "353"),
            ("+97150123456", "971"),
            ("+8613812345678", "86"),
            ("+85291234567", "852"),
        ] {
            assert_eq!(code(number), Ok(expected.to_owned()), "{number}");
        }
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
