//! Delivering notifications: the words of every message, and the senders that carry them.
//!
//! A [`NotificationRequested`] names a template, an outcome and the values to fill in. The
//! [`Templates`] turn it into an [`EmailMessage`] or an [`SmsMessage`] ([`Templates::render`]);
//! an [`EmailSender`] or [`SmsSender`] then tries to hand it over once and says what became of
//! it as a [`Delivery`]. [`Notifier`] does both for one request.
//!
//! - [`templates`]: the template files, loaded and checked once at start-up.
//! - [`render`]: a request's message, for its channel.
//! - [`smtp`]: email over SMTP, through lettre's pooled async transport.
//! - [`sms`]: SMS through an HTTP API shaped like Twilio's Messages API.
//! - [`sms_stub`]: an HTTP stand-in for that API, for tests and local runs.
//! - [`dry_run`]: senders that log what they would send and send nothing.
//!
//! What it leaves to others: consuming the notifications topic, remembering what was sent,
//! retrying transient failures and giving up on permanent ones ([`crate::notifier`]). No
//! sender retries by itself: one call is one attempt.

pub mod dry_run;
pub mod render;
pub mod sms;
pub mod sms_stub;
pub mod smtp;
pub mod templates;

use async_trait::async_trait;
use tally_domain::notification::{Channel, NotificationRequested};

pub use dry_run::{DryRunEmailSender, DryRunSmsSender};
pub use render::{EmailMessage, RenderError, Rendered, SmsMessage};
pub use sms::{SmsFrom, SmsSettings, SmsSettingsError, TwilioSmsSender};
pub use sms_stub::sms_stub_router;
pub use smtp::{SmtpCredentials, SmtpSecurity, SmtpSender, SmtpSettings, SmtpSettingsError};
pub use templates::{TemplateError, TemplateSource, Templates};

/// The longest reason or reference kept from a server or provider. Their text ends up in logs
/// and, later, in the notification's record; a well-behaved server says it in far less.
pub const REASON_CHARS_MAX: usize = 500;

/// What became of one attempt at handing a message over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The server or provider accepted the message. `reference` is its id for it when it gave
    /// one: the SMTP server's final reply (which usually names its queue id) or the SMS's sid.
    Sent { reference: Option<String> },

    /// Not delivered, and trying again later may succeed: the server could not be reached or
    /// answered in time, said "try later" (SMTP 4xx, HTTP 429 and 5xx), or refused our
    /// credentials (which only an operator can fix, but which says nothing about the message).
    Transient(String),

    /// Not delivered, and the same message will never be: the server refused it for good
    /// (SMTP 5xx such as 550 or 553, HTTP 4xx such as an invalid number), or it could not be
    /// rendered at all.
    Permanent(String),
}

/// Something that sends emails.
#[async_trait]
pub trait EmailSender: Send + Sync {
    /// Tries once to hand `email` over.
    async fn send(&self, email: &EmailMessage) -> Delivery;
}

/// Something that sends text messages.
#[async_trait]
pub trait SmsSender: Send + Sync {
    /// Tries once to hand `sms` over.
    async fn send(&self, sms: &SmsMessage) -> Delivery;
}

/// The templates and one sender per channel: everything needed to deliver a request once.
pub struct Notifier {
    templates: Templates,
    email: Box<dyn EmailSender>,
    sms: Box<dyn SmsSender>,
}

impl Notifier {
    pub fn new(templates: Templates, email: Box<dyn EmailSender>, sms: Box<dyn SmsSender>) -> Self {
        Notifier {
            templates,
            email,
            sms,
        }
    }

    /// Renders `request` and tries once to send it on its channel. A request that cannot be
    /// rendered never will be: it is a [`Delivery::Permanent`] failure naming why.
    #[tracing::instrument(skip_all, fields(
        notification_id = %request.notification_id,
        channel = request.channel.as_str(),
    ))]
    pub async fn deliver(&self, request: &NotificationRequested) -> Delivery {
        let delivery = match self.templates.render(request) {
            Ok(Rendered::Email(email)) => self.email.send(&email).await,
            Ok(Rendered::Sms(sms)) => self.sms.send(&sms).await,
            Err(error) => Delivery::Permanent(error.to_string()),
        };
        log_delivery(request.channel, &delivery);
        delivery
    }
}

fn log_delivery(channel: Channel, delivery: &Delivery) {
    let channel = channel.as_str();
    match delivery {
        Delivery::Sent { reference } => {
            tracing::info!(
                channel,
                reference = reference.as_deref(),
                "notification sent"
            );
        }
        Delivery::Transient(reason) => {
            tracing::warn!(
                channel,
                reason,
                "notification not sent; it may be tried again"
            );
        }
        Delivery::Permanent(reason) => {
            tracing::warn!(channel, reason, "notification refused for good");
        }
    }
}

/// `text` fit for a log line or a record: control characters (line breaks among them) become
/// spaces, and anything past [`REASON_CHARS_MAX`] characters is cut.
pub(crate) fn bounded_text(text: &str) -> String {
    let flattened = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c });
    flattened.take(REASON_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_flattens_lines_and_stops_at_the_limit() {
        assert_eq!(bounded_text(" 550 no\r\nsuch user "), "550 no  such user");
        let long = "x".repeat(REASON_CHARS_MAX + 10);
        assert_eq!(bounded_text(&long).chars().count(), REASON_CHARS_MAX);
    }
}
