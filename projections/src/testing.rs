//! Test helpers: one account's stream turned into the log records the decider would write,
//! and builders for the commands the tests send.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use tally_commands::log::{Record, Topic};
use tally_commands::message::CommandEnvelope;
use tally_domain::ledger::AirtimeOutcome;
use tally_domain::{
    AccountId, AccountInfo, AccountLedger, Amount, CommandContext, CommandId, Currency,
    LedgerCommand, PhoneNumber, TransactionId,
};
use uuid::Uuid;

pub(crate) const USD: Currency = Currency::USD;

/// One account's stream, turning commands into the log records the decider would write.
pub(crate) struct Stream {
    ledger: AccountLedger,
    pub(crate) account_id: AccountId,
    /// The next offset of each topic's partition 0.
    next_offsets: BTreeMap<Topic, u64>,
    clock_s: i64,
}

impl Stream {
    pub(crate) fn new(n: u128) -> Stream {
        let account_id = AccountId(Uuid::from_u128(n));
        Stream {
            ledger: AccountLedger::new(account_id),
            account_id,
            next_offsets: BTreeMap::new(),
            clock_s: 1_700_000_000,
        }
    }

    fn tick(&mut self) -> DateTime<Utc> {
        self.clock_s += 1;
        Utc.timestamp_opt(self.clock_s, 0).unwrap()
    }

    /// The event records deciding `command` produces.
    pub(crate) async fn decide(&mut self, command: LedgerCommand) -> Vec<Record> {
        let context = CommandContext {
            command_id: CommandId::new(),
            issued_at: Utc::now(),
            now: self.tick(),
        };
        let decision = self.ledger.decide(command, context).await;
        let envelopes = decision.events;
        envelopes
            .iter()
            .map(|e| self.record(Topic::Events, e.to_json()))
            .collect()
    }

    /// The commands-topic record of `command`.
    pub(crate) fn command(&mut self, command: LedgerCommand) -> (CommandEnvelope, Record) {
        let mut envelope = CommandEnvelope::new(self.account_id, None, command);
        envelope.issued_at = self.tick();
        let payload = serde_json::to_vec(&envelope).unwrap();
        (envelope, self.record(Topic::Commands, payload))
    }

    pub(crate) fn record(&mut self, topic: Topic, payload: Vec<u8>) -> Record {
        let next_offset = self.next_offsets.entry(topic).or_default();
        *next_offset += 1;
        Record {
            topic,
            partition: 0,
            offset: *next_offset - 1,
            key: self.account_id.to_string(),
            payload,
            timestamp_ms: 0,
        }
    }
}

pub(crate) fn open() -> LedgerCommand {
    let info = AccountInfo::parse("Ada", "ada@example.com", "+14155552671").unwrap();
    LedgerCommand::OpenAccount {
        info,
        billing_address: None,
        currency: USD,
    }
}

pub(crate) fn usd(text: &str) -> Amount {
    Amount::parse(text, USD).unwrap()
}

pub(crate) fn add_money(transaction_id: TransactionId, amount: &str) -> LedgerCommand {
    LedgerCommand::AddMoney {
        transaction_id,
        amount: usd(amount),
        currency: USD,
    }
}

pub(crate) fn send_airtime(transaction_id: TransactionId, amount: &str) -> LedgerCommand {
    LedgerCommand::SendAirtime {
        transaction_id,
        amount: usd(amount),
        currency: USD,
        phone_number: PhoneNumber::parse("+254712345678").unwrap(),
    }
}

pub(crate) fn complete(transaction_id: TransactionId, outcome: AirtimeOutcome) -> LedgerCommand {
    LedgerCommand::CompleteAirtime {
        transaction_id,
        outcome,
    }
}

pub(crate) fn money(text: &str) -> Decimal {
    Decimal::from_str_exact(text).unwrap()
}
