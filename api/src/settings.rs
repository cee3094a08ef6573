//! Settings in one typed tree: defaults, then `TALLY_*` environment variables, then flags.
//! Validated once at start-up; nothing reads the environment after that.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

/// Partitions of every topic on a new log. Eight lets up to eight deciders, projectors and
/// processors share the load; it is fixed for the life of a log.
pub const PARTITIONS_DEFAULT: u32 = 8;

/// The settings of `tally up`.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Where the embedded log, read store and generated secrets live.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    pub data_dir: PathBuf,

    /// Address the HTTP API listens on. Port 0 picks a free port.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Partitions of every topic, used when a new log is created.
    #[arg(long, env = "TALLY_PARTITIONS", default_value_t = PARTITIONS_DEFAULT)]
    pub partitions: u32,

    /// bcrypt cost for new password hashes, 10 to 16; each step doubles the work.
    #[arg(long, env = "TALLY_BCRYPT_COST", default_value_t = 12)]
    pub bcrypt_cost: u32,

    /// Lifetime of issued tokens, in seconds: 60 to 86400. Expiry allows 60 s of clock skew.
    #[arg(long, env = "TALLY_TOKEN_LIFETIME_S", default_value_t = 3600)]
    pub token_lifetime_s: u32,

    /// HS256 secret for tokens (at least 32 bytes). Without it, a random secret is generated
    /// once and kept in the data directory.
    #[arg(long, env = "TALLY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Sync the log to disk on every commit; turning it off risks the last commits on power
    /// loss (not on a process crash).
    #[arg(long, env = "TALLY_LOG_SYNC_FULL", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_sync_full: bool,

    #[command(flatten)]
    pub airtime: AirtimeSettings,

    #[command(flatten)]
    pub bootstrap: BootstrapSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AirtimeProviderKind {
    /// Built-in simulator: rejects numbers ending in 0000, delivers the others.
    Simulator,
    /// A provider reached over HTTP.
    Http,
}

#[derive(Args, Clone, Debug)]
pub struct AirtimeSettings {
    #[arg(
        long = "airtime-provider",
        env = "TALLY_AIRTIME_PROVIDER",
        value_enum,
        default_value = "simulator"
    )]
    pub provider: AirtimeProviderKind,

    /// Base URL of the HTTP airtime provider.
    #[arg(long = "airtime-url", env = "TALLY_AIRTIME_URL")]
    pub url: Option<String>,

    /// API key of the HTTP airtime provider.
    #[arg(
        long = "airtime-api-key",
        env = "TALLY_AIRTIME_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<SecretString>,

    /// Timeout of one call to the HTTP airtime provider, in milliseconds.
    #[arg(
        long = "airtime-timeout-ms",
        env = "TALLY_AIRTIME_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub timeout_ms: u64,
}

/// An administrator created at start-up when none of that name exists. There is no default
/// password: without both values, no account is created.
#[derive(Args, Clone, Debug)]
pub struct BootstrapSettings {
    #[arg(long, env = "TALLY_ADMIN_USERNAME")]
    pub admin_username: Option<String>,

    #[arg(long, env = "TALLY_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<SecretString>,
}
