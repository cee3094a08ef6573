//! The read store: the database holding the read tables, opened once and shared.
//!
//! It runs on SQLite (the embedded default, a file in the data directory) or on MySQL and
//! MariaDB, chosen by the database URL given to [`ReadStore::open`]. Queries are written once,
//! generic over [`crate::Backend`]; [`crate::with_pool!`] is where they meet a concrete pool. SQL
//! lives in two modules: [`crate::queries`] reads, [`crate::writes`] writes. The same database
//! also holds the API's own tables and the notifier's delivery log (migrations `0002` to
//! `0004`), so opening the store brings the whole schema up to date.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Executor, MySql, MySqlPool, Sqlite, SqlitePool};

use crate::backend::Backend;
use crate::error::ProjectionError;

/// SQLite connections in the pool. The projector holds one while it applies a batch, and the
/// API's reads share the rest; WAL lets readers run beside the one writer, so more would only
/// hold more snapshots open on a small server.
const SQLITE_CONNECTIONS_MAX: u32 = 8;

/// MySQL connections in the pool. The server runs readers and writers side by side, so the
/// API gets more room than on SQLite; sixteen per process keeps a handful of Tally processes
/// well inside MariaDB's default `max_connections` of 151.
const MYSQL_CONNECTIONS_MAX: u32 = 16;

/// How long a caller waits for a free connection, or for a new one to connect, before the
/// pool gives up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a statement waits for a lock another transaction holds: SQLite's write lock, or
/// InnoDB's row locks. The projector's transactions and the API's writes take milliseconds,
/// so waiting this long means something is stuck.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// A MySQL connection idle this long is closed, well before the server's own `wait_timeout`
/// (eight hours by default) drops it under us.
const MYSQL_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A MySQL connection is replaced after this long, so a failover or a changed server setting
/// reaches every connection within the half hour.
const MYSQL_CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(30 * 60);

/// The schema on SQLite.
pub(crate) static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// The same schema on MySQL: the same tables and columns, with MySQL's types.
pub(crate) static MYSQL_MIGRATOR: Migrator = sqlx::migrate!("../migrations/mysql");

/// The read store. Cheap to clone: clones share one pool.
#[derive(Clone, Debug)]
pub struct ReadStore {
    pool: StorePool,
}

/// The pool of the database the store runs on. Match on it through [`with_pool!`], which runs
/// the same generic code on either.
#[derive(Clone, Debug)]
pub enum StorePool {
    Sqlite(SqlitePool),
    MySql(MySqlPool),
}

/// Runs `$body` with `$pool` bound to the store's concrete pool (`&SqlitePool` or
/// `&MySqlPool`). The body is compiled once for each backend, so it should call a function
/// generic over [`crate::Backend`] rather than hold SQL of its own.
#[macro_export]
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store.pool() {
            $crate::StorePool::Sqlite($pool) => $body,
            $crate::StorePool::MySql($pool) => $body,
        }
    };
}

impl ReadStore {
    /// Opens the store at `url` and applies pending migrations:
    ///
    /// - `mysql://user:password@host:port/database` (or `mariadb://`): MySQL or MariaDB. TLS is
    ///   set with sqlx's URL parameters: `ssl-mode` (`disabled`, `preferred`, the default,
    ///   `required`, `verify_ca`, `verify_identity`), `ssl-ca`, `ssl-cert` and `ssl-key`.
    /// - `sqlite://path` (with sqlx's SQLite URL parameters), or a plain file path: SQLite,
    ///   created when missing.
    pub async fn open(url: &str) -> Result<ReadStore, ProjectionError> {
        match target(url)? {
            Target::Sqlite(options) => open_sqlite(options).await,
            Target::MySql(options) => open_mysql(options).await,
        }
    }

    /// Opens the store at `url` only to read it, as an audit does: no migration runs, SQLite is
    /// opened read-only and must exist, and every MySQL session is read-only under REPEATABLE
    /// READ. The schema must already be current (any `tally` role brings it up to date).
    pub async fn open_read_only(url: &str) -> Result<ReadStore, ProjectionError> {
        match target(url)? {
            Target::Sqlite(options) => open_sqlite_read_only(options).await,
            Target::MySql(options) => open_mysql_for(options, MySqlUse::ReadOnly).await,
        }
    }

    /// Opens a read transaction that sees the whole store as it stood at one moment, however
    /// long it is held and whatever is written meanwhile. It holds one connection.
    pub async fn snapshot(&self) -> Result<Snapshot, ProjectionError> {
        let connection = match &self.pool {
            StorePool::Sqlite(pool) => {
                SnapshotConnection::Sqlite(pool.begin_with(Sqlite::BEGIN_SNAPSHOT).await?)
            }
            StorePool::MySql(pool) => {
                SnapshotConnection::MySql(pool.begin_with(MySql::BEGIN_SNAPSHOT).await?)
            }
        };
        Ok(Snapshot { connection })
    }

    /// Checks that `url` names a database [`ReadStore::open`] can open, without connecting.
    pub fn check_url(url: &str) -> Result<(), ProjectionError> {
        target(url).map(drop)
    }

    /// Opens (or creates) the SQLite database at `path` and applies pending migrations.
    pub async fn open_sqlite(path: &Path) -> Result<ReadStore, ProjectionError> {
        open_sqlite(SqliteConnectOptions::new().filename(path)).await
    }

    /// The pool, for the API's own tables in the same database; see [`with_pool!`].
    pub fn pool(&self) -> &StorePool {
        &self.pool
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        match &self.pool {
            StorePool::Sqlite(pool) => pool.close().await,
            StorePool::MySql(pool) => pool.close().await,
        }
    }
}

/// A read transaction over one moment of the store; see [`ReadStore::snapshot`]. Dropping it
/// ends the transaction, which wrote nothing.
pub struct Snapshot {
    connection: SnapshotConnection,
}

pub(crate) enum SnapshotConnection {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    MySql(sqlx::Transaction<'static, MySql>),
}

impl Snapshot {
    pub(crate) fn connection(&mut self) -> &mut SnapshotConnection {
        &mut self.connection
    }

    /// Ends the read transaction now. A snapshot only dropped ends it when its connection is
    /// next used, and until then, on MySQL, holds the metadata locks of the tables it read,
    /// which a `RENAME TABLE` waits for.
    pub async fn close(self) -> Result<(), ProjectionError> {
        match self.connection {
            SnapshotConnection::Sqlite(transaction) => transaction.rollback().await?,
            SnapshotConnection::MySql(transaction) => transaction.rollback().await?,
        }
        Ok(())
    }
}

/// Runs `$body` with `$conn` bound to the snapshot's connection (`&mut SqliteConnection` or
/// `&mut MySqlConnection`) and `$db` naming its backend, compiled once for each backend like
/// [`with_pool!`].
macro_rules! with_snapshot {
    ($snapshot:expr, $db:ident, $conn:ident => $body:expr) => {
        match $snapshot.connection() {
            $crate::store::SnapshotConnection::Sqlite(transaction) => {
                type $db = sqlx::Sqlite;
                let $conn = &mut **transaction;
                $body
            }
            $crate::store::SnapshotConnection::MySql(transaction) => {
                type $db = sqlx::MySql;
                let $conn = &mut **transaction;
                $body
            }
        }
    };
}

pub(crate) use with_snapshot;

/// The database a URL names, with its connection options parsed.
enum Target {
    Sqlite(SqliteConnectOptions),
    MySql(MySqlConnectOptions),
}

fn target(url: &str) -> Result<Target, ProjectionError> {
    let invalid = |reason: &str| Err(ProjectionError::InvalidDatabaseUrl(reason.to_owned()));
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("mysql" | "mariadb") => {
            let options = MySqlConnectOptions::from_str(url).map_err(invalid_url)?;
            Ok(Target::MySql(options))
        }
        Some("sqlite") => {
            let options = SqliteConnectOptions::from_str(url).map_err(invalid_url)?;
            Ok(Target::Sqlite(options))
        }
        _ if url.contains("://") => invalid("the scheme is neither sqlite nor mysql"),
        _ if url.is_empty() => invalid("the url is empty"),
        _ => Ok(Target::Sqlite(SqliteConnectOptions::new().filename(url))),
    }
}

/// `synchronous=NORMAL` rather than `FULL`: a power loss may drop the last transactions, and
/// that is fine because the store is rebuilt from the log, with its offsets dropped together
/// with its rows.
async fn open_sqlite(options: SqliteConnectOptions) -> Result<ReadStore, ProjectionError> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(LOCK_TIMEOUT);
    let path = options.get_filename().display().to_string();
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;

    SQLITE_MIGRATOR.run(&pool).await?;
    tracing::info!(backend = "sqlite", path, "read store opened");
    Ok(ReadStore {
        pool: StorePool::Sqlite(pool),
    })
}

/// Read-only, without creating the file or running migrations. No journal mode is set:
/// changing it needs a write.
async fn open_sqlite_read_only(
    options: SqliteConnectOptions,
) -> Result<ReadStore, ProjectionError> {
    let options = options.read_only(true).busy_timeout(LOCK_TIMEOUT);
    let path = options.get_filename().display().to_string();
    let pool = SqlitePoolOptions::new()
        .max_connections(READ_ONLY_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    tracing::info!(backend = "sqlite", path, "read store opened to read only");
    Ok(ReadStore {
        pool: StorePool::Sqlite(pool),
    })
}

/// How a MySQL store is opened: to be written by Tally, or only read by an audit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MySqlUse {
    Write,
    ReadOnly,
}

/// Connections of a store opened only to be read: an audit holds one snapshot and a few
/// short reads beside it.
const READ_ONLY_CONNECTIONS_MAX: u32 = 4;

async fn open_mysql(options: MySqlConnectOptions) -> Result<ReadStore, ProjectionError> {
    open_mysql_for(options, MySqlUse::Write).await
}

/// Every connection bounds its lock waits like SQLite's busy timeout. One that writes refuses
/// a value that does not fit its column instead of truncating it, whatever the server's
/// defaults; one that only reads cannot write, and each of its transactions reads from one
/// snapshot. sqlx has already set UTF-8 (`utf8mb4`) and the UTC time zone.
async fn open_mysql_for(
    options: MySqlConnectOptions,
    usage: MySqlUse,
) -> Result<ReadStore, ProjectionError> {
    let lock_wait = format!(
        "SET SESSION innodb_lock_wait_timeout = {}",
        LOCK_TIMEOUT.as_secs()
    );
    let (session, connections_max) = match usage {
        MySqlUse::Write => (
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
            MYSQL_CONNECTIONS_MAX,
        ),
        MySqlUse::ReadOnly => (
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            READ_ONLY_CONNECTIONS_MAX,
        ),
    };
    let pool = MySqlPoolOptions::new()
        .max_connections(connections_max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(MYSQL_IDLE_TIMEOUT)
        .max_lifetime(MYSQL_CONNECTION_LIFETIME_MAX)
        .after_connect(move |conn, _| {
            let lock_wait = lock_wait.clone();
            Box::pin(async move {
                conn.execute(AssertSqlSafe(lock_wait)).await?;
                conn.execute(session).await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await?;

    if usage == MySqlUse::Write {
        MYSQL_MIGRATOR.run(&pool).await?;
    }
    tracing::info!(
        backend = "mysql",
        host = options.get_host(),
        port = options.get_port(),
        database = options.get_database().unwrap_or_default(),
        ssl_mode = ?options.get_ssl_mode(),
        "read store opened"
    );
    Ok(ReadStore {
        pool: StorePool::MySql(pool),
    })
}

/// The reason a URL did not parse. sqlx's messages name the part at fault, never the password.
fn invalid_url(error: sqlx::Error) -> ProjectionError {
    ProjectionError::InvalidDatabaseUrl(error.to_string())
}
