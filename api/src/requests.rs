//! Idempotency keys, kept by the API in the read store's database (`0003_api.sql`), with each
//! statement written once for every backend.
//!
//! A request made with an `Idempotency-Key` is recorded before its command is appended. A
//! repeat under the same key finds the record and, if the body matches, appends the same
//! command again within the replay window: the decider decides a transaction id once, so the
//! repeat is harmless even when the first append was lost with a crashed process. Past the
//! window a record whose command is known never to have reached the log is renewed under a
//! new transaction id ([`renew`]). Requests without a key are not recorded here; the projector
//! shows them from the moment their command is in the log.

use sha2::{Digest, Sha256};
use sqlx::Pool;
use tally_domain::{AccountId, Amount, Currency, PhoneNumber, TransactionId, TransactionType};
use tally_projections::{Backend, Get, Money, ReadStore, Sql, with_pool};
use uuid::Uuid;

use crate::error::ApiError;

/// Longest idempotency key accepted, in bytes; a UUID or a hash fits many times over.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// A transaction as the API accepted it.
#[derive(Clone, Debug, PartialEq)]
pub struct TransactionRequest {
    pub transaction_id: TransactionId,
    pub account_id: AccountId,
    pub transaction_type: TransactionType,
    pub amount: Amount,
    pub currency: Currency,
    pub phone_number: Option<PhoneNumber>,
    pub created_at_ms: i64,
}

impl TransactionRequest {
    /// A digest of what the caller asked for, to tell a true repeat from a reused key.
    pub fn fingerprint(&self) -> String {
        let phone = self.phone_number.as_ref().map_or("", PhoneNumber::as_str);
        let canonical = format!(
            "{}|{}|{}|{}|{}",
            self.account_id,
            self.transaction_type.as_str(),
            self.amount.value().normalize(),
            self.currency,
            phone
        );
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// Checks an `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
pub fn parse_idempotency_key(value: &[u8]) -> Result<String, ApiError> {
    let visible = value.iter().all(u8::is_ascii_graphic);
    if value.is_empty() || value.len() > IDEMPOTENCY_KEY_BYTES_MAX || !visible {
        let detail = "Idempotency-Key must be 1 to 255 visible ASCII characters";
        return Err(ApiError::invalid("invalid_idempotency_key", detail));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

pub enum Recorded {
    /// The request is new.
    New,
    /// The key was used before for this request, recorded here.
    Repeat(TransactionRequest),
}

/// Records a request under its key, or finds the one already recorded under the same key.
///
/// A plain INSERT whose unique key refuses a second request under the same key: the same
/// statement on every backend, and a refusal only for that key (an upsert on MySQL would
/// also swallow a clash on the transaction id, and could not tell a repeat from a new row).
pub async fn record(
    store: &ReadStore,
    request: &TransactionRequest,
    requested_by: Uuid,
    idempotency_key: &str,
) -> Result<Recorded, ApiError> {
    let inserted = with_pool!(store, pool => {
        insert(pool, request, requested_by, idempotency_key).await
    });
    match inserted {
        Ok(()) => return Ok(Recorded::New),
        Err(error) if is_unique_violation(&error) => {}
        Err(error) => return Err(error.into()),
    }
    let earlier = by_key(store, requested_by, idempotency_key).await?;
    let earlier = earlier.ok_or_else(|| ApiError::internal(anyhow::anyhow!("key vanished")))?;
    if earlier.fingerprint() != request.fingerprint() {
        let detail = "this Idempotency-Key was used for a different request";
        return Err(ApiError::conflict("idempotency_key_reused", detail));
    }
    Ok(Recorded::Repeat(earlier))
}

async fn insert<DB: Backend>(
    pool: &Pool<DB>,
    request: &TransactionRequest,
    requested_by: Uuid,
    idempotency_key: &str,
) -> Result<(), sqlx::Error> {
    let amount = Money::at_scale(request.amount.value(), request.currency);
    let phone_number = (request.phone_number.as_ref()).map(|phone| phone.as_str().to_owned());
    Sql::<DB>::new(
        "INSERT INTO transaction_requests (transaction_id, account_id, requested_by, \
         idempotency_key, request_hash, transaction_type, amount, currency, phone_number, \
         created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(request.transaction_id.to_string())
    .bind(request.account_id.to_string())
    .bind(requested_by.to_string())
    .bind(idempotency_key.to_owned())
    .bind(request.fingerprint())
    .bind(request.transaction_type.as_str())
    .bind(amount)
    .bind(request.currency.code())
    .bind(phone_number)
    .bind(request.created_at_ms)
    .execute(&mut *pool.acquire().await?)
    .await?;
    Ok(())
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database| database.is_unique_violation())
}

/// Gives the request recorded under `key` a new transaction id and time, if it still holds
/// `earlier`: for a request whose command is known never to have reached the log, so that it
/// can be appended afresh. `false` when another request renewed it first.
pub async fn renew(
    store: &ReadStore,
    requested_by: Uuid,
    key: &str,
    earlier: TransactionId,
    renewed: &TransactionRequest,
) -> Result<bool, ApiError> {
    let updated = with_pool!(store, pool => {
        update_id(pool, requested_by, key, earlier, renewed).await
    })?;
    Ok(updated == 1)
}

async fn update_id<DB: Backend>(
    pool: &Pool<DB>,
    requested_by: Uuid,
    key: &str,
    earlier: TransactionId,
    renewed: &TransactionRequest,
) -> Result<u64, sqlx::Error> {
    Sql::<DB>::new(
        "UPDATE transaction_requests SET transaction_id = ?, created_at_ms = ? \
         WHERE requested_by = ? AND idempotency_key = ? AND transaction_id = ?",
    )
    .bind(renewed.transaction_id.to_string())
    .bind(renewed.created_at_ms)
    .bind(requested_by.to_string())
    .bind(key.to_owned())
    .bind(earlier.to_string())
    .execute(&mut *pool.acquire().await?)
    .await
    .map(|result| DB::rows_affected(&result))
}

/// A `transaction_requests` row as stored.
struct RequestRow {
    transaction_id: String,
    account_id: String,
    transaction_type: String,
    amount: Money,
    currency: String,
    phone_number: Option<String>,
    created_at_ms: i64,
}

const SELECT_REQUEST: &str = "SELECT transaction_id, account_id, transaction_type, amount, \
    currency, phone_number, created_at_ms FROM transaction_requests WHERE ";

pub async fn by_key(
    store: &ReadStore,
    requested_by: Uuid,
    key: &str,
) -> Result<Option<TransactionRequest>, ApiError> {
    let row = with_pool!(store, pool => select_by_key(pool, requested_by, key).await)?;
    row.map(from_row).transpose()
}

async fn select_by_key<DB: Backend>(
    pool: &Pool<DB>,
    requested_by: Uuid,
    key: &str,
) -> Result<Option<RequestRow>, sqlx::Error> {
    let sql = format!("{SELECT_REQUEST}requested_by = ? AND idempotency_key = ?");
    let row = Sql::<DB>::new(sql)
        .bind(requested_by.to_string())
        .bind(key.to_owned())
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
    row.map(|row| RequestRow::read::<DB>(&row)).transpose()
}

/// A recorded request by its transaction id.
pub async fn by_transaction(
    store: &ReadStore,
    transaction_id: TransactionId,
) -> Result<Option<TransactionRequest>, ApiError> {
    let row = with_pool!(store, pool => select_by_transaction(pool, transaction_id).await)?;
    row.map(from_row).transpose()
}

async fn select_by_transaction<DB: Backend>(
    pool: &Pool<DB>,
    transaction_id: TransactionId,
) -> Result<Option<RequestRow>, sqlx::Error> {
    let sql = format!("{SELECT_REQUEST}transaction_id = ?");
    let row = Sql::<DB>::new(sql)
        .bind(transaction_id.to_string())
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
    row.map(|row| RequestRow::read::<DB>(&row)).transpose()
}

impl RequestRow {
    fn read<DB: Backend>(row: &DB::Row) -> Result<RequestRow, sqlx::Error> {
        Ok(RequestRow {
            transaction_id: row.value("transaction_id")?,
            account_id: row.value("account_id")?,
            transaction_type: row.value("transaction_type")?,
            amount: row.value("amount")?,
            currency: row.value("currency")?,
            phone_number: row.value("phone_number")?,
            created_at_ms: row.value("created_at_ms")?,
        })
    }
}

fn from_row(row: RequestRow) -> Result<TransactionRequest, ApiError> {
    let corrupt = |what: &str| ApiError::internal(anyhow::anyhow!("stored request has bad {what}"));
    let currency: Currency = row.currency.parse().map_err(|_| corrupt("currency"))?;
    let amount = row
        .amount
        .in_currency(currency)
        .ok_or_else(|| corrupt("amount"))?;
    let transaction_type = match row.transaction_type.as_str() {
        "ADD_MONEY" => TransactionType::AddMoney,
        "SEND_AIRTIME" => TransactionType::SendAirtime,
        "ADMIN_CREDIT" => TransactionType::AdminCredit,
        "ADMIN_DEBIT" => TransactionType::AdminDebit,
        _ => return Err(corrupt("type")),
    };
    let parse_id = |text: &str, what| Uuid::parse_str(text).map_err(|_| corrupt(what));
    Ok(TransactionRequest {
        transaction_id: TransactionId(parse_id(&row.transaction_id, "id")?),
        account_id: AccountId(parse_id(&row.account_id, "account")?),
        transaction_type,
        amount: Amount::new(amount, currency).map_err(|_| corrupt("amount"))?,
        currency,
        phone_number: (row.phone_number)
            .map(|text| PhoneNumber::parse(&text))
            .transpose()
            .map_err(|_| corrupt("phone"))?,
        created_at_ms: row.created_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use tally_projections::backend_tests;
    use tally_projections::test_support::{TestBackend, TestStore};

    use super::*;

    fn airtime(amount: &str) -> TransactionRequest {
        let currency = Currency::USD;
        TransactionRequest {
            transaction_id: TransactionId::new(),
            account_id: AccountId(Uuid::from_u128(7)),
            transaction_type: TransactionType::SendAirtime,
            amount: Amount::parse(amount, currency).unwrap(),
            currency,
            phone_number: Some(PhoneNumber::parse("+254712345678").unwrap()),
            created_at_ms: 1_700_000_000_123,
        }
    }

    backend_tests!(
        a_new_key_records_the_request_exactly_and_finds_it_by_transaction,
        a_repeat_under_the_same_key_finds_the_first_request,
        a_key_reused_for_a_different_request_is_refused,
        keys_are_per_caller_and_differ_in_case,
    );

    async fn a_new_key_records_the_request_exactly_and_finds_it_by_transaction(
        backend: TestBackend,
    ) {
        let test = TestStore::open(backend).await;
        let request = airtime("69.5");

        let recorded = record(test.store(), &request, Uuid::now_v7(), "key-1").await;

        assert!(matches!(recorded, Ok(Recorded::New)));
        let found = by_transaction(test.store(), request.transaction_id).await;
        let found = found.unwrap().expect("recorded");
        assert_eq!(found, request);
        assert_eq!(found.amount.value().to_string(), "69.50");
        let unknown = by_transaction(test.store(), TransactionId::new()).await;
        assert!(unknown.unwrap().is_none());
    }

    async fn a_repeat_under_the_same_key_finds_the_first_request(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let caller = Uuid::now_v7();
        let first = airtime("5");
        record(test.store(), &first, caller, "key-1").await.unwrap();

        let repeat = airtime("5.00");
        let recorded = record(test.store(), &repeat, caller, "key-1").await;

        let Ok(Recorded::Repeat(earlier)) = recorded else {
            panic!("a repeat should find the first request");
        };
        assert_eq!(earlier, first);
    }

    async fn a_key_reused_for_a_different_request_is_refused(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let caller = Uuid::now_v7();
        record(test.store(), &airtime("5"), caller, "key-1")
            .await
            .unwrap();

        let recorded = record(test.store(), &airtime("6"), caller, "key-1").await;

        let Err(error) = recorded else {
            panic!("a reused key should be refused");
        };
        assert_eq!(error.code(), "idempotency_key_reused");
    }

    async fn keys_are_per_caller_and_differ_in_case(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let (ada, grace) = (Uuid::now_v7(), Uuid::now_v7());
        let store = test.store();

        let first = record(store, &airtime("1"), ada, "Key-1").await;
        let other_case = record(store, &airtime("2"), ada, "key-1").await;
        let other_caller = record(store, &airtime("3"), grace, "Key-1").await;

        for recorded in [first, other_case, other_caller] {
            assert!(matches!(recorded, Ok(Recorded::New)));
        }
    }
}
