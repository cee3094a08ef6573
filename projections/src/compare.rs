//! Row-by-row comparison of the read tables of two stores: a live one and one replayed from
//! the log, on SQLite or MySQL in any pairing.
//!
//! Each table is read from both stores in primary-key order, a page at a time, and merged:
//! a key one store has and the other lacks is a missing row, and a key both have is compared
//! column by column. Values are normalized first, so that the same row reads equal on either
//! backend: money as an exact decimal (SQLite's `69.50` and MySQL's `69.5000` are the same
//! amount), ids as lowercase text, integers as integers, event payloads as JSON values (key
//! order and spacing aside). Both stores are read through [`Snapshot`]s, so neither moves
//! under the comparison. Only the projector's own rows of `projection_offsets` are compared.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::backend::{Backend, Get};
use crate::error::ProjectionError;
use crate::money::Money;
use crate::projector::PROJECTION_NAME;
use crate::sql::Sql;
use crate::store::{Snapshot, with_snapshot};

/// Rows read from one table of one store per statement: a few hundred kilobytes at most,
/// and few enough round trips that a million rows compare in well under a minute.
const ROWS_PER_PAGE: usize = 1_000;

/// Differences kept in a [`Comparison`]; further ones are only counted. A store that differs
/// in more rows than this is wrong everywhere, and a longer list helps no one.
pub const DIFFERENCES_KEPT_MAX: usize = 10_000;

/// How a column's values are read and normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    /// A UUID, compared in lowercase.
    Id,
    Integer,
    Money,
    /// JSON text, compared as a value.
    Json,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub name: &'static str,
    kind: Kind,
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// A compared table: its primary key, the other columns, and the rows it is limited to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableSpec {
    pub name: &'static str,
    pub key: &'static [Column],
    pub values: &'static [Column],
    /// A column and the value a row must hold in it to be compared.
    scope: Option<(&'static str, &'static str)>,
}

pub(crate) const ACCOUNTS: TableSpec = TableSpec {
    name: "accounts",
    key: &[column("account_id", Kind::Id)],
    values: &[
        column("name", Kind::Text),
        column("email", Kind::Text),
        column("phone_number", Kind::Text),
        column("address_line1", Kind::Text),
        column("address_line2", Kind::Text),
        column("city", Kind::Text),
        column("state", Kind::Text),
        column("postal_code", Kind::Text),
        column("country", Kind::Text),
        column("currency", Kind::Text),
        column("balance", Kind::Money),
        column("held", Kind::Money),
        column("available", Kind::Money),
        column("sequence", Kind::Integer),
        column("last_causation_id", Kind::Id),
        column("created_at_ms", Kind::Integer),
        column("updated_at_ms", Kind::Integer),
    ],
    scope: None,
};

const TRANSACTIONS: TableSpec = TableSpec {
    name: "transactions",
    key: &[column("transaction_id", Kind::Id)],
    values: &[
        column("account_id", Kind::Id),
        column("transaction_type", Kind::Text),
        column("status", Kind::Text),
        column("amount", Kind::Money),
        column("currency", Kind::Text),
        column("phone_number", Kind::Text),
        column("failure_reason", Kind::Text),
        column("provider_reference", Kind::Text),
        column("created_at_ms", Kind::Integer),
        column("updated_at_ms", Kind::Integer),
    ],
    scope: None,
};

const STATEMENT_LINES: TableSpec = TableSpec {
    name: "statement_lines",
    key: &[
        column("account_id", Kind::Id),
        column("sequence", Kind::Integer),
    ],
    values: &[
        column("transaction_id", Kind::Id),
        column("entry", Kind::Text),
        column("amount", Kind::Money),
        column("balance_after", Kind::Money),
        column("occurred_at_ms", Kind::Integer),
    ],
    scope: None,
};

const ACCOUNT_EVENTS: TableSpec = TableSpec {
    name: "account_events",
    key: &[
        column("account_id", Kind::Id),
        column("sequence", Kind::Integer),
    ],
    values: &[
        column("event_id", Kind::Id),
        column("event_type", Kind::Text),
        column("event_version", Kind::Integer),
        column("occurred_at_ms", Kind::Integer),
        column("correlation_id", Kind::Id),
        column("causation_id", Kind::Id),
        column("log_topic", Kind::Text),
        column("log_partition", Kind::Integer),
        column("log_offset", Kind::Integer),
        column("payload", Kind::Json),
        column("previous_hash", Kind::Text),
        column("hash", Kind::Text),
    ],
    scope: None,
};

const PROJECTION_OFFSETS: TableSpec = TableSpec {
    name: "projection_offsets",
    key: &[
        column("projection", Kind::Text),
        column("topic", Kind::Text),
        column("partition_no", Kind::Integer),
    ],
    values: &[
        column("next_offset", Kind::Integer),
        column("skipped_records", Kind::Integer),
    ],
    scope: Some(("projection", PROJECTION_NAME)),
};

const DAILY_TRANSACTION_VOLUMES: TableSpec = TableSpec {
    name: "daily_transaction_volumes",
    key: &[
        column("day", Kind::Text),
        column("transaction_type", Kind::Text),
        column("currency", Kind::Text),
        column("status", Kind::Text),
    ],
    values: &[
        column("transaction_count", Kind::Integer),
        column("amount_total", Kind::Money),
    ],
    scope: None,
};

const DAILY_AIRTIME_DESTINATIONS: TableSpec = TableSpec {
    name: "daily_airtime_destinations",
    key: &[
        column("day", Kind::Text),
        column("calling_code", Kind::Text),
        column("currency", Kind::Text),
        column("status", Kind::Text),
    ],
    values: &[
        column("transaction_count", Kind::Integer),
        column("amount_total", Kind::Money),
    ],
    scope: None,
};

/// Every table the projector writes, in the order they are compared.
pub(crate) const TABLES: [TableSpec; 7] = [
    ACCOUNTS,
    TRANSACTIONS,
    STATEMENT_LINES,
    ACCOUNT_EVENTS,
    DAILY_TRANSACTION_VOLUMES,
    DAILY_AIRTIME_DESTINATIONS,
    PROJECTION_OFFSETS,
];

/// One normalized value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Null,
    Text(String),
    Integer(i64),
    /// Equal when the amounts are: `1.5` equals `1.50`.
    Money(Decimal),
    Json(serde_json::Value),
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Null => f.write_str("NULL"),
            Cell::Text(text) => f.write_str(text),
            Cell::Integer(value) => write!(f, "{value}"),
            Cell::Money(value) => write!(f, "{}", value.normalize()),
            Cell::Json(value) => write!(f, "{value}"),
        }
    }
}

/// One part of a primary key, ordered as both backends order it (text byte by byte).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum KeyPart {
    Integer(i64),
    Text(String),
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Integer(value) => write!(f, "{value}"),
            KeyPart::Text(text) => f.write_str(text),
        }
    }
}

/// A row: its key, and its other columns in the table's order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub key: Vec<KeyPart>,
    pub values: Vec<Cell>,
}

impl Row {
    /// The value of the non-key column `name` of `table`.
    pub fn value(&self, table: &TableSpec, name: &str) -> Option<&Cell> {
        let index = table.values.iter().position(|column| column.name == name)?;
        self.values.get(index)
    }
}

/// Where two stores disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    pub table: &'static str,
    /// The row's primary key, as `column=value` pairs.
    pub key: String,
    #[serde(flatten)]
    pub kind: DifferenceKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    tag = "difference",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum DifferenceKind {
    /// The replay has the row; the live store lacks it.
    MissingInLive,
    /// The live store has a row the replay does not.
    MissingInReplay,
    /// Both have the row, with another value in `column`.
    Column {
        column: &'static str,
        live: String,
        replayed: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (table, key) = (self.table, &self.key);
        match &self.kind {
            DifferenceKind::MissingInLive => {
                write!(
                    f,
                    "{table} [{key}]: the live store lacks this row of the replay"
                )
            }
            DifferenceKind::MissingInReplay => {
                write!(
                    f,
                    "{table} [{key}]: the live store has a row the replay does not"
                )
            }
            DifferenceKind::Column {
                column,
                live,
                replayed,
            } => write!(
                f,
                "{table} [{key}] {column}: live {live}, replayed {replayed}"
            ),
        }
    }
}

/// What comparing two stores found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Distinct rows looked at, over every table and both stores.
    pub rows_compared: u64,
    /// The first [`DIFFERENCES_KEPT_MAX`] differences, table by table in key order.
    pub differences: Vec<Difference>,
    /// Differences found beyond those kept.
    pub differences_omitted: u64,
}

impl Comparison {
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }

    fn record(&mut self, difference: Difference) {
        if self.differences.len() < DIFFERENCES_KEPT_MAX {
            self.differences.push(difference);
        } else {
            self.differences_omitted += 1;
        }
    }
}

/// Compares every read table of `live` with those of `replayed`, row by row.
pub async fn compare(
    live: &mut Snapshot,
    replayed: &mut Snapshot,
) -> Result<Comparison, ProjectionError> {
    let mut comparison = Comparison::default();
    for table in &TABLES {
        compare_table(live, replayed, table, &mut comparison).await?;
    }
    Ok(comparison)
}

async fn compare_table(
    live: &mut Snapshot,
    replayed: &mut Snapshot,
    table: &TableSpec,
    comparison: &mut Comparison,
) -> Result<(), ProjectionError> {
    let mut live_rows = Cursor::new(table);
    let mut replayed_rows = Cursor::new(table);
    loop {
        let order = match (
            live_rows.peek(live).await?,
            replayed_rows.peek(replayed).await?,
        ) {
            (None, None) => return Ok(()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(live), Some(replayed)) => live.key.cmp(&replayed.key),
        };
        comparison.rows_compared += 1;
        match order {
            Ordering::Less => {
                let row = live_rows.pop();
                comparison.record(missing(table, row, DifferenceKind::MissingInReplay));
            }
            Ordering::Greater => {
                let row = replayed_rows.pop();
                comparison.record(missing(table, row, DifferenceKind::MissingInLive));
            }
            Ordering::Equal => {
                let (live, replayed) = (live_rows.pop(), replayed_rows.pop());
                for difference in row_differences(table, &live, &replayed) {
                    comparison.record(difference);
                }
            }
        }
    }
}

fn missing(table: &TableSpec, row: Option<Row>, kind: DifferenceKind) -> Difference {
    let key = row.map(|row| key_text(table, &row.key)).unwrap_or_default();
    Difference {
        table: table.name,
        key,
        kind,
    }
}

/// The columns of two rows with the same key that differ.
fn row_differences(
    table: &TableSpec,
    live: &Option<Row>,
    replayed: &Option<Row>,
) -> Vec<Difference> {
    let (Some(live), Some(replayed)) = (live, replayed) else {
        return Vec::new();
    };
    let key = key_text(table, &live.key);
    let columns = (table.values.iter()).zip(live.values.iter().zip(&replayed.values));
    columns
        .filter(|(_, (live, replayed))| live != replayed)
        .map(|(column, (live, replayed))| Difference {
            table: table.name,
            key: key.clone(),
            kind: DifferenceKind::Column {
                column: column.name,
                live: live.to_string(),
                replayed: replayed.to_string(),
            },
        })
        .collect()
}

/// `column=value` pairs of a key, in the key's order.
fn key_text(table: &TableSpec, key: &[KeyPart]) -> String {
    let pairs = table.key.iter().zip(key);
    let pairs: Vec<String> = pairs
        .map(|(column, part)| format!("{}={part}", column.name))
        .collect();
    pairs.join(", ")
}

/// Reads one table of one store in key order, a page at a time.
pub(crate) struct Cursor<'t> {
    table: &'t TableSpec,
    page: VecDeque<Row>,
    /// The key of the last row read; the next page starts after it.
    after: Option<Vec<KeyPart>>,
    exhausted: bool,
}

impl<'t> Cursor<'t> {
    pub fn new(table: &'t TableSpec) -> Cursor<'t> {
        Cursor {
            table,
            page: VecDeque::new(),
            after: None,
            exhausted: false,
        }
    }

    /// The next row, reading the next page when the current one is used up.
    pub async fn peek(&mut self, snapshot: &mut Snapshot) -> Result<Option<&Row>, ProjectionError> {
        if self.page.is_empty() && !self.exhausted {
            let table = self.table;
            let after = self.after.as_deref();
            let rows =
                with_snapshot!(snapshot, DB, conn => read_page::<DB>(conn, table, after).await)?;
            self.exhausted = rows.len() < ROWS_PER_PAGE;
            self.after = rows.last().map(|row| row.key.clone());
            self.page = rows.into();
        }
        Ok(self.page.front())
    }

    pub fn pop(&mut self) -> Option<Row> {
        self.page.pop_front()
    }
}

/// The page of `table` after the key `after` (from the start when `None`), in key order.
async fn read_page<DB: Backend>(
    conn: &mut DB::Connection,
    table: &TableSpec,
    after: Option<&[KeyPart]>,
) -> Result<Vec<Row>, ProjectionError> {
    let columns: Vec<&str> = (table.key.iter().chain(table.values))
        .map(|column| column.name)
        .collect();
    let mut select = Sql::<DB>::new(format!(
        "SELECT {} FROM {} WHERE 1 = 1",
        columns.join(", "),
        table.name
    ));
    if let Some((column, value)) = table.scope {
        select.push(&format!(" AND {column} = "));
        select.push_bind(value);
    }
    if let Some(after) = after {
        push_after(&mut select, table.key, after);
    }
    let key_names: Vec<&str> = table.key.iter().map(|column| column.name).collect();
    select.push(&format!(" ORDER BY {} LIMIT ", key_names.join(", ")));
    select.push_bind(ROWS_PER_PAGE as i64);
    let rows = select.fetch_all(conn).await?;
    rows.iter().map(|row| row_from::<DB>(row, table)).collect()
}

/// ` AND (k1 > ? OR (k1 = ? AND k2 > ?) ...)`: the rows after `after` in key order, written
/// without row values so that every backend can use the primary key's index.
fn push_after<DB: Backend>(select: &mut Sql<DB>, key: &[Column], after: &[KeyPart]) {
    select.push(" AND (");
    for last in 0..key.len().min(after.len()) {
        if last > 0 {
            select.push(" OR ");
        }
        select.push("(");
        for (index, (column, part)) in key.iter().zip(after).take(last + 1).enumerate() {
            if index > 0 {
                select.push(" AND ");
            }
            let operator = if index == last { ">" } else { "=" };
            select.push(&format!("{} {operator} ", column.name));
            match part {
                KeyPart::Integer(value) => select.push_bind(*value),
                KeyPart::Text(text) => select.push_bind(text.clone()),
            };
        }
        select.push(")");
    }
    select.push(")");
}

fn row_from<DB: Backend>(row: &DB::Row, table: &TableSpec) -> Result<Row, ProjectionError> {
    let key = (table.key.iter())
        .map(|column| key_part::<DB>(row, column))
        .collect::<Result<_, _>>()?;
    let values = (table.values.iter())
        .map(|column| cell::<DB>(row, column))
        .collect::<Result<_, _>>()?;
    Ok(Row { key, values })
}

fn key_part<DB: Backend>(row: &DB::Row, column: &Column) -> Result<KeyPart, ProjectionError> {
    Ok(match column.kind {
        Kind::Integer => KeyPart::Integer(row.value(column.name)?),
        _ => KeyPart::Text(row.value(column.name)?),
    })
}

fn cell<DB: Backend>(row: &DB::Row, column: &Column) -> Result<Cell, ProjectionError> {
    let name = column.name;
    let cell = match column.kind {
        Kind::Integer => Get::<Option<i64>>::value(row, name)?.map(Cell::Integer),
        Kind::Money => Some(Cell::Money(Get::<Money>::value(row, name)?.value())),
        Kind::Text => Get::<Option<String>>::value(row, name)?.map(Cell::Text),
        Kind::Id => Get::<Option<String>>::value(row, name)?
            .map(|text| Cell::Text(text.to_ascii_lowercase())),
        // Text that is not JSON is compared as text, so that a damaged payload shows as a
        // difference rather than stopping the comparison.
        Kind::Json => Get::<Option<String>>::value(row, name)?
            .map(|text| serde_json::from_str(&text).map_or(Cell::Text(text), Cell::Json)),
    };
    Ok(cell.unwrap_or(Cell::Null))
}

#[cfg(test)]
mod tests {
    use tally_commands::log::Record;
    use tally_domain::TransactionId;

    use super::*;
    use crate::backend_tests;
    use crate::batch;
    use crate::projector::apply_batch;
    use crate::test_support::{TestBackend, TestStore};
    use crate::testing::*;

    /// More events than one page holds, so that every table is read in several pages.
    const CREDITS: usize = ROWS_PER_PAGE / 2;

    /// The records of one account with many credits and an open reservation.
    async fn history() -> Vec<Record> {
        let mut stream = Stream::new(7);
        let mut records = stream.decide(open()).await;
        for _ in 0..CREDITS {
            records.extend(stream.decide(add_money(TransactionId::new(), "1.5")).await);
        }
        records.extend(stream.decide(send_airtime(TransactionId::new(), "2")).await);
        records
    }

    async fn projected(backend: TestBackend, records: &[Record]) -> TestStore {
        let test = TestStore::open(backend).await;
        apply_batch(test.store(), &batch::decode(records))
            .await
            .unwrap();
        test
    }

    async fn compared(live: &TestStore, replayed: &TestStore) -> Comparison {
        let mut live = live.store().snapshot().await.unwrap();
        let mut replayed = replayed.store().snapshot().await.unwrap();
        compare(&mut live, &mut replayed).await.unwrap()
    }

    #[tokio::test]
    async fn the_same_history_projected_on_sqlite_and_on_mysql_compares_equal() {
        let records = history().await;
        let sqlite = projected(TestBackend::Sqlite, &records).await;
        let mysql = projected(TestBackend::MySql, &records).await;

        let comparison = compared(&mysql, &sqlite).await;

        assert_eq!(comparison.differences, Vec::new());
        // An account, its transactions and their lines and events; on one day, a volume row
        // for the credits and one for the airtime, which also has a destination row; one
        // offsets row.
        let transactions = CREDITS + 1;
        let expected = 1 + transactions + CREDITS + records.len() + 2 + 1 + 1;
        assert_eq!(comparison.rows_compared, expected as u64);
    }

    backend_tests!(
        a_balance_changed_by_hand_is_a_difference_in_that_column,
        rows_one_store_lacks_are_missing_there_and_the_rest_still_lines_up,
    );

    async fn a_balance_changed_by_hand_is_a_difference_in_that_column(backend: TestBackend) {
        let records = history().await;
        let (live, replayed) = (
            projected(backend, &records).await,
            projected(TestBackend::Sqlite, &records).await,
        );
        live.execute("UPDATE accounts SET balance = '1000.00', available = '998.00'")
            .await;

        let comparison = compared(&live, &replayed).await;

        let account = Stream::new(7).account_id;
        let columns: Vec<_> = (comparison.differences.iter())
            .map(|difference| (difference.table, difference.key.clone(), &difference.kind))
            .collect();
        let column = |column, live: &str, replayed: &str| DifferenceKind::Column {
            column,
            live: live.to_owned(),
            replayed: replayed.to_owned(),
        };
        let key = format!("account_id={account}");
        assert_eq!(
            columns,
            vec![
                ("accounts", key.clone(), &column("balance", "1000", "750")),
                ("accounts", key, &column("available", "998", "748")),
            ]
        );
    }

    async fn rows_one_store_lacks_are_missing_there_and_the_rest_still_lines_up(
        backend: TestBackend,
    ) {
        let records = history().await;
        let (live, replayed) = (
            projected(backend, &records).await,
            projected(backend, &records).await,
        );
        live.execute("DELETE FROM account_events WHERE sequence = 700")
            .await;
        replayed
            .execute("DELETE FROM statement_lines WHERE sequence = 6")
            .await;

        let comparison = compared(&live, &replayed).await;

        let account = Stream::new(7).account_id;
        let found: Vec<String> = comparison
            .differences
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                format!(
                    "statement_lines [account_id={account}, sequence=6]: the live store has \
                     a row the replay does not"
                ),
                format!(
                    "account_events [account_id={account}, sequence=700]: the live store \
                     lacks this row of the replay"
                ),
            ]
        );
    }

    #[test]
    fn the_compared_columns_are_every_column_the_projector_writes() {
        for table in &TABLES {
            let compared: Vec<&str> = (table.key.iter().chain(table.values))
                .map(|column| column.name)
                .collect();
            let mut written = crate::writes::columns_of(table.name).to_vec();
            let mut compared_sorted = compared.clone();
            written.sort_unstable();
            compared_sorted.sort_unstable();
            assert_eq!(compared_sorted, written, "{}", table.name);
        }
    }
}
