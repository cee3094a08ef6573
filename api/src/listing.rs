//! Lists of transactions: the filters `GET /transactions` and `tally export transactions`
//! take, the opaque cursor that pages them, and the flat record each row is shown as, in JSON,
//! CSV or JSON Lines.
//!
//! Every filter is parsed here into a [`TransactionFilter`] of the projections crate, which
//! owns the query; a filter that does not parse is a 400 with a code of its own. Who may see
//! which account is the route's business, not this module's.

use std::io::Write;

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::money::format_at_scale;
use tally_domain::{AccountId, TransactionId, TransactionStatus, TransactionType};
use tally_projections::{TransactionCursor, TransactionFilter, TransactionView};
use uuid::Uuid;

use crate::error::ApiError;

/// Rows in a page when the caller names no `limit`.
pub const PAGE_SIZE_DEFAULT: u32 = 50;

/// The largest `limit` a caller may ask for: a page of 500 rows is about 150 KB of JSON, which
/// a client parses in milliseconds and the read store serves in one short query.
pub const PAGE_SIZE_MAX: u32 = 500;

/// The media type that asks for CSV instead of JSON.
pub const CSV_MEDIA_TYPE: &str = "text/csv";

/// The header that carries the next page's cursor with a CSV page, whose body has no room
/// for it. Absent on the last page.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// The longest cursor accepted, in bytes: a cursor this API wrote is under 80.
const CURSOR_BYTES_MAX: usize = 128;

/// Separates the creation time from the transaction id inside a cursor.
const CURSOR_SEPARATOR: char = '~';

/// The query of `GET /transactions`, every value as the caller wrote it, so that each one that
/// does not parse is refused with its own code.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    transaction_type: Option<String>,
    account_id: Option<String>,
    user_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    min_amount: Option<String>,
    max_amount: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A parsed list request. `filter.account_id` is left for the route to set from `account`
/// and the caller.
#[derive(Debug, PartialEq)]
pub struct Listing {
    pub filter: TransactionFilter,
    /// The account the caller asked for (`accountId`, or `userId`: an account's id is its
    /// owner's uid).
    pub account: Option<AccountId>,
    pub limit: u32,
    pub after: Option<TransactionCursor>,
}

impl ListQuery {
    pub fn parse(self) -> Result<Listing, ApiError> {
        let filter = TransactionFilter {
            account_id: None,
            status: self.status.as_deref().map(parse_status).transpose()?,
            transaction_type: self
                .transaction_type
                .as_deref()
                .map(parse_type)
                .transpose()?,
            created_from: self
                .from
                .as_deref()
                .map(|t| parse_time("from", t))
                .transpose()?,
            created_before: self
                .to
                .as_deref()
                .map(|t| parse_time("to", t))
                .transpose()?,
            amount_min: (self.min_amount.as_deref())
                .map(|text| parse_amount_bound("minAmount", text))
                .transpose()?,
            amount_max: (self.max_amount.as_deref())
                .map(|text| parse_amount_bound("maxAmount", text))
                .transpose()?,
        };
        check_ranges(&filter)?;
        Ok(Listing {
            filter,
            account: account(self.account_id.as_deref(), self.user_id.as_deref())?,
            limit: self
                .limit
                .as_deref()
                .map_or(Ok(PAGE_SIZE_DEFAULT), parse_limit)?,
            after: self.cursor.as_deref().map(decode_cursor).transpose()?,
        })
    }
}

/// `accountId` and `userId` name the same thing; given both, they must agree.
fn account(account_id: Option<&str>, user_id: Option<&str>) -> Result<Option<AccountId>, ApiError> {
    let account_id = account_id
        .map(|text| parse_uuid("accountId", text))
        .transpose()?;
    let user_id = user_id.map(|text| parse_uuid("userId", text)).transpose()?;
    match (account_id, user_id) {
        (Some(account), Some(user)) if account != user => Err(ApiError::invalid(
            "conflicting_account_filters",
            "accountId and userId name different accounts",
        )),
        (account, user) => Ok(account.or(user).map(AccountId)),
    }
}

fn parse_uuid(name: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::invalid(
            "invalid_account_id",
            format!("{name} {text:?} is not a UUID"),
        )
    })
}

pub fn parse_status(text: &str) -> Result<TransactionStatus, ApiError> {
    let statuses = [
        TransactionStatus::Accepted,
        TransactionStatus::Processing,
        TransactionStatus::Successful,
        TransactionStatus::Failed,
    ];
    let found = statuses.into_iter().find(|status| status.as_str() == text);
    found.ok_or_else(|| {
        let detail = format!("status {text:?} is not ACCEPTED, PROCESSING, SUCCESSFUL or FAILED");
        ApiError::invalid("unknown_transaction_status", detail)
    })
}

pub fn parse_type(text: &str) -> Result<TransactionType, ApiError> {
    let types = [
        TransactionType::AddMoney,
        TransactionType::SendAirtime,
        TransactionType::AdminCredit,
        TransactionType::AdminDebit,
    ];
    let found = types.into_iter().find(|kind| kind.as_str() == text);
    found.ok_or_else(|| {
        let detail =
            format!("type {text:?} is not ADD_MONEY, SEND_AIRTIME, ADMIN_CREDIT or ADMIN_DEBIT");
        ApiError::invalid("unknown_transaction_type", detail)
    })
}

/// An RFC 3339 time with its offset, such as `2026-03-01T00:00:00Z`.
pub fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    let parsed = DateTime::parse_from_rfc3339(text).map_err(|_| {
        let detail =
            format!("{name} {text:?} is not an RFC 3339 time such as 2026-03-01T00:00:00Z");
        ApiError::invalid("time_not_rfc3339", detail)
    })?;
    Ok(parsed.with_timezone(&Utc))
}

/// A plain, non-negative decimal, taken exactly as written: any number of decimals compares
/// exactly, whatever the currency's scale.
pub fn parse_amount_bound(name: &str, text: &str) -> Result<Decimal, ApiError> {
    let amount = Decimal::from_str_exact(text.trim())
        .ok()
        .filter(|amount| !amount.is_sign_negative());
    amount.ok_or_else(|| {
        let detail = format!("{name} {text:?} is not a non-negative decimal such as 10.50");
        ApiError::invalid("invalid_amount_filter", detail)
    })
}

fn parse_limit(text: &str) -> Result<u32, ApiError> {
    let limit = text.parse::<u32>().ok();
    limit
        .filter(|limit| (1..=PAGE_SIZE_MAX).contains(limit))
        .ok_or_else(|| {
            let detail = format!("limit {text:?} is not a whole number from 1 to {PAGE_SIZE_MAX}");
            ApiError::invalid("invalid_limit", detail)
        })
}

/// A range must not end before it starts. An empty range (`from` equal to `to`) is allowed and
/// selects nothing.
pub fn check_ranges(filter: &TransactionFilter) -> Result<(), ApiError> {
    if let (Some(from), Some(to)) = (filter.created_from, filter.created_before)
        && from > to
    {
        let detail = "from is after to";
        return Err(ApiError::invalid("time_range_reversed", detail));
    }
    if let (Some(min), Some(max)) = (filter.amount_min, filter.amount_max)
        && min > max
    {
        let detail = "minAmount is above maxAmount";
        return Err(ApiError::invalid("amount_range_reversed", detail));
    }
    Ok(())
}

/// The cursor of a place in the listing order: base64url of its creation time and id. Opaque
/// to callers; only its round trip through [`decode_cursor`] is promised.
pub fn encode_cursor(cursor: TransactionCursor) -> String {
    let text = format!(
        "{}{CURSOR_SEPARATOR}{}",
        cursor.created_at_ms, cursor.transaction_id
    );
    URL_SAFE_NO_PAD.encode(text)
}

pub fn decode_cursor(text: &str) -> Result<TransactionCursor, ApiError> {
    let invalid = || ApiError::invalid("invalid_cursor", "cursor is not one this API returned");
    if text.len() > CURSOR_BYTES_MAX {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let decoded = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (created_at_ms, id) = decoded.split_once(CURSOR_SEPARATOR).ok_or_else(invalid)?;
    Ok(TransactionCursor {
        created_at_ms: created_at_ms.parse().map_err(|_| invalid())?,
        transaction_id: TransactionId(Uuid::parse_str(id).map_err(|_| invalid())?),
    })
}

/// Whether the caller asked for CSV: some media range of its `Accept` header is `text/csv`.
pub fn wants_csv(headers: &HeaderMap) -> bool {
    let ranges = headers.get_all(ACCEPT).iter();
    let ranges = ranges.filter_map(|value| value.to_str().ok());
    ranges.flat_map(|value| value.split(',')).any(|range| {
        let media_type = range.split(';').next().unwrap_or_default().trim();
        media_type.eq_ignore_ascii_case(CSV_MEDIA_TYPE)
    })
}

/// A transaction as a list shows it: one flat record, the same in JSON, CSV and JSON Lines.
/// Amounts are decimal strings at the currency's scale; times are RFC 3339 UTC with
/// milliseconds; a missing value is JSON `null` and an empty CSV field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionRecord {
    pub transaction_id: Uuid,
    pub account_id: Uuid,
    pub transaction_type: &'static str,
    pub transaction_status: &'static str,
    pub amount: String,
    pub currency_code: &'static str,
    pub phone_number: Option<String>,
    pub failure_reason: Option<&'static str>,
    pub created_at: String,
    pub updated_at: String,
}

/// The CSV header: [`TransactionRecord`]'s fields, in order.
pub const CSV_HEADER: [&str; 10] = [
    "transactionId",
    "accountId",
    "transactionType",
    "transactionStatus",
    "amount",
    "currencyCode",
    "phoneNumber",
    "failureReason",
    "createdAt",
    "updatedAt",
];

pub fn record(row: &TransactionView) -> TransactionRecord {
    let time = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Millis, true);
    TransactionRecord {
        transaction_id: row.transaction_id.0,
        account_id: row.account_id.0,
        transaction_type: row.transaction_type.as_str(),
        transaction_status: row.status.as_str(),
        amount: format_at_scale(row.amount, row.currency),
        currency_code: row.currency.code(),
        phone_number: row.phone_number.clone(),
        failure_reason: row.failure_reason.map(|reason| reason.code()),
        created_at: time(row.created_at),
        updated_at: time(row.updated_at),
    }
}

/// A CSV writer over `out` that has written the header line: RFC 4180 quoting, CRLF line
/// ends. The header is written even when no row follows.
pub fn csv_writer<W: Write>(out: W) -> csv::Result<csv::Writer<W>> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    writer.write_record(CSV_HEADER)?;
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<Listing, ApiError> {
        let text: Vec<String> = (pairs.iter())
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let uri: axum::http::Uri = format!("/transactions?{}", text.join("&")).parse().unwrap();
        let axum::extract::Query(query) =
            axum::extract::Query::<ListQuery>::try_from_uri(&uri).expect("query");
        query.parse()
    }

    fn code(pairs: &[(&str, &str)]) -> &'static str {
        query(pairs).expect_err("refused").code()
    }

    #[test]
    fn no_filter_lists_everything_visible_fifty_at_a_time() {
        let listing = query(&[]).unwrap();
        assert_eq!(listing.filter, TransactionFilter::default());
        assert_eq!(
            (listing.limit, listing.account, listing.after),
            (50, None, None)
        );
    }

    #[test]
    fn every_filter_parses_into_the_query_filter() {
        let id = "0190f3a2-6c1e-7d4b-9a55-2b6f0e1c9d07";
        let listing = query(&[
            ("status", "FAILED"),
            ("type", "SEND_AIRTIME"),
            ("accountId", id),
            ("from", "2026-03-01T00:00:00Z"),
            ("to", "2026-03-02T03:00:00%2B03:00"),
            ("minAmount", "0.005"),
            ("maxAmount", "10"),
            ("limit", "500"),
        ])
        .unwrap();
        let filter = &listing.filter;
        assert_eq!(filter.status, Some(TransactionStatus::Failed));
        assert_eq!(filter.transaction_type, Some(TransactionType::SendAirtime));
        assert_eq!(
            filter.created_before.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-03-02T00:00:00+00:00")
        );
        assert_eq!(
            filter.amount_min.map(|a| a.to_string()).as_deref(),
            Some("0.005")
        );
        assert_eq!(listing.account.map(|a| a.to_string()).as_deref(), Some(id));
        assert_eq!(listing.limit, 500);
    }

    #[test]
    fn every_bad_filter_has_its_own_code() {
        let id = "0190f3a2-6c1e-7d4b-9a55-2b6f0e1c9d07";
        let other = "0190f3a2-6c1e-7d4b-9a55-2b6f0e1c9d08";
        let cases: [(&[(&str, &str)], &str); 13] = [
            (&[("from", "yesterday")], "time_not_rfc3339"),
            (&[("to", "2026-03-01")], "time_not_rfc3339"),
            (
                &[
                    ("from", "2026-03-02T00:00:00Z"),
                    ("to", "2026-03-01T00:00:00Z"),
                ],
                "time_range_reversed",
            ),
            (&[("minAmount", "ten")], "invalid_amount_filter"),
            (&[("maxAmount", "-1")], "invalid_amount_filter"),
            (
                &[("minAmount", "5"), ("maxAmount", "1")],
                "amount_range_reversed",
            ),
            (&[("status", "PENDING")], "unknown_transaction_status"),
            (&[("type", "REFUND")], "unknown_transaction_type"),
            (&[("cursor", "not-a-cursor")], "invalid_cursor"),
            (&[("limit", "0")], "invalid_limit"),
            (&[("limit", "501")], "invalid_limit"),
            (&[("accountId", "me")], "invalid_account_id"),
            (
                &[("accountId", id), ("userId", other)],
                "conflicting_account_filters",
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(code(pairs), expected, "{pairs:?}");
        }
    }

    #[test]
    fn a_cursor_round_trips_and_a_tampered_one_is_refused() {
        let cursor = TransactionCursor {
            created_at_ms: 1_772_323_200_123,
            transaction_id: TransactionId(Uuid::from_u128(7)),
        };
        let encoded = encode_cursor(cursor);
        assert_eq!(decode_cursor(&encoded).ok(), Some(cursor));
        let tampered = URL_SAFE_NO_PAD.encode("12~not-a-uuid");
        assert_eq!(
            decode_cursor(&tampered).map_err(|e| e.code()),
            Err("invalid_cursor")
        );
    }

    #[test]
    fn csv_is_asked_for_by_any_text_csv_range_of_accept() {
        let accept = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, value.parse().unwrap());
            wants_csv(&headers)
        };
        assert!(accept("text/csv"));
        assert!(accept("application/json;q=0.5, Text/CSV; charset=utf-8"));
        assert!(!accept("application/json"));
        assert!(!wants_csv(&HeaderMap::new()));
    }

    #[test]
    fn the_csv_header_names_the_json_fields_in_order() {
        let row = TransactionView {
            transaction_id: TransactionId(Uuid::from_u128(1)),
            account_id: AccountId(Uuid::from_u128(2)),
            transaction_type: TransactionType::AddMoney,
            status: TransactionStatus::Successful,
            amount: Decimal::new(695, 1),
            currency: tally_domain::Currency::USD,
            phone_number: None,
            failure_reason: None,
            provider_reference: None,
            created_at: DateTime::from_timestamp_millis(1).unwrap(),
            updated_at: DateTime::from_timestamp_millis(2).unwrap(),
        };
        let json = serde_json::to_value(record(&row)).unwrap();
        let fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut header = CSV_HEADER.to_vec();
        header.sort_unstable();
        let mut sorted = fields.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, header);

        let mut writer = csv_writer(Vec::new()).unwrap();
        writer.serialize(record(&row)).unwrap();
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert!(
            lines[1].contains(",69.50,USD,,,1970-01-01T00:00:00.001Z,"),
            "{}",
            lines[1]
        );
    }
}
