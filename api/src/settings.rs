//! Settings in one typed tree: defaults, then `TALLY_*` environment variables, then flags.
//! Validated once at start-up; nothing reads the environment after that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret as _, SecretString};
use tally_processor::notifier::settings as notifier_defaults;
use tally_processor::notify::{SmtpSecurity, sms, smtp};
use tally_projections::{ProjectionError, ReadStore};

/// Partitions of every topic on a new log. Eight lets up to eight deciders, projectors and
/// processors share the load; it is fixed for the life of a log.
pub const PARTITIONS_DEFAULT: u32 = 8;

/// What `--database-url` accepts. The URL may hold a password, so it is kept secret and
/// never logged.
pub const DATABASE_URL_HELP: &str = "The read store's database, which also holds users, API \
keys and idempotency keys. `mysql://USER:PASSWORD@HOST:3306/DATABASE` for MySQL or MariaDB; TLS \
takes sqlx's URL parameters: `ssl-mode` (disabled, preferred (the default), required, \
verify_ca, verify_identity), `ssl-ca`, `ssl-cert`, `ssl-key`, for example \
`?ssl-mode=verify_identity&ssl-ca=/etc/tally/ca.pem`. `sqlite://PATH` or a plain file path for \
SQLite. Default: the SQLite file `read.db` in the data directory.";

/// The settings of `tally up`.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Where the embedded log, the SQLite read store and generated secrets live.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    pub data_dir: PathBuf,

    /// The read store's database URL: `mysql://...` or `sqlite://...` (default: read.db in
    /// the data directory).
    #[arg(
        long,
        env = "TALLY_DATABASE_URL",
        hide_env_values = true,
        long_help = DATABASE_URL_HELP
    )]
    pub database_url: Option<SecretString>,

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
    pub kafka: KafkaSettings,

    #[command(flatten)]
    pub airtime: AirtimeSettings,

    #[command(flatten)]
    pub bootstrap: BootstrapSettings,

    #[command(flatten)]
    pub notify: NotifySettings,
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

impl Settings {
    /// The read store's database URL: `--database-url`, or the SQLite file in the data
    /// directory. Checked before anything is created on disk.
    pub fn read_store(&self) -> Result<ReadStoreLocation, ProjectionError> {
        ReadStoreLocation::new(self.database_url.as_ref(), &self.data_dir)
    }
}

/// Where the read store lives, from `--database-url` and `--data-dir`.
#[derive(Clone, Debug)]
pub enum ReadStoreLocation {
    /// A database URL, checked.
    Url(SecretString),
    /// The default: `read.db` in the data directory.
    DataDir(PathBuf),
}

impl ReadStoreLocation {
    pub fn new(
        database_url: Option<&SecretString>,
        data_dir: &Path,
    ) -> Result<ReadStoreLocation, ProjectionError> {
        match database_url {
            Some(url) => {
                ReadStore::check_url(url.expose_secret())?;
                Ok(ReadStoreLocation::Url(url.clone()))
            }
            None => Ok(ReadStoreLocation::DataDir(data_dir.join("read.db"))),
        }
    }

    /// Opens the store there and brings its schema up to date.
    pub async fn open(&self) -> Result<ReadStore, ProjectionError> {
        match self {
            ReadStoreLocation::Url(url) => ReadStore::open(url.expose_secret()).await,
            ReadStoreLocation::DataDir(path) => ReadStore::open_sqlite(path).await,
        }
    }
}

/// The Kafka cluster that carries the log. Without brokers, the embedded log in the data
/// directory is used.
#[derive(Args, Clone, Debug)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(long = "kafka-brokers", env = "TALLY_KAFKA_BROKERS")]
    pub brokers: Option<String>,

    /// Prefix of every topic, consumer group and transactional id, so that several Tallys
    /// can share one cluster.
    #[arg(
        long = "kafka-topic-prefix",
        env = "TALLY_KAFKA_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// Replication factor of topics Tally creates: 3 on a real cluster, 1 on a single broker.
    #[arg(
        long = "kafka-replication-factor",
        env = "TALLY_KAFKA_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub replication_factor: u16,

    /// A librdkafka property passed through as `KEY=VALUE`, for SASL and SSL (for example
    /// `security.protocol=SASL_SSL`); may be repeated. Properties that Tally's guarantees
    /// rest on (idempotence, acks, isolation, transactions) cannot be overridden.
    #[arg(
        long = "kafka-property",
        env = "TALLY_KAFKA_PROPERTIES",
        value_delimiter = ';',
        hide_env_values = true,
        value_parser = parse_property
    )]
    pub properties: Vec<(String, String)>,

    /// How long the group coordinator waits for a silent member before it hands the member's
    /// partitions to others: the longest a killed worker's partitions stand still.
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "TALLY_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 45_000
    )]
    pub session_timeout_ms: u64,

    /// Names this process within the installation, the same across its restarts (a host
    /// name or a pod's ordinal). A restarted process then clears what its killed
    /// predecessor left half-written at once, instead of after the broker's transaction
    /// timeout. Every process needs its own: two with one id keep fencing each other.
    #[arg(long = "kafka-instance-id", env = "TALLY_KAFKA_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// How the notifier delivers: the SMTP server, the SMS provider, a dry-run switch for each,
/// and the limits of retrying. Both channels are dry runs unless switched off, so `tally up`
/// needs no mail server or SMS account: dry runs log what they would send and send nothing.
#[derive(Args, Clone, Debug)]
pub struct NotifySettings {
    /// Log emails instead of sending them. `false` needs --smtp-host and --smtp-from.
    #[arg(long, env = "TALLY_EMAIL_DRY_RUN", default_value_t = true, action = clap::ArgAction::Set)]
    pub email_dry_run: bool,

    /// The SMTP server's host name; with TLS, the name its certificate must carry.
    #[arg(long, env = "TALLY_SMTP_HOST")]
    pub smtp_host: Option<String>,

    /// The SMTP server's port (default: 25, 587 or 465, by --smtp-security).
    #[arg(long, env = "TALLY_SMTP_PORT")]
    pub smtp_port: Option<u16>,

    /// How the SMTP connection is protected: starttls, tls (implicit TLS) or none (plain text,
    /// only for a relay on the same host).
    #[arg(
        long,
        env = "TALLY_SMTP_SECURITY",
        default_value = "starttls",
        value_parser = parse_smtp_security
    )]
    pub smtp_security: SmtpSecurity,

    /// The SMTP login; without it, mail is sent without logging in.
    #[arg(long, env = "TALLY_SMTP_USERNAME")]
    pub smtp_username: Option<String>,

    /// The SMTP password; prefer the environment variable to the flag.
    #[arg(long, env = "TALLY_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<SecretString>,

    /// The sender of every email, `Tally <no-reply@example.com>` or a bare address.
    #[arg(long, env = "TALLY_SMTP_FROM")]
    pub smtp_from: Option<String>,

    /// How long opening a connection to the SMTP server may take, in milliseconds.
    #[arg(
        long,
        env = "TALLY_SMTP_CONNECT_TIMEOUT_MS",
        default_value_t = smtp::CONNECT_TIMEOUT_MS_DEFAULT
    )]
    pub smtp_connect_timeout_ms: u64,

    /// How long one whole send may take, from connecting to the last reply, in milliseconds.
    #[arg(
        long,
        env = "TALLY_SMTP_SEND_TIMEOUT_MS",
        default_value_t = smtp::SEND_TIMEOUT_MS_DEFAULT
    )]
    pub smtp_send_timeout_ms: u64,

    /// Connections to the SMTP server at once (the pool's size), 1 to 64.
    #[arg(
        long,
        env = "TALLY_SMTP_CONNECTIONS_MAX",
        default_value_t = smtp::CONNECTIONS_MAX_DEFAULT
    )]
    pub smtp_connections_max: u32,

    /// Log text messages instead of sending them. `false` needs --sms-account-sid,
    /// --sms-auth-token and one of --sms-messaging-service-sid or --sms-from-number.
    #[arg(long, env = "TALLY_SMS_DRY_RUN", default_value_t = true, action = clap::ArgAction::Set)]
    pub sms_dry_run: bool,

    /// The root of the SMS provider's Messages API (Twilio's, or one shaped like it).
    #[arg(long, env = "TALLY_SMS_BASE_URL", default_value = sms::TWILIO_BASE_URL)]
    pub sms_base_url: String,

    /// The SMS account SID: the basic auth user.
    #[arg(long, env = "TALLY_SMS_ACCOUNT_SID")]
    pub sms_account_sid: Option<String>,

    /// The SMS auth token: the basic auth password; prefer the environment variable.
    #[arg(long, env = "TALLY_SMS_AUTH_TOKEN", hide_env_values = true)]
    pub sms_auth_token: Option<SecretString>,

    /// The messaging service that sends the texts (it picks the number).
    #[arg(
        long,
        env = "TALLY_SMS_MESSAGING_SERVICE_SID",
        conflicts_with = "sms_from_number"
    )]
    pub sms_messaging_service_sid: Option<String>,

    /// The account's number the texts are sent from, in E.164 form.
    #[arg(long, env = "TALLY_SMS_FROM_NUMBER")]
    pub sms_from_number: Option<String>,

    /// How long one call to the SMS provider may take, in milliseconds.
    #[arg(long, env = "TALLY_SMS_TIMEOUT_MS", default_value_t = sms::TIMEOUT_MS_DEFAULT)]
    pub sms_timeout_ms: u64,

    /// A folder of notification templates replacing the built-in ones (a complete copy of
    /// processor/templates).
    #[arg(long, env = "TALLY_NOTIFY_TEMPLATES_DIR")]
    pub notify_templates_dir: Option<PathBuf>,

    /// Attempts at a notification whose failures might pass before it is given up as DEAD
    /// and published on the dead-letter topic.
    #[arg(
        long,
        env = "TALLY_NOTIFY_ATTEMPTS_MAX",
        default_value_t = notifier_defaults::ATTEMPTS_MAX_DEFAULT
    )]
    pub notify_attempts_max: u32,

    /// The ceiling of the first retry's delay, in milliseconds; it doubles with each retry,
    /// and the delay is drawn at random below it (full jitter).
    #[arg(
        long,
        env = "TALLY_NOTIFY_RETRY_DELAY_MS_MIN",
        default_value_t = notifier_defaults::RETRY_DELAY_MS_MIN_DEFAULT
    )]
    pub notify_retry_delay_ms_min: u64,

    /// The ceiling no retry delay exceeds, in milliseconds.
    #[arg(
        long,
        env = "TALLY_NOTIFY_RETRY_DELAY_MS_MAX",
        default_value_t = notifier_defaults::RETRY_DELAY_MS_MAX_DEFAULT
    )]
    pub notify_retry_delay_ms_max: u64,

    /// How long a notifier holds a notification it is sending, in milliseconds: longer than
    /// the slowest send, and how long a killed notifier's notifications wait for another.
    #[arg(
        long,
        env = "TALLY_NOTIFY_LEASE_MS",
        default_value_t = notifier_defaults::LEASE_MS_DEFAULT
    )]
    pub notify_lease_ms: u64,

    /// Sends under way at once per notifier process.
    #[arg(
        long,
        env = "TALLY_NOTIFY_SENDS_IN_FLIGHT_MAX",
        default_value_t = notifier_defaults::SENDS_IN_FLIGHT_MAX_DEFAULT
    )]
    pub notify_sends_in_flight_max: usize,
}

fn parse_smtp_security(text: &str) -> Result<SmtpSecurity, String> {
    text.parse()
        .map_err(|error: smtp::SmtpSettingsError| error.to_string())
}
