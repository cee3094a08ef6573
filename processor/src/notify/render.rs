//! A notification request's message, ready for its channel's sender.
//!
//! Rendering is pure and fails only for reasons no retry fixes (a value the wording needs is
//! absent, a recipient is malformed), so every [`RenderError`] is permanent.
//!
//! Values are inserted as they came: already formatted, amounts at their currency's scale.
//! They are HTML-escaped in the HTML body only. Nothing is escaped for the subject or the
//! recipient's display name: they are handed to lettre as a subject and a [`Mailbox`] name,
//! and lettre encodes them as header text, so a line break, comma or quote a user typed is
//! shown, never read as a header or another address.
//!
//! Lengths are bounded: a subject at [`SUBJECT_CHARS_MAX`], a text message at
//! [`SMS_CHARS_MAX`], a display name at [`NAME_CHARS_MAX`], and any value at
//! [`VALUE_CHARS_MAX`]. Text past a bound is cut and ends in `...`.

use std::collections::BTreeMap;

use lettre::message::Mailbox;
use tally_domain::NotificationId;
use tally_domain::PhoneNumber;
use tally_domain::contact::NAME_CHARS_MAX;
use tally_domain::notification::{Channel, NotificationRequested};

use super::templates::{
    Templates, Text, Wording, escape_html, outcome_name, template_name, verbatim,
};
use crate::effects::VALUE_NAME;

/// The longest subject sent, in characters. Mail clients show about 60; 200 leaves room for a
/// long custom subject without letting one run on.
pub const SUBJECT_CHARS_MAX: usize = 200;

/// The longest text message sent, in characters: two 160-character SMS, or three parts of a
/// concatenated one. A longer text costs more and reads worse on a phone; only a long name or
/// a custom message can reach it. The `...` that ends a cut text is ASCII, so cutting never
/// moves a message out of the GSM alphabet.
pub const SMS_CHARS_MAX: usize = 320;

/// The longest value accepted, in characters. The processor's values are far shorter; a
/// custom message is the longest, and an email paragraph of 2000 characters is already a lot.
pub const VALUE_CHARS_MAX: usize = 2_000;

/// What marks text that was cut at its bound.
const CUT_MARK: &str = "...";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendered {
    Email(EmailMessage),
    Sms(SmsMessage),
}

/// An email ready for an [`super::EmailSender`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailMessage {
    /// Also the base of the email's `Message-ID`, so a resent notification carries the same.
    pub notification_id: NotificationId,
    /// The address, with the account holder's name when the request has one.
    pub to: Mailbox,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A text message ready for an [`super::SmsSender`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsMessage {
    pub notification_id: NotificationId,
    pub to: PhoneNumber,
    /// At most [`SMS_CHARS_MAX`] characters.
    pub text: String,
}

/// Why a request could not be rendered. None is fixed by trying again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template {template} has no {outcome} wording")]
    NoWording {
        template: &'static str,
        outcome: &'static str,
    },

    #[error("template file {file} needs the value `{value}`, which the notification lacks")]
    MissingValue { file: String, value: &'static str },

    #[error("value `{value}` is longer than {VALUE_CHARS_MAX} characters")]
    ValueTooLong { value: String },

    #[error("the email recipient is not a valid address")]
    InvalidEmailAddress,

    #[error("the SMS recipient is not an E.164 phone number")]
    InvalidPhoneNumber,
}

impl Templates {
    /// The message `request` asks for, on its channel.
    pub fn render(&self, request: &NotificationRequested) -> Result<Rendered, RenderError> {
        let (template, outcome) = (request.template, request.outcome);
        let wording = self
            .wording(template, outcome)
            .ok_or(RenderError::NoWording {
                template: template_name(template),
                outcome: outcome_name(outcome),
            })?;
        if let Some((value, _)) = request.values.iter().find(|(_, v)| too_long(v)) {
            let value = value.clone();
            return Err(RenderError::ValueTooLong { value });
        }

        match request.channel {
            Channel::Email => render_email(request, wording).map(Rendered::Email),
            Channel::Sms => render_sms(request, wording).map(Rendered::Sms),
        }
    }
}

fn render_email(
    request: &NotificationRequested,
    wording: &Wording,
) -> Result<EmailMessage, RenderError> {
    let address = request
        .recipient
        .parse()
        .map_err(|_| RenderError::InvalidEmailAddress)?;
    let name = request
        .values
        .get(VALUE_NAME)
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .map(|name| cut(name, NAME_CHARS_MAX));

    let subject = fill(&wording.subject, &request.values, verbatim)?;
    Ok(EmailMessage {
        notification_id: request.notification_id,
        to: Mailbox::new(name, address),
        subject: cut(&subject, SUBJECT_CHARS_MAX),
        text: fill(&wording.text, &request.values, verbatim)?,
        html: fill(&wording.html, &request.values, escape_html)?,
    })
}

fn render_sms(
    request: &NotificationRequested,
    wording: &Wording,
) -> Result<SmsMessage, RenderError> {
    let to = PhoneNumber::parse(&request.recipient).map_err(|_| RenderError::InvalidPhoneNumber)?;
    let text = fill(&wording.sms, &request.values, verbatim)?;
    Ok(SmsMessage {
        notification_id: request.notification_id,
        to,
        text: cut(&text, SMS_CHARS_MAX),
    })
}

fn fill(
    text: &Text,
    values: &BTreeMap<String, String>,
    escape: fn(&str, &mut String),
) -> Result<String, RenderError> {
    text.fill(values, escape)
        .map_err(|value| RenderError::MissingValue {
            file: text.file().to_owned(),
            value,
        })
}

fn too_long(value: &str) -> bool {
    value.chars().nth(VALUE_CHARS_MAX).is_some()
}

/// `text` itself when it has at most `chars_max` characters, else its start and [`CUT_MARK`],
/// `chars_max` characters in all.
fn cut(text: &str, chars_max: usize) -> String {
    if text.chars().nth(chars_max).is_none() {
        return text.to_owned();
    }
    let kept = chars_max.saturating_sub(CUT_MARK.len());
    let mut cut: String = text.chars().take(kept).collect();
    cut.push_str(CUT_MARK);
    cut
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use tally_domain::notification::{Outcome, Template};
    use uuid::Uuid;

    use super::*;
    use crate::effects::{
        VALUE_AMOUNT, VALUE_CURRENCY, VALUE_FAILURE_REASON, VALUE_PHONE_NUMBER,
        VALUE_TRANSACTION_ID,
    };
    use crate::notify::templates::{VALUE_MESSAGE, VALUE_SUBJECT, WORDINGS, values_of};

    /// Every value any template is given, each distinct so it can be found in the output.
    fn full_values() -> BTreeMap<String, String> {
        [
            (VALUE_NAME, "Ada Lovelace"),
            (VALUE_AMOUNT, "30.50"),
            (VALUE_CURRENCY, "USD"),
            (VALUE_TRANSACTION_ID, "0190f0c2-7d1e-7c3a-9b7a-2f5e4c1d0a11"),
            (VALUE_PHONE_NUMBER, "+254712345678"),
            (VALUE_FAILURE_REASON, "insufficient_funds"),
            (VALUE_SUBJECT, "Scheduled maintenance"),
            (VALUE_MESSAGE, "Tally is down for an hour on Sunday."),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn request(
        channel: Channel,
        template: Template,
        outcome: Outcome,
        values: BTreeMap<String, String>,
    ) -> NotificationRequested {
        let recipient = match channel {
            Channel::Email => "ada@example.com",
            Channel::Sms => "+14155552671",
        };
        NotificationRequested {
            notification_id: NotificationId(Uuid::new_v4()),
            account_id: None,
            channel,
            recipient: recipient.to_owned(),
            template,
            outcome,
            values,
            occurred_at: Utc::now(),
            correlation_id: Uuid::new_v4(),
            causation_id: Uuid::new_v4(),
        }
    }

    fn templates() -> Templates {
        Templates::embedded().expect("the shipped templates load")
    }

    fn email(rendered: Rendered) -> EmailMessage {
        match rendered {
            Rendered::Email(email) => email,
            Rendered::Sms(_) => panic!("an email was asked for"),
        }
    }

    fn sms(rendered: Rendered) -> SmsMessage {
        match rendered {
            Rendered::Sms(sms) => sms,
            Rendered::Email(_) => panic!("an SMS was asked for"),
        }
    }

    #[test]
    fn every_wording_renders_on_both_channels_with_every_value_it_is_given() {
        let templates = templates();
        for (template, outcome) in WORDINGS {
            let values = full_values();
            let email_request = request(Channel::Email, template, outcome, values.clone());
            let email = email(templates.render(&email_request).expect("an email"));
            let sms_request = request(Channel::Sms, template, outcome, values);
            let sms = sms(templates.render(&sms_request).expect("an SMS"));

            let case = format!("{template:?} {outcome:?}");
            assert!(
                !email.subject.is_empty() && !email.text.is_empty(),
                "{case}"
            );
            assert!(email.html.starts_with("<!DOCTYPE html>"), "{case}");
            assert!(
                !sms.text.is_empty() && sms.text.chars().count() <= SMS_CHARS_MAX,
                "{case}"
            );
            for output in [&email.subject, &email.text, &email.html, &sms.text] {
                assert!(!output.contains("{{"), "{case}: {output}");
            }
        }
    }

    #[test]
    fn every_value_a_wording_is_given_is_used_by_its_email() {
        let templates = templates();
        let all = full_values();
        for (template, outcome) in WORDINGS {
            let given = request(Channel::Email, template, outcome, all.clone());
            let email = email(templates.render(&given).expect("an email"));
            let case = format!("{template:?} {outcome:?}");
            for value in values_of(template, outcome) {
                let shown = &all[value];
                let anywhere = [&email.subject, &email.text, &email.html];
                assert!(
                    anywhere.iter().any(|part| part.contains(shown.as_str())),
                    "{case} {value}"
                );
            }
        }
    }

    #[test]
    fn a_failure_names_its_reason_and_its_amount_at_the_given_scale() {
        let given = request(
            Channel::Email,
            Template::MoneyAdded,
            Outcome::Failure,
            full_values(),
        );
        let email = email(templates().render(&given).expect("an email"));

        assert_eq!(
            email.subject,
            "We could not add 30.50 USD to your Tally account"
        );
        assert!(
            email.text.contains("Reason: insufficient_funds"),
            "{}",
            email.text
        );
        assert_eq!(email.to.to_string(), "Ada Lovelace <ada@example.com>");
    }

    #[test]
    fn values_are_escaped_in_the_html_body_only() {
        let mut values = full_values();
        values.insert(VALUE_NAME.to_owned(), r#"<b>Ada</b> & "Bob""#.to_owned());
        let given = request(
            Channel::Email,
            Template::AccountOpened,
            Outcome::Success,
            values,
        );

        let email = email(templates().render(&given).expect("an email"));

        assert!(
            email
                .html
                .contains("&lt;b&gt;Ada&lt;/b&gt; &amp; &quot;Bob&quot;"),
            "{}",
            email.html
        );
        assert!(!email.html.contains("<b>Ada</b>"), "{}", email.html);
        assert!(
            email.text.contains(r#"<b>Ada</b> & "Bob""#),
            "{}",
            email.text
        );
        assert_eq!(email.subject, r#"Welcome to Tally, <b>Ada</b> & "Bob""#);
    }

    #[test]
    fn a_value_the_wording_needs_but_the_request_lacks_is_named() {
        let mut values = full_values();
        values.remove(VALUE_PHONE_NUMBER);
        let given = request(
            Channel::Sms,
            Template::AirtimeSent,
            Outcome::Success,
            values,
        );

        let error = templates().render(&given).expect_err("a missing value");

        let expected = RenderError::MissingValue {
            file: "airtime_sent.success.sms.txt".to_owned(),
            value: VALUE_PHONE_NUMBER,
        };
        assert_eq!(error, expected);
    }

    #[test]
    fn an_outcome_a_template_has_no_wording_for_is_refused() {
        let given = request(
            Channel::Email,
            Template::AccountOpened,
            Outcome::Failure,
            full_values(),
        );
        let error = templates().render(&given).expect_err("no wording");
        assert!(matches!(error, RenderError::NoWording { .. }), "{error}");
    }

    #[test]
    fn malformed_recipients_are_refused() {
        let mut given = request(
            Channel::Email,
            Template::AccountOpened,
            Outcome::Success,
            full_values(),
        );
        given.recipient = "ada at example.com".to_owned();
        assert_eq!(
            templates().render(&given),
            Err(RenderError::InvalidEmailAddress)
        );

        given.channel = Channel::Sms;
        given.recipient = "0712345678".to_owned();
        assert_eq!(
            templates().render(&given),
            Err(RenderError::InvalidPhoneNumber)
        );
    }

    #[test]
    fn a_long_custom_message_is_cut_to_the_sms_bound() {
        let mut values = full_values();
        values.insert(VALUE_MESSAGE.to_owned(), "é".repeat(VALUE_CHARS_MAX));
        let given = request(Channel::Sms, Template::Custom, Outcome::Success, values);

        let sms = sms(templates().render(&given).expect("an SMS"));

        assert_eq!(sms.text.chars().count(), SMS_CHARS_MAX);
        assert!(
            sms.text.starts_with("Tally: éé") && sms.text.ends_with("é..."),
            "{}",
            sms.text
        );
    }

    #[test]
    fn a_value_longer_than_the_bound_is_refused() {
        let mut values = full_values();
        values.insert(VALUE_MESSAGE.to_owned(), "x".repeat(VALUE_CHARS_MAX + 1));
        let given = request(Channel::Email, Template::Custom, Outcome::Success, values);

        let error = templates().render(&given).expect_err("a long value");

        let value = VALUE_MESSAGE.to_owned();
        assert_eq!(error, RenderError::ValueTooLong { value });
    }

    #[test]
    fn a_long_subject_is_cut_to_its_bound() {
        let mut values = full_values();
        values.insert(VALUE_SUBJECT.to_owned(), "s".repeat(SUBJECT_CHARS_MAX * 2));
        let given = request(Channel::Email, Template::Custom, Outcome::Success, values);

        let email = email(templates().render(&given).expect("an email"));

        assert_eq!(email.subject.chars().count(), SUBJECT_CHARS_MAX);
        assert!(email.subject.ends_with("s..."));
    }

    #[test]
    fn cutting_keeps_short_text_whole() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("exactly10!", 10), "exactly10!");
        assert_eq!(cut("eleven char", 10), "eleven ...");
    }
}
