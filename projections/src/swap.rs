//! Putting a rebuilt set of projected tables in place of the live one while Tally runs: what
//! `tally replay --swap` does once its replay is done.
//!
//! The rebuilt store is first brought up to where the live projection stands. Then the swap
//! takes the projection's row in `projection_control` exclusively, which waits for the batch
//! a live projector may be applying and holds back the next one; brings the rebuilt store up
//! to exactly where the live one now stands; and makes the two sets change places in one
//! step, moving the row's generation in the same transaction. Every live projector notices
//! the new generation at its next batch and resumes from the offsets of the tables now in
//! place, which stand at least as far as the ones they replaced. Readers see the old set or
//! the new one, never a mixture of both, and never a balance older than one they saw.
//!
//! - On MySQL, both stores are databases of one server, and a single `RENAME TABLE` moves
//!   every projected table of the live database into the rebuilt one and every rebuilt table
//!   into the live one: the rebuilt database keeps the previous set for inspection.
//! - On SQLite, where a table cannot move between files, the rebuilt rows are copied over the
//!   live ones in one transaction, and the rebuilt file keeps its copy.
//!
//! Only the projected tables move. Users, API keys, idempotency records and the notifier's
//! delivery log stay where they are, and so does `projection_control` itself.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, Executor, MySql, Sqlite, SqliteConnection};
use tally_commands::log::EventLog;

use crate::backend::Backend;
use crate::compare;
use crate::error::ProjectionError;
use crate::projector::{PROJECTION_NAME, ProjectorSettings, Replayed, replay_until};
use crate::queries;
use crate::sql::Sql;
use crate::store::{ReadStore, StorePool};

/// Every table the projector writes, the ones `compare` sets side by side. They are swapped
/// together, or not at all.
fn projected_tables() -> impl Iterator<Item = &'static str> {
    compare::TABLES.iter().map(|table| table.name)
}

/// The tables of the store that the projector does not write: they stay where they are.
#[cfg(test)]
const KEPT_TABLES: [&str; 7] = [
    "_sqlx_migrations",
    "users",
    "api_keys",
    "transaction_requests",
    "notification_deliveries",
    "notification_requests",
    "projection_control",
];

/// Rounds of catching up before the live projection is held. Each round replays what the
/// live projector applied during the one before, so the rounds shrink quickly; the last one,
/// under the lock, then has little left to do.
const CATCH_UP_ROUNDS_MAX: usize = 5;

/// A round that applied no more records than this leaves a short final round: about what a
/// projector applies in a few tens of milliseconds.
const CATCH_UP_RECORDS_FEW: u64 = 200;

/// Tries at taking the projection's row, which waits for a live batch to commit. A batch
/// takes well under a second, so failing this often means something holds the row.
const HOLD_ATTEMPTS_MAX: u32 = 5;

/// How long the `RENAME TABLE` waits for the tables' metadata locks, which a long read
/// transaction on them holds. New readers of those tables queue behind a waiting rename, so
/// the wait is kept short: the swap fails instead of stalling the API.
const RENAME_LOCK_WAIT_S: u32 = 10;

/// What a swap did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swapped {
    /// The generation of the tables now live.
    pub generation: u64,
    /// Records the swap applied to the rebuilt store to catch up with the live one.
    pub caught_up: Replayed,
    /// How long live projectors were held back.
    pub held: Duration,
    /// Where the tables that were live went.
    pub previous: PreviousTables,
}

/// Where a swap left the tables it took out of service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviousTables {
    /// Moved into this MySQL database, the one the rebuilt tables came from.
    KeptIn(String),
    /// Overwritten by the copy of the rebuilt rows (SQLite).
    Overwritten,
}

/// Puts the projected tables of `rebuilt`, a store `tally replay` filled from `log`, in place
/// of those of `live`, the store a running Tally reads and projects into. Both must be on the
/// same backend; on MySQL, on the same server.
pub async fn swap(
    log: &dyn EventLog,
    live: &ReadStore,
    rebuilt: &ReadStore,
    settings: &ProjectorSettings,
) -> Result<Swapped, ProjectionError> {
    match (live.pool(), rebuilt.pool()) {
        (StorePool::MySql(_), StorePool::MySql(_)) => {
            swap_mysql(log, live, rebuilt, settings).await
        }
        (StorePool::Sqlite(_), StorePool::Sqlite(_)) => {
            swap_sqlite(log, live, rebuilt, settings).await
        }
        _ => Err(refused(
            "the rebuilt store and the live one must both be SQLite or both MySQL",
        )),
    }
}

/// Refuses, before any work, two stores that cannot be swapped: on different backends, the
/// same store twice, or MySQL databases of different servers. What [`swap`] checks first,
/// for a caller that wants to know before it spends a replay on the rebuilt store.
pub async fn check_targets(live: &ReadStore, rebuilt: &ReadStore) -> Result<(), ProjectionError> {
    match (live.pool(), rebuilt.pool()) {
        (StorePool::MySql(live), StorePool::MySql(rebuilt)) => {
            mysql_targets(live, rebuilt).await.map(drop)
        }
        (StorePool::Sqlite(live), StorePool::Sqlite(rebuilt)) => {
            sqlite_targets(live, rebuilt).await.map(drop)
        }
        _ => Err(refused(
            "the rebuilt store and the live one must both be SQLite or both MySQL",
        )),
    }
}

/// The names of the live and the rebuilt databases, once they are known to be two databases
/// of one server.
async fn mysql_targets(
    live: &sqlx::MySqlPool,
    rebuilt: &sqlx::MySqlPool,
) -> Result<(String, String), ProjectionError> {
    let live_database = database_name(live).await?;
    let rebuilt_database = database_name(rebuilt).await?;
    if live_database == rebuilt_database {
        return Err(refused(format!(
            "the rebuilt store is the live database {live_database:?} itself"
        )));
    }
    check_same_server(live, rebuilt, &rebuilt_database).await?;
    Ok((live_database, rebuilt_database))
}

/// The rebuilt store's file, once it is known to be another file than the live one.
async fn sqlite_targets(
    live: &sqlx::SqlitePool,
    rebuilt: &sqlx::SqlitePool,
) -> Result<String, ProjectionError> {
    let live_file = main_file(live).await?;
    let rebuilt_file = main_file(rebuilt).await?;
    if rebuilt_file.is_empty() || live_file.is_empty() {
        return Err(refused("both stores must be SQLite files"));
    }
    if std::fs::canonicalize(&live_file).ok() == std::fs::canonicalize(&rebuilt_file).ok() {
        return Err(refused(format!(
            "the rebuilt store is the live file {live_file} itself"
        )));
    }
    Ok(rebuilt_file)
}

fn refused(reason: impl Into<String>) -> ProjectionError {
    ProjectionError::SwapRefused(reason.into())
}

/// Replays into `rebuilt` what the live projection applied beyond it, round after round,
/// while the live projector goes on.
async fn catch_up(
    log: &dyn EventLog,
    live: &ReadStore,
    rebuilt: &ReadStore,
    settings: &ProjectorSettings,
) -> Result<Replayed, ProjectionError> {
    let mut caught_up = Replayed::default();
    for _ in 0..CATCH_UP_ROUNDS_MAX {
        let live_offsets = live.offsets().await?;
        let round = replay_until(log, rebuilt, settings, &live_offsets, &|_| {}).await?;
        caught_up.records += round.records;
        caught_up.batches += round.batches;
        if round.records <= CATCH_UP_RECORDS_FEW {
            break;
        }
    }
    tracing::info!(
        records = caught_up.records,
        "rebuilt store caught up; holding the projectors"
    );
    Ok(caught_up)
}

/// Moves the projection's generation on in the open transaction of `conn`, which keeps the
/// row until it ends, and returns the new generation. Waits out a live batch holding it.
async fn hold<DB: Backend>(conn: &mut DB::Connection) -> Result<u64, ProjectionError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let moved = Sql::<DB>::new(
            "UPDATE projection_control SET generation = generation + 1 WHERE projection = ?",
        )
        .bind(PROJECTION_NAME.to_owned())
        .execute(conn)
        .await;
        match moved {
            Ok(done) if DB::rows_affected(&done) == 1 => break,
            Ok(_) => return Err(refused("the live store has no projection_control row")),
            Err(error) => {
                let error = ProjectionError::from(error);
                if !error.is_transient() || attempt >= HOLD_ATTEMPTS_MAX {
                    return Err(error);
                }
                tracing::info!(attempt, "waiting for the live projector's batch to commit");
            }
        }
    }
    queries::generation::<DB>(conn, PROJECTION_NAME, "").await
}

/// Swaps two databases' tables on one MySQL server with one `RENAME TABLE`.
async fn swap_mysql(
    log: &dyn EventLog,
    live: &ReadStore,
    rebuilt: &ReadStore,
    settings: &ProjectorSettings,
) -> Result<Swapped, ProjectionError> {
    let (StorePool::MySql(live_pool), StorePool::MySql(rebuilt_pool)) =
        (live.pool(), rebuilt.pool())
    else {
        return Err(refused("both stores must be MySQL"));
    };
    let (live_database, rebuilt_database) = mysql_targets(live_pool, rebuilt_pool).await?;
    let mut caught_up = catch_up(log, live, rebuilt, settings).await?;

    let mut control = live_pool.begin().await?;
    let generation = hold::<MySql>(&mut *control).await?;
    let held = Instant::now();
    // Read on another connection: the held transaction must not touch a table that moves, or
    // the rename would wait for it to end.
    let live_offsets = live.offsets().await?;
    let last = replay_until(log, rebuilt, settings, &live_offsets, &|_| {}).await?;
    caught_up.records += last.records;
    caught_up.batches += last.batches;

    tracing::info!(
        records = last.records,
        elapsed_ms = held.elapsed().as_millis(),
        "rebuilt store at the live offsets; renaming"
    );
    let mut renaming = live_pool.acquire().await?.detach();
    let statement = rename_statement(&live_database, &rebuilt_database);
    let renamed = async {
        (renaming.execute(AssertSqlSafe(format!(
            "SET SESSION lock_wait_timeout = {RENAME_LOCK_WAIT_S}"
        ))))
        .await?;
        renaming.execute(AssertSqlSafe(statement)).await
    }
    .await;
    let _ = renaming.close().await;
    if let Err(error) = renamed {
        // The transaction rolls back as it drops: the generation stays, nothing moved.
        return Err(error.into());
    }
    control.commit().await?;
    Ok(Swapped {
        generation,
        caught_up,
        held: held.elapsed(),
        previous: PreviousTables::KeptIn(rebuilt_database),
    })
}

/// `RENAME TABLE` that exchanges every projected table of the two databases, through a
/// temporary name in the rebuilt one. MySQL runs the whole list as one atomic step.
fn rename_statement(live: &str, rebuilt: &str) -> String {
    let mut renames = Vec::new();
    for table in projected_tables() {
        let live_table = format!("{}.{}", quoted(live), quoted(table));
        let rebuilt_table = format!("{}.{}", quoted(rebuilt), quoted(table));
        let parked = format!(
            "{}.{}",
            quoted(rebuilt),
            quoted(&format!("{table}_swapping"))
        );
        renames.push(format!("{live_table} TO {parked}"));
        renames.push(format!("{rebuilt_table} TO {live_table}"));
        renames.push(format!("{parked} TO {rebuilt_table}"));
    }
    format!("RENAME TABLE {}", renames.join(", "))
}

/// A MySQL identifier in backquotes.
fn quoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

async fn database_name(pool: &sqlx::MySqlPool) -> Result<String, ProjectionError> {
    let name: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(pool)
        .await?;
    name.ok_or_else(|| refused("a MySQL store's URL names no database"))
}

/// Makes sure the rebuilt database the live server knows by that name is the rebuilt store:
/// a token written through the rebuilt store's connection must read back through the live
/// one's. A database of the same name on another server would swap the wrong tables.
async fn check_same_server(
    live: &sqlx::MySqlPool,
    rebuilt: &sqlx::MySqlPool,
    rebuilt_database: &str,
) -> Result<(), ProjectionError> {
    let token = uuid::Uuid::new_v4().to_string();
    sqlx::query("UPDATE projection_control SET swap_token = ? WHERE projection = ?")
        .bind(&token)
        .bind(PROJECTION_NAME)
        .execute(rebuilt)
        .await?;
    let sql = format!(
        "SELECT swap_token FROM {}.projection_control WHERE projection = ?",
        quoted(rebuilt_database)
    );
    let seen: Result<Option<Option<String>>, sqlx::Error> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(PROJECTION_NAME)
        .fetch_optional(live)
        .await;
    match seen {
        Ok(Some(Some(seen))) if seen == token => Ok(()),
        _ => Err(refused(format!(
            "the rebuilt database {rebuilt_database:?} is not on the live store's server, or \
             the live store's user cannot read it: both must be databases of one server"
        ))),
    }
}

/// Copies the rebuilt rows over the live ones in one SQLite transaction.
async fn swap_sqlite(
    log: &dyn EventLog,
    live: &ReadStore,
    rebuilt: &ReadStore,
    settings: &ProjectorSettings,
) -> Result<Swapped, ProjectionError> {
    let (StorePool::Sqlite(live_pool), StorePool::Sqlite(rebuilt_pool)) =
        (live.pool(), rebuilt.pool())
    else {
        return Err(refused("both stores must be SQLite"));
    };
    let rebuilt_file = sqlite_targets(live_pool, rebuilt_pool).await?;
    let mut caught_up = catch_up(log, live, rebuilt, settings).await?;

    let mut conn = live_pool.acquire().await?.detach();
    sqlx::query("ATTACH DATABASE ? AS rebuilt")
        .bind(&rebuilt_file)
        .execute(&mut conn)
        .await?;
    let copied = copy_rebuilt(&mut conn, log, rebuilt, settings).await;
    let _ = conn.execute("DETACH DATABASE rebuilt").await;
    // The rows written went through the live file's write-ahead log; fold it back in now,
    // if no reader holds it, rather than leave it at its largest.
    let _ = conn.execute("PRAGMA main.wal_checkpoint(TRUNCATE)").await;
    let _ = conn.close().await;
    let (generation, last, held) = copied?;
    caught_up.records += last.records;
    caught_up.batches += last.batches;
    Ok(Swapped {
        generation,
        caught_up,
        held,
        previous: PreviousTables::Overwritten,
    })
}

/// Under the live store's write lock: catches the rebuilt store up to the live offsets, then
/// makes every projected table's rows those of the rebuilt one. A deferred transaction whose
/// first statement writes the live file locks only that file, so the replay can still write
/// the rebuilt one beside it.
///
/// Only the rows that differ are written: the lock holds back the live projector and the
/// API's own writes, and a healthy store differs from its rebuild in few rows or none, so the
/// time held is that of reading both tables once by their keys rather than of writing them.
async fn copy_rebuilt(
    conn: &mut SqliteConnection,
    log: &dyn EventLog,
    rebuilt: &ReadStore,
    settings: &ProjectorSettings,
) -> Result<(u64, Replayed, Duration), ProjectionError> {
    let mut transaction = conn.begin().await?;
    let generation = hold::<Sqlite>(&mut *transaction).await?;
    let held = Instant::now();
    let live_offsets =
        queries::select_offsets::<Sqlite>(&mut *transaction, PROJECTION_NAME, "").await?;
    let last = replay_until(log, rebuilt, settings, &live_offsets, &|_| {}).await?;
    tracing::info!(
        records = last.records,
        elapsed_ms = held.elapsed().as_millis(),
        "rebuilt store at the live offsets; copying its rows"
    );
    for table in projected_tables() {
        let columns: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT name, pk FROM pragma_table_info('{table}') ORDER BY cid"
        )))
        .fetch_all(&mut *transaction)
        .await?;
        for statement in sync_statements(table, &columns) {
            transaction.execute(AssertSqlSafe(statement)).await?;
        }
    }
    transaction.commit().await?;
    Ok((generation, last, held.elapsed()))
}

/// The statements that make `main.{table}` hold exactly the rows of `rebuilt.{table}`: delete
/// every live row the rebuilt table lacks or holds otherwise, then insert every rebuilt row
/// the live table now lacks. `columns` are the table's columns and their place in its primary
/// key (0 for none); `IS` compares NULLs as equal.
fn sync_statements(table: &str, columns: &[(String, i64)]) -> [String; 2] {
    let quoted = |column: &str| format!("\"{column}\"");
    let names: Vec<String> = columns.iter().map(|(name, _)| quoted(name)).collect();
    let list = names.join(", ");
    let matching = |left: &str, right: &str, only_keys: bool| {
        (columns.iter())
            .filter(|(_, pk)| !only_keys || *pk > 0)
            .map(|(name, _)| {
                let name = quoted(name);
                format!("{left}.{name} IS {right}.{name}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    [
        format!(
            "DELETE FROM main.{table} AS live WHERE NOT EXISTS \
             (SELECT 1 FROM rebuilt.{table} AS new WHERE {})",
            matching("new", "live", false)
        ),
        format!(
            "INSERT INTO main.{table} ({list}) SELECT {list} FROM rebuilt.{table} AS new \
             WHERE NOT EXISTS (SELECT 1 FROM main.{table} AS live WHERE {})",
            matching("live", "new", true)
        ),
    ]
}

/// The file a SQLite pool's main database lives in; empty for an in-memory one.
async fn main_file(pool: &sqlx::SqlitePool) -> Result<String, ProjectionError> {
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(pool)
            .await?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend_tests;
    use crate::test_support::{TestBackend, TestStore};

    backend_tests!(every_table_of_the_store_is_either_swapped_or_kept);

    /// A table added by a later migration must be listed as projected or as kept, or a swap
    /// would silently leave it behind.
    async fn every_table_of_the_store_is_either_swapped_or_kept(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let query = match backend {
            TestBackend::Sqlite => {
                "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master \
                 WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name)"
            }
            TestBackend::MySql => {
                "SELECT GROUP_CONCAT(table_name ORDER BY table_name) \
                 FROM information_schema.tables WHERE table_schema = DATABASE()"
            }
        };
        let tables = test.text(query).await.unwrap_or_default();
        let mut tables: Vec<&str> = tables.split(',').collect();
        tables.sort_unstable();

        let mut listed: Vec<&str> = projected_tables().chain(KEPT_TABLES).collect();
        listed.sort_unstable();
        assert_eq!(tables, listed);
    }
}
