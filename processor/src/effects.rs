//! What one event asks of the processor: notifications to request and airtime to buy.
//!
//! Pure: [`effects_of`] reads the event and the [`PartitionState`] as it was before the event,
//! and does nothing itself. The worker carries the effects out, and applies the event to the
//! state afterwards. Handling the same event against the same state always gives the same
//! effects, notification ids included, so a redelivered event asks for nothing new.
//!
//! | event | effects |
//! |---|---|
//! | `AccountOpened` | email and SMS, template `AccountOpened` |
//! | `AccountUpdated` | email to the new address, template `AccountUpdated` |
//! | `FundsReserved` of a `SEND_AIRTIME` transaction | buy the airtime |
//! | `TransactionSucceeded`, `TransactionFailed` | email and SMS, template by transaction type |

use std::collections::BTreeMap;

use tally_domain::money::format_at_scale;
use tally_domain::notification::{
    Channel, NotificationRequested, Outcome, Template, notification_id_for,
};
use tally_domain::{
    AccountEvent, AccountInfo, EventEnvelope, FailureReason, LedgerEvent, TransactionEvent,
    TransactionId, TransactionType,
};

use crate::airtime::AirtimeRequest;
use crate::state::PartitionState;

/// The account holder's name.
pub const VALUE_NAME: &str = "name";
/// The transaction's amount at its currency's scale, such as `30.50`.
pub const VALUE_AMOUNT: &str = "amount";
/// ISO 4217 code.
pub const VALUE_CURRENCY: &str = "currency";
pub const VALUE_TRANSACTION_ID: &str = "transactionId";
/// The airtime's destination, for airtime transactions only.
pub const VALUE_PHONE_NUMBER: &str = "phoneNumber";
/// The failure's stable code, for failed transactions only.
pub const VALUE_FAILURE_REASON: &str = "failureReason";

/// What one event asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    pub notifications: Vec<NotificationRequested>,
    pub airtime: Option<AirtimeRequest>,
}

/// The effects of `envelope`, given the state of its partition before it.
pub fn effects_of(envelope: &EventEnvelope, state: &PartitionState) -> Effects {
    let notifications = match &envelope.event {
        LedgerEvent::Account(AccountEvent::AccountOpened { info, .. }) => {
            let message = Message::about_account(Template::AccountOpened, info);
            notify(envelope, info, &[Channel::Email, Channel::Sms], &message)
        }
        LedgerEvent::Account(AccountEvent::AccountUpdated { info, .. }) => {
            let message = Message::about_account(Template::AccountUpdated, info);
            notify(envelope, info, &[Channel::Email], &message)
        }
        LedgerEvent::Account(AccountEvent::FundsReserved { transaction_id, .. }) => {
            let airtime = airtime_request(state, *transaction_id);
            return Effects {
                notifications: Vec::new(),
                airtime,
            };
        }
        LedgerEvent::Transaction(TransactionEvent::TransactionSucceeded {
            transaction_id, ..
        }) => transaction_ended(envelope, state, *transaction_id, None),
        LedgerEvent::Transaction(TransactionEvent::TransactionFailed {
            transaction_id,
            reason,
        }) => transaction_ended(envelope, state, *transaction_id, Some(*reason)),
        LedgerEvent::Account(_) | LedgerEvent::Transaction(_) => Vec::new(),
    };
    Effects {
        notifications,
        airtime: None,
    }
}

/// A template with its outcome and values, before it is addressed to a channel.
struct Message {
    template: Template,
    outcome: Outcome,
    values: BTreeMap<String, String>,
}

impl Message {
    fn about_account(template: Template, info: &AccountInfo) -> Message {
        let values = BTreeMap::from([(VALUE_NAME.to_owned(), info.name.clone())]);
        Message {
            template,
            outcome: Outcome::Success,
            values,
        }
    }
}

/// One notification request per channel, each with an id derived from the event.
fn notify(
    envelope: &EventEnvelope,
    info: &AccountInfo,
    channels: &[Channel],
    message: &Message,
) -> Vec<NotificationRequested> {
    let request = |channel: Channel| NotificationRequested {
        notification_id: notification_id_for(envelope.event_id, channel),
        account_id: Some(envelope.account_id),
        channel,
        recipient: recipient(info, channel),
        template: message.template,
        outcome: message.outcome,
        values: message.values.clone(),
        occurred_at: envelope.occurred_at,
        correlation_id: envelope.correlation_id,
        causation_id: envelope.event_id.0,
    };
    channels.iter().copied().map(request).collect()
}

fn recipient(info: &AccountInfo, channel: Channel) -> String {
    match channel {
        Channel::Email => info.email.clone(),
        Channel::Sms => info.phone_number.to_string(),
    }
}

/// Tells the account holder how a transaction ended, failed when `failure` is some.
fn transaction_ended(
    envelope: &EventEnvelope,
    state: &PartitionState,
    transaction_id: TransactionId,
    failure: Option<FailureReason>,
) -> Vec<NotificationRequested> {
    let Some(terms) = state.open_transaction(transaction_id) else {
        tracing::warn!(%transaction_id, "transaction ended without known terms; nobody is told");
        return Vec::new();
    };
    // A transaction on an account never opened fails as `account_not_found`: nobody to tell.
    let Some(info) = state.contact(envelope.account_id) else {
        tracing::debug!(%transaction_id, "transaction of an account without contacts");
        return Vec::new();
    };

    let mut values = BTreeMap::from([
        (VALUE_NAME.to_owned(), info.name.clone()),
        (
            VALUE_AMOUNT.to_owned(),
            format_at_scale(terms.amount.value(), terms.currency),
        ),
        (VALUE_CURRENCY.to_owned(), terms.currency.code().to_owned()),
        (VALUE_TRANSACTION_ID.to_owned(), transaction_id.to_string()),
    ]);
    if let Some(phone_number) = &terms.phone_number {
        values.insert(VALUE_PHONE_NUMBER.to_owned(), phone_number.to_string());
    }
    if let Some(reason) = failure {
        values.insert(VALUE_FAILURE_REASON.to_owned(), reason.code().to_owned());
    }
    let message = Message {
        template: template_for(terms.transaction_type),
        outcome: failure.map_or(Outcome::Success, |_| Outcome::Failure),
        values,
    };
    notify(envelope, info, &[Channel::Email, Channel::Sms], &message)
}

fn template_for(transaction_type: TransactionType) -> Template {
    match transaction_type {
        TransactionType::AddMoney => Template::MoneyAdded,
        TransactionType::SendAirtime => Template::AirtimeSent,
        TransactionType::AdminCredit | TransactionType::AdminDebit => Template::BalanceAdjusted,
    }
}

/// The top-up to buy for a reservation, when the reservation is for airtime.
/// The top-up an open airtime transaction of `state` asks for; `None` for any other
/// transaction.
pub(crate) fn airtime_request(
    state: &PartitionState,
    transaction_id: TransactionId,
) -> Option<AirtimeRequest> {
    let Some(terms) = state.open_transaction(transaction_id) else {
        tracing::error!(%transaction_id, "funds reserved for an unknown transaction stay held");
        return None;
    };
    if terms.transaction_type != TransactionType::SendAirtime {
        return None;
    }
    let Some(phone_number) = terms.phone_number.clone() else {
        tracing::error!(%transaction_id, "airtime transaction without a phone; funds stay held");
        return None;
    };
    Some(AirtimeRequest {
        transaction_id,
        phone_number,
        amount: terms.amount,
        currency: terms.currency,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use tally_domain::ledger::AdjustmentDirection;
    use tally_domain::{
        AccountId, AccountLedger, AirtimeOutcome, Amount, CommandContext, CommandId, Currency,
        LedgerCommand, PhoneNumber,
    };

    use super::*;

    /// One account's stream, decided by the real ledger and folded as the worker folds it.
    struct Stream {
        ledger: AccountLedger,
        state: PartitionState,
    }

    impl Stream {
        async fn opened() -> Stream {
            let mut stream = Stream {
                ledger: AccountLedger::new(AccountId::new()),
                state: PartitionState::default(),
            };
            stream.handle(open_account("ada@example.com")).await;
            stream
        }

        /// Decides `command` and returns each resulting event with its effects.
        async fn handle(&mut self, command: LedgerCommand) -> Vec<(EventEnvelope, Effects)> {
            let context = CommandContext {
                command_id: CommandId::new(),
                issued_at: Utc::now(),
                now: Utc::now(),
            };
            let decision = self.ledger.decide(command, context).await;
            assert_eq!(decision.rejection, None, "the test command was rejected");
            let mut handled = Vec::new();
            for envelope in decision.events {
                let effects = effects_of(&envelope, &self.state);
                self.state.apply(self.state.next_offset(), &envelope);
                handled.push((envelope, effects));
            }
            handled
        }

        async fn notifications(&mut self, command: LedgerCommand) -> Vec<NotificationRequested> {
            let handled = self.handle(command).await;
            handled
                .into_iter()
                .flat_map(|(_, effects)| effects.notifications)
                .collect()
        }
    }

    fn info(email: &str) -> AccountInfo {
        AccountInfo::parse("Ada Lovelace", email, "+14155552671").expect("valid test contacts")
    }

    fn open_account(email: &str) -> LedgerCommand {
        LedgerCommand::OpenAccount {
            info: info(email),
            billing_address: None,
            currency: Currency::USD,
        }
    }

    fn usd(text: &str) -> Amount {
        Amount::parse(text, Currency::USD).expect("a valid test amount")
    }

    fn add_money(transaction_id: TransactionId, amount: &str, currency: Currency) -> LedgerCommand {
        LedgerCommand::AddMoney {
            transaction_id,
            amount: Amount::parse(amount, currency).expect("a valid test amount"),
            currency,
        }
    }

    fn send_airtime(transaction_id: TransactionId, amount: &str, phone: &str) -> LedgerCommand {
        LedgerCommand::SendAirtime {
            transaction_id,
            amount: usd(amount),
            currency: Currency::USD,
            phone_number: PhoneNumber::parse(phone).expect("a valid test number"),
        }
    }

    fn channels_and_recipients(notifications: &[NotificationRequested]) -> Vec<(Channel, &str)> {
        notifications
            .iter()
            .map(|n| (n.channel, n.recipient.as_str()))
            .collect()
    }

    fn value<'a>(notification: &'a NotificationRequested, key: &str) -> Option<&'a str> {
        notification.values.get(key).map(String::as_str)
    }

    #[tokio::test]
    async fn opening_an_account_asks_to_email_and_text_its_holder() {
        let mut stream = Stream {
            ledger: AccountLedger::new(AccountId::new()),
            state: PartitionState::default(),
        };
        let notifications = stream.notifications(open_account("ada@example.com")).await;

        let expected = vec![
            (Channel::Email, "ada@example.com"),
            (Channel::Sms, "+14155552671"),
        ];
        assert_eq!(channels_and_recipients(&notifications), expected);
        for notification in &notifications {
            assert_eq!(notification.template, Template::AccountOpened);
            assert_eq!(notification.outcome, Outcome::Success);
            assert_eq!(value(notification, VALUE_NAME), Some("Ada Lovelace"));
        }
    }

    #[tokio::test]
    async fn updating_an_account_emails_the_new_address_only() {
        let mut stream = Stream::opened().await;
        let update = LedgerCommand::UpdateAccount {
            info: info("ada@newmail.example"),
            billing_address: None,
        };
        let notifications = stream.notifications(update).await;

        let expected = vec![(Channel::Email, "ada@newmail.example")];
        assert_eq!(channels_and_recipients(&notifications), expected);
        assert_eq!(notifications[0].template, Template::AccountUpdated);
    }

    #[tokio::test]
    async fn adding_money_tells_the_amount_at_its_currency_scale() {
        let mut stream = Stream::opened().await;
        let transaction_id = TransactionId::new();
        let notifications = stream
            .notifications(add_money(transaction_id, "100.5", Currency::USD))
            .await;

        assert_eq!(notifications.len(), 2);
        for notification in &notifications {
            assert_eq!(notification.template, Template::MoneyAdded);
            assert_eq!(notification.outcome, Outcome::Success);
            assert_eq!(notification.correlation_id, transaction_id.0);
            assert_eq!(value(notification, VALUE_AMOUNT), Some("100.50"));
            assert_eq!(value(notification, VALUE_CURRENCY), Some("USD"));
            let id = transaction_id.to_string();
            assert_eq!(value(notification, VALUE_TRANSACTION_ID), Some(id.as_str()));
            assert_eq!(value(notification, VALUE_PHONE_NUMBER), None);
            assert_eq!(value(notification, VALUE_FAILURE_REASON), None);
        }
    }

    #[tokio::test]
    async fn a_failed_transaction_names_its_failure_reason() {
        let mut stream = Stream::opened().await;
        let command = add_money(TransactionId::new(), "10", Currency::EUR);
        let notifications = stream.notifications(command).await;

        assert_eq!(notifications.len(), 2);
        for notification in &notifications {
            assert_eq!(notification.outcome, Outcome::Failure);
            let reason = value(notification, VALUE_FAILURE_REASON);
            assert_eq!(reason, Some("currency_mismatch"));
            assert_eq!(value(notification, VALUE_CURRENCY), Some("EUR"));
        }
    }

    #[tokio::test]
    async fn administrator_adjustments_use_the_balance_adjusted_template() {
        let mut stream = Stream::opened().await;
        let adjust = LedgerCommand::AdjustBalance {
            transaction_id: TransactionId::new(),
            direction: AdjustmentDirection::Credit,
            amount: usd("5"),
            currency: Currency::USD,
        };
        let notifications = stream.notifications(adjust).await;

        let templates: Vec<Template> = notifications.iter().map(|n| n.template).collect();
        assert_eq!(templates, vec![Template::BalanceAdjusted; 2]);
    }

    #[tokio::test]
    async fn reserving_funds_for_airtime_asks_the_provider_for_the_destination() {
        let mut stream = Stream::opened().await;
        stream
            .handle(add_money(TransactionId::new(), "100", Currency::USD))
            .await;
        let transaction_id = TransactionId::new();
        let handled = stream
            .handle(send_airtime(transaction_id, "30.5", "+254712345678"))
            .await;

        let requests: Vec<&AirtimeRequest> = handled
            .iter()
            .filter_map(|(_, effects)| effects.airtime.as_ref())
            .collect();
        let expected = AirtimeRequest {
            transaction_id,
            phone_number: PhoneNumber::parse("+254712345678").expect("a valid test number"),
            amount: usd("30.50"),
            currency: Currency::USD,
        };
        assert_eq!(requests, vec![&expected]);
        assert!(handled.iter().all(|(_, e)| e.notifications.is_empty()));
    }

    #[tokio::test]
    async fn completed_airtime_tells_the_destination_and_the_outcome() {
        let mut stream = Stream::opened().await;
        stream
            .handle(add_money(TransactionId::new(), "100", Currency::USD))
            .await;
        let transaction_id = TransactionId::new();
        stream
            .handle(send_airtime(transaction_id, "5", "+254700000000"))
            .await;
        let complete = LedgerCommand::CompleteAirtime {
            transaction_id,
            outcome: AirtimeOutcome::Rejected {
                provider_code: "number_rejected".to_owned(),
            },
        };
        let notifications = stream.notifications(complete).await;

        assert_eq!(notifications.len(), 2);
        for notification in &notifications {
            assert_eq!(notification.template, Template::AirtimeSent);
            assert_eq!(notification.outcome, Outcome::Failure);
            assert_eq!(
                value(notification, VALUE_PHONE_NUMBER),
                Some("+254700000000")
            );
            let reason = value(notification, VALUE_FAILURE_REASON);
            assert_eq!(reason, Some("airtime_provider_rejected"));
            assert_eq!(value(notification, VALUE_AMOUNT), Some("5.00"));
        }
        assert_eq!(stream.state.open_transaction_count(), 0);
    }

    #[tokio::test]
    async fn notification_ids_are_the_same_every_time_an_event_is_handled() {
        let mut stream = Stream::opened().await;
        let before = stream.state.clone();
        let handled = stream
            .handle(add_money(TransactionId::new(), "1", Currency::USD))
            .await;
        let (last, first_effects) = handled.last().expect("adding money decides events");

        // Handling the final event again, against the state it first met, changes nothing.
        let mut replayed = before;
        for (envelope, _) in &handled[..handled.len() - 1] {
            replayed.apply(replayed.next_offset(), envelope);
        }
        let again = effects_of(last, &replayed);
        assert_eq!(&again, first_effects);

        let ids: Vec<_> = again
            .notifications
            .iter()
            .map(|n| n.notification_id)
            .collect();
        assert_ne!(ids[0], ids[1], "each channel has its own notification");
    }

    #[tokio::test]
    async fn transactions_of_an_account_never_opened_tell_nobody() {
        let mut stream = Stream {
            ledger: AccountLedger::new(AccountId::new()),
            state: PartitionState::default(),
        };
        let command = add_money(TransactionId::new(), "1", Currency::USD);
        let notifications = stream.notifications(command).await;
        assert_eq!(notifications, Vec::new());
    }
}
