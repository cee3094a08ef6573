//! The transaction aggregate: the life of one money movement, from its start to exactly one
//! final outcome.
//!
//! `ACCEPTED` is not a state of the aggregate: it only says the command is in the log. The
//! aggregate starts at `PROCESSING` and ends at `SUCCESSFUL` or `FAILED`, never both, never twice.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, TransactionId};
use crate::money::{Amount, Currency};
use crate::phone::PhoneNumber;

/// What a transaction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionType {
    /// Money reloaded into the caller's wallet.
    AddMoney,
    /// Airtime bought for a phone with the wallet's money.
    SendAirtime,
    /// A credit made by an administrator.
    AdminCredit,
    /// A debit made by an administrator.
    AdminDebit,
}

impl TransactionType {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionType::AddMoney => "ADD_MONEY",
            TransactionType::SendAirtime => "SEND_AIRTIME",
            TransactionType::AdminCredit => "ADMIN_CREDIT",
            TransactionType::AdminDebit => "ADMIN_DEBIT",
        }
    }
}

/// Where a transaction stands, as callers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionStatus {
    Accepted,
    Processing,
    Successful,
    Failed,
}

impl TransactionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionStatus::Accepted => "ACCEPTED",
            TransactionStatus::Processing => "PROCESSING",
            TransactionStatus::Successful => "SUCCESSFUL",
            TransactionStatus::Failed => "FAILED",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TransactionStatus::Successful | TransactionStatus::Failed
        )
    }
}

/// Why a transaction failed. Codes are stable and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    InsufficientFunds,
    CurrencyMismatch,
    AccountNotFound,
    BalanceAboveMaximum,
    AirtimeProviderRejected,
    ReservationConflict,
}

impl FailureReason {
    pub fn code(self) -> &'static str {
        match self {
            FailureReason::InsufficientFunds => "insufficient_funds",
            FailureReason::CurrencyMismatch => "currency_mismatch",
            FailureReason::AccountNotFound => "account_not_found",
            FailureReason::BalanceAboveMaximum => "balance_above_maximum",
            FailureReason::AirtimeProviderRejected => "airtime_provider_rejected",
            FailureReason::ReservationConflict => "reservation_conflict",
        }
    }
}

/// The facts of a transaction, fixed when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionTerms {
    pub transaction_id: TransactionId,
    pub account_id: AccountId,
    pub transaction_type: TransactionType,
    pub amount: Amount,
    pub currency: Currency,
    pub phone_number: Option<PhoneNumber>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransactionCommand {
    Start(TransactionTerms),
    Succeed { provider_reference: Option<String> },
    Fail { reason: FailureReason },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum TransactionEvent {
    TransactionStarted(TransactionTerms),
    TransactionSucceeded {
        transaction_id: TransactionId,
        provider_reference: Option<String>,
    },
    TransactionFailed {
        transaction_id: TransactionId,
        reason: FailureReason,
    },
}

impl TransactionEvent {
    pub fn name(&self) -> &'static str {
        match self {
            TransactionEvent::TransactionStarted(_) => "TransactionStarted",
            TransactionEvent::TransactionSucceeded { .. } => "TransactionSucceeded",
            TransactionEvent::TransactionFailed { .. } => "TransactionFailed",
        }
    }

    pub fn transaction_id(&self) -> TransactionId {
        match self {
            TransactionEvent::TransactionStarted(terms) => terms.transaction_id,
            TransactionEvent::TransactionSucceeded { transaction_id, .. }
            | TransactionEvent::TransactionFailed { transaction_id, .. } => *transaction_id,
        }
    }
}

impl DomainEvent for TransactionEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("the transaction has already started")]
    TransactionAlreadyExists,
    #[error("the transaction has not started")]
    TransactionNotFound,
    #[error("the transaction has already reached its final status")]
    TransactionAlreadyFinal,
}

impl TransactionError {
    pub fn code(self) -> &'static str {
        match self {
            TransactionError::TransactionAlreadyExists => "transaction_already_exists",
            TransactionError::TransactionNotFound => "transaction_not_found",
            TransactionError::TransactionAlreadyFinal => "transaction_already_final",
        }
    }
}

/// A transaction's state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    terms: Option<TransactionTerms>,
    status: Option<TransactionStatus>,
}

impl Transaction {
    pub fn terms(&self) -> Option<&TransactionTerms> {
        self.terms.as_ref()
    }

    /// `None` until the transaction has started.
    pub fn status(&self) -> Option<TransactionStatus> {
        self.status
    }

    pub fn decide(
        &self,
        command: TransactionCommand,
    ) -> Result<Vec<TransactionEvent>, TransactionError> {
        let event = match (command, self.status) {
            (TransactionCommand::Start(terms), None) => TransactionEvent::TransactionStarted(terms),
            (TransactionCommand::Start(_), Some(_)) => {
                return Err(TransactionError::TransactionAlreadyExists);
            }
            (_, None) => return Err(TransactionError::TransactionNotFound),
            (_, Some(status)) if status.is_final() => {
                return Err(TransactionError::TransactionAlreadyFinal);
            }
            (TransactionCommand::Succeed { provider_reference }, Some(_)) => {
                let transaction_id = self.id_or_nil();
                TransactionEvent::TransactionSucceeded {
                    transaction_id,
                    provider_reference,
                }
            }
            (TransactionCommand::Fail { reason }, Some(_)) => TransactionEvent::TransactionFailed {
                transaction_id: self.id_or_nil(),
                reason,
            },
        };
        Ok(vec![event])
    }

    fn id_or_nil(&self) -> TransactionId {
        self.terms
            .as_ref()
            .map_or(TransactionId(uuid::Uuid::nil()), |terms| {
                terms.transaction_id
            })
    }

    /// Applies a decided event; panics if it breaks the transaction's life cycle, which would
    /// mean the log is corrupt. Events read back from storage go through
    /// [`Transaction::try_apply_event`] instead.
    pub fn apply_event(&mut self, event: TransactionEvent) {
        if let Err(broken) = self.try_apply_event(event) {
            panic!("{broken}: the event log is corrupt");
        }
    }

    /// Applies a stored event, or names the life-cycle rule it breaks.
    pub fn try_apply_event(&mut self, event: TransactionEvent) -> Result<(), &'static str> {
        match event {
            TransactionEvent::TransactionStarted(terms) => {
                if self.status.is_some() {
                    return Err("a transaction started twice");
                }
                self.terms = Some(terms);
                self.status = Some(TransactionStatus::Processing);
                Ok(())
            }
            TransactionEvent::TransactionSucceeded { .. } => {
                self.finish(TransactionStatus::Successful)
            }
            TransactionEvent::TransactionFailed { .. } => self.finish(TransactionStatus::Failed),
        }
    }

    fn finish(&mut self, status: TransactionStatus) -> Result<(), &'static str> {
        if self.status != Some(TransactionStatus::Processing) {
            return Err("a transaction ended that was not in flight");
        }
        self.status = Some(status);
        Ok(())
    }
}

impl Aggregate for Transaction {
    const TYPE: &'static str = "transaction";
    type Command = TransactionCommand;
    type Event = TransactionEvent;
    type Error = TransactionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TransactionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), TransactionError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: TransactionEvent) {
        self.apply_event(event);
    }
}
