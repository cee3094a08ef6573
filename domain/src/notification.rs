//! Notification events: a request to tell an account holder something, by email or SMS.
//!
//! The event names a template and the values to fill it with; the words live with the
//! notifier. Its id is derived from the event that caused it, so a redelivered event asks for
//! the same notification again rather than a second one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{AccountId, EventId, NotificationId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
        }
    }
}

/// Which message to send. Each exists with success and failure wording where it can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    AccountOpened,
    AccountUpdated,
    MoneyAdded,
    AirtimeSent,
    BalanceAdjusted,
    /// A message written by an administrator or a service account.
    Custom,
}

/// Whether the event told of a success or a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequested {
    pub notification_id: NotificationId,
    pub account_id: Option<AccountId>,
    pub channel: Channel,
    /// An email address or an E.164 phone number.
    pub recipient: String,
    pub template: Template,
    pub outcome: Outcome,
    /// The template's fields, already formatted (amounts at their currency's scale).
    pub values: BTreeMap<String, String>,
    pub occurred_at: DateTime<Utc>,
    /// The transaction or command the notification is about.
    pub correlation_id: Uuid,
    /// The event or request that caused it.
    pub causation_id: Uuid,
}

impl NotificationRequested {
    pub fn to_json(&self) -> Vec<u8> {
        // Only strings, enums and string maps: serialization cannot fail.
        serde_json::to_vec(self).expect("a notification always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<NotificationRequested, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The id of the notification an event asks for on a channel: the same every time the
/// event is handled.
pub fn notification_id_for(event_id: EventId, channel: Channel) -> NotificationId {
    NotificationId(Uuid::new_v5(&event_id.0, channel.as_str().as_bytes()))
}
