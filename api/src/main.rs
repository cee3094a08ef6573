//! The `tally` binary: parses the command line, sets up logging, and hands over to the
//! library. Every role lives in a library function that tests can call.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tally_api::app::{self, Roles};
use tally_api::auth::{self, AuthSettings, Role};
use tally_api::export::ExportArgs;
use tally_api::settings::{DATABASE_URL_HELP, ReadStoreLocation, Settings};
use tally_projections::swap::PreviousTables;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "An event-sourced ledger for wallets and airtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the API and every worker in one process: on the embedded log and read store, or
    /// on Kafka and MySQL when --kafka-brokers and --database-url name them.
    Up(Settings),
    /// Runs only the HTTP API; scale it by adding instances.
    Api(Settings),
    /// Runs only the decider, the sole writer of the events topic; scales by partitions.
    Decide(Settings),
    /// Runs only the projector, which builds the read tables; scales by partitions.
    Project(Settings),
    /// Runs only the processor, which calls the airtime provider and emits notifications;
    /// scales by partitions.
    Process(Settings),
    /// Runs only the notifier, which delivers the notifications topic by email and SMS;
    /// several may run side by side.
    Notify(Settings),
    /// Rebuilds the read tables of an empty database (--database-url) from the log, prints
    /// how many records it applied and how fast, and exits; with --compare-with, also compares
    /// them with a live store row by row, and with --swap then makes them the live ones.
    /// Exits 1 when they differ, 2 on an error.
    Replay(ReplayArgs),
    /// Writes rows of the read store out, for analysts: `tally export transactions`.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Audits a Tally: the hash chains of the event log, every account's stream and money,
    /// every transaction's end, and the read store against a replay of the log. Writes
    /// nothing. Exits 0 when clean, 1 on any finding, 2 when it cannot run.
    Verify(VerifyArgs),
    /// Measures a Tally (an embedded one unless --url is given) under load.
    Bench(tally_api::bench::BenchSettings),
    /// Manages users.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    settings: Settings,
    /// Go on with a replay that was cut short, from where its offsets stand, instead of
    /// refusing a database that already holds projected rows.
    #[arg(long, conflicts_with = "compare_with")]
    resume: bool,
    /// The database URL of a live read store to compare the rebuilt tables with, row by row,
    /// as of where its projection stands when the replay begins. It is only read.
    #[arg(long, env = "TALLY_COMPARE_WITH", hide_env_values = true)]
    compare_with: Option<SecretString>,
    /// After comparing, put the rebuilt tables in place of the live store's while Tally runs
    /// on: live projectors are held back for the last records and resume on the rebuilt
    /// tables. On MySQL both stores must be databases of one server, and the rebuilt database
    /// keeps the previous tables; on SQLite the rebuilt rows are copied over the live ones.
    #[arg(long, requires = "compare_with")]
    swap: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    settings: Settings,
    /// How long a transaction whose command is in the log may go without a final status
    /// before that is a finding rather than information: `90s`, `5m`, `1h`, `500ms`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pending_limit: Duration,
    /// How the report is printed.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    /// One line per finding, then a summary.
    Text,
    /// The whole report as one JSON document.
    Json,
}

/// The exit code of an audit or a comparison that found something.
const EXIT_FINDINGS: u8 = 1;
/// The exit code of an audit or a comparison that could not run.
const EXIT_CANNOT_RUN: u8 = 2;

/// A duration with its unit: `500ms`, `90s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: use ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    };
    let ms = number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Every transaction the filters select, oldest first, as CSV (the default) or JSON
    /// Lines, read from the read store (--data-dir or --database-url, as `tally up` takes
    /// them) in pages, so memory stays flat however many rows there are. Logs go to standard
    /// error, so standard output holds only the rows.
    Transactions(ExportArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Creates a user with extra roles (an administrator or a service account). The password
    /// is read from TALLY_USER_PASSWORD or, when that is unset, from standard input.
    Create {
        #[arg(long)]
        username: String,
        /// ROLE_ADMIN or ROLE_SERVICE; may be repeated.
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
        data_dir: std::path::PathBuf,
        /// The read store's database URL, as `tally up` takes it (default: read.db in the
        /// data directory).
        #[arg(
            long,
            env = "TALLY_DATABASE_URL",
            hide_env_values = true,
            long_help = DATABASE_URL_HELP
        )]
        database_url: Option<SecretString>,
        #[arg(long, env = "TALLY_BCRYPT_COST", default_value_t = 12)]
        bcrypt_cost: u32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // An export, an audit and a replay print their results on standard output, so their
    // logs go to standard error.
    let tool = matches!(
        cli.command,
        Command::Export(_) | Command::Verify(_) | Command::Replay(_)
    );
    init_tracing(tool);
    match cli.command {
        Command::Verify(args) => verify(args).await,
        Command::Replay(args) => replay(args).await,
        command => match run_command(command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("Error: {error:?}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs `tally verify` and prints its report.
async fn verify(args: VerifyArgs) -> ExitCode {
    let report = match app::verify(args.settings, args.pending_limit).await {
        Ok(report) => report,
        Err(error) => return cannot_run(&error),
    };
    match args.format {
        ReportFormat::Text => print!("{}", report.to_text()),
        ReportFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => return cannot_run(&error.into()),
        },
    }
    match report.failed() {
        true => ExitCode::from(EXIT_FINDINGS),
        false => ExitCode::SUCCESS,
    }
}

/// Runs `tally replay`, printing what it did and, when it compared, every difference.
async fn replay(args: ReplayArgs) -> ExitCode {
    let ReplayArgs {
        settings,
        resume,
        compare_with,
        swap,
    } = args;
    let options = app::ReplayOptions {
        resume,
        compare_with,
        swap,
    };
    let report = match app::replay(settings, options).await {
        Ok(report) => report,
        Err(error) => return cannot_run(&error),
    };
    let seconds = report.elapsed.as_secs_f64();
    let records = report.replayed.records;
    println!("replayed records   {records}");
    println!("batches            {}", report.replayed.batches);
    println!("elapsed            {seconds:.2} s");
    println!(
        "rate               {:.0} records/s",
        records as f64 / seconds.max(1e-9)
    );
    let Some(comparison) = report.comparison else {
        return ExitCode::SUCCESS;
    };
    for difference in &comparison.differences {
        println!("DIFF {difference}");
    }
    if comparison.differences_omitted > 0 {
        println!(
            "... and {} differences more",
            comparison.differences_omitted
        );
    }
    let differing = comparison.differences.len() as u64 + comparison.differences_omitted;
    println!("rows compared      {}", comparison.rows_compared);
    println!("rows differing     {differing}");
    if let Some(swapped) = &report.swapped {
        println!("swapped            generation {}", swapped.generation);
        println!("caught up          {} records", swapped.caught_up.records);
        println!("projectors held    {:.3} s", swapped.held.as_secs_f64());
        match &swapped.previous {
            PreviousTables::KeptIn(database) => {
                println!("previous tables    in database {database}");
            }
            PreviousTables::Overwritten => println!("previous tables    overwritten"),
        }
    }
    match comparison.is_equal() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(EXIT_FINDINGS),
    }
}

/// Prints why an audit or a comparison could not run, its causes on one line.
fn cannot_run(error: &anyhow::Error) -> ExitCode {
    eprintln!("Error: {error:#}");
    ExitCode::from(EXIT_CANNOT_RUN)
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(settings) => run(settings, Roles::ALL).await,
        Command::Api(settings) => {
            run(
                settings,
                Roles {
                    api: true,
                    ..Roles::NONE
                },
            )
            .await
        }
        Command::Decide(settings) => {
            run(
                settings,
                Roles {
                    decider: true,
                    ..Roles::NONE
                },
            )
            .await
        }
        Command::Project(settings) => {
            run(
                settings,
                Roles {
                    projector: true,
                    ..Roles::NONE
                },
            )
            .await
        }
        Command::Process(settings) => {
            run(
                settings,
                Roles {
                    processor: true,
                    ..Roles::NONE
                },
            )
            .await
        }
        Command::Notify(settings) => {
            run(
                settings,
                Roles {
                    notifier: true,
                    ..Roles::NONE
                },
            )
            .await
        }
        Command::Export(ExportCommand::Transactions(args)) => {
            let rows = tally_api::export::run(&args).await?;
            tracing::info!(rows, "export finished");
            Ok(())
        }
        Command::Bench(settings) => tally_api::bench::run(settings).await,
        // Handled before, for their exit codes.
        Command::Verify(_) | Command::Replay(_) => Ok(()),
        Command::User(UserCommand::Create {
            username,
            roles,
            data_dir,
            database_url,
            bcrypt_cost,
        }) => {
            let read_store = ReadStoreLocation::new(database_url.as_ref(), &data_dir)
                .context("invalid --database-url")?;
            create_user(&username, &roles, &read_store, bcrypt_cost).await
        }
    }
}

/// Logs to standard output, or to standard error when `to_stderr`; in colour only when that is
/// a terminal and `NO_COLOR` is unset, so that log files and collectors get plain text.
fn init_tracing(to_stderr: bool) {
    use std::io::IsTerminal as _;

    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = match to_stderr {
        true => std::io::stderr().is_terminal(),
        false => std::io::stdout().is_terminal(),
    };
    let colour = terminal && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_target(false);
    match to_stderr {
        true => logs.with_writer(std::io::stderr).init(),
        false => logs.init(),
    }
}

/// Runs until SIGTERM or Ctrl-C, then drains and commits before exiting.
async fn run(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    let running = app::start(settings, roles).await?;
    let shutdown = running.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining requests and committing work");
        let _ = shutdown.send(true);
    });
    running.wait().await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn create_user(
    username: &str,
    role_names: &[String],
    read_store: &ReadStoreLocation,
    bcrypt_cost: u32,
) -> anyhow::Result<()> {
    let roles = role_names
        .iter()
        .map(|name| {
            name.parse::<Role>()
                .map_err(|_| anyhow::anyhow!("unknown role {name}"))
        })
        .collect::<anyhow::Result<Vec<Role>>>()?;
    // A user created in a store no Tally reads could never log in: a data directory without
    // a read store is a mistyped path, or the default where another was meant.
    if let ReadStoreLocation::DataDir(path) = read_store {
        anyhow::ensure!(
            path.is_file(),
            "no read store at {}: give the --data-dir (or --database-url) of the Tally the user \
             is for, after it has started once",
            path.display()
        );
    }
    let password = read_password()?;
    let store = (read_store.open().await).context("cannot open the read store")?;
    let settings = AuthSettings::new(bcrypt_cost, 3600).context("invalid auth settings")?;
    let uid = auth::create_user(&store, &settings, username, &password, &roles)
        .await
        .map_err(|error| anyhow::anyhow!("cannot create the user: {error}"))?;
    println!("{uid}");
    Ok(())
}

fn read_password() -> anyhow::Result<SecretString> {
    if let Ok(password) = std::env::var("TALLY_USER_PASSWORD") {
        return Ok(SecretString::from(password));
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password")?;
    let password = password.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        !password.is_empty(),
        "no password given: set TALLY_USER_PASSWORD or write it to standard input"
    );
    Ok(SecretString::from(password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_needs_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        for refused in [
            "5",
            "m",
            "1.5m",
            "-1s",
            "5 m",
            "2d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(refused).is_err(), "{refused}");
        }
    }
}
