//! Fresh read stores for tests, on every backend, and [`backend_tests!`] to run one test body
//! on each. Compiled for this crate's tests and, with the `test-support` feature, for other
//! crates' tests; never part of a release build.
//!
//! A SQLite store lives in a temporary directory. A MySQL store is a new database
//! `tally_test_<random>` on the server `TALLY_TEST_MYSQL_URL` names, dropped when the store
//! is. Without that variable a MySQL test fails, saying so: CI provisions MariaDB, and a test
//! that silently passes without it would hide the backend it exists for.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, MySqlConnection, SqliteConnection};
use tempfile::TempDir;
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::store::ReadStore;
use crate::with_pool;

/// The variable holding the URL of a MySQL or MariaDB server tests may create databases on,
/// for example `mysql://tally:tally@127.0.0.1:3306/tally`. `deploy/infra.sh env` prints it.
pub const MYSQL_URL_VARIABLE: &str = "TALLY_TEST_MYSQL_URL";

/// How long dropping a test database waits for a lock before giving up on it.
const DROP_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Runs each named test body, an `async fn(TestBackend)`, once on SQLite and once on MySQL,
/// as two tests: `name::sqlite` and `name::mysql`.
#[macro_export]
macro_rules! backend_tests {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                super::$test($crate::test_support::TestBackend::Sqlite).await
            }

            #[tokio::test]
            async fn mysql() {
                super::$test($crate::test_support::TestBackend::MySql).await
            }
        }
    )+};
}

/// The database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    MySql,
}

/// A read store that exists for one test.
pub struct TestStore {
    store: ReadStore,
    url: String,
    scratch: Scratch,
}

enum Scratch {
    /// Deleted when dropped, with the SQLite files in it.
    Directory {
        _kept: TempDir,
    },
    Database {
        server_url: String,
        name: String,
    },
}

impl TestStore {
    /// A new, empty store on `backend`, with every migration applied. Panics when it cannot be
    /// made: a test without its database has nothing to test.
    pub async fn open(backend: TestBackend) -> TestStore {
        let (url, scratch) = match backend {
            TestBackend::Sqlite => sqlite_scratch(),
            TestBackend::MySql => mysql_scratch(&mysql_server_url()).await,
        };
        Self::open_at(url, scratch).await
    }

    /// A new, empty store in a new database on the MySQL server `server_url` names, its
    /// parameters (TLS settings, for example) kept for every connection, the drop's included.
    pub async fn open_mysql_at(server_url: &str) -> TestStore {
        let (url, scratch) = mysql_scratch(server_url).await;
        Self::open_at(url, scratch).await
    }

    /// A new store on `backend` that held the schema up to migration `version` when `setup`
    /// ran on it, and then had every later migration applied: what a store of an older
    /// release with rows in it becomes when a newer one opens it.
    pub async fn open_upgraded(backend: TestBackend, version: i64, setup: &[&str]) -> TestStore {
        let (url, scratch) = match backend {
            TestBackend::Sqlite => sqlite_scratch(),
            TestBackend::MySql => mysql_scratch(&mysql_server_url()).await,
        };
        let ran = match backend {
            TestBackend::Sqlite => older_sqlite(&url, version, setup).await,
            TestBackend::MySql => older_mysql(&url, version, setup).await,
        };
        ran.unwrap_or_else(|error| panic!("the older schema was not set up: {error:?}"));
        Self::open_at(url, scratch).await
    }

    async fn open_at(url: String, scratch: Scratch) -> TestStore {
        let store = ReadStore::open(&url)
            .await
            .unwrap_or_else(|error| panic!("the test store did not open: {error:?}"));
        TestStore {
            store,
            url,
            scratch,
        }
    }

    pub fn store(&self) -> &ReadStore {
        &self.store
    }

    /// The database URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> TestBackend {
        match self.scratch {
            Scratch::Directory { .. } => TestBackend::Sqlite,
            Scratch::Database { .. } => TestBackend::MySql,
        }
    }

    /// Runs one statement that binds nothing, to set up or inspect what a test needs.
    pub async fn execute(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        let executed =
            with_pool!(self.store, pool => sqlx::query(sql).execute(pool).await.map(drop));
        executed.unwrap_or_else(|error| panic!("test statement failed: {error:?}"));
    }

    /// The rows of `table`.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
        let count = with_pool!(self.store, pool => {
            sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
        });
        count.unwrap_or_else(|error| panic!("counting {table} failed: {error:?}"))
    }

    /// The first column of the first row `sql` selects, which must be text or NULL.
    pub async fn text(&self, sql: &str) -> Option<String> {
        let sql = AssertSqlSafe(sql.to_owned());
        let text = with_pool!(self.store, pool => {
            sqlx::query_scalar::<_, Option<String>>(sql).fetch_optional(pool).await
        });
        let text = text.unwrap_or_else(|error| panic!("test query failed: {error:?}"));
        text.flatten()
    }
}

/// Brings the SQLite file at `path` to migration `version` and runs `setup` on it.
async fn older_sqlite(path: &str, version: i64, setup: &[&str]) -> Result<(), ProjectionError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    crate::store::SQLITE_MIGRATOR
        .run_to(version, &mut conn)
        .await?;
    for statement in setup {
        conn.execute(AssertSqlSafe(statement.to_string())).await?;
    }
    Ok(conn.close().await?)
}

/// Brings the MySQL database at `url` to migration `version` and runs `setup` on it.
async fn older_mysql(url: &str, version: i64, setup: &[&str]) -> Result<(), ProjectionError> {
    let mut conn = MySqlConnection::connect(url).await?;
    crate::store::MYSQL_MIGRATOR
        .run_to(version, &mut conn)
        .await?;
    for statement in setup {
        conn.execute(AssertSqlSafe(statement.to_string())).await?;
    }
    Ok(conn.close().await?)
}

fn sqlite_scratch() -> (String, Scratch) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let path = directory.path().join("read.db");
    let url = path.to_str().expect("a UTF-8 temporary path").to_owned();
    (url, Scratch::Directory { _kept: directory })
}

/// The server `TALLY_TEST_MYSQL_URL` names; panics, saying how to get one, when it is unset.
pub fn mysql_server_url() -> String {
    std::env::var(MYSQL_URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{MYSQL_URL_VARIABLE} is not set, so this MySQL test cannot run. Point it at a \
             MySQL or MariaDB server whose user may create databases named tally_test_*: \
             `deploy/infra.sh up`, then `eval \"$(deploy/infra.sh env)\"`"
        )
    })
}

async fn mysql_scratch(server_url: &str) -> (String, Scratch) {
    let server_url = server_url.to_owned();
    let name = format!("tally_test_{}", Uuid::new_v4().simple());
    let mut server = MySqlConnection::connect(&server_url)
        .await
        .unwrap_or_else(|error| panic!("cannot reach the MySQL server of the test: {error}"));
    let create = format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin");
    server
        .execute(AssertSqlSafe(create))
        .await
        .unwrap_or_else(|error| panic!("cannot create the test database {name}: {error}"));
    let _ = server.close().await;
    let url = with_database(&server_url, &name);
    (url, Scratch::Database { server_url, name })
}

/// `server_url` with its database replaced by `name`, keeping its parameters.
fn with_database(server_url: &str, name: &str) -> String {
    let (base, parameters) = match server_url.split_once('?') {
        Some((base, parameters)) => (base, Some(parameters)),
        None => (server_url, None),
    };
    let authority = base.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    match parameters {
        Some(parameters) => format!("{base}/{name}?{parameters}"),
        None => format!("{base}/{name}"),
    }
}

/// Drops the test's MySQL database. The test's own runtime may be the thread running this, so
/// the drop runs on a runtime of its own, on a thread of its own, over a connection of its own.
impl Drop for TestStore {
    fn drop(&mut self) {
        let Scratch::Database { server_url, name } = &self.scratch else {
            return;
        };
        let (server_url, name) = (server_url.clone(), name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_database(&server_url, &name))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "the test database {} was not dropped: drop it by hand",
                self.url
            );
        }
    }
}

/// Ends the sessions still using the database (a killed projector's connection may hold its
/// locks until the pool pings it), then drops it.
async fn drop_database(server_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut server = MySqlConnection::connect(server_url).await?;
    let lock_wait = format!(
        "SET SESSION lock_wait_timeout = {}",
        DROP_LOCK_WAIT.as_secs()
    );
    server.execute(AssertSqlSafe(lock_wait)).await?;
    let sessions: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(id AS SIGNED) FROM information_schema.PROCESSLIST WHERE db = ?",
    )
    .bind(name)
    .fetch_all(&mut server)
    .await?;
    for session in sessions {
        // A session that ended on its own in the meantime is fine.
        let _ = server
            .execute(AssertSqlSafe(format!("KILL {session}")))
            .await;
    }
    server
        .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
        .await?;
    server.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_database_replaces_the_one_in_the_url_and_keeps_its_parameters() {
        let url = "mysql://u:p@127.0.0.1:3306/tally?ssl-mode=disabled";
        assert_eq!(
            with_database(url, "tally_test_1"),
            "mysql://u:p@127.0.0.1:3306/tally_test_1?ssl-mode=disabled"
        );
        assert_eq!(with_database("mysql://u@host", "t"), "mysql://u@host/t");
    }
}
