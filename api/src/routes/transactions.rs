//! `POST /transaction` and `GET /transaction/{transactionId}`: money moves in, status comes out.
//! `GET /transactions` lists them, as JSON or CSV.
//!
//! A submission is checked for shape, amount and ownership here, recorded, and appended as a
//! command; the answer is 202 once the command is durably in the log. Funds are decided later,
//! by the decider, so a balance that is too low shows up as a `FAILED` status, not as a 4xx.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_commands::log::{Topic, TopicPartition};
use tally_domain::ledger::{AdjustmentDirection, RENEWAL_AFTER_MS, REPLAY_WINDOW_MS};
use tally_domain::{
    AccountId, Amount, Currency, LedgerCommand, PhoneNumber, TransactionId, TransactionStatus,
    TransactionType,
};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, Path};
use crate::listing::{self, ListQuery, TransactionRecord};
use crate::reads::{self, TransactionView};
use crate::requests::{self, Recorded, TransactionRequest};
use crate::routes::accounts::{EventsPage, EventsQuery};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/transaction", post(submit))
        .route("/transaction/{transaction_id}", get(status))
        .route("/transaction/{transaction_id}/events", get(events))
        .route("/transactions", get(list))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubmitBody {
    transaction_type: String,
    add_money_request: Option<AddMoneyBody>,
    send_airtime_request: Option<SendAirtimeBody>,
    currency_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddMoneyBody {
    amount: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendAirtimeBody {
    amount: Value,
    phone_number: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    transaction_id: TransactionId,
    transaction_status: &'static str,
}

async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SubmitBody>,
) -> Result<Response, ApiError> {
    let account_id = AccountId(caller.uid);
    let currency = reads::account_currency(&state.store, &state.currencies, account_id).await?;
    if let Some(code) = &body.currency_code {
        check_currency(code, currency)?;
    }
    let (transaction_type, amount, phone_number) = parse_submission(body, currency)?;
    let request = new_request(account_id, transaction_type, amount, currency, phone_number);
    submit_request(&state, caller.uid, request, &headers).await
}

/// Records and appends a request, answering 202 with its transaction id. Shared with the
/// administrators' credit and debit.
pub(crate) async fn submit_request(
    state: &AppState,
    requested_by: Uuid,
    request: TransactionRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers)?;
    let recorded = match key.as_deref() {
        Some(key) => requests::record(&state.store, &request, requested_by, key).await?,
        None => Recorded::New,
    };
    let (request, status, replayed) = match (recorded, key.as_deref()) {
        (Recorded::Repeat(earlier), Some(key)) => {
            let (request, status) = replay(state, requested_by, key, earlier).await?;
            (request, status, true)
        }
        _ => {
            append(state, requested_by, &request).await?;
            (request, TransactionStatus::Accepted.as_str(), false)
        }
    };
    let body = Accepted {
        transaction_id: request.transaction_id,
        transaction_status: status,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let location = format!("/transaction/{}", request.transaction_id);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Appends a request's command. An append that completes only after the replay window is not
/// answered as accepted: the log may have stored the command past its admission window, and
/// then it is never decided. The caller learns the outcome by asking again.
async fn append(
    state: &AppState,
    requested_by: Uuid,
    request: &TransactionRequest,
) -> Result<(), ApiError> {
    let command = command_of(request);
    state
        .append_command(request.account_id, requested_by, command)
        .await?;
    let age_ms = chrono::Utc::now().timestamp_millis() - request.created_at_ms;
    if age_ms > REPLAY_WINDOW_MS {
        tracing::warn!(transaction_id = %request.transaction_id, age_ms,
            "an append completed after the replay window; not answered as accepted");
        return Err(ApiError::ResultPending { retry_after_s: 1 });
    }
    Ok(())
}

/// Answers a repeated request. One the read store already shows was decided and is only
/// reported. Otherwise its command may have been lost with a crashed process or a failed
/// append, so within the replay window it is appended again, and the decider, which remembers
/// finished transactions for longer than that window, decides it once.
///
/// Past the window an append again could meet a decider that has forgotten the transaction,
/// so nothing is appended until the first command can no longer be decided (its admission
/// window has closed) and is known never to have been stored in time: then the request is
/// renewed under a new transaction id and appended as new. Until both hold, the caller is
/// asked to retry later.
async fn replay(
    state: &AppState,
    requested_by: Uuid,
    key: &str,
    mut earlier: TransactionRequest,
) -> Result<(TransactionRequest, &'static str), ApiError> {
    // A second turn at most: when another request renewed the record first, the renewed one
    // is fresh and inside the window.
    for _ in 0..2 {
        if let Some(view) = reads::transaction(&state.store, earlier.transaction_id).await? {
            return Ok((earlier, view.status_str()));
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        if now_ms - earlier.created_at_ms <= REPLAY_WINDOW_MS {
            append(state, requested_by, &earlier).await?;
            return Ok((earlier, TransactionStatus::Accepted.as_str()));
        }
        if now_ms - earlier.created_at_ms <= RENEWAL_AFTER_MS
            || !never_logged(state, &earlier).await?
        {
            return Err(ApiError::ResultPending { retry_after_s: 1 });
        }
        let renewed = TransactionRequest {
            transaction_id: TransactionId::new(),
            created_at_ms: now_ms,
            ..earlier.clone()
        };
        let store = &state.store;
        if requests::renew(store, requested_by, key, earlier.transaction_id, &renewed).await? {
            tracing::info!(earlier = %earlier.transaction_id, renewed = %renewed.transaction_id,
                "a keyed request whose command never reached the log is appended afresh");
            append(state, requested_by, &renewed).await?;
            return Ok((renewed, TransactionStatus::Accepted.as_str()));
        }
        earlier = requests::by_key(store, requested_by, key)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("key vanished")))?;
    }
    Err(ApiError::ResultPending { retry_after_s: 1 })
}

/// Whether the command of a request older than [`RENEWAL_AFTER_MS`] was never stored in time to
/// be decided: the projector has read its commands partition to the end, so a command stored
/// within its admission window would show, and the transaction does not. A command the log
/// stores from now on is refused by the decider and hidden by the projector.
async fn never_logged(state: &AppState, request: &TransactionRequest) -> Result<bool, ApiError> {
    let partition = TopicPartition {
        topic: Topic::Commands,
        partition: state.log.partition_for(&request.account_id.to_string()),
    };
    let end = state.log.end_offset(partition).await.map_err(|error| {
        tracing::warn!(error = %error, "cannot read the end of the commands partition");
        ApiError::ServiceUnavailable { retry_after_s: 1 }
    })?;
    let offsets = reads::projected_offsets(&state.store).await?;
    if tally_projections::next_offset(&offsets, partition) < end {
        return Ok(false);
    }
    Ok(reads::transaction(&state.store, request.transaction_id)
        .await?
        .is_none())
}

fn command_of(request: &TransactionRequest) -> LedgerCommand {
    let (transaction_id, amount, currency) =
        (request.transaction_id, request.amount, request.currency);
    let adjust = |direction| LedgerCommand::AdjustBalance {
        transaction_id,
        direction,
        amount,
        currency,
    };
    match (request.transaction_type, &request.phone_number) {
        (TransactionType::SendAirtime, Some(phone_number)) => LedgerCommand::SendAirtime {
            transaction_id,
            amount,
            currency,
            phone_number: phone_number.clone(),
        },
        (TransactionType::AdminCredit, _) => adjust(AdjustmentDirection::Credit),
        (TransactionType::AdminDebit, _) => adjust(AdjustmentDirection::Debit),
        _ => LedgerCommand::AddMoney {
            transaction_id,
            amount,
            currency,
        },
    }
}

pub(crate) fn new_request(
    account_id: AccountId,
    transaction_type: TransactionType,
    amount: Amount,
    currency: Currency,
    phone_number: Option<PhoneNumber>,
) -> TransactionRequest {
    TransactionRequest {
        transaction_id: TransactionId::new(),
        account_id,
        transaction_type,
        amount,
        currency,
        phone_number,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
    }
}

/// The request's `Idempotency-Key`, if it has one. Two of them make the request ambiguous.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        let detail = "send at most one Idempotency-Key header";
        return Err(ApiError::invalid("invalid_idempotency_key", detail));
    }
    requests::parse_idempotency_key(value.as_bytes()).map(Some)
}

fn parse_submission(
    body: SubmitBody,
    currency: Currency,
) -> Result<(TransactionType, Amount, Option<PhoneNumber>), ApiError> {
    match (
        body.transaction_type.as_str(),
        body.add_money_request,
        body.send_airtime_request,
    ) {
        ("ADD_MONEY", Some(add), None) => Ok((
            TransactionType::AddMoney,
            parse_amount(&add.amount, currency)?,
            None,
        )),
        ("SEND_AIRTIME", None, Some(send)) => {
            let amount = parse_amount(&send.amount, currency)?;
            let phone = PhoneNumber::parse(&send.phone_number)
                .map_err(|error| ApiError::invalid(error.code(), error.to_string()))?;
            Ok((TransactionType::SendAirtime, amount, Some(phone)))
        }
        ("ADD_MONEY", ..) => Err(mismatched_request("ADD_MONEY", "addMoneyRequest")),
        ("SEND_AIRTIME", ..) => Err(mismatched_request("SEND_AIRTIME", "sendAirtimeRequest")),
        (other, ..) => Err(ApiError::invalid(
            "unknown_transaction_type",
            format!("transactionType {other:?} is not ADD_MONEY or SEND_AIRTIME"),
        )),
    }
}

fn mismatched_request(kind: &str, field: &str) -> ApiError {
    let detail = format!("{kind} needs {field} and no other request object");
    ApiError::invalid("request_does_not_match_type", detail)
}

/// Reads an amount given as a decimal string or a JSON number, exactly as written.
pub(crate) fn parse_amount(value: &Value, currency: Currency) -> Result<Amount, ApiError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => String::new(),
    };
    Amount::parse(&text, currency)
        .map_err(|error| ApiError::invalid(error.code(), error.to_string()))
}

fn check_currency(code: &str, account_currency: Currency) -> Result<(), ApiError> {
    let currency: Currency = code.parse().map_err(|_| {
        ApiError::invalid(
            "unknown_currency",
            format!("{code:?} is not a supported currency"),
        )
    })?;
    if currency != account_currency {
        let detail = format!("the account holds {account_currency}, not {currency}");
        return Err(ApiError::invalid("currency_mismatch", detail));
    }
    Ok(())
}

async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(transaction_id): Path<Uuid>,
) -> Result<Json<TransactionView>, ApiError> {
    let transaction_id = TransactionId(transaction_id);
    let view = find(&state, transaction_id).await?.ok_or_else(not_found)?;
    if view.account_id != caller.uid && !caller.is_admin() {
        return Err(not_found());
    }
    Ok(Json(view))
}

/// The events a transaction caused, in its account's stream order, with their log
/// coordinates: the audit trail of one transaction.
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(transaction_id): Path<Uuid>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid("invalid_query", error.body_text()))?;
    let transaction_id = TransactionId(transaction_id);
    let view = find(&state, transaction_id).await?.ok_or_else(not_found)?;
    if view.account_id != caller.uid && !caller.is_admin() {
        return Err(not_found());
    }
    let (after, limit) = query.page()?;
    let (events, last) =
        reads::transaction_events(&state.store, transaction_id, after, limit).await?;
    Ok(Json(EventsPage::new(events, last, limit)))
}

/// How long after its id was minted a transaction may still be missing from the read store
/// while its command is on the way there. Transaction ids are UUIDv7, so their age is known;
/// an older id that is missing does not exist.
const ACCEPTED_VISIBLE_WAIT_MS_MAX: u64 = 2_000;
/// Pause between two looks at the read store while waiting.
const ACCEPTED_POLL_MS: u64 = 5;

/// Finds a transaction in the read store, or among keyed requests, waiting a little for one
/// whose command was appended a moment ago.
async fn find(
    state: &AppState,
    transaction_id: TransactionId,
) -> Result<Option<TransactionView>, ApiError> {
    loop {
        if let Some(view) = reads::transaction(&state.store, transaction_id).await? {
            return Ok(Some(view));
        }
        let keyed = requests::by_transaction(&state.store, transaction_id).await?;
        if let Some(request) = keyed {
            // A request whose command never reached the log was never accepted.
            let stale = chrono::Utc::now().timestamp_millis() - request.created_at_ms;
            if stale > RENEWAL_AFTER_MS && never_logged(state, &request).await? {
                return Ok(None);
            }
            return Ok(Some(TransactionView::accepted(request)));
        }
        if age_ms(transaction_id).is_none_or(|age| age > ACCEPTED_VISIBLE_WAIT_MS_MAX) {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(ACCEPTED_POLL_MS)).await;
    }
}

/// Milliseconds since a UUIDv7 id was minted; `None` for other ids or ids from the future.
fn age_ms(transaction_id: TransactionId) -> Option<u64> {
    let (seconds, nanos) = transaction_id.0.get_timestamp()?.to_unix();
    let minted_ms = seconds.checked_mul(1_000)? + u64::from(nanos / 1_000_000);
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).ok()?;
    now_ms.checked_sub(minted_ms)
}

fn not_found() -> ApiError {
    ApiError::not_found("transaction_not_found", "no such transaction")
}

/// A page of `GET /transactions` as JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<TransactionRecord>,
    /// Pass as `cursor` to read the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The caller's transactions, or an administrator's pick of anyone's, oldest first, one page
/// at a time: JSON, or CSV when `Accept` asks for `text/csv`.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|error| ApiError::invalid("invalid_query", error.body_text()))?;
    let mut listing = query.parse()?;
    listing.filter.account_id = visible_account(&caller, listing.account)?;
    let (rows, next) =
        reads::transactions_page(&state.store, &listing.filter, listing.after, listing.limit)
            .await?;
    let items: Vec<TransactionRecord> = rows.iter().map(listing::record).collect();
    let next_cursor = next.map(listing::encode_cursor);
    match listing::wants_csv(&headers) {
        true => csv_page(&items, next_cursor),
        false => Ok(Json(Page { items, next_cursor }).into_response()),
    }
}

/// The account a listing may show: a user's own, whatever else it names (another's answers
/// 404, as a missing one does); an administrator's choice, or every account.
fn visible_account(
    caller: &Caller,
    requested: Option<AccountId>,
) -> Result<Option<AccountId>, ApiError> {
    if caller.is_admin() {
        return Ok(requested);
    }
    match requested {
        Some(account_id) if account_id.0 != caller.uid => {
            Err(ApiError::not_found("account_not_found", "no such account"))
        }
        _ => Ok(Some(AccountId(caller.uid))),
    }
}

/// A page as CSV, with the next page's cursor in its header.
fn csv_page(
    items: &[TransactionRecord],
    next_cursor: Option<String>,
) -> Result<Response, ApiError> {
    let mut writer = listing::csv_writer(Vec::new()).map_err(ApiError::internal)?;
    for item in items {
        writer.serialize(item).map_err(ApiError::internal)?;
    }
    let body = writer
        .into_inner()
        .map_err(|error| ApiError::internal(anyhow::anyhow!("{error}")))?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_static("text/csv; charset=utf-8; header=present");
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(cursor) = next_cursor.and_then(|cursor| HeaderValue::from_str(&cursor).ok()) {
        headers.insert(listing::NEXT_CURSOR_HEADER, cursor);
    }
    Ok(response)
}
