//! Idempotency keys, kept by the API in the read store's database.
//!
//! A request made with an `Idempotency-Key` is recorded before its command is appended. A
//! repeat under the same key finds the record and, if the body matches, appends the same
//! command again: the decider decides a transaction id once, so the repeat is harmless even
//! when the first append was lost with a crashed process. Requests without a key are not
//! recorded here; the projector shows them from the moment their command is in the log.

use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use tally_domain::{AccountId, Amount, Currency, PhoneNumber, TransactionId, TransactionType};
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
pub async fn record(
    pool: &SqlitePool,
    request: &TransactionRequest,
    requested_by: Uuid,
    idempotency_key: &str,
) -> Result<Recorded, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO transaction_requests (transaction_id, account_id, requested_by, \
         idempotency_key, request_hash, transaction_type, amount, currency, phone_number, \
         created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (requested_by, idempotency_key) DO NOTHING",
    )
    .bind(request.transaction_id.to_string())
    .bind(request.account_id.to_string())
    .bind(requested_by.to_string())
    .bind(idempotency_key)
    .bind(request.fingerprint())
    .bind(request.transaction_type.as_str())
    .bind(request.amount.value().to_string())
    .bind(request.currency.code())
    .bind(request.phone_number.as_ref().map(PhoneNumber::as_str))
    .bind(request.created_at_ms)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Recorded::New);
    }
    let earlier = by_key(pool, requested_by, idempotency_key).await?;
    let earlier = earlier.ok_or_else(|| ApiError::internal(anyhow::anyhow!("key vanished")))?;
    if earlier.fingerprint() != request.fingerprint() {
        let detail = "this Idempotency-Key was used for a different request";
        return Err(ApiError::conflict("idempotency_key_reused", detail));
    }
    Ok(Recorded::Repeat(earlier))
}

type RequestRow = (String, String, String, String, String, Option<String>, i64);

macro_rules! select_request {
    ($filter:literal) => {
        concat!(
            "SELECT transaction_id, account_id, transaction_type, amount, currency, ",
            "phone_number, created_at_ms FROM transaction_requests WHERE ",
            $filter
        )
    };
}

async fn by_key(
    pool: &SqlitePool,
    requested_by: Uuid,
    key: &str,
) -> Result<Option<TransactionRequest>, ApiError> {
    let sql = select_request!("requested_by = ? AND idempotency_key = ?");
    let row: Option<RequestRow> = sqlx::query_as(sql)
        .bind(requested_by.to_string())
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.map(from_row).transpose()
}

/// A recorded request by its transaction id.
pub async fn by_transaction(
    pool: &SqlitePool,
    transaction_id: TransactionId,
) -> Result<Option<TransactionRequest>, ApiError> {
    let sql = select_request!("transaction_id = ?");
    let row: Option<RequestRow> = sqlx::query_as(sql)
        .bind(transaction_id.to_string())
        .fetch_optional(pool)
        .await?;
    row.map(from_row).transpose()
}

fn from_row(row: RequestRow) -> Result<TransactionRequest, ApiError> {
    let (transaction_id, account_id, kind, amount, currency, phone, created_at_ms) = row;
    let corrupt = |what: &str| ApiError::internal(anyhow::anyhow!("stored request has bad {what}"));
    let currency: Currency = currency.parse().map_err(|_| corrupt("currency"))?;
    let transaction_type = match kind.as_str() {
        "ADD_MONEY" => TransactionType::AddMoney,
        "SEND_AIRTIME" => TransactionType::SendAirtime,
        "ADMIN_CREDIT" => TransactionType::AdminCredit,
        "ADMIN_DEBIT" => TransactionType::AdminDebit,
        _ => return Err(corrupt("type")),
    };
    Ok(TransactionRequest {
        transaction_id: TransactionId(Uuid::parse_str(&transaction_id).map_err(|_| corrupt("id"))?),
        account_id: AccountId(Uuid::parse_str(&account_id).map_err(|_| corrupt("account"))?),
        transaction_type,
        amount: Amount::parse(&amount, currency).map_err(|_| corrupt("amount"))?,
        currency,
        phone_number: phone
            .map(|text| PhoneNumber::parse(&text))
            .transpose()
            .map_err(|_| corrupt("phone"))?,
        created_at_ms,
    })
}
