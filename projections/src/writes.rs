//! Every write to the read tables. Only the projector calls these, inside the one transaction
//! that applies a batch and stores its offsets.
//!
//! Rows go out in multi-row statements, as many rows to a statement as the backend binds.
//! Accounts and transactions are upserted whole, in the state the batch folded them to; the
//! upsert clause is the backend's (`ON CONFLICT ... DO UPDATE` on SQLite, `ON DUPLICATE KEY
//! UPDATE` on MySQL), and so is how it names the value the insert proposed.

use crate::analysis::{self, DestinationKey, Settled, Tally, VolumeKey};
use crate::backend::Backend;
use crate::batch::{Changes, OffsetAdvance, StatementLine};
use crate::money::Money;
use crate::queries::{AccountEventRow, AccountView, TransactionView, to_sql};
use crate::sql::{Sql, Tuple};

/// Rows per statement at most. The widest row binds 18 values, so a statement binds at most
/// 9,000: well inside every backend's `BOUND_VALUES_MAX`, and large enough that a batch of a
/// thousand records takes a handful of statements.
const ROWS_PER_STATEMENT_MAX: usize = 500;

/// A table, and the columns a batch writes in the order each row binds them.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
}

const ACCOUNT_EVENTS: Table = Table {
    name: "account_events",
    columns: &[
        "account_id",
        "sequence",
        "event_id",
        "event_type",
        "event_version",
        "occurred_at_ms",
        "correlation_id",
        "causation_id",
        "log_topic",
        "log_partition",
        "log_offset",
        "payload",
        "previous_hash",
        "hash",
    ],
};

const STATEMENT_LINES: Table = Table {
    name: "statement_lines",
    columns: &[
        "account_id",
        "sequence",
        "transaction_id",
        "entry",
        "amount",
        "balance_after",
        "occurred_at_ms",
    ],
};

const ACCOUNTS: Table = Table {
    name: "accounts",
    columns: &[
        "account_id",
        "name",
        "email",
        "phone_number",
        "address_line1",
        "address_line2",
        "city",
        "state",
        "postal_code",
        "country",
        "currency",
        "balance",
        "held",
        "available",
        "sequence",
        "last_causation_id",
        "created_at_ms",
        "updated_at_ms",
    ],
};

/// What an account upsert changes: everything but the key, the currency and the opening time.
const ACCOUNT_UPDATED_COLUMNS: [&str; 15] = [
    "name",
    "email",
    "phone_number",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "postal_code",
    "country",
    "balance",
    "held",
    "available",
    "sequence",
    "last_causation_id",
    "updated_at_ms",
];

const TRANSACTIONS: Table = Table {
    name: "transactions",
    columns: &[
        "transaction_id",
        "account_id",
        "transaction_type",
        "status",
        "amount",
        "currency",
        "phone_number",
        "failure_reason",
        "provider_reference",
        "created_at_ms",
        "updated_at_ms",
    ],
};

/// What a transaction upsert changes: its progress, and its creation time, which moves to the
/// command's when the command is read after the events.
const TRANSACTION_UPDATED_COLUMNS: [&str; 5] = [
    "status",
    "created_at_ms",
    "failure_reason",
    "provider_reference",
    "updated_at_ms",
];

const DAILY_TRANSACTION_VOLUMES: Table = Table {
    name: "daily_transaction_volumes",
    columns: &[
        "day",
        "transaction_type",
        "currency",
        "status",
        "transaction_count",
        "amount_total",
    ],
};

const DAILY_AIRTIME_DESTINATIONS: Table = Table {
    name: "daily_airtime_destinations",
    columns: &[
        "day",
        "calling_code",
        "currency",
        "status",
        "transaction_count",
        "amount_total",
    ],
};

/// What an analysis upsert changes: the totals, which the batch worked out whole.
const ANALYSIS_UPDATED_COLUMNS: [&str; 2] = ["transaction_count", "amount_total"];

/// The key columns of each analysis table: the first four of its columns.
const ANALYSIS_KEY_COLUMNS: usize = 4;

const PROJECTION_OFFSETS: Table = Table {
    name: "projection_offsets",
    columns: &[
        "projection",
        "topic",
        "partition_no",
        "next_offset",
        "skipped_records",
    ],
};

/// The columns the projector writes to `table`; none for a table it does not write.
#[cfg(test)]
pub(crate) fn columns_of(table: &str) -> &'static [&'static str] {
    let tables = [
        ACCOUNT_EVENTS,
        STATEMENT_LINES,
        ACCOUNTS,
        TRANSACTIONS,
        DAILY_TRANSACTION_VOLUMES,
        DAILY_AIRTIME_DESTINATIONS,
        PROJECTION_OFFSETS,
    ];
    (tables.into_iter())
        .find(|written| written.name == table)
        .map_or(&[], |written| written.columns)
}

/// Writes what a batch changed, and where it leaves each partition, for `projection`.
pub(crate) async fn write<DB: Backend>(
    conn: &mut DB::Connection,
    projection: &str,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    insert_account_events::<DB>(conn, &changes.account_events).await?;
    insert_statement_lines::<DB>(conn, &changes.statement_lines).await?;
    upsert_accounts::<DB>(conn, &changes.accounts).await?;
    upsert_transactions::<DB>(conn, &changes.transactions).await?;
    save_offsets::<DB>(conn, projection, &changes.offsets).await
}

/// Writes the analysis rows a batch settled: each table's changed rows in one upsert, its
/// emptied rows in one delete (more only past the bound-value limit).
pub(crate) async fn write_analysis<DB: Backend>(
    conn: &mut DB::Connection,
    settled: &Settled,
) -> Result<(), sqlx::Error> {
    upsert_analysis::<DB, _>(
        conn,
        &DAILY_TRANSACTION_VOLUMES,
        &settled.volumes,
        bind_volume,
    )
    .await?;
    delete_keys::<DB, _>(
        conn,
        &DAILY_TRANSACTION_VOLUMES,
        &settled.volumes_emptied,
        bind_volume_key,
    )
    .await?;
    let destinations = &settled.destinations;
    upsert_analysis::<DB, _>(
        conn,
        &DAILY_AIRTIME_DESTINATIONS,
        destinations,
        bind_destination,
    )
    .await?;
    delete_keys::<DB, _>(
        conn,
        &DAILY_AIRTIME_DESTINATIONS,
        &settled.destinations_emptied,
        bind_destination_key,
    )
    .await
}

async fn upsert_analysis<DB: Backend, K>(
    conn: &mut DB::Connection,
    table: &Table,
    rows: &[(K, Tally)],
    bind_row: fn(&mut Tuple<'_, DB>, &(K, Tally)),
) -> Result<(), sqlx::Error> {
    let key = table.columns[..ANALYSIS_KEY_COLUMNS].join(", ");
    let tail = update_on_conflict::<DB>(&key, &ANALYSIS_UPDATED_COLUMNS);
    insert_rows::<DB, _>(conn, table, &tail, rows, bind_row).await
}

/// Deletes the rows of `table` whose keys `bind_key` binds, in as few statements as the
/// backend's bound-value limit allows.
async fn delete_keys<DB: Backend, K>(
    conn: &mut DB::Connection,
    table: &Table,
    keys: &[K],
    bind_key: fn(&mut Sql<DB>, &K),
) -> Result<(), sqlx::Error> {
    let key_columns = &table.columns[..ANALYSIS_KEY_COLUMNS];
    let keys_per_statement = ROWS_PER_STATEMENT_MAX.min(DB::BOUND_VALUES_MAX / key_columns.len());
    for chunk in keys.chunks(keys_per_statement) {
        let mut delete = Sql::<DB>::new(format!("DELETE FROM {} WHERE ", table.name));
        for (index, key) in chunk.iter().enumerate() {
            delete.push(if index == 0 { "(" } else { " OR (" });
            bind_key(&mut delete, key);
            delete.push(")");
        }
        delete.execute(conn).await?;
    }
    Ok(())
}

fn day_text(day: chrono::NaiveDate) -> String {
    day.format(analysis::DAY_FORMAT).to_string()
}

fn bind_volume<DB: Backend>(values: &mut Tuple<'_, DB>, (key, tally): &(VolumeKey, Tally)) {
    values
        .bind(day_text(key.day))
        .bind(key.transaction_type)
        .bind(key.currency.code())
        .bind(key.status)
        .bind(tally.count)
        .bind(Money::at_scale(tally.amount, key.currency));
}

fn bind_destination<DB: Backend>(
    values: &mut Tuple<'_, DB>,
    (key, tally): &(DestinationKey, Tally),
) {
    values
        .bind(day_text(key.day))
        .bind(key.calling_code.clone())
        .bind(key.currency.code())
        .bind(key.status)
        .bind(tally.count)
        .bind(Money::at_scale(tally.amount, key.currency));
}

fn bind_volume_key<DB: Backend>(delete: &mut Sql<DB>, key: &VolumeKey) {
    delete
        .push("day = ")
        .push_bind(day_text(key.day))
        .push(" AND transaction_type = ")
        .push_bind(key.transaction_type)
        .push(" AND currency = ")
        .push_bind(key.currency.code())
        .push(" AND status = ")
        .push_bind(key.status);
}

fn bind_destination_key<DB: Backend>(delete: &mut Sql<DB>, key: &DestinationKey) {
    delete
        .push("day = ")
        .push_bind(day_text(key.day))
        .push(" AND calling_code = ")
        .push_bind(key.calling_code.clone())
        .push(" AND currency = ")
        .push_bind(key.currency.code())
        .push(" AND status = ")
        .push_bind(key.status);
}

/// Inserts `rows` into `table`, each statement followed by `tail`, in as few statements as the
/// backend's bound-value limit allows.
async fn insert_rows<DB: Backend, T>(
    conn: &mut DB::Connection,
    table: &Table,
    tail: &str,
    rows: &[T],
    bind_row: impl Fn(&mut Tuple<'_, DB>, &T),
) -> Result<(), sqlx::Error> {
    let bound_per_row = table.columns.len();
    let rows_per_statement = ROWS_PER_STATEMENT_MAX.min(DB::BOUND_VALUES_MAX / bound_per_row);
    let head = format!("INSERT INTO {} ({}) ", table.name, table.columns.join(", "));
    for chunk in rows.chunks(rows_per_statement) {
        let mut insert = Sql::<DB>::new(head.as_str());
        insert.push_values(chunk, &bind_row).push(tail);
        insert.execute(conn).await?;
    }
    Ok(())
}

/// The upsert clause on `key` that sets each of `columns` to the value the insert proposed.
fn update_on_conflict<DB: Backend>(key: &str, columns: &[&str]) -> String {
    let assignments: Vec<String> = (columns.iter())
        .map(|column| format!("{column} = {}", DB::inserted(column)))
        .collect();
    format!(
        " {} {}",
        DB::on_conflict_update(key),
        assignments.join(", ")
    )
}

/// Inserted, never upserted: an event already in the table means it is applied twice, and
/// the unique keys refuse it.
async fn insert_account_events<DB: Backend>(
    conn: &mut DB::Connection,
    rows: &[AccountEventRow],
) -> Result<(), sqlx::Error> {
    insert_rows::<DB, _>(conn, &ACCOUNT_EVENTS, "", rows, |values, row| {
        values
            .bind(row.account_id.to_string())
            .bind(to_sql(row.sequence))
            .bind(row.event_id.to_string())
            .bind(row.event_type.clone())
            .bind(i64::from(row.event_version))
            .bind(row.occurred_at.timestamp_millis())
            .bind(row.correlation_id.to_string())
            .bind(row.causation_id.to_string())
            .bind(row.log_topic.name())
            .bind(i64::from(row.log_partition))
            .bind(to_sql(row.log_offset))
            .bind(row.payload.to_string())
            .bind(row.previous_hash.map(|hash| hash.to_string()))
            .bind(row.hash.map(|hash| hash.to_string()));
    })
    .await
}

async fn insert_statement_lines<DB: Backend>(
    conn: &mut DB::Connection,
    rows: &[StatementLine],
) -> Result<(), sqlx::Error> {
    insert_rows::<DB, _>(conn, &STATEMENT_LINES, "", rows, |values, row| {
        values
            .bind(row.account_id.to_string())
            .bind(to_sql(row.sequence))
            .bind(row.transaction_id.to_string())
            .bind(row.entry.as_str())
            .bind(Money::at_scale(row.amount, row.currency))
            .bind(Money::at_scale(row.balance_after, row.currency))
            .bind(row.occurred_at.timestamp_millis());
    })
    .await
}

async fn upsert_accounts<DB: Backend>(
    conn: &mut DB::Connection,
    rows: &[AccountView],
) -> Result<(), sqlx::Error> {
    let tail = update_on_conflict::<DB>("account_id", &ACCOUNT_UPDATED_COLUMNS);
    insert_rows::<DB, _>(conn, &ACCOUNTS, &tail, rows, |values, row| {
        let address = row.billing_address.clone().unwrap_or_default();
        let money = |value| Money::at_scale(value, row.currency);
        values
            .bind(row.account_id.to_string())
            .bind(row.name.clone())
            .bind(row.email.clone())
            .bind(row.phone_number.clone())
            .bind(address.address_line1)
            .bind(address.address_line2)
            .bind(address.city)
            .bind(address.state)
            .bind(address.postal_code)
            .bind(address.country)
            .bind(row.currency.code())
            .bind(money(row.balance))
            .bind(money(row.held))
            .bind(money(row.available))
            .bind(to_sql(row.sequence))
            .bind(row.last_causation_id.to_string())
            .bind(row.created_at.timestamp_millis())
            .bind(row.updated_at.timestamp_millis());
    })
    .await
}

async fn upsert_transactions<DB: Backend>(
    conn: &mut DB::Connection,
    rows: &[TransactionView],
) -> Result<(), sqlx::Error> {
    let tail = update_on_conflict::<DB>("transaction_id", &TRANSACTION_UPDATED_COLUMNS);
    insert_rows::<DB, _>(conn, &TRANSACTIONS, &tail, rows, |values, row| {
        values
            .bind(row.transaction_id.to_string())
            .bind(row.account_id.to_string())
            .bind(row.transaction_type.as_str())
            .bind(row.status.as_str())
            .bind(Money::at_scale(row.amount, row.currency))
            .bind(row.currency.code())
            .bind(row.phone_number.clone())
            .bind(row.failure_reason.map(|reason| reason.code()))
            .bind(row.provider_reference.clone())
            .bind(row.created_at.timestamp_millis())
            .bind(row.updated_at.timestamp_millis());
    })
    .await
}

/// Moves each partition's offset, and adds the records skipped there to those skipped before.
async fn save_offsets<DB: Backend>(
    conn: &mut DB::Connection,
    projection: &str,
    offsets: &[OffsetAdvance],
) -> Result<(), sqlx::Error> {
    let tail = format!(
        "{}, skipped_records = skipped_records + {}",
        update_on_conflict::<DB>("projection, topic, partition_no", &["next_offset"]),
        DB::inserted("skipped_records")
    );
    insert_rows::<DB, _>(
        conn,
        &PROJECTION_OFFSETS,
        &tail,
        offsets,
        |values, advance| {
            values
                .bind(projection.to_owned())
                .bind(advance.partition.topic.name())
                .bind(i64::from(advance.partition.partition))
                .bind(to_sql(advance.next_offset))
                .bind(to_sql(advance.skipped_records));
        },
    )
    .await
}
