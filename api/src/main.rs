//! The `tally` binary: parses the command line, sets up logging, and hands over to the
//! library. Every role lives in a library function that tests can call.

use std::io::Read;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tally_api::app::{self, Roles};
use tally_api::auth::{self, AuthSettings, Role};
use tally_api::export::ExportArgs;
use tally_api::settings::{DATABASE_URL_HELP, ReadStoreLocation, Settings};
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
    /// how many records it applied and how fast, and exits.
    Replay(ReplayArgs),
    /// Writes rows of the read store out, for analysts: `tally export transactions`.
    #[command(subcommand)]
    Export(ExportCommand),
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
    #[arg(long)]
    resume: bool,
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
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // An export may write its rows to standard output, so its logs go elsewhere.
    init_tracing(matches!(cli.command, Command::Export(_)));
    match cli.command {
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
        Command::Replay(ReplayArgs { settings, resume }) => {
            let report = app::replay(settings, resume).await?;
            let seconds = report.elapsed.as_secs_f64();
            let records = report.replayed.records;
            println!("replayed records   {records}");
            println!("batches            {}", report.replayed.batches);
            println!("elapsed            {seconds:.2} s");
            println!(
                "rate               {:.0} records/s",
                records as f64 / seconds.max(1e-9)
            );
            Ok(())
        }
        Command::Export(ExportCommand::Transactions(args)) => {
            let rows = tally_api::export::run(&args).await?;
            tracing::info!(rows, "export finished");
            Ok(())
        }
        Command::Bench(settings) => tally_api::bench::run(settings).await,
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

/// Logs to standard output, or to standard error when `to_stderr`.
fn init_tracing(to_stderr: bool) {
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    let password = read_password()?;
    if let ReadStoreLocation::DataDir(path) = read_store {
        let data_dir = path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(data_dir).context("cannot create the data directory")?;
    }
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
    Ok(SecretString::from(
        password.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}
