//! Opening the embedded log: checking settings, locking the data directory, connecting to
//! SQLite, applying the schema and pinning the partition count.

use std::fs::{File, OpenOptions, TryLockError};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};

use super::store::storage;
use super::{PARTITION_COUNT_MAX, SqliteLogSettings};
use crate::log::LogError;

/// The database file inside the data directory.
pub(super) const DB_FILE_NAME: &str = "log.db";

/// The lock file inside the data directory.
const LOCK_FILE_NAME: &str = "log.lock";

/// How long a connection waits for SQLite's own file locks before failing. Only a WAL
/// checkpoint or a closing connection should hold them, and those take milliseconds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections. Reads are short point lookups and range scans; a handful keeps every
/// consumer and replay busy without holding many WAL snapshots open.
const READ_CONNECTIONS_MAX: u32 = 8;

/// How long a read waits for a free read connection before failing as a storage error.
const READ_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema of the embedded log.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/log-sqlite");

/// Checks the settings and returns the partition count.
pub(super) fn validate(settings: &SqliteLogSettings) -> Result<NonZeroU32, LogError> {
    if settings.append_batch_size_max == 0 {
        return Err(LogError::Invalid(
            "append_batch_size_max must be at least 1".into(),
        ));
    }
    match NonZeroU32::new(settings.partition_count) {
        Some(count) if count.get() <= PARTITION_COUNT_MAX => Ok(count),
        _ => Err(LogError::Invalid(format!(
            "partition_count {} is outside 1..={PARTITION_COUNT_MAX}",
            settings.partition_count
        ))),
    }
}

/// Creates the data directory if needed and takes its exclusive lock, which is released when
/// the returned file is dropped (or the process dies).
pub(super) fn lock_data_dir(data_dir: &Path) -> Result<File, LogError> {
    std::fs::create_dir_all(data_dir).map_err(storage)?;
    let lock_path = data_dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(storage)?;

    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LogError::Locked(format!(
            "{} is held by another open log",
            lock_path.display()
        ))),
        Err(TryLockError::Error(error)) => Err(storage(error)),
    }
}

/// The one connection that writes: WAL journal, creating the database when missing.
pub(super) async fn connect_writer(
    db_path: &Path,
    synchronous_full: bool,
) -> Result<SqliteConnection, LogError> {
    let synchronous = if synchronous_full {
        SqliteSynchronous::Full
    } else {
        SqliteSynchronous::Normal
    };
    SqliteConnectOptions::new()
        .filename(db_path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await
        .map_err(storage)
}

/// The pool of read-only connections. Call after the writer has created the database.
pub(super) async fn connect_readers(db_path: &Path) -> Result<SqlitePool, LogError> {
    let options = SqliteConnectOptions::new()
        .filename(db_path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(READ_CONNECTIONS_MAX)
        .acquire_timeout(READ_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(storage)
}

/// Applies the migrations the database has not seen yet.
pub(super) async fn migrate(conn: &mut SqliteConnection) -> Result<(), LogError> {
    MIGRATOR.run(conn).await.map_err(storage)
}

/// Stores the partition count on first open; afterwards refuses any other count, since
/// changing it would move keys to other partitions.
pub(super) async fn check_partition_count(
    conn: &mut SqliteConnection,
    partition_count: NonZeroU32,
) -> Result<(), LogError> {
    sqlx::query("INSERT INTO log_meta (id, partition_count) VALUES (1, ?) ON CONFLICT DO NOTHING")
        .bind(partition_count.get())
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    let stored: i64 = sqlx::query_scalar("SELECT partition_count FROM log_meta WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(storage)?;

    if stored == i64::from(partition_count.get()) {
        return Ok(());
    }
    Err(LogError::Invalid(format!(
        "the log was created with {stored} partitions; it cannot be opened with {partition_count}"
    )))
}
