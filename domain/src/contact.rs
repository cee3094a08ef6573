//! Who an account belongs to and where to reach them: validated once, at the edge, so that
//! the ledger and the notifier can trust every field.

use serde::{Deserialize, Serialize};

use crate::phone::PhoneNumber;

/// Longest name kept, in characters: enough for any real name, short enough for an SMS.
pub const NAME_CHARS_MAX: usize = 100;
/// Longest email address, by RFC 5321's path limit.
pub const EMAIL_BYTES_MAX: usize = 254;
/// Longest billing address field, in characters.
pub const ADDRESS_FIELD_CHARS_MAX: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    #[error("name must be 1 to 100 printable characters")]
    InvalidName,
    #[error("email is not a valid address")]
    InvalidEmail,
    #[error("phone number is not a valid E.164 number")]
    InvalidPhoneNumber,
    #[error("billing address field is too long or has control characters")]
    InvalidBillingAddress,
}

impl ContactError {
    pub fn code(self) -> &'static str {
        match self {
            ContactError::InvalidName => "invalid_name",
            ContactError::InvalidEmail => "invalid_email",
            ContactError::InvalidPhoneNumber => "invalid_phone_number",
            ContactError::InvalidBillingAddress => "invalid_billing_address",
        }
    }
}

/// The account holder's name and contacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    pub name: String,
    pub email: String,
    pub phone_number: PhoneNumber,
}

impl AccountInfo {
    /// Validates raw fields. Control characters (CR and LF among them) are refused everywhere,
    /// so no field can ever smuggle a header into an email or a line into an SMS.
    pub fn parse(name: &str, email: &str, phone_number: &str) -> Result<AccountInfo, ContactError> {
        let name = name.trim();
        let name_length = name.chars().count();
        if name_length == 0 || name_length > NAME_CHARS_MAX || has_control(name) {
            return Err(ContactError::InvalidName);
        }
        let phone_number =
            PhoneNumber::parse(phone_number).map_err(|_| ContactError::InvalidPhoneNumber)?;
        Ok(AccountInfo {
            name: name.to_owned(),
            email: parse_email(email)?,
            phone_number,
        })
    }
}

/// Where the account holder is billed. Every field is optional free text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BillingAddress {
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

impl BillingAddress {
    pub fn validate(&self) -> Result<(), ContactError> {
        let fields = [
            &self.address_line1,
            &self.address_line2,
            &self.city,
            &self.state,
            &self.postal_code,
            &self.country,
        ];
        let bad =
            |field: &String| field.chars().count() > ADDRESS_FIELD_CHARS_MAX || has_control(field);
        if fields.into_iter().flatten().any(bad) {
            return Err(ContactError::InvalidBillingAddress);
        }
        Ok(())
    }
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// A deliberately plain check: one `@`, a dotted domain, no spaces, quotes or control
/// characters. Deliverability is the mail server's to judge. Returns the address trimmed.
pub fn parse_email(email: &str) -> Result<String, ContactError> {
    let email = email.trim();
    let (local, domain) = email.split_once('@').ok_or(ContactError::InvalidEmail)?;
    let forbidden = |c: char| c.is_control() || c.is_whitespace() || "\"<>,;:()[]\\@".contains(c);
    let valid = email.len() <= EMAIL_BYTES_MAX
        && !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !local.contains(forbidden)
        && !domain.contains(forbidden);
    if !valid {
        return Err(ContactError::InvalidEmail);
    }
    Ok(email.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_contacts_are_accepted_and_trimmed() {
        let info = AccountInfo::parse(" Ada ", "ada@example.com", "+14155552671");
        assert_eq!(info.map(|info| info.name), Ok("Ada".to_owned()));
    }

    #[test]
    fn header_injection_is_refused_in_every_field() {
        let name = AccountInfo::parse(
            "Ada\r\nBcc: x@example.com",
            "ada@example.com",
            "+14155552671",
        );
        assert_eq!(name, Err(ContactError::InvalidName));
        let email = AccountInfo::parse("Ada", "ada@example.com\r\nBcc: x@y.z", "+14155552671");
        assert_eq!(email, Err(ContactError::InvalidEmail));
    }

    #[test]
    fn malformed_emails_are_refused() {
        for email in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@example.com",
            "a@b@c.d",
        ] {
            let info = AccountInfo::parse("Ada", email, "+14155552671");
            assert_eq!(info, Err(ContactError::InvalidEmail), "{email:?}");
        }
    }
}
