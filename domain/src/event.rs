//! The event envelope: what every event in the log carries besides its payload.
//!
//! Every event belongs to exactly one account stream and has a place in it: sequence numbers
//! start at 1 and grow by exactly one, with no gap and no repeat. The envelope is versioned
//! through `event_version`; a payload change that old readers cannot read gets a new version.
//! Every event the decider writes also carries its place in its partition's hash chain
//! ([`crate::chain`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::AccountEvent;
use crate::chain::EventHash;
use crate::ids::{AccountId, EventId};
use crate::transaction::TransactionEvent;

/// The version of every event payload written today.
pub const EVENT_VERSION: u32 = 1;

/// A payload of either aggregate in an account's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LedgerEvent {
    Account(AccountEvent),
    Transaction(TransactionEvent),
}

impl LedgerEvent {
    pub fn name(&self) -> &'static str {
        match self {
            LedgerEvent::Account(event) => event.name(),
            LedgerEvent::Transaction(event) => event.name(),
        }
    }
}

impl From<AccountEvent> for LedgerEvent {
    fn from(event: AccountEvent) -> LedgerEvent {
        LedgerEvent::Account(event)
    }
}

impl From<TransactionEvent> for LedgerEvent {
    fn from(event: TransactionEvent) -> LedgerEvent {
        LedgerEvent::Transaction(event)
    }
}

/// One event as stored in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    pub event_id: EventId,
    pub account_id: AccountId,
    /// Place in the account's stream: 1 for its first event, then +1 each.
    pub sequence: u64,
    pub event_type: String,
    pub event_version: u32,
    pub occurred_at: DateTime<Utc>,
    /// The transaction the event belongs to, or the command for account events.
    pub correlation_id: Uuid,
    /// The command that caused the event.
    pub causation_id: Uuid,
    pub event: LedgerEvent,
    /// The hash of the event before this one in its partition of the events topic, or the
    /// genesis hash for the first. Set by the decider when it links the event
    /// ([`EventEnvelope::link`]); `None` until then. These two fields stay last: the stored
    /// JSON is the canonical bytes with them appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<EventHash>,
    /// SHA-256 of `previous_hash` and the event's canonical bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<EventHash>,
}

impl EventEnvelope {
    pub fn to_json(&self) -> Vec<u8> {
        // An envelope holds only strings, integers and maps with string keys, which
        // serde_json always serializes.
        serde_json::to_vec(self).expect("an event envelope always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<EventEnvelope, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Derives an event's id from the command that caused it and its place among that command's
/// events, so that deciding the same command again yields the same ids.
pub fn event_id_for(causation_id: Uuid, index: usize) -> EventId {
    EventId(Uuid::new_v5(&causation_id, &index.to_be_bytes()))
}
