//! What the API reads from the read store, shaped as its responses.
//!
//! The queries belong to the projections crate; this module turns their rows into the JSON
//! the API answers with. Amounts come back at their currency's scale and are answered as
//! strings; times are answered in RFC 3339 UTC.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use tally_commands::log::Topic;
use tally_domain::money::format_at_scale;
use tally_domain::{
    AccountId, BillingAddress, CommandId, Currency, TransactionId, TransactionStatus,
};
use tally_projections::{
    AccountEventRow, AccountView as AccountRow, TransactionView as TransactionRow,
};
use tally_projections::{AsOf, ReadStore, StoredOffset, TransactionCursor, TransactionFilter};
use uuid::Uuid;

use crate::error::ApiError;
use crate::requests::TransactionRequest;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub account_id: Uuid,
    pub account_info: AccountInfoView,
    pub balance: BalanceView,
    pub billing_address: Option<BillingAddress>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub currency: Currency,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfoView {
    pub name: String,
    pub email: String,
    pub phone_number: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceView {
    /// Posted money.
    pub account_balance: String,
    /// What a new transaction may take: posted money less open reservations.
    pub available_balance: String,
    /// Money held by transactions still in flight.
    pub held_balance: String,
    pub currency_code: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionView {
    pub transaction_id: Uuid,
    pub transaction_type: String,
    pub transaction_status: String,
    pub amount: String,
    pub currency_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub account_id: Uuid,
}

impl TransactionView {
    pub fn status_str(&self) -> &'static str {
        match self.transaction_status.as_str() {
            "PROCESSING" => TransactionStatus::Processing.as_str(),
            "SUCCESSFUL" => TransactionStatus::Successful.as_str(),
            "FAILED" => TransactionStatus::Failed.as_str(),
            _ => TransactionStatus::Accepted.as_str(),
        }
    }

    /// A request whose command the projector has not seen yet.
    pub fn accepted(request: TransactionRequest) -> TransactionView {
        let at = rfc3339_ms(request.created_at_ms);
        TransactionView {
            transaction_id: request.transaction_id.0,
            transaction_type: request.transaction_type.as_str().to_owned(),
            transaction_status: TransactionStatus::Accepted.as_str().to_owned(),
            amount: format_at_scale(request.amount.value(), request.currency),
            currency_code: request.currency.code().to_owned(),
            phone_number: request.phone_number.map(String::from),
            failure_reason: None,
            created_at: at.clone(),
            updated_at: at,
            account_id: request.account_id.0,
        }
    }
}

/// What became of an account command, once the read store shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Its events are in the read store.
    Applied,
    /// The account was opened by another command; this one was refused.
    Superseded,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rfc3339_ms(ms: i64) -> String {
    rfc3339(DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default())
}

/// Where the projector stands in each partition it reads.
pub async fn projected_offsets(store: &ReadStore) -> Result<Vec<StoredOffset>, ApiError> {
    store.offsets().await.map_err(read_failed)
}

fn read_failed(error: tally_projections::ProjectionError) -> ApiError {
    ApiError::from_store(error, "read store query failed")
}

pub async fn account(
    store: &ReadStore,
    account_id: AccountId,
) -> Result<Option<AccountView>, ApiError> {
    let row = store.account(account_id).await.map_err(read_failed)?;
    Ok(row.map(account_view))
}

fn account_view(row: AccountRow) -> AccountView {
    let currency = row.currency;
    AccountView {
        account_id: row.account_id.0,
        account_info: AccountInfoView {
            name: row.name,
            email: row.email,
            phone_number: row.phone_number,
        },
        balance: BalanceView {
            account_balance: format_at_scale(row.balance, currency),
            available_balance: format_at_scale(row.available, currency),
            held_balance: format_at_scale(row.held, currency),
            currency_code: currency.code().to_owned(),
        },
        billing_address: row.billing_address,
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        currency,
    }
}

/// Most accounts whose currency is remembered. An entry is a few dozen bytes; at the cap the
/// cache is emptied and refills from the read store.
const CURRENCIES_CACHED_MAX: usize = 100_000;

/// Account currencies, which never change once an account is open: remembered so that a
/// transaction does not cost a read of its account.
#[derive(Default)]
pub struct CurrencyCache {
    currencies: RwLock<HashMap<AccountId, Currency>>,
}

impl CurrencyCache {
    fn get(&self, account_id: AccountId) -> Option<Currency> {
        let currencies = self
            .currencies
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        currencies.get(&account_id).copied()
    }

    fn remember(&self, account_id: AccountId, currency: Currency) {
        let mut currencies = self
            .currencies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if currencies.len() >= CURRENCIES_CACHED_MAX {
            currencies.clear();
        }
        currencies.insert(account_id, currency);
    }
}

/// The currency of the caller's account; 404 when the caller has none.
pub async fn account_currency(
    store: &ReadStore,
    cache: &CurrencyCache,
    account_id: AccountId,
) -> Result<Currency, ApiError> {
    if let Some(currency) = cache.get(account_id) {
        return Ok(currency);
    }
    let view = account(store, account_id).await?;
    let view =
        view.ok_or_else(|| ApiError::not_found("account_not_found", "open an account first"))?;
    cache.remember(account_id, view.currency);
    Ok(view.currency)
}

pub async fn transaction(
    store: &ReadStore,
    transaction_id: TransactionId,
) -> Result<Option<TransactionView>, ApiError> {
    let row = store
        .transaction(transaction_id)
        .await
        .map_err(read_failed)?;
    Ok(row.map(transaction_view))
}

fn transaction_view(row: TransactionRow) -> TransactionView {
    TransactionView {
        transaction_id: row.transaction_id.0,
        transaction_type: row.transaction_type.as_str().to_owned(),
        transaction_status: row.status.as_str().to_owned(),
        amount: format_at_scale(row.amount, row.currency),
        currency_code: row.currency.code().to_owned(),
        phone_number: row.phone_number,
        failure_reason: row.failure_reason.map(|reason| reason.code().to_owned()),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        account_id: row.account_id.0,
    }
}

/// One page of the transactions `filter` selects after `after`, at most `limit`, and the
/// cursor of the page's last row when more rows follow it.
pub async fn transactions_page(
    store: &ReadStore,
    filter: &TransactionFilter,
    after: Option<TransactionCursor>,
    limit: u32,
) -> Result<(Vec<TransactionRow>, Option<TransactionCursor>), ApiError> {
    // One row more than the page says whether another page follows.
    let mut rows = store
        .transactions_page(filter, after, limit + 1)
        .await
        .map_err(read_failed)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = match more {
        true => rows.last().map(TransactionRow::cursor),
        false => None,
    };
    Ok((rows, next))
}

/// Whether the read store shows the events of an account command yet. An opening is
/// superseded when the account was opened by another command; an update of an open account
/// always applies.
pub async fn command_outcome(
    store: &ReadStore,
    account_id: AccountId,
    command_id: CommandId,
    opening: bool,
) -> Result<Option<CommandOutcome>, ApiError> {
    if opening {
        let opened_by = store.opened_by(account_id).await.map_err(read_failed)?;
        let outcome = |opener| match opener == command_id {
            true => CommandOutcome::Applied,
            false => CommandOutcome::Superseded,
        };
        return Ok(opened_by.map(outcome));
    }
    let applied = (store.has_events_caused_by(command_id).await).map_err(read_failed)?;
    Ok(applied.then_some(CommandOutcome::Applied))
}

/// One page of an account's events after `after_sequence`, and the last sequence returned.
pub async fn account_events(
    store: &ReadStore,
    account_id: AccountId,
    after_sequence: u64,
    limit: u32,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    let rows = store
        .account_events(account_id, after_sequence, limit)
        .await
        .map_err(read_failed)?;
    let last = rows.last().map(|row| row.sequence);
    Ok((rows.into_iter().map(event_json).collect(), last))
}

/// One page of a transaction's events after `after_sequence`, and the last sequence returned.
pub async fn transaction_events(
    store: &ReadStore,
    transaction_id: TransactionId,
    after_sequence: u64,
    limit: u32,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    let rows = store
        .transaction_events(transaction_id, after_sequence, limit)
        .await
        .map_err(read_failed)?;
    let last = rows.last().map(|row| row.sequence);
    Ok((rows.into_iter().map(event_json).collect(), last))
}

/// An account's balances as they stood at a moment, computed from its events.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PointInTimeView {
    #[serde(flatten)]
    pub balance: BalanceView,
    /// The moment asked for, as given.
    pub as_of: String,
    /// The last event the balances include.
    pub last_event: Value,
}

/// The account's balances once the events up to `as_of` were applied; `None` when it was not
/// open by then.
pub async fn balance_as_of(
    store: &ReadStore,
    account_id: AccountId,
    as_of: AsOf,
    as_given: String,
) -> Result<Option<PointInTimeView>, ApiError> {
    let folded = store
        .balance_as_of(account_id, as_of)
        .await
        .map_err(read_failed)?;
    Ok(folded.map(|folded| {
        let currency = folded.currency;
        let last = folded.last_event;
        PointInTimeView {
            balance: BalanceView {
                account_balance: format_at_scale(folded.balance, currency),
                available_balance: format_at_scale(folded.available, currency),
                held_balance: format_at_scale(folded.held, currency),
                currency_code: currency.code().to_owned(),
            },
            as_of: as_given,
            last_event: serde_json::json!({
                "sequence": last.sequence,
                "occurredAt": rfc3339(last.occurred_at),
                "log": {
                    "topic": Topic::Events.name(),
                    "partition": last.log_partition,
                    "offset": last.log_offset,
                },
            }),
        }
    }))
}

fn event_json(row: AccountEventRow) -> Value {
    serde_json::json!({
        "eventId": row.event_id,
        "accountId": row.account_id,
        "sequence": row.sequence,
        "eventType": row.event_type,
        "eventVersion": row.event_version,
        "occurredAt": rfc3339(row.occurred_at),
        "correlationId": row.correlation_id,
        "causationId": row.causation_id,
        "log": {
            "topic": row.log_topic.name(),
            "partition": row.log_partition,
            "offset": row.log_offset,
        },
        "payload": row.payload,
        "previousHash": row.previous_hash,
        "hash": row.hash,
    })
}
