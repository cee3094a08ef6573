//! Account routes: open, update and read an account, its balance and its events; and the
//! administrators' credit and debit.
//!
//! An account's id is its owner's uid. Callers reach only their own account; another user's
//! answers 404, exactly as a missing one does, so ids cannot be probed. Opening and updating
//! go through the log like every change, and the handler waits until the read store shows the
//! result, so the response carries the account as it now stands.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_domain::{
    AccountId, AccountInfo, BillingAddress, CommandId, Currency, LedgerCommand, TransactionType,
};
use tally_projections::AsOf;
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{JsonBody, Path};
use crate::reads::{self, AccountView, CommandOutcome};
use crate::routes::transactions::{new_request, parse_amount, submit_request};
use crate::state::AppState;

/// How long opening or updating waits for the read store to show the result. Far above the
/// projector's usual lag; past it the caller gets 503 and can read the account later.
const COMMAND_WAIT_MS_MAX: u64 = 10_000;
/// Pause between two looks at the read store while waiting.
const COMMAND_POLL_MS: u64 = 5;
/// Largest page of events one request returns.
const EVENTS_PAGE_SIZE_MAX: u32 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account/{uid}", post(open).put(update).get(account))
        .route("/account/balance/{uid}", get(balance))
        .route("/account/info/{uid}", get(info))
        .route("/account/{uid}/events", get(events))
        .route("/account/credit/{uid}", post(credit))
        .route("/account/debit/{uid}", post(debit))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccountBody {
    account_info: AccountInfoBody,
    billing_address: Option<BillingAddress>,
    currency_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccountInfoBody {
    name: String,
    email: String,
    phone_number: String,
}

impl AccountBody {
    fn parse(self) -> Result<(AccountInfo, Option<BillingAddress>, Option<Currency>), ApiError> {
        let info = &self.account_info;
        let invalid =
            |error: tally_domain::ContactError| ApiError::invalid(error.code(), error.to_string());
        let account_info =
            AccountInfo::parse(&info.name, &info.email, &info.phone_number).map_err(invalid)?;
        if let Some(address) = &self.billing_address {
            address.validate().map_err(invalid)?;
        }
        let currency = match &self.currency_code {
            None => None,
            Some(code) => Some(code.parse::<Currency>().map_err(|_| {
                ApiError::invalid(
                    "unknown_currency",
                    format!("{code:?} is not a supported currency"),
                )
            })?),
        };
        Ok((account_info, self.billing_address, currency))
    }
}

/// The currency of an account opened without one.
const CURRENCY_DEFAULT: Currency = Currency::USD;

/// Resolves the account a caller names, answering 404 for anyone else's.
fn owned(caller: &Caller, uid: Uuid) -> Result<AccountId, ApiError> {
    if caller.uid != uid && !caller.is_admin() {
        return Err(account_not_found());
    }
    Ok(AccountId(uid))
}

fn account_not_found() -> ApiError {
    ApiError::not_found("account_not_found", "no such account")
}

async fn open(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
    JsonBody(body): JsonBody<AccountBody>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    if caller.uid != uid {
        return Err(account_not_found());
    }
    let account_id = AccountId(uid);
    let (info, billing_address, currency) = body.parse()?;
    if reads::account(&state.store, account_id).await?.is_some() {
        return Err(already_exists());
    }
    let currency = currency.unwrap_or(CURRENCY_DEFAULT);
    let command = LedgerCommand::OpenAccount {
        info,
        billing_address,
        currency,
    };
    let command_id = state
        .append_command(account_id, caller.uid, command)
        .await?;
    match wait_for(&state, account_id, command_id, true).await? {
        CommandOutcome::Applied => Ok((StatusCode::CREATED, Json(load(&state, account_id).await?))),
        CommandOutcome::Superseded => Err(already_exists()),
    }
}

fn already_exists() -> ApiError {
    ApiError::conflict("account_already_exists", "this user already has an account")
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
    JsonBody(body): JsonBody<AccountBody>,
) -> Result<Json<AccountView>, ApiError> {
    let account_id = owned(&caller, uid)?;
    let (info, billing_address, currency) = body.parse()?;
    let current = load(&state, account_id).await?;
    if currency.is_some_and(|currency| currency != current.currency) {
        let detail = "an account's currency cannot change";
        return Err(ApiError::invalid("currency_cannot_change", detail));
    }
    let command = LedgerCommand::UpdateAccount {
        info,
        billing_address,
    };
    let command_id = state
        .append_command(account_id, caller.uid, command)
        .await?;
    wait_for(&state, account_id, command_id, false).await?;
    Ok(Json(load(&state, account_id).await?))
}

/// Waits until the read store shows what became of a command.
async fn wait_for(
    state: &AppState,
    account_id: AccountId,
    command_id: CommandId,
    opening: bool,
) -> Result<CommandOutcome, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(COMMAND_WAIT_MS_MAX);
    loop {
        if let Some(outcome) =
            reads::command_outcome(&state.store, account_id, command_id, opening).await?
        {
            return Ok(outcome);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::ResultPending { retry_after_s: 1 });
        }
        tokio::time::sleep(Duration::from_millis(COMMAND_POLL_MS)).await;
    }
}

async fn load(state: &AppState, account_id: AccountId) -> Result<AccountView, ApiError> {
    reads::account(&state.store, account_id)
        .await?
        .ok_or_else(account_not_found)
}

async fn account(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
) -> Result<Json<AccountView>, ApiError> {
    Ok(Json(load(&state, owned(&caller, uid)?).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BalanceQuery {
    /// A moment of the account's history: an RFC 3339 time, or `offset:N` for a position in
    /// the account's events partition.
    as_of: Option<String>,
}

/// The account's balances now, from its row; or, with `asOf`, as they stood then, folded from
/// its events.
async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
    query: Result<Query<BalanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let account_id = owned(&caller, uid)?;
    let Query(query) =
        query.map_err(|error| ApiError::invalid("invalid_query", error.body_text()))?;
    let Some(as_given) = query.as_of else {
        return Ok(Json(load(&state, account_id).await?.balance).into_response());
    };
    let as_of = parse_as_of(&as_given)?;
    load(&state, account_id).await?;
    let view = reads::balance_as_of(&state.store, account_id, as_of, as_given).await?;
    let view = view.ok_or_else(|| {
        ApiError::not_found(
            "account_not_found",
            "the account was not open at that moment",
        )
    })?;
    Ok(Json(view).into_response())
}

/// Reads `asOf`: an RFC 3339 time with its offset (`2026-12-04T10:00:00Z`), or `offset:N`.
fn parse_as_of(text: &str) -> Result<AsOf, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "invalid_as_of",
            "asOf must be an RFC 3339 time such as 2026-12-04T10:00:00Z, or offset:N for a \
             position in the account's events partition",
        )
    };
    if let Some(offset) = text.strip_prefix("offset:") {
        // Digits only: `u64::from_str` also takes a leading `+`.
        if offset.is_empty() || !offset.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        return offset.parse().map(AsOf::Offset).map_err(|_| invalid());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| AsOf::Time(time.with_timezone(&chrono::Utc)))
        .map_err(|_| invalid())
}

async fn info(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let view = load(&state, owned(&caller, uid)?).await?;
    Ok(Json(
        serde_json::json!({ "accountId": view.account_id, "accountInfo": view.account_info }),
    ))
}

/// A page of a stream's events: after a sequence number, at most `limit`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Return events after this sequence number.
    after: Option<u64>,
    limit: Option<u32>,
}

impl EventsQuery {
    /// The sequence to read after and the page size, defaults applied; a size outside 1 to
    /// [`EVENTS_PAGE_SIZE_MAX`] is refused, as `GET /transactions` refuses it.
    pub(super) fn page(&self) -> Result<(u64, u32), ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=EVENTS_PAGE_SIZE_MAX).contains(&limit) {
            let detail = format!("limit is a page size from 1 to {EVENTS_PAGE_SIZE_MAX}");
            return Err(ApiError::invalid("invalid_limit", detail));
        }
        Ok((self.after.unwrap_or(0), limit))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventsPage {
    events: Vec<Value>,
    /// Pass as `after` to read the next page; absent on the last page.
    next_after: Option<u64>,
}

impl EventsPage {
    /// A page read with `limit`: a full page may have a next one.
    pub(super) fn new(events: Vec<Value>, last: Option<u64>, limit: u32) -> EventsPage {
        let next_after = last.filter(|_| events.len() == limit as usize);
        EventsPage { events, next_after }
    }
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let account_id = owned(&caller, uid)?;
    let Query(query) =
        query.map_err(|error| ApiError::invalid("invalid_query", error.body_text()))?;
    load(&state, account_id).await?;
    let (after, limit) = query.page()?;
    let (events, last) = reads::account_events(&state.store, account_id, after, limit).await?;
    Ok(Json(EventsPage::new(events, last, limit)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdjustmentBody {
    amount: Value,
}

async fn credit(
    state: State<AppState>,
    caller: Caller,
    uid: Path<Uuid>,
    headers: HeaderMap,
    body: JsonBody<AdjustmentBody>,
) -> Result<Response, ApiError> {
    adjust(
        state,
        caller,
        uid,
        headers,
        body,
        TransactionType::AdminCredit,
    )
    .await
}

async fn debit(
    state: State<AppState>,
    caller: Caller,
    uid: Path<Uuid>,
    headers: HeaderMap,
    body: JsonBody<AdjustmentBody>,
) -> Result<Response, ApiError> {
    adjust(
        state,
        caller,
        uid,
        headers,
        body,
        TransactionType::AdminDebit,
    )
    .await
}

async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<Uuid>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AdjustmentBody>,
    transaction_type: TransactionType,
) -> Result<Response, ApiError> {
    caller.require_role(Role::Admin)?;
    let account_id = AccountId(uid);
    let currency = load(&state, account_id).await?.currency;
    let amount = parse_amount(&body.amount, currency)?;
    let request = new_request(account_id, transaction_type, amount, currency, None);
    submit_request(&state, caller.uid, request, &headers).await
}
