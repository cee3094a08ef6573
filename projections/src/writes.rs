//! Every write to the read tables. Only the projector calls these, inside the one transaction
//! that applies a batch and stores its offsets.
//!
//! Rows go out in multi-row statements. Accounts and transactions are upserted whole, in the
//! state the batch folded them to; the `ON CONFLICT ... DO UPDATE` clauses are the part a MySQL
//! variant rewrites as `ON DUPLICATE KEY UPDATE`.

use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use tally_domain::money::format_at_scale;

use crate::batch::{Changes, OffsetAdvance, StatementLine};
use crate::queries::{AccountEventRow, AccountView, TransactionView, to_sql};

/// Rows per statement. The widest row binds 18 values, so a statement binds at most 9,000:
/// well inside SQLite's 32,766 and MySQL's 65,535, and large enough that a batch of a
/// thousand records takes a handful of statements.
const ROWS_PER_STATEMENT_MAX: usize = 500;

/// Writes what a batch changed, and where it leaves each partition, for `projection`.
pub(crate) async fn write(
    conn: &mut SqliteConnection,
    projection: &str,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    insert_account_events(conn, &changes.account_events).await?;
    insert_statement_lines(conn, &changes.statement_lines).await?;
    upsert_accounts(conn, &changes.accounts).await?;
    upsert_transactions(conn, &changes.transactions).await?;
    save_offsets(conn, projection, &changes.offsets).await
}

/// Runs `head VALUES (...), (...) tail` over `rows`, one statement per chunk.
async fn insert_rows<T>(
    conn: &mut SqliteConnection,
    head: &str,
    tail: &str,
    rows: &[T],
    push_row: impl Fn(&mut Separated<'_, Sqlite, &'static str>, &T),
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT_MAX) {
        let mut query = QueryBuilder::<Sqlite>::new(head);
        query.push_values(chunk, |mut values, row| push_row(&mut values, row));
        query.push(tail);
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserted, never upserted: an event already in the table means it is applied twice, and
/// the unique keys refuse it.
async fn insert_account_events(
    conn: &mut SqliteConnection,
    rows: &[AccountEventRow],
) -> Result<(), sqlx::Error> {
    let head = "INSERT INTO account_events (account_id, sequence, event_id, event_type, \
                event_version, occurred_at_ms, correlation_id, causation_id, log_topic, \
                log_partition, log_offset, payload) ";
    insert_rows(conn, head, "", rows, |values, row| {
        values
            .push_bind(row.account_id.to_string())
            .push_bind(to_sql(row.sequence))
            .push_bind(row.event_id.to_string())
            .push_bind(row.event_type.clone())
            .push_bind(i64::from(row.event_version))
            .push_bind(row.occurred_at.timestamp_millis())
            .push_bind(row.correlation_id.to_string())
            .push_bind(row.causation_id.to_string())
            .push_bind(row.log_topic.name())
            .push_bind(i64::from(row.log_partition))
            .push_bind(to_sql(row.log_offset))
            .push_bind(row.payload.to_string());
    })
    .await
}

async fn insert_statement_lines(
    conn: &mut SqliteConnection,
    rows: &[StatementLine],
) -> Result<(), sqlx::Error> {
    let head = "INSERT INTO statement_lines (account_id, sequence, transaction_id, entry, \
                amount, balance_after, occurred_at_ms) ";
    insert_rows(conn, head, "", rows, |values, row| {
        values
            .push_bind(row.account_id.to_string())
            .push_bind(to_sql(row.sequence))
            .push_bind(row.transaction_id.to_string())
            .push_bind(row.entry.as_str())
            .push_bind(format_at_scale(row.amount, row.currency))
            .push_bind(format_at_scale(row.balance_after, row.currency))
            .push_bind(row.occurred_at.timestamp_millis());
    })
    .await
}

async fn upsert_accounts(
    conn: &mut SqliteConnection,
    rows: &[AccountView],
) -> Result<(), sqlx::Error> {
    let head = "INSERT INTO accounts (account_id, name, email, phone_number, address_line1, \
                address_line2, city, state, postal_code, country, currency, balance, held, \
                available, sequence, last_causation_id, created_at_ms, updated_at_ms) ";
    let tail = " ON CONFLICT (account_id) DO UPDATE SET name = excluded.name, \
                email = excluded.email, phone_number = excluded.phone_number, \
                address_line1 = excluded.address_line1, address_line2 = excluded.address_line2, \
                city = excluded.city, state = excluded.state, \
                postal_code = excluded.postal_code, country = excluded.country, \
                balance = excluded.balance, held = excluded.held, \
                available = excluded.available, sequence = excluded.sequence, \
                last_causation_id = excluded.last_causation_id, \
                updated_at_ms = excluded.updated_at_ms";
    insert_rows(conn, head, tail, rows, |values, row| {
        let address = row.billing_address.clone().unwrap_or_default();
        let money = |value| format_at_scale(value, row.currency);
        values
            .push_bind(row.account_id.to_string())
            .push_bind(row.name.clone())
            .push_bind(row.email.clone())
            .push_bind(row.phone_number.clone())
            .push_bind(address.address_line1)
            .push_bind(address.address_line2)
            .push_bind(address.city)
            .push_bind(address.state)
            .push_bind(address.postal_code)
            .push_bind(address.country)
            .push_bind(row.currency.code())
            .push_bind(money(row.balance))
            .push_bind(money(row.held))
            .push_bind(money(row.available))
            .push_bind(to_sql(row.sequence))
            .push_bind(row.last_causation_id.to_string())
            .push_bind(row.created_at.timestamp_millis())
            .push_bind(row.updated_at.timestamp_millis());
    })
    .await
}

async fn upsert_transactions(
    conn: &mut SqliteConnection,
    rows: &[TransactionView],
) -> Result<(), sqlx::Error> {
    let head = "INSERT INTO transactions (transaction_id, account_id, transaction_type, status, \
                amount, currency, phone_number, failure_reason, provider_reference, \
                created_at_ms, updated_at_ms) ";
    let tail = " ON CONFLICT (transaction_id) DO UPDATE SET status = excluded.status, \
                created_at_ms = excluded.created_at_ms, \
                failure_reason = excluded.failure_reason, \
                provider_reference = excluded.provider_reference, \
                updated_at_ms = excluded.updated_at_ms";
    insert_rows(conn, head, tail, rows, |values, row| {
        values
            .push_bind(row.transaction_id.to_string())
            .push_bind(row.account_id.to_string())
            .push_bind(row.transaction_type.as_str())
            .push_bind(row.status.as_str())
            .push_bind(format_at_scale(row.amount, row.currency))
            .push_bind(row.currency.code())
            .push_bind(row.phone_number.clone())
            .push_bind(row.failure_reason.map(|reason| reason.code()))
            .push_bind(row.provider_reference.clone())
            .push_bind(row.created_at.timestamp_millis())
            .push_bind(row.updated_at.timestamp_millis());
    })
    .await
}

async fn save_offsets(
    conn: &mut SqliteConnection,
    projection: &str,
    offsets: &[OffsetAdvance],
) -> Result<(), sqlx::Error> {
    let head = "INSERT INTO projection_offsets (projection, topic, partition_no, next_offset, \
                skipped_records) ";
    let tail = " ON CONFLICT (projection, topic, partition_no) DO UPDATE SET \
                next_offset = excluded.next_offset, \
                skipped_records = projection_offsets.skipped_records + excluded.skipped_records";
    insert_rows(conn, head, tail, offsets, |values, advance| {
        values
            .push_bind(projection.to_owned())
            .push_bind(advance.partition.topic.name())
            .push_bind(i64::from(advance.partition.partition))
            .push_bind(to_sql(advance.next_offset))
            .push_bind(to_sql(advance.skipped_records));
    })
    .await
}
