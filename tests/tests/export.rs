//! `tally export transactions` end to end: a hundred thousand transactions written out as CSV
//! parse back to exactly the rows in the read store, filters select as the route's do, and the
//! process's peak memory does not grow with the number of rows.
//!
//! The rows are put into the read store's `transactions` table with SQL: the export only reads
//! the store, and a hundred thousand transactions through the API would take many minutes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use tally_tests::{Backend, TestApp, on_both_backends, tally_bin};

/// Rows in the store.
const ROWS: usize = 100_000;
/// Rows in the smaller export the larger one is measured against.
const ROWS_SMALL: usize = 10_000;
/// Rows per INSERT while seeding.
const ROWS_PER_INSERT: usize = 1_000;
/// The first row's creation time, 2026-01-01T00:00:00Z; each next row is a millisecond later.
const FIRST_CREATED_AT_MS: i64 = 1_767_225_600_000;
/// How much more the large export's peak resident memory may be than the small one's. Holding
/// the 90,000 extra rows, as rows or as the text written, would take 20 MB or more; streaming
/// them takes none beyond what the store's own caches settle at (SQLite's page cache and its
/// WAL index fill up to their bounds, a few megabytes).
const PEAK_GROWTH_BYTES_MAX: u64 = 12 * 1024 * 1024;
/// How often the export's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);

const ACCOUNTS: [&str; 2] = [
    "0190f3a2-6c1e-7d4b-9a55-2b6f0e1c9d0a",
    "0190f3a2-6c1e-7d4b-9a55-2b6f0e1c9d0b",
];

/// Row `index` as the CSV export must show it, field by field.
fn expected(index: usize) -> Vec<String> {
    let airtime = index.is_multiple_of(3);
    let failed = index.is_multiple_of(7);
    let created_at = DateTime::<Utc>::from_timestamp_millis(created_at_ms(index))
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    vec![
        transaction_id(index),
        ACCOUNTS[index % 2].to_owned(),
        (if airtime { "SEND_AIRTIME" } else { "ADD_MONEY" }).to_owned(),
        (if failed { "FAILED" } else { "SUCCESSFUL" }).to_owned(),
        format!("{}.{:02}", index % 1_000, index % 100),
        "USD".to_owned(),
        if airtime {
            format!("+2547{:08}", index)
        } else {
            String::new()
        },
        (if failed { "insufficient_funds" } else { "" }).to_owned(),
        created_at.clone(),
        created_at,
    ]
}

fn transaction_id(index: usize) -> String {
    format!("0190f3a2-6c1e-7d4b-8000-{index:012x}")
}

fn created_at_ms(index: usize) -> i64 {
    FIRST_CREATED_AT_MS + i64::try_from(index).unwrap_or(i64::MAX)
}

/// Row `index` as SQL values, in the column order of `seed`'s INSERT.
fn values(index: usize) -> String {
    let row = expected(index);
    let text_or_null = |text: &str| match text.is_empty() {
        true => "NULL".to_owned(),
        false => format!("'{text}'"),
    };
    let at = created_at_ms(index);
    format!(
        "('{}', '{}', '{}', '{}', '{}', 'USD', {}, {}, {at}, {at})",
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        text_or_null(&row[6]),
        text_or_null(&row[7]),
    )
}

async fn seed(app: &TestApp) -> anyhow::Result<()> {
    for first in (0..ROWS).step_by(ROWS_PER_INSERT) {
        let rows: Vec<String> = (first..first + ROWS_PER_INSERT).map(values).collect();
        let insert = format!(
            "INSERT INTO transactions (transaction_id, account_id, transaction_type, status, \
             amount, currency, phone_number, failure_reason, created_at_ms, updated_at_ms) \
             VALUES {}",
            rows.join(", ")
        );
        app.execute_on_read_store(&insert).await?;
    }
    Ok(())
}

/// Runs `tally export transactions` with `args` against the app's read store and returns the
/// peak resident memory it reached, in bytes.
fn export(app: &TestApp, args: &[String]) -> anyhow::Result<u64> {
    let mut child = Command::new(tally_bin()?)
        .args(["export", "transactions"])
        .args(app.read_store_args())
        .args(args)
        .env_remove("TALLY_DATABASE_URL")
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start tally export")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    // Samples until the process exits: its high-water mark only grows, so the last sample is
    // its peak up to a moment before the end.
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(sampled) = high_water_mark(Path::new(&status_path)) {
            peak = peak.max(sampled);
        }
        std::thread::sleep(SAMPLE_EVERY);
    };
    anyhow::ensure!(status.success(), "tally export failed: {status}");
    anyhow::ensure!(peak > 0, "no memory sample of the export was taken");
    Ok(peak)
}

/// `VmHWM` of a `/proc/<pid>/status` file, in bytes, while the process still runs.
fn high_water_mark(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn csv_rows(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut reader = csv::Reader::from_path(path)?;
    let header = reader.headers()?.iter().map(str::to_owned).collect();
    let rows = (reader.records())
        .map(|record| Ok(record?.iter().map(str::to_owned).collect()))
        .collect::<anyhow::Result<_>>()?;
    Ok((header, rows))
}

fn rfc3339(ms: i64) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn a_hundred_thousand_rows_export_in_flat_memory_and_parse_back_exactly(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    seed(&app).await?;
    let out = tempfile::tempdir()?;
    let small = out.path().join("small.csv");
    let large = out.path().join("large.csv");
    let arg = |path: &Path| path.display().to_string();

    let small_args = [
        "--to".to_owned(),
        rfc3339(created_at_ms(ROWS_SMALL)),
        "--output".to_owned(),
        arg(&small),
    ];
    // The first read of a freshly seeded SQLite store also reads its write-ahead log in; a
    // run before the measured ones keeps that out of the comparison.
    export(&app, &small_args)?;
    let small_peak = export(&app, &small_args)?;
    let large_peak = export(&app, &["--output".to_owned(), arg(&large)])?;
    println!(
        "{backend:?}: peak resident memory of tally export: {ROWS_SMALL} rows {} KiB, \
         {ROWS} rows {} KiB",
        small_peak / 1024,
        large_peak / 1024
    );

    let (header, rows) = csv_rows(&large)?;
    assert_eq!(header[0], "transactionId");
    assert_eq!(rows.len(), ROWS);
    for (index, row) in rows.iter().enumerate() {
        if *row != expected(index) {
            bail!("row {index} is {row:?}, expected {:?}", expected(index));
        }
    }
    let (_, small_rows) = csv_rows(&small)?;
    assert_eq!(small_rows.len(), ROWS_SMALL);
    assert_eq!(small_rows[..], rows[..ROWS_SMALL]);
    assert!(
        large_peak <= small_peak + PEAK_GROWTH_BYTES_MAX,
        "peak memory grew from {small_peak} to {large_peak} bytes with the rows"
    );
    Ok(())
}

async fn filters_select_what_the_route_would_and_json_lines_hold_the_same_records(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    seed(&app).await?;
    let out = tempfile::tempdir()?;
    let path = out.path().join("failed.jsonl");
    let (from, to) = (500, 2_600);
    let min_amount = Decimal::new(1005, 1);
    let args = [
        "--format",
        "jsonl",
        "--from",
        &rfc3339(created_at_ms(from)),
        "--to",
        &rfc3339(created_at_ms(to)),
        "--status",
        "FAILED",
        "--type",
        "SEND_AIRTIME",
        "--account-id",
        ACCOUNTS[1],
        "--min-amount",
        "100.5",
        "--output",
        &path.display().to_string(),
    ];
    export(&app, &args.map(str::to_owned))?;

    let text = std::fs::read_to_string(&path)?;
    let exported: Vec<serde_json::Value> = (text.lines())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let header = [
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
    let wanted: Vec<Vec<String>> = (from..to)
        .map(expected)
        .filter(|row| row[1] == ACCOUNTS[1] && row[2] == "SEND_AIRTIME" && row[3] == "FAILED")
        .filter(|row| Decimal::from_str_exact(&row[4]).is_ok_and(|amount| amount >= min_amount))
        .collect();
    let exported: Vec<Vec<String>> = (exported.iter())
        .map(|record| {
            (header.iter())
                .map(|name| record[*name].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect();
    assert!(!wanted.is_empty());
    assert_eq!(exported, wanted);
    Ok(())
}

on_both_backends!(
    a_hundred_thousand_rows_export_in_flat_memory_and_parse_back_exactly,
    filters_select_what_the_route_would_and_json_lines_hold_the_same_records,
);
