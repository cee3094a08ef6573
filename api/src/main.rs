//! The `tally` binary: parses the command line, sets up logging, and hands over to the
//! library. Every role lives in a library function that tests can call.

use std::io::Read;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tally_api::app;
use tally_api::auth::{self, AuthSettings, Role};
use tally_api::settings::Settings;
use tally_projections::ReadStore;
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
    /// Runs the API and every worker in one process on the embedded log and read store.
    Up(Settings),
    /// Measures a Tally (an embedded one unless --url is given) under load.
    Bench(tally_api::bench::BenchSettings),
    /// Manages users.
    #[command(subcommand)]
    User(UserCommand),
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
        #[arg(long, env = "TALLY_BCRYPT_COST", default_value_t = 12)]
        bcrypt_cost: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Up(settings) => up(settings).await,
        Command::Bench(settings) => tally_api::bench::run(settings).await,
        Command::User(UserCommand::Create {
            username,
            roles,
            data_dir,
            bcrypt_cost,
        }) => create_user(&username, &roles, &data_dir, bcrypt_cost).await,
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Runs until SIGTERM or Ctrl-C, then drains and commits before exiting.
async fn up(settings: Settings) -> anyhow::Result<()> {
    let running = app::start(settings).await?;
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
    data_dir: &std::path::Path,
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
    std::fs::create_dir_all(data_dir).context("cannot create the data directory")?;
    let store = ReadStore::open_sqlite(&data_dir.join("read.db")).await?;
    let settings = AuthSettings::new(bcrypt_cost, 3600).context("invalid auth settings")?;
    let uid = auth::create_user(store.pool(), &settings, username, &password, &roles)
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
