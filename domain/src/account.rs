//! The account aggregate: who holds the account, in which currency, and how much money it
//! holds, posted or held back by open reservations.
//!
//! Invariants, checked on every change: the posted balance never goes below zero or above
//! [`BALANCE_MAJOR_UNITS_MAX`], and the sum of open holds never exceeds the posted balance.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::contact::{AccountInfo, BillingAddress};
use crate::ids::TransactionId;
use crate::money::{Amount, BALANCE_MAJOR_UNITS_MAX, Currency};

/// What may be asked of an account.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountCommand {
    Open {
        info: AccountInfo,
        billing_address: Option<BillingAddress>,
        currency: Currency,
    },
    Update {
        info: AccountInfo,
        billing_address: Option<BillingAddress>,
    },
    Credit {
        transaction_id: TransactionId,
        amount: Amount,
        currency: Currency,
    },
    Debit {
        transaction_id: TransactionId,
        amount: Amount,
        currency: Currency,
    },
    Reserve {
        transaction_id: TransactionId,
        amount: Amount,
        currency: Currency,
    },
    PostReservation {
        transaction_id: TransactionId,
    },
    VoidReservation {
        transaction_id: TransactionId,
    },
}

/// What happened to an account. Amounts are in the account's currency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum AccountEvent {
    AccountOpened {
        info: AccountInfo,
        billing_address: Option<BillingAddress>,
        currency: Currency,
    },
    AccountUpdated {
        info: AccountInfo,
        billing_address: Option<BillingAddress>,
    },
    AccountCredited {
        transaction_id: TransactionId,
        amount: Amount,
        balance_after: Decimal,
    },
    AccountDebited {
        transaction_id: TransactionId,
        amount: Amount,
        balance_after: Decimal,
    },
    FundsReserved {
        transaction_id: TransactionId,
        amount: Amount,
        held_after: Decimal,
    },
    ReservationPosted {
        transaction_id: TransactionId,
        amount: Amount,
        balance_after: Decimal,
        held_after: Decimal,
    },
    ReservationVoided {
        transaction_id: TransactionId,
        amount: Amount,
        held_after: Decimal,
    },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl AccountEvent {
    /// The event's type name, as stored in the log.
    pub fn name(&self) -> &'static str {
        match self {
            AccountEvent::AccountOpened { .. } => "AccountOpened",
            AccountEvent::AccountUpdated { .. } => "AccountUpdated",
            AccountEvent::AccountCredited { .. } => "AccountCredited",
            AccountEvent::AccountDebited { .. } => "AccountDebited",
            AccountEvent::FundsReserved { .. } => "FundsReserved",
            AccountEvent::ReservationPosted { .. } => "ReservationPosted",
            AccountEvent::ReservationVoided { .. } => "ReservationVoided",
        }
    }
}

/// Why an account refused a command. Codes are stable and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account does not exist")]
    AccountNotFound,
    #[error("the account already exists")]
    AccountAlreadyExists,
    #[error("the amount is not in the account's currency")]
    CurrencyMismatch,
    #[error("the available balance is lower than the amount")]
    InsufficientFunds,
    #[error("the balance would exceed its maximum")]
    BalanceAboveMaximum,
    #[error("the transaction already holds a reservation")]
    ReservationAlreadyExists,
    #[error("the transaction holds no reservation")]
    ReservationNotFound,
}

impl AccountError {
    pub fn code(self) -> &'static str {
        match self {
            AccountError::AccountNotFound => "account_not_found",
            AccountError::AccountAlreadyExists => "account_already_exists",
            AccountError::CurrencyMismatch => "currency_mismatch",
            AccountError::InsufficientFunds => "insufficient_funds",
            AccountError::BalanceAboveMaximum => "balance_above_maximum",
            AccountError::ReservationAlreadyExists => "reservation_already_exists",
            AccountError::ReservationNotFound => "reservation_not_found",
        }
    }
}

/// An account's state, rebuilt from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    opened: Option<OpenAccount>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OpenAccount {
    currency: Currency,
    info: AccountInfo,
    billing_address: Option<BillingAddress>,
    /// Posted money: credits less debits and posted reservations.
    balance: Decimal,
    /// Open reservations by transaction; their sum is `held`.
    holds: BTreeMap<TransactionId, Amount>,
    held: Decimal,
}

impl Account {
    pub fn is_open(&self) -> bool {
        self.opened.is_some()
    }

    pub fn currency(&self) -> Option<Currency> {
        self.opened.as_ref().map(|open| open.currency)
    }

    pub fn info(&self) -> Option<&AccountInfo> {
        self.opened.as_ref().map(|open| &open.info)
    }

    /// Posted balance; zero for an account not yet opened.
    pub fn balance(&self) -> Decimal {
        self.opened
            .as_ref()
            .map_or(Decimal::ZERO, |open| open.balance)
    }

    /// Money held by open reservations.
    pub fn held(&self) -> Decimal {
        self.opened.as_ref().map_or(Decimal::ZERO, |open| open.held)
    }

    /// What a new debit or reservation may take.
    pub fn available(&self) -> Decimal {
        self.balance() - self.held()
    }

    fn open(&self) -> Result<&OpenAccount, AccountError> {
        self.opened.as_ref().ok_or(AccountError::AccountNotFound)
    }

    /// Checks that the account is open and in `currency`.
    fn open_in(&self, currency: Currency) -> Result<&OpenAccount, AccountError> {
        let open = self.open()?;
        if open.currency != currency {
            return Err(AccountError::CurrencyMismatch);
        }
        Ok(open)
    }

    fn hold(&self, transaction_id: TransactionId) -> Result<Amount, AccountError> {
        let open = self.open()?;
        open.holds
            .get(&transaction_id)
            .copied()
            .ok_or(AccountError::ReservationNotFound)
    }

    /// Decides a command without changing the account; the caller applies the events.
    pub fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        let event = match command {
            AccountCommand::Open {
                info,
                billing_address,
                currency,
            } => {
                if self.is_open() {
                    return Err(AccountError::AccountAlreadyExists);
                }
                AccountEvent::AccountOpened {
                    info,
                    billing_address,
                    currency,
                }
            }
            AccountCommand::Update {
                info,
                billing_address,
            } => {
                self.open()?;
                AccountEvent::AccountUpdated {
                    info,
                    billing_address,
                }
            }
            AccountCommand::Credit {
                transaction_id,
                amount,
                currency,
            } => {
                let balance_after = self.open_in(currency)?.balance + amount.value();
                if balance_after > Decimal::from(BALANCE_MAJOR_UNITS_MAX) {
                    return Err(AccountError::BalanceAboveMaximum);
                }
                AccountEvent::AccountCredited {
                    transaction_id,
                    amount,
                    balance_after,
                }
            }
            AccountCommand::Debit {
                transaction_id,
                amount,
                currency,
            } => {
                let open = self.open_in(currency)?;
                if self.available() < amount.value() {
                    return Err(AccountError::InsufficientFunds);
                }
                let balance_after = open.balance - amount.value();
                AccountEvent::AccountDebited {
                    transaction_id,
                    amount,
                    balance_after,
                }
            }
            AccountCommand::Reserve {
                transaction_id,
                amount,
                currency,
            } => {
                let open = self.open_in(currency)?;
                if open.holds.contains_key(&transaction_id) {
                    return Err(AccountError::ReservationAlreadyExists);
                }
                if self.available() < amount.value() {
                    return Err(AccountError::InsufficientFunds);
                }
                let held_after = open.held + amount.value();
                AccountEvent::FundsReserved {
                    transaction_id,
                    amount,
                    held_after,
                }
            }
            AccountCommand::PostReservation { transaction_id } => {
                let amount = self.hold(transaction_id)?;
                let balance_after = self.balance() - amount.value();
                let held_after = self.held() - amount.value();
                AccountEvent::ReservationPosted {
                    transaction_id,
                    amount,
                    balance_after,
                    held_after,
                }
            }
            AccountCommand::VoidReservation { transaction_id } => {
                let amount = self.hold(transaction_id)?;
                let held_after = self.held() - amount.value();
                AccountEvent::ReservationVoided {
                    transaction_id,
                    amount,
                    held_after,
                }
            }
        };
        Ok(vec![event])
    }

    /// Applies a decided event. Panics only if the event breaks a ledger invariant, which would
    /// mean the log itself is corrupt: continuing would spread wrong balances. Events read back
    /// from storage go through [`Account::try_apply_event`] instead.
    pub fn apply_event(&mut self, event: AccountEvent) {
        if let Err(broken) = self.try_apply_event(event) {
            panic!("{broken}: the event log is corrupt");
        }
    }

    /// Applies a stored event, or names the ledger invariant it breaks (a credit whose
    /// `balanceAfter` does not follow, a release of money never held, ...). After an error the
    /// account is in no useful state: the stream it came from is corrupt.
    pub fn try_apply_event(&mut self, event: AccountEvent) -> Result<(), &'static str> {
        if let AccountEvent::AccountOpened {
            info,
            billing_address,
            currency,
        } = event
        {
            self.opened = Some(OpenAccount {
                currency,
                info,
                billing_address,
                balance: Decimal::ZERO,
                holds: BTreeMap::new(),
                held: Decimal::ZERO,
            });
            return Ok(());
        }
        let Some(open) = self.opened.as_mut() else {
            return Err("an event for an account that was never opened");
        };
        open.apply(event)?;
        holds(open.held >= Decimal::ZERO, "held money went negative")?;
        holds(open.held <= open.balance, "holds exceed the posted balance")?;
        holds(
            open.balance <= Decimal::from(BALANCE_MAJOR_UNITS_MAX),
            "balance above maximum",
        )
    }
}

/// `Ok` when an invariant holds, the name of the broken one otherwise.
fn holds(invariant: bool, broken: &'static str) -> Result<(), &'static str> {
    if invariant { Ok(()) } else { Err(broken) }
}

impl OpenAccount {
    fn apply(&mut self, event: AccountEvent) -> Result<(), &'static str> {
        match event {
            AccountEvent::AccountOpened { .. } => Ok(()),
            AccountEvent::AccountUpdated {
                info,
                billing_address,
            } => {
                self.info = info;
                self.billing_address = billing_address;
                Ok(())
            }
            AccountEvent::AccountCredited {
                amount,
                balance_after,
                ..
            } => {
                self.balance += amount.value();
                holds(self.balance == balance_after, "a credit does not add up")
            }
            AccountEvent::AccountDebited {
                amount,
                balance_after,
                ..
            } => {
                self.balance -= amount.value();
                holds(self.balance == balance_after, "a debit does not add up")
            }
            AccountEvent::FundsReserved {
                transaction_id,
                amount,
                held_after,
            } => {
                self.holds.insert(transaction_id, amount);
                self.held += amount.value();
                holds(self.held == held_after, "a reservation does not add up")
            }
            AccountEvent::ReservationPosted {
                transaction_id,
                amount,
                balance_after,
                held_after,
            } => {
                self.release(transaction_id, amount)?;
                self.balance -= amount.value();
                holds(self.balance == balance_after, "a posting does not add up")?;
                holds(self.held == held_after, "a posting does not add up")
            }
            AccountEvent::ReservationVoided {
                transaction_id,
                amount,
                held_after,
            } => {
                self.release(transaction_id, amount)?;
                holds(self.held == held_after, "a void does not add up")
            }
        }
    }

    fn release(
        &mut self,
        transaction_id: TransactionId,
        amount: Amount,
    ) -> Result<(), &'static str> {
        let hold = self.holds.remove(&transaction_id);
        holds(
            hold == Some(amount),
            "a release of a reservation that was not held",
        )?;
        self.held -= amount.value();
        Ok(())
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        self.apply_event(event);
    }
}
