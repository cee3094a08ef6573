//! Tally's domain: the rules of the ledger and nothing else.
//!
//! Money, accounts, transactions, and the events and notifications they produce. This crate
//! does no I/O and knows no transport: the log, the database and HTTP are other crates'
//! business. Aggregates follow cqrs-es's `Aggregate` trait; [`ledger::AccountLedger`] decides
//! the commands of one account's stream, where the account and its transactions meet.

pub mod account;
pub mod chain;
pub mod contact;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod notification;
pub mod phone;
pub mod transaction;

pub use account::{Account, AccountCommand, AccountError, AccountEvent};
pub use chain::{EventHash, Link};
pub use contact::{AccountInfo, BillingAddress, ContactError};
pub use event::{EventEnvelope, LedgerEvent};
pub use ids::{AccountId, CommandId, EventId, NotificationId, TransactionId};
pub use ledger::{AccountLedger, AirtimeOutcome, CommandContext, Decision, LedgerCommand};
pub use money::{Amount, Currency, MoneyError};
pub use phone::PhoneNumber;
pub use transaction::{
    FailureReason, Transaction, TransactionEvent, TransactionStatus, TransactionTerms,
    TransactionType,
};
