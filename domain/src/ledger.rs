//! One account's stream: the account, its transactions, and the rules that span both.
//!
//! A stream is decided by exactly one writer at a time, so its rules can read and change the
//! state without locks: two debits of the same account are decided one after the other, and
//! the second sees the first. Every command yields a [`Decision`]; a command that cannot apply
//! either fails its transaction (an event, so the caller learns why) or, for a duplicate or an
//! account command that does not fit, yields no events and names its rejection.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::{Account, AccountCommand, AccountError};
use crate::contact::{AccountInfo, BillingAddress};
use crate::event::{EVENT_VERSION, EventEnvelope, LedgerEvent, event_id_for};
use crate::ids::{AccountId, CommandId, TransactionId};
use crate::money::{Amount, Currency};
use crate::phone::PhoneNumber;
use crate::transaction::{
    FailureReason, Transaction, TransactionCommand, TransactionEvent, TransactionStatus,
    TransactionTerms, TransactionType,
};

/// A command addressed to one account's stream, as carried by the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum LedgerCommand {
    OpenAccount {
        info: AccountInfo,
        billing_address: Option<BillingAddress>,
        currency: Currency,
    },
    UpdateAccount {
        info: AccountInfo,
        billing_address: Option<BillingAddress>,
    },
    AddMoney {
        transaction_id: TransactionId,
        amount: Amount,
        currency: Currency,
    },
    SendAirtime {
        transaction_id: TransactionId,
        amount: Amount,
        currency: Currency,
        phone_number: PhoneNumber,
    },
    /// An administrator's credit or debit.
    AdjustBalance {
        transaction_id: TransactionId,
        direction: AdjustmentDirection,
        amount: Amount,
        currency: Currency,
    },
    /// The airtime provider's answer for a transaction whose funds are reserved.
    CompleteAirtime {
        transaction_id: TransactionId,
        outcome: AirtimeOutcome,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdjustmentDirection {
    Credit,
    Debit,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
pub enum AirtimeOutcome {
    Delivered { provider_reference: String },
    Rejected { provider_code: String },
}

/// What deciding one command produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<EventEnvelope>,
    /// Why the command produced no events, when it produced none.
    pub rejection: Option<&'static str>,
}

/// Where a command came from: stamped on every event it causes.
#[derive(Clone, Copy, Debug)]
pub struct CommandContext {
    pub command_id: CommandId,
    /// When the command was issued, on the issuer's clock.
    pub issued_at: DateTime<Utc>,
    /// The decider's clock, stamped on the events as their time.
    pub now: DateTime<Utc>,
}

/// The largest difference Tally tolerates between the clocks of the hosts that mint
/// transaction ids (the API's) and the clocks of the log (Kafka's brokers). The windows below
/// are spaced by it, so that each side's rule holds on the other side's clock.
pub const CLOCK_SKEW_MAX_MS: i64 = 30_000;

/// How long after its id was minted a transaction's command may be appended, first or again
/// for a client's retry, and the request answered as accepted. Past it the API answers a
/// repeat from the read store and appends nothing. It outlasts a first append that failed
/// only after the log's 30 s delivery timeout (a broker restarting, say), so that a retry sent
/// once the log is back still gets its command appended.
pub const REPLAY_WINDOW_MS: i64 = 60_000;

/// How long after its id was minted the log may have stored a transaction's first command
/// for the command to be decided. A command stored later, however it got there (a producer
/// that held it through a long outage, say), starts nothing: it is refused by the decider
/// and never shown by the projector, which is what lets the API renew a request whose command
/// never arrived without the first command ever landing next to the renewal. Every command
/// the API answered as accepted was stored within [`REPLAY_WINDOW_MS`] of minting on the
/// API's clock, so within this window on the log's.
pub const ADMISSION_WINDOW_MS: i64 = REPLAY_WINDOW_MS + CLOCK_SKEW_MAX_MS;

/// The longest a Kafka transaction of another writer may hold the log's last stable offset
/// back: its `transaction.timeout.ms` (10 s) plus the broker's interval between checks for
/// transactions that timed out (10 s).
pub const OPEN_TRANSACTION_MAX_MS: i64 = 20_000;

/// How long after its id was minted a keyed request whose command is not in the log may be
/// renewed under a new id. By then, on the log's clock, the admission window has closed, and
/// every command stored within it lies below the end the API compares the projector's
/// position with, even behind another writer's open transaction.
pub const RENEWAL_AFTER_MS: i64 = ADMISSION_WINDOW_MS + CLOCK_SKEW_MAX_MS + OPEN_TRANSACTION_MAX_MS;

/// How long a finished transaction is remembered, counted on the clock of the ids and
/// commands the stream sees, not on the decider's: a decider that was down does not forget
/// early. A repeat of a finished transaction's command is stored within
/// [`ADMISSION_WINDOW_MS`] of minting or refused, and the stream's clock runs at most
/// [`CLOCK_SKEW_MAX_MS`] ahead of the log's, so every repeat that is decided is recognized.
/// At 10,000 transactions a second the ids remembered stay in the tens of megabytes.
pub const FINISHED_RETENTION_MS: i64 = ADMISSION_WINDOW_MS + CLOCK_SKEW_MAX_MS;

/// Whether a command stored in the log at `logged_at_ms` may be decided: any command but one
/// that starts a transaction whose id was minted more than [`ADMISSION_WINDOW_MS`] earlier.
/// The decider and the projector apply the same rule, so a refused command is neither
/// decided nor shown.
pub fn admitted(command: &LedgerCommand, logged_at_ms: i64) -> bool {
    let started = match command {
        LedgerCommand::AddMoney { transaction_id, .. }
        | LedgerCommand::SendAirtime { transaction_id, .. }
        | LedgerCommand::AdjustBalance { transaction_id, .. } => *transaction_id,
        LedgerCommand::OpenAccount { .. }
        | LedgerCommand::UpdateAccount { .. }
        | LedgerCommand::CompleteAirtime { .. } => return true,
    };
    minted_ms(started).is_none_or(|minted| logged_at_ms - minted <= ADMISSION_WINDOW_MS)
}

/// The state of one account's stream.
#[derive(Clone, Debug)]
pub struct AccountLedger {
    account_id: AccountId,
    account: Account,
    /// Transactions still in flight.
    transactions: HashMap<TransactionId, Transaction>,
    /// Recently finished transactions and how they ended, so that a command repeated by a
    /// client retry is recognized and decided only once.
    finished: HashMap<TransactionId, TransactionStatus>,
    /// The finished transactions by the time their ids were minted, oldest first.
    finished_order: VecDeque<(i64, TransactionId)>,
    /// The latest time, in ms since the epoch, among the ids and commands the stream has seen.
    horizon_ms: i64,
    sequence: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("event for account {got} applied to the stream of {expected}")]
    WrongAccount { expected: AccountId, got: AccountId },
    #[error("sequence {got} follows {previous}: the stream has a gap or a repeat")]
    SequenceBroken { previous: u64, got: u64 },
    #[error("event {sequence} breaks the ledger: {broken}")]
    Inconsistent { sequence: u64, broken: &'static str },
}

impl AccountLedger {
    pub fn new(account_id: AccountId) -> AccountLedger {
        AccountLedger {
            account_id,
            account: Account::default(),
            transactions: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            horizon_ms: i64::MIN,
            sequence: 0,
        }
    }

    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Where a transaction stands, while it is in flight or recently finished.
    pub fn transaction_status(&self, transaction_id: TransactionId) -> Option<TransactionStatus> {
        match self.transactions.get(&transaction_id) {
            Some(transaction) => transaction.status(),
            None => self.finished.get(&transaction_id).copied(),
        }
    }

    /// How many transactions the stream remembers, in flight and finished.
    pub fn transactions_remembered(&self) -> usize {
        self.transactions.len() + self.finished.len()
    }

    /// The sequence number of the stream's last event; 0 for an empty stream.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Replays one stored event, checking that it is the next in the stream.
    pub fn apply(&mut self, envelope: &EventEnvelope) -> Result<(), StreamError> {
        if envelope.account_id != self.account_id {
            let got = envelope.account_id;
            return Err(StreamError::WrongAccount {
                expected: self.account_id,
                got,
            });
        }
        if envelope.sequence != self.sequence + 1 {
            let previous = self.sequence;
            return Err(StreamError::SequenceBroken {
                previous,
                got: envelope.sequence,
            });
        }
        let sequence = envelope.sequence;
        self.apply_event(envelope.event.clone())
            .map_err(|broken| StreamError::Inconsistent { sequence, broken })?;
        self.sequence = sequence;
        Ok(())
    }

    fn apply_event(&mut self, event: LedgerEvent) -> Result<(), &'static str> {
        match event {
            LedgerEvent::Account(event) => self.account.try_apply_event(event),
            LedgerEvent::Transaction(event) => {
                let transaction_id = event.transaction_id();
                let transaction = self.transactions.entry(transaction_id).or_default();
                transaction.try_apply_event(event)?;
                self.retire_if_final(transaction_id);
                Ok(())
            }
        }
    }

    /// Moves a transaction that reached its final status out of the in-flight set, and
    /// forgets finished transactions that no retry can repeat any more.
    fn retire_if_final(&mut self, transaction_id: TransactionId) {
        let status = self
            .transactions
            .get(&transaction_id)
            .and_then(Transaction::status);
        let Some(status) = status.filter(|status| status.is_final()) else {
            self.see(minted_ms(transaction_id));
            return;
        };
        self.transactions.remove(&transaction_id);
        let minted = minted_ms(transaction_id).unwrap_or(self.horizon_ms);
        self.finished.insert(transaction_id, status);
        self.finished_order.push_back((minted, transaction_id));
        self.see(Some(minted));
    }

    fn see(&mut self, time_ms: Option<i64>) {
        if let Some(time_ms) = time_ms {
            self.horizon_ms = self.horizon_ms.max(time_ms);
        }
        let forget_before = self.horizon_ms.saturating_sub(FINISHED_RETENTION_MS);
        while let Some(&(minted, transaction_id)) = self.finished_order.front() {
            if minted >= forget_before {
                break;
            }
            self.finished_order.pop_front();
            self.finished.remove(&transaction_id);
        }
    }

    /// Decides a command, applies its events to the stream, and returns them in envelopes.
    pub async fn decide(&mut self, command: LedgerCommand, context: CommandContext) -> Decision {
        self.see(Some(context.issued_at.timestamp_millis()));
        let correlation_id = correlation_of(&command, context.command_id);
        let transaction_id = transaction_of(&command);
        let outcome = self.decide_events(command).await;
        if let Some(transaction_id) = transaction_id {
            self.retire_if_final(transaction_id);
        }
        match outcome {
            Ok(events) => Decision {
                events: self.seal(events, correlation_id, context),
                rejection: None,
            },
            Err(code) => Decision {
                events: Vec::new(),
                rejection: Some(code),
            },
        }
    }

    async fn decide_events(
        &mut self,
        command: LedgerCommand,
    ) -> Result<Vec<LedgerEvent>, &'static str> {
        match command {
            LedgerCommand::OpenAccount {
                info,
                billing_address,
                currency,
            } => {
                let command = AccountCommand::Open {
                    info,
                    billing_address,
                    currency,
                };
                self.on_account(command).await.map_err(AccountError::code)
            }
            LedgerCommand::UpdateAccount {
                info,
                billing_address,
            } => {
                let command = AccountCommand::Update {
                    info,
                    billing_address,
                };
                self.on_account(command).await.map_err(AccountError::code)
            }
            LedgerCommand::AddMoney {
                transaction_id,
                amount,
                currency,
            } => {
                let terms = self.terms(
                    transaction_id,
                    TransactionType::AddMoney,
                    amount,
                    currency,
                    None,
                );
                let credit = AccountCommand::Credit {
                    transaction_id,
                    amount,
                    currency,
                };
                self.settle_at_once(terms, credit).await
            }
            LedgerCommand::AdjustBalance {
                transaction_id,
                direction,
                amount,
                currency,
            } => {
                let (kind, command) = match direction {
                    AdjustmentDirection::Credit => (
                        TransactionType::AdminCredit,
                        AccountCommand::Credit {
                            transaction_id,
                            amount,
                            currency,
                        },
                    ),
                    AdjustmentDirection::Debit => (
                        TransactionType::AdminDebit,
                        AccountCommand::Debit {
                            transaction_id,
                            amount,
                            currency,
                        },
                    ),
                };
                let terms = self.terms(transaction_id, kind, amount, currency, None);
                self.settle_at_once(terms, command).await
            }
            LedgerCommand::SendAirtime {
                transaction_id,
                amount,
                currency,
                phone_number,
            } => {
                let phone = Some(phone_number);
                let terms = self.terms(
                    transaction_id,
                    TransactionType::SendAirtime,
                    amount,
                    currency,
                    phone,
                );
                self.reserve_for_airtime(terms).await
            }
            LedgerCommand::CompleteAirtime {
                transaction_id,
                outcome,
            } => self.complete_airtime(transaction_id, outcome).await,
        }
    }

    fn terms(
        &self,
        transaction_id: TransactionId,
        transaction_type: TransactionType,
        amount: Amount,
        currency: Currency,
        phone_number: Option<PhoneNumber>,
    ) -> TransactionTerms {
        let account_id = self.account_id;
        TransactionTerms {
            transaction_id,
            account_id,
            transaction_type,
            amount,
            currency,
            phone_number,
        }
    }

    /// Starts a transaction whose account change is decided at once, and ends it.
    async fn settle_at_once(
        &mut self,
        terms: TransactionTerms,
        command: AccountCommand,
    ) -> Result<Vec<LedgerEvent>, &'static str> {
        let transaction_id = terms.transaction_id;
        let mut events = self.start(terms).await?;
        let end = match self.on_account(command).await {
            Ok(changed) => {
                events.extend(changed);
                TransactionCommand::Succeed {
                    provider_reference: None,
                }
            }
            Err(error) => TransactionCommand::Fail {
                reason: failure_of(error),
            },
        };
        events.extend(self.on_transaction(transaction_id, end).await?);
        Ok(events)
    }

    /// Starts an airtime transaction and holds its funds until the provider answers.
    async fn reserve_for_airtime(
        &mut self,
        terms: TransactionTerms,
    ) -> Result<Vec<LedgerEvent>, &'static str> {
        let (transaction_id, amount, currency) =
            (terms.transaction_id, terms.amount, terms.currency);
        let mut events = self.start(terms).await?;
        match self
            .on_account(AccountCommand::Reserve {
                transaction_id,
                amount,
                currency,
            })
            .await
        {
            Ok(reserved) => events.extend(reserved),
            Err(error) => {
                let fail = TransactionCommand::Fail {
                    reason: failure_of(error),
                };
                events.extend(self.on_transaction(transaction_id, fail).await?);
            }
        }
        Ok(events)
    }

    async fn complete_airtime(
        &mut self,
        transaction_id: TransactionId,
        outcome: AirtimeOutcome,
    ) -> Result<Vec<LedgerEvent>, &'static str> {
        if self.finished.contains_key(&transaction_id) {
            return Err("transaction_already_final");
        }
        if !self.transactions.contains_key(&transaction_id) {
            return Err("transaction_not_found");
        }
        let (release, end) = match outcome {
            AirtimeOutcome::Delivered { provider_reference } => (
                AccountCommand::PostReservation { transaction_id },
                TransactionCommand::Succeed {
                    provider_reference: Some(provider_reference),
                },
            ),
            AirtimeOutcome::Rejected { .. } => (
                AccountCommand::VoidReservation { transaction_id },
                TransactionCommand::Fail {
                    reason: FailureReason::AirtimeProviderRejected,
                },
            ),
        };
        let mut events = self.on_account(release).await.map_err(AccountError::code)?;
        events.extend(self.on_transaction(transaction_id, end).await?);
        Ok(events)
    }

    async fn start(&mut self, terms: TransactionTerms) -> Result<Vec<LedgerEvent>, &'static str> {
        if self.finished.contains_key(&terms.transaction_id) {
            return Err("transaction_already_exists");
        }
        self.on_transaction(terms.transaction_id, TransactionCommand::Start(terms))
            .await
    }

    async fn on_account(
        &mut self,
        command: AccountCommand,
    ) -> Result<Vec<LedgerEvent>, AccountError> {
        let events = handle(&mut self.account, command).await?;
        Ok(events.into_iter().map(LedgerEvent::Account).collect())
    }

    async fn on_transaction(
        &mut self,
        transaction_id: TransactionId,
        command: TransactionCommand,
    ) -> Result<Vec<LedgerEvent>, &'static str> {
        let transaction = self.transactions.entry(transaction_id).or_default();
        let events: Vec<TransactionEvent> =
            handle(transaction, command).await.map_err(|e| e.code())?;
        Ok(events.into_iter().map(LedgerEvent::Transaction).collect())
    }

    /// Numbers the decided events and wraps them in envelopes.
    fn seal(
        &mut self,
        events: Vec<LedgerEvent>,
        correlation_id: Uuid,
        context: CommandContext,
    ) -> Vec<EventEnvelope> {
        let causation_id = context.command_id.0;
        let mut sealed = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            self.sequence += 1;
            sealed.push(EventEnvelope {
                event_id: event_id_for(causation_id, index),
                account_id: self.account_id,
                sequence: self.sequence,
                event_type: event.name().to_owned(),
                event_version: EVENT_VERSION,
                occurred_at: context.now,
                correlation_id,
                causation_id,
                event,
                previous_hash: None,
                hash: None,
            });
        }
        sealed
    }
}

/// Runs a command through a cqrs-es aggregate, which applies each event as it is written.
async fn handle<A: Aggregate<Services = ()>>(
    aggregate: &mut A,
    command: A::Command,
) -> Result<Vec<A::Event>, A::Error> {
    let sink = EventSink::default();
    aggregate.handle(command, &(), &sink).await?;
    Ok(sink.collect().await)
}

fn transaction_of(command: &LedgerCommand) -> Option<TransactionId> {
    match command {
        LedgerCommand::OpenAccount { .. } | LedgerCommand::UpdateAccount { .. } => None,
        LedgerCommand::AddMoney { transaction_id, .. }
        | LedgerCommand::SendAirtime { transaction_id, .. }
        | LedgerCommand::AdjustBalance { transaction_id, .. }
        | LedgerCommand::CompleteAirtime { transaction_id, .. } => Some(*transaction_id),
    }
}

/// When a time-ordered (UUIDv7) transaction id was minted, in ms since the epoch.
fn minted_ms(transaction_id: TransactionId) -> Option<i64> {
    let (seconds, nanos) = transaction_id.0.get_timestamp()?.to_unix();
    let seconds = i64::try_from(seconds).ok()?;
    Some(seconds * 1_000 + i64::from(nanos / 1_000_000))
}

fn correlation_of(command: &LedgerCommand, command_id: CommandId) -> Uuid {
    match command {
        LedgerCommand::OpenAccount { .. } | LedgerCommand::UpdateAccount { .. } => command_id.0,
        LedgerCommand::AddMoney { transaction_id, .. }
        | LedgerCommand::SendAirtime { transaction_id, .. }
        | LedgerCommand::AdjustBalance { transaction_id, .. }
        | LedgerCommand::CompleteAirtime { transaction_id, .. } => transaction_id.0,
    }
}

fn failure_of(error: AccountError) -> FailureReason {
    match error {
        AccountError::InsufficientFunds => FailureReason::InsufficientFunds,
        AccountError::CurrencyMismatch => FailureReason::CurrencyMismatch,
        AccountError::AccountNotFound | AccountError::AccountAlreadyExists => {
            FailureReason::AccountNotFound
        }
        AccountError::BalanceAboveMaximum => FailureReason::BalanceAboveMaximum,
        AccountError::ReservationAlreadyExists | AccountError::ReservationNotFound => {
            FailureReason::ReservationConflict
        }
    }
}
