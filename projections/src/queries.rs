//! Every read of the read tables: the API's queries, and the rows the projector loads before
//! it folds a batch. Rows come back typed; a value the read side never writes is an error, not
//! a default.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::de::DeserializeOwned;
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::{Serialize, Serializer};
use sqlx::Pool;
use tally_commands::log::{Topic, TopicPartition};
use tally_domain::{
    AccountId, BillingAddress, CommandId, Currency, EventHash, EventId, FailureReason,
    TransactionId, TransactionStatus, TransactionType,
};
use uuid::Uuid;

use crate::analysis::{self, Current, DestinationKey, Tally, VolumeKey};
use crate::backend::{Backend, Get};
use crate::error::ProjectionError;
use crate::money::Money;
use crate::sql::Sql;
use crate::store::{ReadStore, Snapshot, with_snapshot};
use crate::with_pool;

/// The most events one `account_events` call returns. An audit page of this size is a few
/// hundred kilobytes of JSON; callers page on with `after_sequence`.
pub const ACCOUNT_EVENTS_PAGE_SIZE_MAX: u32 = 500;

/// The most transactions one `transactions_page` call returns. A page of this size is a few
/// hundred kilobytes however it is shown; callers page on with its last row's cursor.
pub const TRANSACTIONS_PAGE_SIZE_MAX: u32 = 1_000;

/// Ids bound in one `IN (...)` list: well inside every backend's `BOUND_VALUES_MAX`, and a
/// batch of a thousand records rarely names more ids than this, so one statement usually does.
const IDS_PER_STATEMENT_MAX: usize = 500;

const ACCOUNT_COLUMNS: &str = "account_id, name, email, phone_number, address_line1, \
    address_line2, city, state, postal_code, country, currency, balance, held, available, \
    sequence, last_causation_id, created_at_ms, updated_at_ms";

/// The columns [`account_event_from_row`] reads.
pub(crate) const ACCOUNT_EVENT_COLUMNS: &str = "account_id, sequence, event_id, event_type, \
    event_version, occurred_at_ms, correlation_id, causation_id, log_topic, log_partition, \
    log_offset, payload, previous_hash, hash";

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
    /// The hash of the event before it in its partition's chain; `None` for an event written
    /// before events were chained.
    pub previous_hash: Option<EventHash>,
    /// The event's own hash in the chain.
    pub hash: Option<EventHash>,
}

/// Which transactions a listing selects. Every field that is set narrows it; the default
/// selects every transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransactionFilter {
    pub account_id: Option<AccountId>,
    pub status: Option<TransactionStatus>,
    pub transaction_type: Option<TransactionType>,
    /// Created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// An amount at least this, exactly, in any currency.
    pub amount_min: Option<Decimal>,
    /// An amount at most this, exactly, in any currency.
    pub amount_max: Option<Decimal>,
}

/// A place in the listing order, creation time then id: a page starts after it. Keyed on
/// values, not on a count of rows, so rows inserted elsewhere never shift a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionCursor {
    pub created_at_ms: i64,
    pub transaction_id: TransactionId,
}

impl TransactionView {
    /// The place of this row in the listing order.
    pub fn cursor(&self) -> TransactionCursor {
        TransactionCursor {
            created_at_ms: self.created_at.timestamp_millis(),
            transaction_id: self.transaction_id,
        }
    }
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
        with_pool!(self, pool => select_account(pool, account_id).await)
    }

    pub async fn transaction(
        &self,
        transaction_id: TransactionId,
    ) -> Result<Option<TransactionView>, ProjectionError> {
        with_pool!(self, pool => select_transaction(pool, transaction_id).await)
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
        with_pool!(self, pool => {
            select_account_events(pool, account_id, after_sequence, limit).await
        })
    }

    /// The transactions `filter` selects, oldest first (by creation time, then id), starting
    /// after `after` (from the first when `None`), at most `limit` and never more than
    /// [`TRANSACTIONS_PAGE_SIZE_MAX`].
    pub async fn transactions_page(
        &self,
        filter: &TransactionFilter,
        after: Option<TransactionCursor>,
        limit: u32,
    ) -> Result<Vec<TransactionView>, ProjectionError> {
        let limit = limit.min(TRANSACTIONS_PAGE_SIZE_MAX);
        with_pool!(self, pool => select_transactions_page(pool, filter, after, limit).await)
    }

    /// The command whose AccountOpened opened the account, once the store shows it.
    pub async fn opened_by(
        &self,
        account_id: AccountId,
    ) -> Result<Option<CommandId>, ProjectionError> {
        with_pool!(self, pool => select_opened_by(pool, account_id).await)
    }

    /// Whether the store shows any event the command `command_id` caused.
    pub async fn has_events_caused_by(
        &self,
        command_id: CommandId,
    ) -> Result<bool, ProjectionError> {
        with_pool!(self, pool => select_caused_by(pool, command_id).await)
    }

    /// How far the projection has read every partition it has applied records from.
    pub async fn offsets(&self) -> Result<Vec<StoredOffset>, ProjectionError> {
        with_pool!(self, pool => select_projector_offsets(pool).await)
    }

    /// The generation of the projected tables: it moves each time a rebuilt set is swapped
    /// in. Offsets read after it belong to that generation or a later one.
    pub async fn generation(&self) -> Result<u64, ProjectionError> {
        with_pool!(self, pool => select_generation(pool).await)
    }
}

impl Snapshot {
    /// How far the projection had read every partition at the snapshot's moment.
    pub async fn offsets(&mut self) -> Result<Vec<StoredOffset>, ProjectionError> {
        with_snapshot!(self, DB, conn => {
            select_offsets::<DB>(conn, crate::projector::PROJECTION_NAME, "").await
        })
    }
}

async fn select_account<DB: Backend>(
    pool: &Pool<DB>,
    account_id: AccountId,
) -> Result<Option<AccountView>, ProjectionError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?");
    let row = Sql::<DB>::new(sql)
        .bind(account_id.to_string())
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
    row.as_ref().map(account_from_row::<DB>).transpose()
}

async fn select_transaction<DB: Backend>(
    pool: &Pool<DB>,
    transaction_id: TransactionId,
) -> Result<Option<TransactionView>, ProjectionError> {
    let sql = format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE transaction_id = ?");
    let row = Sql::<DB>::new(sql)
        .bind(transaction_id.to_string())
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
    row.as_ref().map(transaction_from_row::<DB>).transpose()
}

pub(crate) async fn select_account_events<DB: Backend>(
    pool: &Pool<DB>,
    account_id: AccountId,
    after_sequence: u64,
    limit: u32,
) -> Result<Vec<AccountEventRow>, ProjectionError> {
    let account_id = account_id.to_string();
    select_events_page(pool, "account_id", account_id, after_sequence, limit).await
}

/// A page of the events whose `column` (`account_id` or `correlation_id`, never caller input)
/// equals `value`, in stream order after `after_sequence`.
pub(crate) async fn select_events_page<DB: Backend>(
    pool: &Pool<DB>,
    column: &'static str,
    value: String,
    after_sequence: u64,
    limit: u32,
) -> Result<Vec<AccountEventRow>, ProjectionError> {
    let rows = Sql::<DB>::new(format!(
        "SELECT {ACCOUNT_EVENT_COLUMNS} FROM account_events \
         WHERE {column} = ? AND sequence > ? ORDER BY sequence LIMIT ?"
    ))
    .bind(value)
    .bind(to_sql(after_sequence))
    .bind(i64::from(limit))
    .fetch_all(&mut *pool.acquire().await?)
    .await?;
    rows.iter().map(account_event_from_row::<DB>).collect()
}

async fn select_transactions_page<DB: Backend>(
    pool: &Pool<DB>,
    filter: &TransactionFilter,
    after: Option<TransactionCursor>,
    limit: u32,
) -> Result<Vec<TransactionView>, ProjectionError> {
    let mut select = Sql::<DB>::new(format!(
        "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE 1 = 1"
    ));
    push_filter(&mut select, filter);
    if let Some(after) = after {
        // The first condition alone is a range on the index; the second leaves out the rows
        // of the cursor's own millisecond up to and including the cursor.
        select
            .push(" AND created_at_ms >= ")
            .push_bind(after.created_at_ms)
            .push(" AND (created_at_ms > ")
            .push_bind(after.created_at_ms)
            .push(" OR transaction_id > ")
            .push_bind(after.transaction_id.to_string())
            .push(")");
    }
    select
        .push(" ORDER BY created_at_ms, transaction_id LIMIT ")
        .push_bind(i64::from(limit));
    let rows = select.fetch_all(&mut *pool.acquire().await?).await?;
    rows.iter().map(transaction_from_row::<DB>).collect()
}

/// Appends ` AND ...` for each condition of `filter`.
fn push_filter<DB: Backend>(select: &mut Sql<DB>, filter: &TransactionFilter) {
    if let Some(account_id) = filter.account_id {
        select
            .push(" AND account_id = ")
            .push_bind(account_id.to_string());
    }
    if let Some(status) = filter.status {
        select.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(kind) = filter.transaction_type {
        select
            .push(" AND transaction_type = ")
            .push_bind(kind.as_str());
    }
    if let Some(from) = filter.created_from {
        select
            .push(" AND created_at_ms >= ")
            .push_bind(from.timestamp_millis());
    }
    if let Some(before) = filter.created_before {
        select
            .push(" AND created_at_ms < ")
            .push_bind(before.timestamp_millis());
    }
    let amount = DB::money_ten_thousandths("amount");
    if let Some(min) = filter.amount_min {
        let at_least = ten_thousandths(min, Decimal::ceil);
        select
            .push(&format!(" AND {amount} >= "))
            .push_bind(at_least);
    }
    if let Some(max) = filter.amount_max {
        let at_most = ten_thousandths(max, Decimal::floor);
        select
            .push(&format!(" AND {amount} <= "))
            .push_bind(at_most);
    }
}

/// `value` in ten-thousandths, rounded by `round` to a whole number: up for a lower bound and
/// down for an upper one, so that an integer comparison selects exactly the amounts the
/// decimal bound does. A bound beyond what 64 bits hold is beyond every amount, and is held
/// at the 64-bit limit on its side.
fn ten_thousandths(value: Decimal, round: fn(&Decimal) -> Decimal) -> i64 {
    let saturated = if value.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    };
    let scaled = value.checked_mul(Decimal::from(10_000));
    scaled
        .and_then(|scaled| round(&scaled).to_i64())
        .unwrap_or(saturated)
}

async fn select_opened_by<DB: Backend>(
    pool: &Pool<DB>,
    account_id: AccountId,
) -> Result<Option<CommandId>, ProjectionError> {
    let row = Sql::<DB>::new(
        "SELECT causation_id FROM account_events \
         WHERE account_id = ? AND event_type = 'AccountOpened'",
    )
    .bind(account_id.to_string())
    .fetch_optional(&mut *pool.acquire().await?)
    .await?;
    let causation_id = row.map(|row| uuid_column::<DB>(&row, "causation_id"));
    Ok(causation_id.transpose()?.map(CommandId))
}

async fn select_caused_by<DB: Backend>(
    pool: &Pool<DB>,
    command_id: CommandId,
) -> Result<bool, ProjectionError> {
    let row = Sql::<DB>::new("SELECT 1 FROM account_events WHERE causation_id = ? LIMIT 1")
        .bind(command_id.to_string())
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
    Ok(row.is_some())
}

async fn select_projector_offsets<DB: Backend>(
    pool: &Pool<DB>,
) -> Result<Vec<StoredOffset>, ProjectionError> {
    let conn = &mut *pool.acquire().await?;
    select_offsets::<DB>(conn, crate::projector::PROJECTION_NAME, "").await
}

async fn select_generation<DB: Backend>(pool: &Pool<DB>) -> Result<u64, ProjectionError> {
    let conn = &mut *pool.acquire().await?;
    generation::<DB>(conn, crate::projector::PROJECTION_NAME, "").await
}

/// The generation of `projection`'s tables (0 in a store that never had them swapped), read
/// with the given lock clause.
pub(crate) async fn generation<DB: Backend>(
    conn: &mut DB::Connection,
    projection: &str,
    lock: &str,
) -> Result<u64, ProjectionError> {
    let sql = format!("SELECT generation FROM projection_control WHERE projection = ?{lock}");
    let row = (Sql::<DB>::new(sql).bind(projection.to_owned()))
        .fetch_optional(conn)
        .await?;
    row.map_or(Ok(0), |row| unsigned_column::<DB>(&row, "generation"))
}

/// The stored offsets of `projection`, locked until the transaction ends: a second writer
/// that reads them waits until this one has committed the offsets it moved.
pub(crate) async fn stored_offsets_for_update<DB: Backend>(
    conn: &mut DB::Connection,
    projection: &str,
) -> Result<Vec<StoredOffset>, ProjectionError> {
    select_offsets::<DB>(conn, projection, DB::FOR_UPDATE).await
}

pub(crate) async fn select_offsets<DB: Backend>(
    conn: &mut DB::Connection,
    projection: &str,
    lock: &str,
) -> Result<Vec<StoredOffset>, ProjectionError> {
    let sql = format!(
        "SELECT topic, partition_no, next_offset, skipped_records FROM projection_offsets \
         WHERE projection = ? ORDER BY topic, partition_no{lock}"
    );
    let rows = (Sql::<DB>::new(sql).bind(projection.to_owned()))
        .fetch_all(conn)
        .await?;
    rows.iter().map(offset_from_row::<DB>).collect()
}

/// The accounts among `ids` that have a row.
pub(crate) async fn accounts_by_id<DB: Backend>(
    conn: &mut DB::Connection,
    ids: &[AccountId],
) -> Result<HashMap<AccountId, AccountView>, ProjectionError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT_MAX) {
        let select = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id IN ");
        for row in &select_in::<DB, _>(select, chunk).fetch_all(conn).await? {
            let account = account_from_row::<DB>(row)?;
            found.insert(account.account_id, account);
        }
    }
    Ok(found)
}

/// The transactions among `ids` that have a row.
pub(crate) async fn transactions_by_id<DB: Backend>(
    conn: &mut DB::Connection,
    ids: &[TransactionId],
) -> Result<HashMap<TransactionId, TransactionView>, ProjectionError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT_MAX) {
        let select =
            format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE transaction_id IN ");
        for row in &select_in::<DB, _>(select, chunk).fetch_all(conn).await? {
            let transaction = transaction_from_row::<DB>(row)?;
            found.insert(transaction.transaction_id, transaction);
        }
    }
    Ok(found)
}

/// The rows of both analysis tables on `days`, locked until the transaction ends: projectors
/// of other partitions move the same rows, and each must add to what the last one committed.
/// Every row of a day is read, which is a handful per type, currency and destination.
pub(crate) async fn analysis_rows_for_update<DB: Backend>(
    conn: &mut DB::Connection,
    days: &[NaiveDate],
) -> Result<Current, ProjectionError> {
    let mut current = Current::default();
    let days: Vec<String> = (days.iter())
        .map(|day| day.format(analysis::DAY_FORMAT).to_string())
        .collect();
    for chunk in days.chunks(IDS_PER_STATEMENT_MAX) {
        let select = "SELECT day, transaction_type, currency, status, transaction_count, \
                      amount_total FROM daily_transaction_volumes WHERE day IN ";
        for row in &locked_days::<DB>(select, chunk).fetch_all(conn).await? {
            let (key, tally) = volume_from_row::<DB>(row)?;
            current.volumes.insert(key, tally);
        }
        let select = "SELECT day, calling_code, currency, status, transaction_count, \
                      amount_total FROM daily_airtime_destinations WHERE day IN ";
        for row in &locked_days::<DB>(select, chunk).fetch_all(conn).await? {
            let (key, tally) = destination_from_row::<DB>(row)?;
            current.destinations.insert(key, tally);
        }
    }
    Ok(current)
}

/// `select` (ending in `IN `) for `days`, in key order, locking what it reads.
fn locked_days<DB: Backend>(select: &str, days: &[String]) -> Sql<DB> {
    let mut query = select_in::<DB, _>(select.to_owned(), days);
    query.push(" ORDER BY 1, 2, 3, 4").push(DB::FOR_UPDATE);
    query
}

fn volume_from_row<DB: Backend>(row: &DB::Row) -> Result<(VolumeKey, Tally), ProjectionError> {
    let kind: TransactionType = enum_column::<DB, _>(row, "transaction_type")?;
    let status: TransactionStatus = enum_column::<DB, _>(row, "status")?;
    let currency = currency_column::<DB>(row, "currency")?;
    let key = VolumeKey {
        day: day_column::<DB>(row, "day")?,
        transaction_type: kind.as_str(),
        currency,
        status: status.as_str(),
    };
    Ok((key, tally_from_row::<DB>(row, currency)?))
}

fn destination_from_row<DB: Backend>(
    row: &DB::Row,
) -> Result<(DestinationKey, Tally), ProjectionError> {
    let status: TransactionStatus = enum_column::<DB, _>(row, "status")?;
    let currency = currency_column::<DB>(row, "currency")?;
    let key = DestinationKey {
        day: day_column::<DB>(row, "day")?,
        calling_code: row.value("calling_code")?,
        currency,
        status: status.as_str(),
    };
    Ok((key, tally_from_row::<DB>(row, currency)?))
}

fn tally_from_row<DB: Backend>(
    row: &DB::Row,
    currency: Currency,
) -> Result<Tally, ProjectionError> {
    Ok(Tally {
        count: row.value("transaction_count")?,
        amount: money_column::<DB>(row, "amount_total", currency)?,
    })
}

fn day_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<NaiveDate, ProjectionError> {
    let text: String = row.value(column)?;
    NaiveDate::parse_from_str(&text, analysis::DAY_FORMAT).map_err(|_| unreadable(column, text))
}

/// The sequence of the last projected event of each stream among `ids` that has one. Read
/// from the audit table rather than `accounts`, since a stream may have events before its
/// account is opened.
pub(crate) async fn stream_heads<DB: Backend>(
    conn: &mut DB::Connection,
    ids: &[AccountId],
) -> Result<HashMap<AccountId, u64>, ProjectionError> {
    let mut heads = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT_MAX) {
        let select = "SELECT account_id, MAX(sequence) AS head FROM account_events \
                      WHERE account_id IN ";
        let mut query = select_in::<DB, _>(select.to_owned(), chunk);
        query.push(" GROUP BY account_id");
        for row in query.fetch_all(conn).await? {
            let account_id = AccountId(uuid_column::<DB>(&row, "account_id")?);
            heads.insert(account_id, unsigned_column::<DB>(&row, "head")?);
        }
    }
    Ok(heads)
}

/// `select` (ending in `IN `) followed by the bound ids in parentheses.
fn select_in<DB: Backend, Id: ToString>(select: String, ids: &[Id]) -> Sql<DB> {
    let mut query = Sql::new(select);
    query.push_list(ids.iter().map(ToString::to_string));
    query
}

fn account_from_row<DB: Backend>(row: &DB::Row) -> Result<AccountView, ProjectionError> {
    let billing_address = BillingAddress {
        address_line1: row.value("address_line1")?,
        address_line2: row.value("address_line2")?,
        city: row.value("city")?,
        state: row.value("state")?,
        postal_code: row.value("postal_code")?,
        country: row.value("country")?,
    };
    let billing_address = (billing_address != BillingAddress::default()).then_some(billing_address);
    let currency = currency_column::<DB>(row, "currency")?;
    Ok(AccountView {
        account_id: AccountId(uuid_column::<DB>(row, "account_id")?),
        name: row.value("name")?,
        email: row.value("email")?,
        phone_number: row.value("phone_number")?,
        billing_address,
        currency,
        balance: money_column::<DB>(row, "balance", currency)?,
        held: money_column::<DB>(row, "held", currency)?,
        available: money_column::<DB>(row, "available", currency)?,
        sequence: unsigned_column::<DB>(row, "sequence")?,
        last_causation_id: CommandId(uuid_column::<DB>(row, "last_causation_id")?),
        created_at: time_column::<DB>(row, "created_at_ms")?,
        updated_at: time_column::<DB>(row, "updated_at_ms")?,
    })
}

fn transaction_from_row<DB: Backend>(row: &DB::Row) -> Result<TransactionView, ProjectionError> {
    let failure_reason: Option<String> = row.value("failure_reason")?;
    let currency = currency_column::<DB>(row, "currency")?;
    Ok(TransactionView {
        transaction_id: TransactionId(uuid_column::<DB>(row, "transaction_id")?),
        account_id: AccountId(uuid_column::<DB>(row, "account_id")?),
        transaction_type: enum_column::<DB, _>(row, "transaction_type")?,
        status: enum_column::<DB, _>(row, "status")?,
        amount: money_column::<DB>(row, "amount", currency)?,
        currency,
        phone_number: row.value("phone_number")?,
        failure_reason: failure_reason
            .map(|code| enum_from_text("failure_reason", &code))
            .transpose()?,
        provider_reference: row.value("provider_reference")?,
        created_at: time_column::<DB>(row, "created_at_ms")?,
        updated_at: time_column::<DB>(row, "updated_at_ms")?,
    })
}

pub(crate) fn account_event_from_row<DB: Backend>(
    row: &DB::Row,
) -> Result<AccountEventRow, ProjectionError> {
    let payload: String = row.value("payload")?;
    let payload = serde_json::from_str(&payload).map_err(|_| unreadable("payload", &payload))?;
    let event_version = unsigned_column::<DB>(row, "event_version")?;
    Ok(AccountEventRow {
        account_id: AccountId(uuid_column::<DB>(row, "account_id")?),
        sequence: unsigned_column::<DB>(row, "sequence")?,
        event_id: EventId(uuid_column::<DB>(row, "event_id")?),
        event_type: row.value("event_type")?,
        event_version: u32::try_from(event_version)
            .map_err(|_| unreadable("event_version", event_version))?,
        occurred_at: time_column::<DB>(row, "occurred_at_ms")?,
        correlation_id: uuid_column::<DB>(row, "correlation_id")?,
        causation_id: uuid_column::<DB>(row, "causation_id")?,
        log_topic: topic_column::<DB>(row, "log_topic")?,
        log_partition: partition_column::<DB>(row, "log_partition")?,
        log_offset: unsigned_column::<DB>(row, "log_offset")?,
        payload,
        previous_hash: hash_column::<DB>(row, "previous_hash")?,
        hash: hash_column::<DB>(row, "hash")?,
    })
}

fn hash_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<Option<EventHash>, ProjectionError> {
    let text: Option<String> = row.value(column)?;
    text.map(|text| EventHash::parse(&text).map_err(|_| unreadable(column, text)))
        .transpose()
}

fn offset_from_row<DB: Backend>(row: &DB::Row) -> Result<StoredOffset, ProjectionError> {
    Ok(StoredOffset {
        topic: topic_column::<DB>(row, "topic")?,
        partition: partition_column::<DB>(row, "partition_no")?,
        next_offset: unsigned_column::<DB>(row, "next_offset")?,
        skipped_records: unsigned_column::<DB>(row, "skipped_records")?,
    })
}

/// An offset, sequence or count as the store keeps it, a signed 64-bit integer. Every one of
/// them fits: they count records and events, far below 2^63.
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unreadable(column: &'static str, value: impl ToString) -> ProjectionError {
    ProjectionError::UnreadableColumn {
        column,
        value: value.to_string(),
    }
}

fn uuid_column<DB: Backend>(row: &DB::Row, column: &'static str) -> Result<Uuid, ProjectionError> {
    let text: String = row.value(column)?;
    Uuid::parse_str(&text).map_err(|_| unreadable(column, text))
}

/// An amount at `currency`'s scale; one with more decimals than the currency allows is
/// unreadable, not rounded.
fn money_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
    currency: Currency,
) -> Result<Decimal, ProjectionError> {
    let stored: Money = row.value(column)?;
    stored
        .in_currency(currency)
        .ok_or_else(|| unreadable(column, stored.value()))
}

fn currency_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<Currency, ProjectionError> {
    let text: String = row.value(column)?;
    text.parse().map_err(|_| unreadable(column, text))
}

fn unsigned_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<u64, ProjectionError> {
    let value: i64 = row.value(column)?;
    u64::try_from(value).map_err(|_| unreadable(column, value))
}

fn partition_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<u32, ProjectionError> {
    let value: i64 = row.value(column)?;
    u32::try_from(value).map_err(|_| unreadable(column, value))
}

fn time_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<DateTime<Utc>, ProjectionError> {
    let millis: i64 = row.value(column)?;
    DateTime::from_timestamp_millis(millis).ok_or_else(|| unreadable(column, millis))
}

fn topic_column<DB: Backend>(
    row: &DB::Row,
    column: &'static str,
) -> Result<Topic, ProjectionError> {
    let name: String = row.value(column)?;
    Topic::ALL
        .into_iter()
        .find(|topic| topic.name() == name)
        .ok_or_else(|| unreadable(column, name))
}

fn enum_column<DB: Backend, T: DeserializeOwned>(
    row: &DB::Row,
    column: &'static str,
) -> Result<T, ProjectionError> {
    let text: String = row.value(column)?;
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
