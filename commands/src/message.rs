//! Command messages: what the API and the processor put on the commands topic.
//!
//! A command is addressed to one account's stream and keyed by its account id, so every
//! command for an account lands in the same partition and is decided in the order it was
//! appended. Its id becomes the causation id of the events it produces.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_domain::{AccountId, CommandId, LedgerCommand};
use uuid::Uuid;

use crate::log::{NewRecord, Topic};

/// One command as carried by the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandEnvelope {
    pub command_id: CommandId,
    pub account_id: AccountId,
    pub issued_at: DateTime<Utc>,
    /// The user or service that asked, when one did; `None` for the processor's own commands.
    pub issued_by: Option<Uuid>,
    pub command: LedgerCommand,
}

impl CommandEnvelope {
    pub fn new(account_id: AccountId, issued_by: Option<Uuid>, command: LedgerCommand) -> Self {
        let command_id = CommandId::new();
        CommandEnvelope {
            command_id,
            account_id,
            issued_at: Utc::now(),
            issued_by,
            command,
        }
    }

    pub fn to_record(&self) -> NewRecord {
        // Only strings, integers and string-keyed maps: serialization cannot fail.
        let payload = serde_json::to_vec(self).expect("a command envelope always serializes");
        NewRecord {
            topic: Topic::Commands,
            key: self.account_id.to_string(),
            payload,
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<CommandEnvelope, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
