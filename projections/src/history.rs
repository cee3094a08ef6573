//! Reading an account's history back: the events of one transaction, and an account's balance
//! as it stood at a moment in the past, computed from its events rather than from the
//! current row of `accounts`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tally_domain::{Account, AccountId, Currency, LedgerEvent, TransactionId};

use crate::queries::{AccountEventRow, select_account_events, select_events_page};
use crate::{ProjectionError, ReadStore, with_pool};

/// Events read per query while folding an account's history.
const FOLD_PAGE_EVENTS: u32 = 1_000;

/// A moment of an account's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Once every event that occurred at or before this time was applied. Events are taken in
    /// stream order up to the first that occurred later, so the answer is always a prefix of
    /// the stream.
    Time(DateTime<Utc>),
    /// Once every event stored at or before this offset of the account's events partition
    /// was applied.
    Offset(u64),
}

impl AsOf {
    fn includes(&self, event: &AccountEventRow) -> bool {
        match *self {
            AsOf::Time(time) => event.occurred_at <= time,
            AsOf::Offset(offset) => event.log_offset <= offset,
        }
    }
}

/// An account's money at a moment of its history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PointInTimeBalance {
    pub account_id: AccountId,
    pub currency: Currency,
    /// Posted money.
    pub balance: Decimal,
    /// Money held by reservations open at that moment.
    pub held: Decimal,
    pub available: Decimal,
    /// The last event applied.
    pub last_event: AppliedEvent,
}

/// Where in the stream and the log a point-in-time balance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedEvent {
    pub sequence: u64,
    pub occurred_at: DateTime<Utc>,
    pub log_partition: u32,
    pub log_offset: u64,
}

impl ReadStore {
    /// One page of the events of a transaction (all in its account's stream), in stream order,
    /// after `after_sequence`: at most `limit` of them.
    pub async fn transaction_events(
        &self,
        transaction_id: TransactionId,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<AccountEventRow>, ProjectionError> {
        let limit = limit.min(crate::ACCOUNT_EVENTS_PAGE_SIZE_MAX);
        with_pool!(self, pool => {
            let id = transaction_id.to_string();
            select_events_page(pool, "correlation_id", id, after_sequence, limit).await
        })
    }

    /// The account's money once the events up to `as_of` were applied, folded from its
    /// stored events; `None` when the account was not open by then (or never was).
    pub async fn balance_as_of(
        &self,
        account_id: AccountId,
        as_of: AsOf,
    ) -> Result<Option<PointInTimeBalance>, ProjectionError> {
        let mut account = Account::default();
        let mut last_event = None;
        let mut after_sequence = 0;
        // Endless only while full pages keep coming; each pass reads further into the stream
        // or returns.
        loop {
            let page = with_pool!(self, pool => {
                select_account_events(pool, account_id, after_sequence, FOLD_PAGE_EVENTS).await
            })?;
            let full = page.len() == FOLD_PAGE_EVENTS as usize;
            for event in page {
                if !as_of.includes(&event) {
                    return Ok(point_in_time(account_id, &account, last_event));
                }
                apply(&mut account, &event)?;
                after_sequence = event.sequence;
                last_event = Some(AppliedEvent {
                    sequence: event.sequence,
                    occurred_at: event.occurred_at,
                    log_partition: event.log_partition,
                    log_offset: event.log_offset,
                });
            }
            if !full {
                return Ok(point_in_time(account_id, &account, last_event));
            }
        }
    }
}

fn apply(account: &mut Account, event: &AccountEventRow) -> Result<(), ProjectionError> {
    let unreadable = || ProjectionError::UnreadableColumn {
        column: "payload",
        value: event.payload.to_string(),
    };
    // A payload that breaks the ledger can only come from a store changed by hand, which
    // `tally verify` names; here it is reported, never folded.
    match serde_json::from_value::<LedgerEvent>(event.payload.clone()) {
        Ok(LedgerEvent::Account(event)) => account.try_apply_event(event).map_err(|_| unreadable()),
        Ok(LedgerEvent::Transaction(_)) => Ok(()),
        Err(_) => Err(unreadable()),
    }
}

fn point_in_time(
    account_id: AccountId,
    account: &Account,
    last_event: Option<AppliedEvent>,
) -> Option<PointInTimeBalance> {
    let currency = account.currency()?;
    Some(PointInTimeBalance {
        account_id,
        currency,
        balance: account.balance(),
        held: account.held(),
        available: account.available(),
        last_event: last_event?,
    })
}
