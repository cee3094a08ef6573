//! The event→row mapping: what one batch of log records changes in the read tables, worked
//! out in memory.
//!
//! The projector loads every account, stream head and transaction a batch touches once, folds
//! the batch's records into them here, and writes back only the rows that changed. Nothing
//! here does I/O, so the mapping is tested without a database. Where money moves, the fold
//! checks that the balance it projects is the balance the event states.

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_commands::log::{Record, Topic, TopicPartition};
use tally_commands::message::CommandEnvelope;
use tally_domain::ledger::{self, AdjustmentDirection};
use tally_domain::{
    AccountEvent, AccountId, AccountInfo, BillingAddress, CommandId, Currency, EventEnvelope,
    LedgerCommand, LedgerEvent, TransactionEvent, TransactionId, TransactionStatus,
    TransactionTerms, TransactionType,
};

use crate::analysis::{self, Deltas};
use crate::error::ProjectionError;
use crate::queries::{AccountEventRow, AccountView, TransactionView};

/// A log record, decoded.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
    pub item: Item,
}

#[derive(Debug)]
pub(crate) enum Item {
    /// A command that starts a transaction: its row, as ACCEPTED.
    Accepted(TransactionView),
    /// Boxed: an envelope is several times the size of the other variants.
    Event(Box<EventEnvelope>),
    /// A record the read tables do not show, such as an `OpenAccount` command.
    Ignored,
    /// A record that no retry can decode; it is skipped and counted.
    Undecodable,
}

/// The rows of the read tables a batch touches, as they stood before it.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub accounts: HashMap<AccountId, AccountView>,
    /// The sequence of the last projected event of each stream that has one.
    pub stream_heads: HashMap<AccountId, u64>,
    pub transactions: HashMap<TransactionId, TransactionView>,
}

/// The ids whose rows a batch needs loaded, sorted.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Touched {
    pub accounts: Vec<AccountId>,
    pub transactions: Vec<TransactionId>,
}

/// What a batch writes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Changes {
    pub account_events: Vec<AccountEventRow>,
    pub statement_lines: Vec<StatementLine>,
    /// Every account row the batch created or changed, in its final state.
    pub accounts: Vec<AccountView>,
    /// Every transaction row the batch created or changed, in its final state.
    pub transactions: Vec<TransactionView>,
    /// What those transactions move in the analysis tables.
    pub analysis: Deltas,
    pub offsets: Vec<OffsetAdvance>,
}

/// A line of an account's statement: one event that moved posted money.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StatementLine {
    pub account_id: AccountId,
    pub sequence: u64,
    pub transaction_id: TransactionId,
    pub entry: Entry,
    pub amount: Decimal,
    pub balance_after: Decimal,
    /// The account's currency, whose scale the amounts are written at.
    pub currency: Currency,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Credit,
    Debit,
}

impl Entry {
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Credit => "CREDIT",
            Entry::Debit => "DEBIT",
        }
    }
}

/// How far a batch takes one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetAdvance {
    pub partition: TopicPartition,
    /// The batch's first offset in the partition: where the projection must have stopped.
    pub first_offset: u64,
    /// One past the batch's last offset in the partition.
    pub next_offset: u64,
    pub skipped_records: u64,
}

/// Decodes a batch. Undecodable records are logged here, once per batch, not once per retry.
pub(crate) fn decode(records: &[Record]) -> Vec<Decoded> {
    records
        .iter()
        .map(|record| Decoded {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
            item: decode_item(record),
        })
        .collect()
}

fn decode_item(record: &Record) -> Item {
    let decoded = match record.topic {
        Topic::Commands => CommandEnvelope::from_json(&record.payload)
            .map(|envelope| accepted(envelope, record.timestamp_ms)),
        Topic::Events => {
            EventEnvelope::from_json(&record.payload).map(|event| Item::Event(Box::new(event)))
        }
        Topic::Notifications | Topic::DeadLetters => Ok(Item::Ignored),
    };
    decoded.unwrap_or_else(|error| {
        tracing::error!(
            topic = record.topic.name(),
            partition = record.partition,
            offset = record.offset,
            error = %error,
            "undecodable record skipped"
        );
        Item::Undecodable
    })
}

/// The ACCEPTED row of a command that starts a transaction, unless the log stored it too late
/// for the decider to decide it.
fn accepted(envelope: CommandEnvelope, logged_at_ms: i64) -> Item {
    if !ledger::admitted(&envelope.command, logged_at_ms) {
        return Item::Ignored;
    }
    let (transaction_id, transaction_type, amount, currency, phone_number) = match envelope.command
    {
        LedgerCommand::AddMoney {
            transaction_id,
            amount,
            currency,
        } => (
            transaction_id,
            TransactionType::AddMoney,
            amount,
            currency,
            None,
        ),
        LedgerCommand::SendAirtime {
            transaction_id,
            amount,
            currency,
            phone_number,
        } => {
            let phone = Some(phone_number.to_string());
            (
                transaction_id,
                TransactionType::SendAirtime,
                amount,
                currency,
                phone,
            )
        }
        LedgerCommand::AdjustBalance {
            transaction_id,
            direction,
            amount,
            currency,
        } => (
            transaction_id,
            adjustment_type(direction),
            amount,
            currency,
            None,
        ),
        _ => return Item::Ignored,
    };
    Item::Accepted(TransactionView {
        transaction_id,
        account_id: envelope.account_id,
        transaction_type,
        status: TransactionStatus::Accepted,
        amount: amount.value(),
        currency,
        phone_number,
        failure_reason: None,
        provider_reference: None,
        created_at: envelope.issued_at,
        updated_at: envelope.issued_at,
    })
}

fn adjustment_type(direction: AdjustmentDirection) -> TransactionType {
    match direction {
        AdjustmentDirection::Credit => TransactionType::AdminCredit,
        AdjustmentDirection::Debit => TransactionType::AdminDebit,
    }
}

/// The accounts and transactions whose rows `decoded` reads or writes.
pub(crate) fn touched(decoded: &[Decoded]) -> Touched {
    let mut accounts = BTreeSet::new();
    let mut transactions = BTreeSet::new();
    for record in decoded {
        match &record.item {
            Item::Accepted(transaction) => {
                transactions.insert(transaction.transaction_id);
            }
            Item::Event(envelope) => {
                accounts.insert(envelope.account_id);
                if let LedgerEvent::Transaction(event) = &envelope.event {
                    transactions.insert(event.transaction_id());
                }
            }
            Item::Ignored | Item::Undecodable => {}
        }
    }
    Touched {
        accounts: accounts.into_iter().collect(),
        transactions: transactions.into_iter().collect(),
    }
}

/// Folds a decoded batch into the rows it touches and returns what to write.
pub(crate) fn fold(decoded: &[Decoded], loaded: Loaded) -> Result<Changes, ProjectionError> {
    // What each transaction counted in the analysis tables before the batch; the fold changes
    // the loaded rows in place.
    let before = loaded.transactions.clone();
    let mut fold = Fold {
        loaded,
        changed_accounts: BTreeSet::new(),
        changed_transactions: BTreeSet::new(),
        changes: Changes::default(),
    };
    for record in decoded {
        match &record.item {
            Item::Accepted(transaction) => fold.accept(transaction),
            Item::Event(envelope) => fold.apply(record, envelope)?,
            Item::Ignored | Item::Undecodable => {}
        }
    }
    let mut changes = fold.finish(offset_advances(decoded));
    changes.analysis = analysis::deltas(&before, &changes.transactions);
    Ok(changes)
}

struct Fold {
    loaded: Loaded,
    changed_accounts: BTreeSet<AccountId>,
    changed_transactions: BTreeSet<TransactionId>,
    changes: Changes,
}

impl Fold {
    /// A command's transaction appears as ACCEPTED unless its row already exists, which it
    /// does when a retried command repeats it or its events were projected first. Either way
    /// the row keeps the earliest time seen as its creation, so it does not depend on which
    /// topic the projector happened to read first and a rebuild gives the same row.
    fn accept(&mut self, accepted: &TransactionView) {
        let id = accepted.transaction_id;
        match self.loaded.transactions.entry(id) {
            Slot::Vacant(vacant) => {
                vacant.insert(accepted.clone());
            }
            Slot::Occupied(mut existing) if accepted.created_at < existing.get().created_at => {
                existing.get_mut().created_at = accepted.created_at;
            }
            Slot::Occupied(_) => return,
        }
        self.changed_transactions.insert(id);
    }

    fn apply(&mut self, record: &Decoded, envelope: &EventEnvelope) -> Result<(), ProjectionError> {
        self.advance_stream(envelope)?;
        self.changes
            .account_events
            .push(audit_row(record, envelope));

        match &envelope.event {
            LedgerEvent::Account(event) => self.apply_account(envelope, event)?,
            LedgerEvent::Transaction(event) => self.apply_transaction(envelope, event)?,
        }

        // Every event of the stream moves the account's sequence, including transaction events.
        if let Some(account) = self.loaded.accounts.get_mut(&envelope.account_id) {
            account.sequence = envelope.sequence;
            self.changed_accounts.insert(envelope.account_id);
        }
        Ok(())
    }

    /// Checks that the event comes after the last one projected for its stream. A repeat
    /// would count money twice; a gap follows a skipped undecodable event, already logged,
    /// and the money checks catch any amount it would have moved.
    fn advance_stream(&mut self, envelope: &EventEnvelope) -> Result<(), ProjectionError> {
        let account_id = envelope.account_id;
        let head = self.loaded.stream_heads.entry(account_id).or_insert(0);
        if envelope.sequence <= *head {
            let (head, sequence) = (*head, envelope.sequence);
            return Err(ProjectionError::SequenceRepeated {
                account_id,
                head,
                sequence,
            });
        }
        if envelope.sequence != *head + 1 {
            let (head, sequence) = (*head, envelope.sequence);
            tracing::warn!(%account_id, head, sequence, "gap in stream");
        }
        *head = envelope.sequence;
        Ok(())
    }

    fn apply_account(
        &mut self,
        envelope: &EventEnvelope,
        event: &AccountEvent,
    ) -> Result<(), ProjectionError> {
        let account_id = envelope.account_id;
        let sequence = envelope.sequence;
        match (event, self.loaded.accounts.get_mut(&account_id)) {
            (AccountEvent::AccountOpened { .. }, Some(_)) => {
                return Err(ProjectionError::AccountOpenedTwice {
                    account_id,
                    sequence,
                });
            }
            (
                AccountEvent::AccountOpened {
                    info,
                    billing_address,
                    currency,
                },
                None,
            ) => {
                let account = opened(envelope, info, billing_address, *currency);
                self.loaded.accounts.insert(account_id, account);
            }
            (_, None) => {
                let event_type = event.name().to_owned();
                return Err(ProjectionError::AccountNotOpened {
                    account_id,
                    sequence,
                    event_type,
                });
            }
            (_, Some(account)) => {
                let line = change_account(account, envelope, event)?;
                self.changes.statement_lines.extend(line);
            }
        }
        self.changed_accounts.insert(account_id);
        Ok(())
    }

    fn apply_transaction(
        &mut self,
        envelope: &EventEnvelope,
        event: &TransactionEvent,
    ) -> Result<(), ProjectionError> {
        let transaction_id = event.transaction_id();
        let at = envelope.occurred_at;
        let existing = self.loaded.transactions.get_mut(&transaction_id);
        match (event, existing) {
            (TransactionEvent::TransactionStarted(terms), None) => {
                let started = started(terms, at);
                self.loaded.transactions.insert(transaction_id, started);
            }
            (TransactionEvent::TransactionStarted(_), Some(transaction)) => {
                advance(transaction, TransactionStatus::Processing, at);
            }
            (_, None) => {
                let event_type = event.name().to_owned();
                return Err(ProjectionError::TransactionNotStarted {
                    transaction_id,
                    event_type,
                });
            }
            (
                TransactionEvent::TransactionSucceeded {
                    provider_reference, ..
                },
                Some(t),
            ) => {
                if advance(t, TransactionStatus::Successful, at) {
                    t.provider_reference.clone_from(provider_reference);
                }
            }
            (TransactionEvent::TransactionFailed { reason, .. }, Some(t)) => {
                if advance(t, TransactionStatus::Failed, at) {
                    t.failure_reason = Some(*reason);
                }
            }
        }
        self.changed_transactions.insert(transaction_id);
        Ok(())
    }

    fn finish(mut self, offsets: Vec<OffsetAdvance>) -> Changes {
        let accounts = &mut self.loaded.accounts;
        let transactions = &mut self.loaded.transactions;
        self.changes.accounts = (self.changed_accounts.iter())
            .filter_map(|id| accounts.remove(id))
            .collect();
        self.changes.transactions = (self.changed_transactions.iter())
            .filter_map(|id| transactions.remove(id))
            .collect();
        self.changes.offsets = offsets;
        self.changes
    }
}

/// The account row an AccountOpened creates: no money yet.
fn opened(
    envelope: &EventEnvelope,
    info: &AccountInfo,
    billing_address: &Option<BillingAddress>,
    currency: Currency,
) -> AccountView {
    AccountView {
        account_id: envelope.account_id,
        name: info.name.clone(),
        email: info.email.clone(),
        phone_number: info.phone_number.to_string(),
        billing_address: billing_address.clone(),
        currency,
        balance: Decimal::ZERO,
        held: Decimal::ZERO,
        available: Decimal::ZERO,
        sequence: envelope.sequence,
        last_causation_id: CommandId(envelope.causation_id),
        created_at: envelope.occurred_at,
        updated_at: envelope.occurred_at,
    }
}

/// Applies an account event other than AccountOpened to the account's row, checking every
/// amount it states; returns the statement line of an event that moves posted money.
fn change_account(
    account: &mut AccountView,
    envelope: &EventEnvelope,
    event: &AccountEvent,
) -> Result<Option<StatementLine>, ProjectionError> {
    let check = |account: &AccountView, field, projected, in_event| {
        check_money(
            account.account_id,
            envelope.sequence,
            field,
            projected,
            in_event,
        )
    };
    let mut line = None;
    match event {
        AccountEvent::AccountOpened { .. } => {}
        AccountEvent::AccountUpdated {
            info,
            billing_address,
        } => {
            account.name.clone_from(&info.name);
            account.email.clone_from(&info.email);
            account.phone_number = info.phone_number.to_string();
            account.billing_address.clone_from(billing_address);
            account.last_causation_id = CommandId(envelope.causation_id);
        }
        AccountEvent::AccountCredited {
            transaction_id,
            amount,
            balance_after,
        } => {
            account.balance += amount.value();
            check(account, "balance", account.balance, *balance_after)?;
            line = Some((*transaction_id, Entry::Credit, amount.value()));
        }
        AccountEvent::AccountDebited {
            transaction_id,
            amount,
            balance_after,
        } => {
            account.balance -= amount.value();
            check(account, "balance", account.balance, *balance_after)?;
            line = Some((*transaction_id, Entry::Debit, amount.value()));
        }
        AccountEvent::FundsReserved {
            amount, held_after, ..
        } => {
            account.held += amount.value();
            check(account, "held", account.held, *held_after)?;
        }
        AccountEvent::ReservationPosted {
            transaction_id,
            amount,
            balance_after,
            held_after,
        } => {
            account.balance -= amount.value();
            account.held -= amount.value();
            check(account, "balance", account.balance, *balance_after)?;
            check(account, "held", account.held, *held_after)?;
            line = Some((*transaction_id, Entry::Debit, amount.value()));
        }
        AccountEvent::ReservationVoided {
            amount, held_after, ..
        } => {
            account.held -= amount.value();
            check(account, "held", account.held, *held_after)?;
        }
    }
    account.available = account.balance - account.held;
    account.updated_at = envelope.occurred_at;
    Ok(line.map(|(transaction_id, entry, amount)| StatementLine {
        account_id: account.account_id,
        sequence: envelope.sequence,
        transaction_id,
        entry,
        amount,
        balance_after: account.balance,
        currency: account.currency,
        occurred_at: envelope.occurred_at,
    }))
}

fn check_money(
    account_id: AccountId,
    sequence: u64,
    field: &'static str,
    projected: Decimal,
    in_event: Decimal,
) -> Result<(), ProjectionError> {
    if projected == in_event {
        return Ok(());
    }
    Err(ProjectionError::MoneyMismatch {
        account_id,
        sequence,
        field,
        projected,
        in_event,
    })
}

/// The row of a transaction first seen through its TransactionStarted.
fn started(terms: &TransactionTerms, at: DateTime<Utc>) -> TransactionView {
    TransactionView {
        transaction_id: terms.transaction_id,
        account_id: terms.account_id,
        transaction_type: terms.transaction_type,
        status: TransactionStatus::Processing,
        amount: terms.amount.value(),
        currency: terms.currency,
        phone_number: terms.phone_number.as_ref().map(ToString::to_string),
        failure_reason: None,
        provider_reference: None,
        created_at: at,
        updated_at: at,
    }
}

/// Moves a transaction to `status` if that is forward; returns whether it moved.
fn advance(
    transaction: &mut TransactionView,
    status: TransactionStatus,
    at: DateTime<Utc>,
) -> bool {
    if rank(status) <= rank(transaction.status) {
        return false;
    }
    transaction.status = status;
    transaction.updated_at = at;
    true
}

/// The order statuses move in; both final statuses share the last rank, so one final
/// status never replaces the other.
fn rank(status: TransactionStatus) -> u8 {
    match status {
        TransactionStatus::Accepted => 0,
        TransactionStatus::Processing => 1,
        TransactionStatus::Successful | TransactionStatus::Failed => 2,
    }
}

fn audit_row(record: &Decoded, envelope: &EventEnvelope) -> AccountEventRow {
    // An event holds only strings, decimals as strings and string-keyed maps.
    let payload = serde_json::to_value(&envelope.event).expect("an event always serializes");
    AccountEventRow {
        account_id: envelope.account_id,
        sequence: envelope.sequence,
        event_id: envelope.event_id,
        event_type: envelope.event_type.clone(),
        event_version: envelope.event_version,
        occurred_at: envelope.occurred_at,
        correlation_id: envelope.correlation_id,
        causation_id: envelope.causation_id,
        log_topic: record.topic,
        log_partition: record.partition,
        log_offset: record.offset,
        payload,
        previous_hash: envelope.previous_hash,
        hash: envelope.hash,
    }
}

/// Where the batch takes each of its partitions. Records are in offset order within each.
pub(crate) fn offset_advances(decoded: &[Decoded]) -> Vec<OffsetAdvance> {
    let mut advances: BTreeMap<TopicPartition, OffsetAdvance> = BTreeMap::new();
    for record in decoded {
        let partition = TopicPartition {
            topic: record.topic,
            partition: record.partition,
        };
        let advance = advances.entry(partition).or_insert(OffsetAdvance {
            partition,
            first_offset: record.offset,
            next_offset: record.offset,
            skipped_records: 0,
        });
        advance.next_offset = record.offset + 1;
        if matches!(record.item, Item::Undecodable) {
            advance.skipped_records += 1;
        }
    }
    advances.into_values().collect()
}

#[cfg(test)]
mod tests {
    use tally_domain::FailureReason;
    use tally_domain::ledger::AirtimeOutcome;

    use super::*;
    use crate::testing::*;

    fn fold_records(records: &[Record], loaded: Loaded) -> Result<Changes, ProjectionError> {
        fold(&decode(records), loaded)
    }

    /// The rows a later batch would load after `changes` were written over `before`.
    fn carry(before: Loaded, changes: &Changes) -> Loaded {
        let mut loaded = before;
        for account in &changes.accounts {
            loaded.accounts.insert(account.account_id, account.clone());
        }
        for transaction in &changes.transactions {
            let id = transaction.transaction_id;
            loaded.transactions.insert(id, transaction.clone());
        }
        for event in &changes.account_events {
            let head = loaded.stream_heads.entry(event.account_id).or_default();
            *head = (*head).max(event.sequence);
        }
        loaded
    }

    #[tokio::test]
    async fn opening_an_account_creates_its_row_at_zero_with_the_command_as_last_causation() {
        let mut stream = Stream::new(1);
        let records = stream.decide(open()).await;

        let changes = fold_records(&records, Loaded::default()).unwrap();

        let [account] = changes.accounts.as_slice() else {
            panic!("one account expected, got {:?}", changes.accounts);
        };
        assert_eq!(
            (account.balance, account.held, account.available),
            (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO)
        );
        assert_eq!(
            (account.name.as_str(), account.currency, account.sequence),
            ("Ada", USD, 1)
        );
        let event = &changes.account_events[0];
        assert_eq!(account.last_causation_id.0, event.causation_id);
        assert_eq!(event.event_type, "AccountOpened");
        assert_eq!(event.payload["type"], "AccountOpened");
        assert!(changes.statement_lines.is_empty());
    }

    #[tokio::test]
    async fn credits_and_debits_move_the_balance_and_each_writes_a_statement_line() {
        let mut stream = Stream::new(1);
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "100")).await);
        let debit = LedgerCommand::AdjustBalance {
            transaction_id: TransactionId::new(),
            direction: AdjustmentDirection::Debit,
            amount: usd("30.5"),
            currency: USD,
        };
        records.extend(stream.decide(debit).await);

        let changes = fold_records(&records, Loaded::default()).unwrap();

        assert_eq!(changes.accounts[0].balance, money("69.50"));
        assert_eq!(changes.accounts[0].available, money("69.50"));
        assert_eq!(changes.accounts[0].sequence, 7);
        let lines: Vec<_> = (changes.statement_lines.iter())
            .map(|line| (line.sequence, line.entry, line.amount, line.balance_after))
            .collect();
        assert_eq!(
            lines,
            vec![
                (3, Entry::Credit, money("100"), money("100")),
                (6, Entry::Debit, money("30.5"), money("69.5")),
            ]
        );
        let statuses: Vec<_> = changes.transactions.iter().map(|t| t.status).collect();
        assert_eq!(statuses, vec![TransactionStatus::Successful; 2]);
    }

    #[tokio::test]
    async fn a_reservation_holds_money_until_it_is_posted_and_only_the_posting_is_a_line() {
        let mut stream = Stream::new(1);
        let airtime = TransactionId::new();
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "100")).await);
        records.extend(stream.decide(send_airtime(airtime, "30.25")).await);
        let first = fold_records(&records, Loaded::default()).unwrap();

        let account = &first.accounts[0];
        assert_eq!(
            (account.held, account.available),
            (money("30.25"), money("69.75"))
        );
        let pending = first
            .transactions
            .iter()
            .find(|t| t.transaction_id == airtime);
        assert_eq!(
            pending.map(|t| t.status),
            Some(TransactionStatus::Processing)
        );
        assert_eq!(first.statement_lines.len(), 1);

        let delivered = AirtimeOutcome::Delivered {
            provider_reference: "ref-1".to_owned(),
        };
        let records = stream.decide(complete(airtime, delivered)).await;
        let second = fold_records(&records, carry(Loaded::default(), &first)).unwrap();

        let account = &second.accounts[0];
        assert_eq!(
            (account.balance, account.held),
            (money("69.75"), Decimal::ZERO)
        );
        let [transaction] = second.transactions.as_slice() else {
            panic!("one transaction expected");
        };
        assert_eq!(transaction.status, TransactionStatus::Successful);
        assert_eq!(transaction.provider_reference.as_deref(), Some("ref-1"));
        assert_eq!(second.statement_lines[0].entry, Entry::Debit);
        assert_eq!(second.statement_lines[0].balance_after, money("69.75"));
    }

    #[tokio::test]
    async fn a_voided_reservation_releases_the_hold_and_fails_the_transaction() {
        let mut stream = Stream::new(1);
        let airtime = TransactionId::new();
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "10")).await);
        records.extend(stream.decide(send_airtime(airtime, "4")).await);
        let rejected = AirtimeOutcome::Rejected {
            provider_code: "E42".to_owned(),
        };
        records.extend(stream.decide(complete(airtime, rejected)).await);

        let changes = fold_records(&records, Loaded::default()).unwrap();

        let account = &changes.accounts[0];
        assert_eq!(
            (account.balance, account.held),
            (money("10"), Decimal::ZERO)
        );
        let voided = changes
            .transactions
            .iter()
            .find(|t| t.transaction_id == airtime);
        let voided = voided.unwrap();
        assert_eq!(voided.status, TransactionStatus::Failed);
        assert_eq!(
            voided.failure_reason,
            Some(FailureReason::AirtimeProviderRejected)
        );
        assert_eq!(changes.statement_lines.len(), 1);
    }

    #[tokio::test]
    async fn a_balance_after_that_disagrees_with_the_projection_fails_the_batch() {
        let mut stream = Stream::new(1);
        let mut records = stream.decide(open()).await;
        let mut credit = stream.decide(add_money(TransactionId::new(), "5")).await;
        let mut envelope = EventEnvelope::from_json(&credit[1].payload).unwrap();
        let LedgerEvent::Account(AccountEvent::AccountCredited { balance_after, .. }) =
            &mut envelope.event
        else {
            panic!("the second event of AddMoney is its credit");
        };
        *balance_after = money("6");
        credit[1].payload = envelope.to_json();
        records.extend(credit);

        let folded = fold_records(&records, Loaded::default());

        assert!(matches!(
            folded,
            Err(ProjectionError::MoneyMismatch {
                field: "balance",
                sequence: 3,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn an_event_already_projected_is_refused_rather_than_counted_twice() {
        let mut stream = Stream::new(1);
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "5")).await);
        let first = fold_records(&records, Loaded::default()).unwrap();

        let again = fold_records(&records[2..], carry(Loaded::default(), &first));

        assert!(matches!(
            again,
            Err(ProjectionError::SequenceRepeated {
                head: 4,
                sequence: 3,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_command_shows_its_transaction_as_accepted_until_its_events_arrive() {
        let mut stream = Stream::new(1);
        let transaction_id = TransactionId::new();
        let (command, record) = stream.command(send_airtime(transaction_id, "2.5"));

        let changes = fold_records(&[record], Loaded::default()).unwrap();

        let [transaction] = changes.transactions.as_slice() else {
            panic!("one transaction expected");
        };
        assert_eq!(transaction.status, TransactionStatus::Accepted);
        assert_eq!(transaction.transaction_type, TransactionType::SendAirtime);
        assert_eq!(
            (transaction.amount, transaction.currency),
            (money("2.5"), USD)
        );
        assert_eq!(transaction.phone_number.as_deref(), Some("+254712345678"));
        assert_eq!(transaction.created_at, command.issued_at);
        assert_eq!(transaction.account_id, stream.account_id);
    }

    #[tokio::test]
    async fn a_command_seen_after_its_transaction_ended_leaves_the_status_final() {
        let mut stream = Stream::new(1);
        let transaction_id = TransactionId::new();
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(transaction_id, "5")).await);
        let (_, command) = stream.command(add_money(transaction_id, "5"));
        records.push(command);

        let changes = fold_records(&records, Loaded::default()).unwrap();

        let [transaction] = changes.transactions.as_slice() else {
            panic!("one transaction expected");
        };
        assert_eq!(transaction.status, TransactionStatus::Successful);
    }

    #[tokio::test]
    async fn a_command_seen_after_its_events_still_dates_the_transaction_from_the_command() {
        let mut stream = Stream::new(1);
        let transaction_id = TransactionId::new();
        let mut records = stream.decide(open()).await;
        let (command, command_record) = stream.command(add_money(transaction_id, "5"));
        records.extend(stream.decide(add_money(transaction_id, "5")).await);
        let events_only = fold_records(&records, Loaded::default()).unwrap();

        let changes = fold_records(&[command_record], carry(Loaded::default(), &events_only));

        let transaction = &changes.unwrap().transactions[0];
        assert_eq!(transaction.created_at, command.issued_at);
        assert!(transaction.updated_at > command.issued_at);
        assert_eq!(transaction.status, TransactionStatus::Successful);
    }

    #[tokio::test]
    async fn commands_that_start_no_transaction_are_ignored() {
        let mut stream = Stream::new(1);
        let (_, record) = stream.command(open());

        let changes = fold_records(&[record], Loaded::default()).unwrap();

        assert!(changes.transactions.is_empty() && changes.accounts.is_empty());
        assert_eq!(changes.offsets[0].next_offset, 1);
    }

    #[tokio::test]
    async fn a_command_stored_after_its_admission_window_shows_no_transaction() {
        let mut stream = Stream::new(1);
        let transaction_id = TransactionId::new();
        let (_, mut record) = stream.command(add_money(transaction_id, "5"));
        // The id was minted just now; the log stored its command a second too late.
        let window = tally_domain::ledger::ADMISSION_WINDOW_MS;
        record.timestamp_ms = chrono::Utc::now().timestamp_millis() + window + 1_000;

        let changes = fold_records(&[record], Loaded::default()).unwrap();

        assert!(changes.transactions.is_empty());
        assert_eq!(changes.offsets[0].next_offset, 1);
    }

    #[test]
    fn undecodable_records_are_skipped_and_counted_in_their_partition_offset() {
        let mut stream = Stream::new(1);
        let garbage = stream.record(Topic::Commands, b"{not json".to_vec());
        let event_garbage = stream.record(Topic::Events, b"[]".to_vec());

        let changes = fold_records(&[garbage, event_garbage], Loaded::default()).unwrap();

        let advances: Vec<_> = (changes.offsets.iter())
            .map(|a| {
                (
                    a.partition.topic,
                    a.first_offset,
                    a.next_offset,
                    a.skipped_records,
                )
            })
            .collect();
        assert_eq!(
            advances,
            vec![(Topic::Commands, 0, 1, 1), (Topic::Events, 0, 1, 1)]
        );
    }

    #[tokio::test]
    async fn a_stream_whose_account_was_never_opened_is_audited_without_an_account_row() {
        let mut stream = Stream::new(1);
        let transaction_id = TransactionId::new();
        let records = stream.decide(add_money(transaction_id, "5")).await;

        let changes = fold_records(&records, Loaded::default()).unwrap();

        assert!(changes.accounts.is_empty());
        assert_eq!(changes.account_events.len(), 2);
        let failed = &changes.transactions[0];
        assert_eq!(failed.status, TransactionStatus::Failed);
        assert_eq!(failed.failure_reason, Some(FailureReason::AccountNotFound));
    }

    #[tokio::test]
    async fn a_money_event_for_an_account_the_read_model_never_opened_fails_the_batch() {
        let mut stream = Stream::new(1);
        let _opened = stream.decide(open()).await;
        let mut credit = stream.decide(add_money(TransactionId::new(), "5")).await;
        // The first batch was lost: the store starts from the credit's stream position.
        let mut loaded = Loaded::default();
        loaded.stream_heads.insert(stream.account_id, 2);
        credit.drain(..1);

        let folded = fold_records(&credit, loaded);

        assert!(matches!(
            folded,
            Err(ProjectionError::AccountNotOpened { sequence: 3, .. })
        ));
    }
}
