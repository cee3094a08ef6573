//! Rules of one account's stream, where transactions meet the account.

use chrono::Utc;
use rust_decimal::Decimal;
use tally_domain::ledger::AdjustmentDirection;
use tally_domain::{
    AccountId, AccountInfo, AccountLedger, AirtimeOutcome, Amount, CommandContext, CommandId,
    Currency, Decision, EventEnvelope, FailureReason, LedgerCommand, PhoneNumber, TransactionId,
    TransactionStatus,
};

fn usd(text: &str) -> Amount {
    Amount::parse(text, Currency::USD).expect("test amounts are valid")
}

fn dec(text: &str) -> Decimal {
    text.parse().expect("test decimals are valid")
}

fn context() -> CommandContext {
    CommandContext {
        command_id: CommandId::new(),
        issued_at: Utc::now(),
        now: Utc::now(),
    }
}

fn names(decision: &Decision) -> Vec<&str> {
    decision
        .events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect()
}

async fn opened_ledger(balance: &str) -> AccountLedger {
    let mut ledger = AccountLedger::new(AccountId::new());
    let info = AccountInfo::parse("Ada", "ada@example.com", "+14155552671").expect("valid contact");
    let open = LedgerCommand::OpenAccount {
        info,
        billing_address: None,
        currency: Currency::USD,
    };
    ledger.decide(open, context()).await;
    let add = LedgerCommand::AddMoney {
        transaction_id: TransactionId::new(),
        amount: usd(balance),
        currency: Currency::USD,
    };
    ledger.decide(add, context()).await;
    ledger
}

fn airtime(transaction_id: TransactionId, amount: &str) -> LedgerCommand {
    let phone_number = PhoneNumber::parse("+254712345678").expect("valid phone");
    LedgerCommand::SendAirtime {
        transaction_id,
        amount: usd(amount),
        currency: Currency::USD,
        phone_number,
    }
}

#[tokio::test]
async fn add_money_starts_credits_and_succeeds_in_one_decision() {
    let mut ledger = opened_ledger("1").await;
    let transaction_id = TransactionId::new();
    let add = LedgerCommand::AddMoney {
        transaction_id,
        amount: usd("99.00"),
        currency: Currency::USD,
    };

    let decision = ledger.decide(add, context()).await;

    assert_eq!(
        names(&decision),
        [
            "TransactionStarted",
            "AccountCredited",
            "TransactionSucceeded"
        ]
    );
    assert_eq!(ledger.account().balance(), dec("100.00"));
    let status = ledger.transaction_status(transaction_id);
    assert_eq!(status, Some(TransactionStatus::Successful));
}

#[tokio::test]
async fn sequence_numbers_grow_by_exactly_one_across_commands() {
    let mut ledger = opened_ledger("10").await;
    let decision = ledger
        .decide(airtime(TransactionId::new(), "1"), context())
        .await;

    let sequences: Vec<u64> = decision.events.iter().map(|event| event.sequence).collect();
    assert_eq!(sequences, [5, 6]);
    assert_eq!(ledger.sequence(), 6);
}

#[tokio::test]
async fn airtime_holds_funds_until_the_provider_answers_then_posts_them() {
    let mut ledger = opened_ledger("100.00").await;
    let transaction_id = TransactionId::new();

    let reserved = ledger
        .decide(airtime(transaction_id, "30.50"), context())
        .await;
    assert_eq!(names(&reserved), ["TransactionStarted", "FundsReserved"]);
    assert_eq!(ledger.account().available(), dec("69.50"));

    let outcome = AirtimeOutcome::Delivered {
        provider_reference: "ref-1".to_owned(),
    };
    let complete = LedgerCommand::CompleteAirtime {
        transaction_id,
        outcome,
    };
    let posted = ledger.decide(complete, context()).await;
    assert_eq!(
        names(&posted),
        ["ReservationPosted", "TransactionSucceeded"]
    );
    assert_eq!(ledger.account().balance(), dec("69.50"));
    assert_eq!(ledger.account().held(), dec("0.00"));
}

#[tokio::test]
async fn a_rejected_airtime_voids_the_hold_and_fails_with_a_stable_reason() {
    let mut ledger = opened_ledger("10.00").await;
    let transaction_id = TransactionId::new();
    ledger
        .decide(airtime(transaction_id, "5.00"), context())
        .await;

    let outcome = AirtimeOutcome::Rejected {
        provider_code: "invalid_msisdn".to_owned(),
    };
    let decision = ledger
        .decide(
            LedgerCommand::CompleteAirtime {
                transaction_id,
                outcome,
            },
            context(),
        )
        .await;

    assert_eq!(names(&decision), ["ReservationVoided", "TransactionFailed"]);
    assert_eq!(ledger.account().available(), dec("10.00"));
    let failed = serde_json::to_value(&decision.events[1].event).expect("serializes");
    assert_eq!(
        failed["reason"],
        FailureReason::AirtimeProviderRejected.code()
    );
}

#[tokio::test]
async fn airtime_beyond_the_balance_fails_with_insufficient_funds_and_holds_nothing() {
    let mut ledger = opened_ledger("1.00").await;
    let decision = ledger
        .decide(airtime(TransactionId::new(), "1.01"), context())
        .await;

    assert_eq!(
        names(&decision),
        ["TransactionStarted", "TransactionFailed"]
    );
    assert_eq!(ledger.account().held(), dec("0"));
}

#[tokio::test]
async fn a_repeated_transaction_is_decided_only_once() {
    let mut ledger = opened_ledger("10.00").await;
    let transaction_id = TransactionId::new();
    let add = LedgerCommand::AddMoney {
        transaction_id,
        amount: usd("5"),
        currency: Currency::USD,
    };

    ledger.decide(add.clone(), context()).await;
    let again = ledger.decide(add, context()).await;

    assert!(again.events.is_empty());
    assert_eq!(again.rejection, Some("transaction_already_exists"));
    assert_eq!(ledger.account().balance(), dec("15.00"));
}

#[tokio::test]
async fn a_second_provider_answer_changes_nothing() {
    let mut ledger = opened_ledger("10.00").await;
    let transaction_id = TransactionId::new();
    ledger
        .decide(airtime(transaction_id, "5.00"), context())
        .await;
    let outcome = AirtimeOutcome::Delivered {
        provider_reference: "ref".to_owned(),
    };
    let complete = LedgerCommand::CompleteAirtime {
        transaction_id,
        outcome,
    };
    ledger.decide(complete.clone(), context()).await;

    let again = ledger.decide(complete, context()).await;

    assert_eq!(again.rejection, Some("transaction_already_final"));
    assert_eq!(ledger.account().balance(), dec("5.00"));
}

#[tokio::test]
async fn an_admin_debit_cannot_overdraw() {
    let mut ledger = opened_ledger("2.00").await;
    let debit = LedgerCommand::AdjustBalance {
        transaction_id: TransactionId::new(),
        direction: AdjustmentDirection::Debit,
        amount: usd("2.01"),
        currency: Currency::USD,
    };
    let decision = ledger.decide(debit, context()).await;
    assert_eq!(
        names(&decision),
        ["TransactionStarted", "TransactionFailed"]
    );
}

#[tokio::test]
async fn a_stream_rebuilt_from_its_envelopes_equals_the_original() {
    let mut source = AccountLedger::new(AccountId::new());
    let open_events = opened_ledger_events(&mut source).await;
    let mut rebuilt = AccountLedger::new(source_id(&open_events));
    for envelope in open_events.iter() {
        let bytes = envelope.to_json();
        let parsed = EventEnvelope::from_json(&bytes).expect("envelope round-trips");
        assert_eq!(&parsed, envelope);
        rebuilt.apply(&parsed).expect("stream is gapless");
    }
    assert_eq!(rebuilt.account(), source.account());
    assert_eq!(rebuilt.sequence(), source.sequence());
}

async fn opened_ledger_events(ledger: &mut AccountLedger) -> Vec<EventEnvelope> {
    let info = AccountInfo::parse("Bo", "bo@example.com", "+14155550000").expect("valid contact");
    let mut events = Vec::new();
    let open = LedgerCommand::OpenAccount {
        info,
        billing_address: None,
        currency: Currency::USD,
    };
    events.extend(ledger.decide(open, context()).await.events);
    let add = LedgerCommand::AddMoney {
        transaction_id: TransactionId::new(),
        amount: usd("7.25"),
        currency: Currency::USD,
    };
    events.extend(ledger.decide(add, context()).await.events);
    events.extend(
        ledger
            .decide(airtime(TransactionId::new(), "2.25"), context())
            .await
            .events,
    );
    events
}

fn source_id(events: &[EventEnvelope]) -> AccountId {
    events[0].account_id
}

#[tokio::test]
async fn a_gap_in_the_stream_is_detected() {
    let mut source = AccountLedger::new(AccountId::new());
    let events = opened_ledger_events(&mut source).await;
    let mut rebuilt = AccountLedger::new(source_id(&events));
    rebuilt.apply(&events[0]).expect("first event applies");
    assert!(rebuilt.apply(&events[2]).is_err());
}

#[tokio::test]
async fn a_stored_event_that_breaks_the_balance_is_an_error_not_a_panic() {
    let mut source = AccountLedger::new(AccountId::new());
    let mut events = opened_ledger_events(&mut source).await;
    let credited = (events.iter_mut())
        .find(|event| event.event_type == "AccountCredited")
        .expect("a credit");
    if let tally_domain::LedgerEvent::Account(tally_domain::AccountEvent::AccountCredited {
        amount,
        ..
    }) = &mut credited.event
    {
        *amount = usd("900.00");
    }
    let mut rebuilt = AccountLedger::new(source_id(&events));

    let applied: Result<Vec<()>, _> = events.iter().map(|e| rebuilt.apply(e)).collect();

    let error = applied.expect_err("the edited credit does not add up");
    assert!(
        matches!(
            error,
            tally_domain::ledger::StreamError::Inconsistent { .. }
        ),
        "{error}"
    );
}

fn minted_at(ms: i64) -> TransactionId {
    let timestamp = uuid::Timestamp::from_unix(uuid::NoContext, (ms / 1_000) as u64, 0);
    TransactionId(uuid::Uuid::new_v7(timestamp))
}

fn issued_at(ms: i64, now_ms: i64) -> CommandContext {
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).expect("valid time");
    CommandContext {
        command_id: CommandId::new(),
        issued_at: at(ms),
        now: at(now_ms),
    }
}

#[tokio::test]
async fn finished_transactions_are_forgotten_once_no_retry_can_repeat_them() {
    let mut ledger = opened_ledger("1.00").await;
    let start_ms = Utc::now().timestamp_millis();
    let second_ms = 1_000;
    for offset_s in 0..600 {
        let at_ms = start_ms + offset_s * second_ms;
        let add = LedgerCommand::AddMoney {
            transaction_id: minted_at(at_ms),
            amount: usd("1"),
            currency: Currency::USD,
        };
        ledger.decide(add, issued_at(at_ms, at_ms)).await;
    }
    let retained_s = tally_domain::ledger::FINISHED_RETENTION_MS / second_ms;
    assert!(
        ledger.transactions_remembered() <= retained_s as usize + 2,
        "{}",
        ledger.transactions_remembered()
    );
    assert_eq!(ledger.account().balance(), dec("601.00"));
}

#[tokio::test]
async fn a_retry_after_a_long_decider_outage_is_still_recognized() {
    let mut ledger = opened_ledger("1.00").await;
    let minted_ms = Utc::now().timestamp_millis();
    let transaction_id = minted_at(minted_ms);
    let add = LedgerCommand::AddMoney {
        transaction_id,
        amount: usd("5"),
        currency: Currency::USD,
    };
    ledger
        .decide(add.clone(), issued_at(minted_ms, minted_ms))
        .await;

    // The retry was issued 20 s after the first, but decided an hour later.
    let retry_ms = minted_ms + 20_000;
    let again = ledger
        .decide(add, issued_at(retry_ms, retry_ms + 3_600_000))
        .await;

    assert_eq!(again.rejection, Some("transaction_already_exists"));
    assert_eq!(ledger.account().balance(), dec("6"));
}
