//! What the API reads from the read store, shaped as its responses.
//!
//! Amounts are stored at their currency's scale and answered as strings, exactly as stored.
//! Times are answered in RFC 3339 UTC.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use tally_domain::money::format_at_scale;
use tally_domain::{
    AccountId, BillingAddress, CommandId, Currency, TransactionId, TransactionStatus,
};
use tally_projections::ReadStore;
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
        let at = rfc3339(request.created_at_ms);
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

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn corrupt(what: &str) -> ApiError {
    ApiError::internal(anyhow::anyhow!("read store holds a bad {what}"))
}

fn uuid_of(row: &SqliteRow, column: &str) -> Result<Uuid, ApiError> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|_| corrupt(column))
}

pub async fn account(
    store: &ReadStore,
    account_id: AccountId,
) -> Result<Option<AccountView>, ApiError> {
    let row = sqlx::query("SELECT * FROM accounts WHERE account_id = ?")
        .bind(account_id.to_string())
        .fetch_optional(store.pool())
        .await?;
    row.map(|row| account_from_row(&row)).transpose()
}

fn account_from_row(row: &SqliteRow) -> Result<AccountView, ApiError> {
    let currency_code: String = row.try_get("currency")?;
    let currency: Currency = currency_code.parse().map_err(|_| corrupt("currency"))?;
    let billing_address = BillingAddress {
        address_line1: row.try_get("address_line1")?,
        address_line2: row.try_get("address_line2")?,
        city: row.try_get("city")?,
        state: row.try_get("state")?,
        postal_code: row.try_get("postal_code")?,
        country: row.try_get("country")?,
    };
    let has_address = billing_address != BillingAddress::default();
    Ok(AccountView {
        account_id: uuid_of(row, "account_id")?,
        account_info: AccountInfoView {
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            phone_number: row.try_get("phone_number")?,
        },
        balance: BalanceView {
            account_balance: row.try_get("balance")?,
            available_balance: row.try_get("available")?,
            held_balance: row.try_get("held")?,
            currency_code,
        },
        billing_address: has_address.then_some(billing_address),
        created_at: rfc3339(row.try_get("created_at_ms")?),
        updated_at: rfc3339(row.try_get("updated_at_ms")?),
        currency,
    })
}

/// The currency of the caller's account; 404 when the caller has none.
pub async fn account_currency(
    store: &ReadStore,
    account_id: AccountId,
) -> Result<Currency, ApiError> {
    let view = account(store, account_id).await?;
    let view =
        view.ok_or_else(|| ApiError::not_found("account_not_found", "open an account first"))?;
    Ok(view.currency)
}

pub async fn transaction(
    store: &ReadStore,
    transaction_id: TransactionId,
) -> Result<Option<TransactionView>, ApiError> {
    let row = sqlx::query("SELECT * FROM transactions WHERE transaction_id = ?")
        .bind(transaction_id.to_string())
        .fetch_optional(store.pool())
        .await?;
    row.map(|row| transaction_from_row(&row)).transpose()
}

fn transaction_from_row(row: &SqliteRow) -> Result<TransactionView, ApiError> {
    Ok(TransactionView {
        transaction_id: uuid_of(row, "transaction_id")?,
        transaction_type: row.try_get("transaction_type")?,
        transaction_status: row.try_get("status")?,
        amount: row.try_get("amount")?,
        currency_code: row.try_get("currency")?,
        phone_number: row.try_get("phone_number")?,
        failure_reason: row.try_get("failure_reason")?,
        created_at: rfc3339(row.try_get("created_at_ms")?),
        updated_at: rfc3339(row.try_get("updated_at_ms")?),
        account_id: uuid_of(row, "account_id")?,
    })
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
        let opened_by: Option<String> = sqlx::query_scalar(
            "SELECT causation_id FROM account_events \
             WHERE account_id = ? AND event_type = 'AccountOpened'",
        )
        .bind(account_id.to_string())
        .fetch_optional(store.pool())
        .await?;
        return Ok(opened_by.map(
            |causation_id| match causation_id == command_id.to_string() {
                true => CommandOutcome::Applied,
                false => CommandOutcome::Superseded,
            },
        ));
    }
    let applied = sqlx::query("SELECT 1 FROM account_events WHERE causation_id = ? LIMIT 1")
        .bind(command_id.to_string())
        .fetch_optional(store.pool())
        .await?;
    Ok(applied.map(|_| CommandOutcome::Applied))
}

/// One page of an account's events after `after_sequence`, and the last sequence returned.
pub async fn account_events(
    store: &ReadStore,
    account_id: AccountId,
    after_sequence: u64,
    limit: u32,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    let rows = sqlx::query(
        "SELECT * FROM account_events WHERE account_id = ? AND sequence > ? \
         ORDER BY sequence LIMIT ?",
    )
    .bind(account_id.to_string())
    .bind(i64::try_from(after_sequence).unwrap_or(i64::MAX))
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await?;
    let events = rows
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let last = rows
        .last()
        .map(|row| row.try_get::<i64, _>("sequence"))
        .transpose()?;
    Ok((
        events,
        last.and_then(|sequence| u64::try_from(sequence).ok()),
    ))
}

fn event_from_row(row: &SqliteRow) -> Result<Value, ApiError> {
    let payload: String = row.try_get("payload")?;
    let payload: Value = serde_json::from_str(&payload).map_err(|_| corrupt("event payload"))?;
    Ok(serde_json::json!({
        "eventId": row.try_get::<String, _>("event_id")?,
        "accountId": row.try_get::<String, _>("account_id")?,
        "sequence": row.try_get::<i64, _>("sequence")?,
        "eventType": row.try_get::<String, _>("event_type")?,
        "eventVersion": row.try_get::<i64, _>("event_version")?,
        "occurredAt": rfc3339(row.try_get("occurred_at_ms")?),
        "correlationId": row.try_get::<String, _>("correlation_id")?,
        "causationId": row.try_get::<String, _>("causation_id")?,
        "log": {
            "topic": row.try_get::<String, _>("log_topic")?,
            "partition": row.try_get::<i64, _>("log_partition")?,
            "offset": row.try_get::<i64, _>("log_offset")?,
        },
        "payload": payload,
    }))
}
