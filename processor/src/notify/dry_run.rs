//! Senders that send nothing: they log what they would have sent, and call it sent.
//!
//! For development and for deployments without an email server or SMS account. The log line
//! carries the notification id, the recipient masked (`a***@example.com`, `+25*******78`) and
//! the message's size, never its words: they hold names and amounts.

use async_trait::async_trait;

use super::render::{EmailMessage, SmsMessage};
use super::{Delivery, EmailSender, SmsSender};

/// Logs emails instead of sending them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunEmailSender;

/// Logs text messages instead of sending them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunSmsSender;

#[async_trait]
impl EmailSender for DryRunEmailSender {
    async fn send(&self, email: &EmailMessage) -> Delivery {
        tracing::info!(
            notification_id = %email.notification_id,
            to = mask_email(email.to.email.as_ref()),
            subject_chars = email.subject.chars().count(),
            text_bytes = email.text.len(),
            html_bytes = email.html.len(),
            "dry run: email not sent"
        );
        Delivery::Sent { reference: None }
    }
}

#[async_trait]
impl SmsSender for DryRunSmsSender {
    async fn send(&self, sms: &SmsMessage) -> Delivery {
        tracing::info!(
            notification_id = %sms.notification_id,
            to = mask_phone_number(sms.to.as_str()),
            text_chars = sms.text.chars().count(),
            "dry run: sms not sent"
        );
        Delivery::Sent { reference: None }
    }
}

/// The first character of the local part and the whole domain: `a***@example.com`.
pub fn mask_email(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// The first three and last two characters, the rest starred: `+25*******78`.
pub fn mask_phone_number(number: &str) -> String {
    let characters: Vec<char> = number.chars().collect();
    if characters.len() <= 5 {
        return "*".repeat(characters.len());
    }
    let (head, rest) = characters.split_at(3);
    let (middle, tail) = rest.split_at(rest.len() - 2);
    let mut masked: String = head.iter().collect();
    masked.push_str(&"*".repeat(middle.len()));
    masked.extend(tail);
    masked
}

#[cfg(test)]
mod tests {
    use tally_domain::NotificationId;
    use uuid::Uuid;

    use super::*;

    #[tokio::test]
    async fn a_dry_run_email_sends_nothing_and_calls_it_sent() {
        let email = EmailMessage {
            notification_id: NotificationId(Uuid::new_v4()),
            to: "Ada <ada@example.com>".parse().expect("a mailbox"),
            subject: "Hello".to_owned(),
            text: "Hello".to_owned(),
            html: "<p>Hello</p>".to_owned(),
        };
        let delivery = DryRunEmailSender.send(&email).await;
        assert_eq!(delivery, Delivery::Sent { reference: None });
    }

    #[test]
    fn email_addresses_keep_one_letter_and_the_domain() {
        assert_eq!(mask_email("ada.lovelace@example.com"), "a***@example.com");
        assert_eq!(mask_email("nonsense"), "***");
    }

    #[test]
    fn phone_numbers_keep_their_country_prefix_and_last_two_digits() {
        assert_eq!(mask_phone_number("+254712345678"), "+25********78");
        assert_eq!(mask_phone_number("+1234"), "*****");
    }
}
