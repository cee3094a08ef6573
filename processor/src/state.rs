//! What the processor remembers of one events partition, so it can act on an event that does
//! not carry everything it needs.
//!
//! A `TransactionSucceeded` names no amount and a `FundsReserved` no phone number: both live
//! in the transaction's `TransactionStarted`, and the account holder's contacts live in their
//! `AccountOpened` or latest `AccountUpdated`. A [`PartitionState`] folds a partition's events
//! in offset order and keeps exactly those facts. It is never stored: the worker rebuilds it by
//! reading the partition from its start, which is why applying an event here has no effects.
//!
//! Memory: one [`AccountInfo`] per account in the partition, and the terms of transactions
//! still open (airtime waiting for its provider), with whether their funds are reserved. Terms
//! are dropped when their transaction ends.

use std::collections::{HashMap, HashSet};

use tally_domain::{
    AccountEvent, AccountId, AccountInfo, EventEnvelope, LedgerEvent, TransactionEvent,
    TransactionId, transaction::TransactionTerms,
};

/// The facts of one events partition, up to (not including) [`PartitionState::next_offset`].
#[derive(Clone, Debug, Default)]
pub struct PartitionState {
    next_offset: u64,
    /// Whether the state follows the consumer: every event up to `next_offset` was applied,
    /// and the next record the consumer hands over is the next event of the partition.
    live: bool,
    contacts: HashMap<AccountId, AccountInfo>,
    open_transactions: HashMap<TransactionId, TransactionTerms>,
    /// The open transactions whose funds are reserved: each waits for a provider's answer.
    reserved: HashSet<TransactionId>,
}

impl PartitionState {
    /// The offset from which events are still to apply: every event before it has been
    /// applied.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The account holder's name and contacts as of the events applied so far.
    pub fn contact(&self, account_id: AccountId) -> Option<&AccountInfo> {
        self.contacts.get(&account_id)
    }

    /// The terms of a transaction that has started and not yet ended.
    pub fn open_transaction(&self, transaction_id: TransactionId) -> Option<&TransactionTerms> {
        self.open_transactions.get(&transaction_id)
    }

    pub fn open_transaction_count(&self) -> usize {
        self.open_transactions.len()
    }

    /// The open transactions whose funds are reserved, in no particular order.
    pub fn reserved_transactions(&self) -> impl Iterator<Item = TransactionId> + '_ {
        self.reserved.iter().copied()
    }

    /// Applies the event stored at `offset`, which must be the next one.
    /// Whether the next record from the consumer follows the events already applied, so that
    /// any offsets between were spent on transaction markers and need no reading.
    pub fn follows(&self, offset: u64) -> bool {
        self.live && offset >= self.next_offset
    }

    /// Records that the partition holds no event before `offset` beyond those applied: the
    /// offsets between were spent on transaction markers.
    pub fn skip_to(&mut self, offset: u64) {
        self.next_offset = self.next_offset.max(offset);
    }

    pub fn apply(&mut self, offset: u64, envelope: &EventEnvelope) {
        // Offsets only grow; they may skip, since a log with transactions spends offsets on
        // its commit markers.
        assert!(
            offset >= self.next_offset,
            "events must be applied in offset order"
        );
        self.next_offset = offset + 1;
        self.live = true;

        match &envelope.event {
            LedgerEvent::Account(AccountEvent::AccountOpened { info, .. })
            | LedgerEvent::Account(AccountEvent::AccountUpdated { info, .. }) => {
                self.contacts.insert(envelope.account_id, info.clone());
            }
            LedgerEvent::Transaction(TransactionEvent::TransactionStarted(terms)) => {
                self.open_transactions
                    .insert(terms.transaction_id, terms.clone());
            }
            LedgerEvent::Account(AccountEvent::FundsReserved { transaction_id, .. }) => {
                if self.open_transactions.contains_key(transaction_id) {
                    self.reserved.insert(*transaction_id);
                }
            }
            LedgerEvent::Transaction(
                TransactionEvent::TransactionSucceeded { transaction_id, .. }
                | TransactionEvent::TransactionFailed { transaction_id, .. },
            ) => {
                self.open_transactions.remove(transaction_id);
                self.reserved.remove(transaction_id);
            }
            LedgerEvent::Account(_) => {}
        }
    }
}
