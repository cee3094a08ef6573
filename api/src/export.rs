//! `tally export transactions`: the transactions a filter selects, read straight from the read
//! store and written as CSV or JSON Lines, oldest first.
//!
//! Rows are read a page at a time, keyed on the last row written (as `GET /transactions`
//! pages), and each page is written out before the next is read, so memory stays flat however
//! many rows the export holds. The records and the filters are [`crate::listing`]'s, so an
//! export reads like the route's CSV.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use rust_decimal::Decimal;
use secrecy::SecretString;
use tally_domain::{AccountId, TransactionStatus, TransactionType};
use tally_projections::{ReadStore, TransactionFilter, TransactionView};
use uuid::Uuid;

use crate::listing::{self, TransactionRecord};
use crate::settings::{DATABASE_URL_HELP, ReadStoreLocation};

/// Rows read from the store at a time: a page is a few hundred kilobytes in memory, and a
/// thousand rows a query keeps the round trips to a hundred per hundred thousand rows.
pub const EXPORT_PAGE_ROWS: u32 = 1_000;

/// Bytes buffered before a write to the output: a few dozen rows per system call.
const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

/// How rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header line, the columns of `GET /transactions`.
    Csv,
    /// One JSON object per line, the items of `GET /transactions`.
    Jsonl,
}

/// The arguments of `tally export transactions`.
#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// The data directory of the Tally whose read store to read, when it is the embedded
    /// default.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    pub data_dir: PathBuf,

    /// The read store's database URL, as `tally up` takes it (default: read.db in the data
    /// directory).
    #[arg(long, env = "TALLY_DATABASE_URL", hide_env_values = true, long_help = DATABASE_URL_HELP)]
    pub database_url: Option<SecretString>,

    /// Transactions created at or after this RFC 3339 time.
    #[arg(long, value_parser = time_arg("from"))]
    pub from: Option<DateTime<Utc>>,

    /// Transactions created before this RFC 3339 time.
    #[arg(long, value_parser = time_arg("to"))]
    pub to: Option<DateTime<Utc>>,

    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,

    /// The file to write (created or truncated); standard output when absent.
    #[arg(long)]
    pub output: Option<PathBuf>,

    /// Only transactions in this status: ACCEPTED, PROCESSING, SUCCESSFUL or FAILED.
    #[arg(long, value_parser = status_arg)]
    pub status: Option<TransactionStatus>,

    /// Only transactions of this type: ADD_MONEY, SEND_AIRTIME, ADMIN_CREDIT or ADMIN_DEBIT.
    #[arg(long = "type", value_parser = type_arg)]
    pub transaction_type: Option<TransactionType>,

    /// Only the transactions of this account (its owner's uid).
    #[arg(long)]
    pub account_id: Option<Uuid>,

    /// Only amounts at least this, compared exactly.
    #[arg(long, value_parser = amount_arg("min-amount"))]
    pub min_amount: Option<Decimal>,

    /// Only amounts at most this, compared exactly.
    #[arg(long, value_parser = amount_arg("max-amount"))]
    pub max_amount: Option<Decimal>,
}

impl ExportArgs {
    /// The filter the arguments select, checked as the route checks its own.
    pub fn filter(&self) -> anyhow::Result<TransactionFilter> {
        let filter = TransactionFilter {
            account_id: self.account_id.map(AccountId),
            status: self.status,
            transaction_type: self.transaction_type,
            created_from: self.from,
            created_before: self.to,
            amount_min: self.min_amount,
            amount_max: self.max_amount,
        };
        listing::check_ranges(&filter).map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(filter)
    }
}

fn time_arg(name: &'static str) -> impl Fn(&str) -> Result<DateTime<Utc>, String> + Clone {
    move |text| listing::parse_time(name, text).map_err(|error| error.to_string())
}

fn amount_arg(name: &'static str) -> impl Fn(&str) -> Result<Decimal, String> + Clone {
    move |text| listing::parse_amount_bound(name, text).map_err(|error| error.to_string())
}

fn status_arg(text: &str) -> Result<TransactionStatus, String> {
    listing::parse_status(text).map_err(|error| error.to_string())
}

fn type_arg(text: &str) -> Result<TransactionType, String> {
    listing::parse_type(text).map_err(|error| error.to_string())
}

/// Runs `tally export transactions`: opens the read store the arguments name and writes the
/// rows they select. Returns how many rows it wrote.
pub async fn run(args: &ExportArgs) -> anyhow::Result<u64> {
    let filter = args.filter()?;
    let store = open_store(args).await?;
    let written = match &args.output {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            export_transactions(&store, &filter, args.format, file).await?
        }
        None => export_transactions(&store, &filter, args.format, std::io::stdout().lock()).await?,
    };
    store.close().await;
    Ok(written)
}

/// The read store, which must exist: an export never creates an empty one where a data
/// directory was mistyped.
async fn open_store(args: &ExportArgs) -> anyhow::Result<ReadStore> {
    let location = ReadStoreLocation::new(args.database_url.as_ref(), &args.data_dir)
        .context("invalid --database-url")?;
    if let ReadStoreLocation::DataDir(path) = &location {
        anyhow::ensure!(
            path.is_file(),
            "no read store at {}: give the --data-dir or --database-url of a Tally",
            path.display()
        );
    }
    location.open().await.context("cannot open the read store")
}

/// Writes every transaction `filter` selects to `out` in `format`, oldest first, a page at a
/// time. Returns how many rows it wrote.
pub async fn export_transactions<W: Write>(
    store: &ReadStore,
    filter: &TransactionFilter,
    format: ExportFormat,
    out: W,
) -> anyhow::Result<u64> {
    let mut sink = Sink::new(format, BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, out))?;
    let mut written = 0_u64;
    let mut after = None;
    // Ends at the first page shorter than a full one; each page starts past the last.
    loop {
        let page = store
            .transactions_page(filter, after, EXPORT_PAGE_ROWS)
            .await
            .context("cannot read the transactions")?;
        for row in &page {
            sink.write(&listing::record(row))?;
        }
        written += page.len() as u64;
        if page.len() < EXPORT_PAGE_ROWS as usize {
            break;
        }
        after = page.last().map(TransactionView::cursor);
    }
    sink.finish()?;
    Ok(written)
}

/// Where records go, in their format. The CSV writer is boxed: it carries its own buffer.
enum Sink<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
}

impl<W: Write> Sink<W> {
    fn new(format: ExportFormat, out: W) -> anyhow::Result<Sink<W>> {
        Ok(match format {
            ExportFormat::Csv => {
                let writer = listing::csv_writer(out).context("cannot write")?;
                Sink::Csv(Box::new(writer))
            }
            ExportFormat::Jsonl => Sink::Jsonl(out),
        })
    }

    fn write(&mut self, record: &TransactionRecord) -> anyhow::Result<()> {
        match self {
            Sink::Csv(writer) => writer.serialize(record).context("cannot write a row")?,
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut *out, record).context("cannot write a row")?;
                out.write_all(b"\n").context("cannot write a row")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        let mut out = match self {
            Sink::Csv(writer) => writer
                .into_inner()
                .map_err(|error| anyhow::anyhow!("cannot write the last rows: {error}"))?,
            Sink::Jsonl(out) => out,
        };
        out.flush().context("cannot write the last rows")
    }
}
