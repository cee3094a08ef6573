//! Every read of the read tables: the API's queries, and the rows the projector loads before
//! it folds a batch. Rows come back typed; a value the read side never writes is an error, not
//! a default.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::{Serialize, Serializer};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqliteExecutor};
use tally_commands::log::{Topic, TopicPartition};
use tally_domain::{
    AccountId, BillingAddress, CommandId, Currency, EventId, FailureReason, TransactionId,
    TransactionStatus, TransactionType,
};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::store::ReadStore;

/// The most events one `account_events` call returns. An audit page of this size is a few
/// hundred kilobytes of JSON; callers page on with `after_sequence`.
pub const ACCOUNT_EVENTS_PAGE_SIZE_MAX: u32 = 500;

/// Ids bound in one `IN (...)` list. SQLite accepts 32,766 bound values and MySQL 65,535; a
/// batch of a thousand records rarely names more ids than this, so one statement usually does.
const IDS_PER_STATEMENT_MAX: usize = 500;

const ACCOUNT_COLUMNS: &str = "account_id, name, email, phone_number, address_line1, \
    address_line2, city, state, postal_code, country, currency, balance, held, available, \
    sequence, last_causation_id, created_at_ms, updated_at_ms";

const TRANSACTION_COLUMNS: &str = "transaction_id, account_id, transaction_type, status, \
    amount, currency, phone_number, failure_reason, provider_reference, created_at_ms, \
    updated_at_ms";

/// An account as the read model holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub account_id: AccountId,
    pub name: String,
    pub email: String,
    pub phone_number: String,
    /// `None` when the account has no billing address field at all.
    pub billing_address: Option<BillingAddress>,
    pub currency: Currency,
    /// Posted money, at the currency's scale.
    pub balance: Decimal,
    /// Money held by open reservations.
    pub held: Decimal,
    /// `balance - held`.
    pub available: Decimal,
    /// The sequence number of the last event of the account's stream applied.
    pub sequence: u64,
    /// The command of the last AccountOpened or AccountUpdated.
    pub last_causation_id: CommandId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A transaction as the read model holds it. Carries its account so the API can check that
/// the caller owns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionView {
    pub transaction_id: TransactionId,
    pub account_id: AccountId,
    pub transaction_type: TransactionType,
    pub status: TransactionStatus,
    pub amount: Decimal,
    pub currency: Currency,
    pub phone_number: Option<String>,
    pub failure_reason: Option<FailureReason>,
    pub provider_reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One event of an account's stream, for the audit view.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountEventRow {
    pub account_id: AccountId,
    pub sequence: u64,
    pub event_id: EventId,
    pub event_type: String,
    pub event_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    #[serde(serialize_with = "topic_name")]
    pub log_topic: Topic,
    pub log_partition: u32,
    pub log_offset: u64,
    /// The event payload, as in the `event` field of its envelope.
    pub payload: serde_json::Value,
}

/// How far the projection has read one log partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredOffset {
    #[serde(serialize_with = "topic_name")]
    pub topic: Topic,
    pub partition: u32,
    /// The next offset the projection will apply: every record before it is in the tables.
    pub next_offset: u64,
    /// Records of the partition skipped because they could not be decoded.
    pub skipped_records: u64,
}

impl StoredOffset {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic,
            partition: self.partition,
        }
    }
}

impl ReadStore {
    pub async fn account(
        &self,
        account_id: AccountId,
    ) -> Result<Option<AccountView>, ProjectionError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    pub async fn transaction(
        &self,
        transaction_id: TransactionId,
    ) -> Result<Option<TransactionView>, ProjectionError> {
        let sql =
            format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE transaction_id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(transaction_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(transaction_from_row).transpose()
    }

    /// The account's events after `after_sequence` (0 for the first page), oldest first, at
    /// most `limit` and never more than [`ACCOUNT_EVENTS_PAGE_SIZE_MAX`].
    pub async fn account_events(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<AccountEventRow>, ProjectionError> {
        let limit = limit.min(ACCOUNT_EVENTS_PAGE_SIZE_MAX);
        let rows = sqlx::query(
            "SELECT account_id, sequence, event_id, event_type, event_version, occurred_at_ms, \
             correlation_id, causation_id, log_topic, log_partition, log_offset, payload \
             FROM account_events WHERE account_id = ? AND sequence > ? \
             ORDER BY sequence LIMIT ?",
        )
        .bind(account_id.to_string())
        .bind(to_sql(after_sequence))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(account_event_from_row).collect()
    }

    /// How far the projection has read every partition it has applied records from.
    pub async fn offsets(&self) -> Result<Vec<StoredOffset>, ProjectionError> {
        stored_offsets(self.pool(), crate::projector::PROJECTION_NAME).await
    }
}

/// The stored offsets of `projection`, sorted by topic and partition.
pub(crate) async fn stored_offsets<'c>(
    executor: impl SqliteExecutor<'c>,
    projection: &str,
) -> Result<Vec<StoredOffset>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT topic, partition_no, next_offset, skipped_records FROM projection_offsets \
         WHERE projection = ? ORDER BY topic, partition_no",
    )
    .bind(projection)
    .fetch_all(executor)
    .await?;
    rows.iter().map(offset_from_row).collect()
}

/// The accounts among `ids` that have a row.
pub(crate) async fn accounts_by_id(
    conn: &mut SqliteConnection,
    ids: &[AccountId],
) -> Result<HashMap<AccountId, AccountView>, ProjectionError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT_MAX) {
        let select = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id IN (");
        let rows = select_in(select, chunk)
            .build()
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let account = account_from_row(row)?;
            found.insert(account.account_id, account);
        }
    }
    Ok(found)
}

/// The transactions among `ids` that have a row.
pub(crate) async fn transactions_by_id(
    conn: &mut SqliteConnection,
    ids: &[TransactionId],
) -> Result<HashMap<TransactionId, TransactionView>, ProjectionError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT_MAX) {
        let select =
            format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE transaction_id IN (");
        let rows = select_in(select, chunk)
            .build()
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let transaction = transaction_from_row(row)?;
            found.insert(transaction.transaction_id, transaction);
        }
    }
    Ok(found)
}

/// The sequence of the last projected event of each stream among `ids` that has one. Read
/// from the audit table rather than `accounts`, since a stream may have events before its
/// account is opened.
pub(crate) async fn stream_heads(
    conn: &mut SqliteConnection,
    ids: &[AccountId],
) -> Result<HashMap<AccountId, u64>, ProjectionError> {
    let mut heads = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT_MAX) {
        let select = "SELECT account_id, MAX(sequence) AS head FROM account_events \
                      WHERE account_id IN (";
        let mut query = select_in(select.to_owned(), chunk);
        query.push(" GROUP BY account_id");
        for row in query.build().fetch_all(&mut *conn).await? {
            let account_id = AccountId(uuid_column(&row, "account_id")?);
            heads.insert(account_id, unsigned_column(&row, "head")?);
        }
    }
    Ok(heads)
}

/// `select` (ending in `IN (`) followed by the bound ids and the closing parenthesis.
fn select_in<Id: ToString>(select: String, ids: &[Id]) -> QueryBuilder<Sqlite> {
    let mut query = QueryBuilder::new(select);
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id.to_string());
    }
    list.push_unseparated(")");
    query
}

fn account_from_row(row: &SqliteRow) -> Result<AccountView, ProjectionError> {
    let billing_address = BillingAddress {
        address_line1: row.try_get("address_line1")?,
        address_line2: row.try_get("address_line2")?,
        city: row.try_get("city")?,
        state: row.try_get("state")?,
        postal_code: row.try_get("postal_code")?,
        country: row.try_get("country")?,
    };
    let billing_address = (billing_address != BillingAddress::default()).then_some(billing_address);
    Ok(AccountView {
        account_id: AccountId(uuid_column(row, "account_id")?),
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        phone_number: row.try_get("phone_number")?,
        billing_address,
        currency: currency_column(row, "currency")?,
        balance: money_column(row, "balance")?,
        held: money_column(row, "held")?,
        available: money_column(row, "available")?,
        sequence: unsigned_column(row, "sequence")?,
        last_causation_id: CommandId(uuid_column(row, "last_causation_id")?),
        created_at: time_column(row, "created_at_ms")?,
        updated_at: time_column(row, "updated_at_ms")?,
    })
}

fn transaction_from_row(row: &SqliteRow) -> Result<TransactionView, ProjectionError> {
    let failure_reason: Option<String> = row.try_get("failure_reason")?;
    Ok(TransactionView {
        transaction_id: TransactionId(uuid_column(row, "transaction_id")?),
        account_id: AccountId(uuid_column(row, "account_id")?),
        transaction_type: enum_column(row, "transaction_type")?,
        status: enum_column(row, "status")?,
        amount: money_column(row, "amount")?,
        currency: currency_column(row, "currency")?,
        phone_number: row.try_get("phone_number")?,
        failure_reason: failure_reason
            .map(|code| enum_from_text("failure_reason", &code))
            .transpose()?,
        provider_reference: row.try_get("provider_reference")?,
        created_at: time_column(row, "created_at_ms")?,
        updated_at: time_column(row, "updated_at_ms")?,
    })
}

fn account_event_from_row(row: &SqliteRow) -> Result<AccountEventRow, ProjectionError> {
    let payload: String = row.try_get("payload")?;
    let payload = serde_json::from_str(&payload).map_err(|_| unreadable("payload", &payload))?;
    let event_version = unsigned_column(row, "event_version")?;
    Ok(AccountEventRow {
        account_id: AccountId(uuid_column(row, "account_id")?),
        sequence: unsigned_column(row, "sequence")?,
        event_id: EventId(uuid_column(row, "event_id")?),
        event_type: row.try_get("event_type")?,
        event_version: u32::try_from(event_version)
            .map_err(|_| unreadable("event_version", event_version))?,
        occurred_at: time_column(row, "occurred_at_ms")?,
        correlation_id: uuid_column(row, "correlation_id")?,
        causation_id: uuid_column(row, "causation_id")?,
        log_topic: topic_column(row, "log_topic")?,
        log_partition: partition_column(row, "log_partition")?,
        log_offset: unsigned_column(row, "log_offset")?,
        payload,
    })
}

fn offset_from_row(row: &SqliteRow) -> Result<StoredOffset, ProjectionError> {
    Ok(StoredOffset {
        topic: topic_column(row, "topic")?,
        partition: partition_column(row, "partition_no")?,
        next_offset: unsigned_column(row, "next_offset")?,
        skipped_records: unsigned_column(row, "skipped_records")?,
    })
}

/// An offset, sequence or count as SQLite stores it. Every one of them fits: they count
/// records and events, far below 2^63.
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unreadable(column: &'static str, value: impl ToString) -> ProjectionError {
    ProjectionError::UnreadableColumn {
        column,
        value: value.to_string(),
    }
}

fn uuid_column(row: &SqliteRow, column: &'static str) -> Result<Uuid, ProjectionError> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|_| unreadable(column, text))
}

fn money_column(row: &SqliteRow, column: &'static str) -> Result<Decimal, ProjectionError> {
    let text: String = row.try_get(column)?;
    Decimal::from_str_exact(&text).map_err(|_| unreadable(column, text))
}

fn currency_column(row: &SqliteRow, column: &'static str) -> Result<Currency, ProjectionError> {
    let text: String = row.try_get(column)?;
    text.parse().map_err(|_| unreadable(column, text))
}

fn unsigned_column(row: &SqliteRow, column: &'static str) -> Result<u64, ProjectionError> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| unreadable(column, value))
}

fn partition_column(row: &SqliteRow, column: &'static str) -> Result<u32, ProjectionError> {
    let value: i64 = row.try_get(column)?;
    u32::try_from(value).map_err(|_| unreadable(column, value))
}

fn time_column(row: &SqliteRow, column: &'static str) -> Result<DateTime<Utc>, ProjectionError> {
    let millis: i64 = row.try_get(column)?;
    DateTime::from_timestamp_millis(millis).ok_or_else(|| unreadable(column, millis))
}

fn topic_column(row: &SqliteRow, column: &'static str) -> Result<Topic, ProjectionError> {
    let name: String = row.try_get(column)?;
    Topic::ALL
        .into_iter()
        .find(|topic| topic.name() == name)
        .ok_or_else(|| unreadable(column, name))
}

fn enum_column<T: DeserializeOwned>(
    row: &SqliteRow,
    column: &'static str,
) -> Result<T, ProjectionError> {
    let text: String = row.try_get(column)?;
    enum_from_text(column, &text)
}

/// Reads a unit enum variant back from the name serde gives it, which is the text the
/// projector writes (`as_str` and `code` agree with the serde names).
fn enum_from_text<T: DeserializeOwned>(
    column: &'static str,
    text: &str,
) -> Result<T, ProjectionError> {
    T::deserialize(StrDeserializer::<ValueError>::new(text)).map_err(|_| unreadable(column, text))
}

fn topic_name<S: Serializer>(topic: &Topic, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(topic.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_types_and_failure_reasons_read_back_from_the_text_written() {
        let statuses = [
            TransactionStatus::Accepted,
            TransactionStatus::Processing,
            TransactionStatus::Successful,
            TransactionStatus::Failed,
        ];
        for status in statuses {
            assert_eq!(enum_from_text("status", status.as_str()).ok(), Some(status));
        }
        let types = [
            TransactionType::AddMoney,
            TransactionType::SendAirtime,
            TransactionType::AdminCredit,
            TransactionType::AdminDebit,
        ];
        for kind in types {
            assert_eq!(enum_from_text("type", kind.as_str()).ok(), Some(kind));
        }
        let reasons = [
            FailureReason::InsufficientFunds,
            FailureReason::CurrencyMismatch,
            FailureReason::AccountNotFound,
            FailureReason::BalanceAboveMaximum,
            FailureReason::AirtimeProviderRejected,
            FailureReason::ReservationConflict,
        ];
        for reason in reasons {
            assert_eq!(enum_from_text("reason", reason.code()).ok(), Some(reason));
        }
    }

    #[test]
    fn unknown_enum_text_is_an_unreadable_column() {
        let read = enum_from_text::<TransactionStatus>("status", "PENDING");
        assert!(matches!(
            read,
            Err(ProjectionError::UnreadableColumn {
                column: "status",
                ..
            })
        ));
    }
}
