//! The read store: the database holding the read tables, opened once and shared.
//!
//! SQLite today; a MySQL variant will sit beside `open_sqlite`. SQL lives in two modules so
//! that variant has few places to touch: [`crate::queries`] reads, [`crate::writes`] writes.
//! The same database also holds the API's own tables (migrations `0002` and `0003` of the
//! shared folder), so opening the store brings the whole schema up to date.

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::ProjectionError;

/// Connections in the pool. The projector holds one while it applies a batch, and the API's
/// reads share the rest; WAL lets readers run beside the one writer, so more would only hold
/// more snapshots open on a small server.
const CONNECTIONS_MAX: u32 = 8;

/// How long a caller waits for a free connection before the pool gives up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a statement waits for SQLite's write lock. The projector's transactions and the
/// API's writes take milliseconds, so waiting this long means something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema of the read store and the API's tables.
static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// The read store. Cheap to clone: clones share one pool.
#[derive(Clone, Debug)]
pub struct ReadStore {
    pool: SqlitePool,
}

impl ReadStore {
    /// Opens (or creates) the SQLite database at `path` and applies pending migrations.
    ///
    /// `synchronous=NORMAL` rather than `FULL`: a power loss may drop the last transactions,
    /// and that is fine because the store is rebuilt from the log, with its offsets dropped
    /// together with its rows.
    pub async fn open_sqlite(path: &Path) -> Result<ReadStore, ProjectionError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;

        MIGRATOR.run(&pool).await?;
        tracing::info!(path = %path.display(), "read store opened");
        Ok(ReadStore { pool })
    }

    /// The pool, for the API's own tables in the same database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}
