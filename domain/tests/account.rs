//! Account rules, given past events, when a command, then events or an error.

use cqrs_es::test::TestFramework;
use rust_decimal::Decimal;
use tally_domain::{
    Account, AccountCommand, AccountError, AccountEvent, AccountInfo, Amount, Currency,
    TransactionId,
};

type AccountTest = TestFramework<Account>;

fn usd(text: &str) -> Amount {
    Amount::parse(text, Currency::USD).expect("test amounts are valid")
}

fn dec(text: &str) -> Decimal {
    text.parse().expect("test decimals are valid")
}

fn info() -> AccountInfo {
    AccountInfo::parse("Ada", "ada@example.com", "+14155552671").expect("valid contact")
}

fn opened() -> AccountEvent {
    AccountEvent::AccountOpened {
        info: info(),
        billing_address: None,
        currency: Currency::USD,
    }
}

fn credited(transaction_id: TransactionId, amount: &str, balance_after: &str) -> AccountEvent {
    AccountEvent::AccountCredited {
        transaction_id,
        amount: usd(amount),
        balance_after: dec(balance_after),
    }
}

#[test]
fn opening_a_new_account_records_its_holder_and_currency() {
    let command = AccountCommand::Open {
        info: info(),
        billing_address: None,
        currency: Currency::USD,
    };
    AccountTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_events(vec![opened()]);
}

#[test]
fn an_account_cannot_be_opened_twice() {
    let command = AccountCommand::Open {
        info: info(),
        billing_address: None,
        currency: Currency::EUR,
    };
    AccountTest::with(())
        .given(vec![opened()])
        .when(command)
        .then_expect_error(AccountError::AccountAlreadyExists);
}

#[test]
fn a_credit_adds_to_the_balance() {
    let transaction_id = TransactionId::new();
    let command = AccountCommand::Credit {
        transaction_id,
        amount: usd("100.00"),
        currency: Currency::USD,
    };
    AccountTest::with(())
        .given(vec![opened()])
        .when(command)
        .then_expect_events(vec![credited(transaction_id, "100.00", "100.00")]);
}

#[test]
fn a_credit_in_another_currency_is_refused() {
    let command = AccountCommand::Credit {
        transaction_id: TransactionId::new(),
        amount: usd("1"),
        currency: Currency::EUR,
    };
    AccountTest::with(())
        .given(vec![opened()])
        .when(command)
        .then_expect_error(AccountError::CurrencyMismatch);
}

#[test]
fn a_reservation_cannot_take_more_than_is_available() {
    let first = TransactionId::new();
    let given = vec![
        opened(),
        credited(TransactionId::new(), "10.00", "10.00"),
        AccountEvent::FundsReserved {
            transaction_id: first,
            amount: usd("6.00"),
            held_after: dec("6.00"),
        },
    ];
    let command = AccountCommand::Reserve {
        transaction_id: TransactionId::new(),
        amount: usd("4.01"),
        currency: Currency::USD,
    };
    AccountTest::with(())
        .given(given)
        .when(command)
        .then_expect_error(AccountError::InsufficientFunds);
}

#[test]
fn posting_a_reservation_debits_the_balance_and_releases_the_hold() {
    let transaction_id = TransactionId::new();
    let given = vec![
        opened(),
        credited(TransactionId::new(), "100.00", "100.00"),
        AccountEvent::FundsReserved {
            transaction_id,
            amount: usd("30.50"),
            held_after: dec("30.50"),
        },
    ];
    let posted = AccountEvent::ReservationPosted {
        transaction_id,
        amount: usd("30.50"),
        balance_after: dec("69.50"),
        held_after: dec("0"),
    };
    AccountTest::with(())
        .given(given)
        .when(AccountCommand::PostReservation { transaction_id })
        .then_expect_events(vec![posted]);
}

#[test]
fn voiding_an_unknown_reservation_is_refused() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::VoidReservation {
            transaction_id: TransactionId::new(),
        })
        .then_expect_error(AccountError::ReservationNotFound);
}

#[test]
fn a_debit_cannot_overdraw() {
    let command = AccountCommand::Debit {
        transaction_id: TransactionId::new(),
        amount: usd("0.01"),
        currency: Currency::USD,
    };
    AccountTest::with(())
        .given(vec![opened()])
        .when(command)
        .then_expect_error(AccountError::InsufficientFunds);
}
