//! The seam between the read store's SQL and the database it runs on: SQLite or MySQL.
//!
//! Every query is written once, as a function generic over [`Backend`], and runs on either
//! database; [`crate::ReadStore`] picks the instance when it dispatches on its pool
//! ([`crate::with_pool!`]). The few statements that differ come from the backend's dialect:
//! how a transaction that writes begins, how a read locks the rows it reads, how an INSERT
//! becomes an upsert, and how many values one statement may bind.
//!
//! Why not sqlx's generic `bind` and `try_get`: they bound each value type, and Rust does not
//! imply bounds on foreign types from a trait (rust-lang/rust#20671), so every generic query
//! would repeat them in a `where` clause. Bounds on the backend's associated types are implied,
//! so they live here, once: [`Bind`] on its arguments, [`Get`] on its rows, [`Executes`] on its
//! connection. `DB: Backend` is then the only bound a query needs, and the values it binds and
//! reads are those listed in [`Binds`] and [`Gets`]. Why not `sqlx::Any`: it has no decimal
//! type, so MySQL's `DECIMAL` money would not decode, and it drops SQLite's connection
//! settings.

use sqlx::error::BoxDynError;
use sqlx::mysql::MySqlQueryResult;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{
    Arguments, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, MySql, Row, Sqlite,
    Type,
};

use crate::money::Money;

/// A database the read store runs on. Implemented for [`Sqlite`] and [`MySql`] only.
pub trait Backend:
    Database<Arguments: IntoArguments<Self> + Binds, Row: Gets, Connection: Executes<Self>>
    + sealed::Sealed
{
    /// The statement that opens a transaction which will write.
    const BEGIN_WRITE: &'static str;

    /// The statement that opens a transaction which only reads, and whose every read sees the
    /// store as it stood at one moment: what an audit compares against.
    const BEGIN_SNAPSHOT: &'static str;

    /// Appended to a SELECT whose rows the transaction must keep to itself until it commits.
    const FOR_UPDATE: &'static str;

    /// Appended to a SELECT whose rows no other transaction may change until this one ends,
    /// while other readers that take the same lock go on side by side.
    const FOR_SHARE: &'static str;

    /// The most values one statement may bind.
    const BOUND_VALUES_MAX: usize;

    /// The clause after `INSERT ... VALUES ...` that updates the row already holding the
    /// primary key `key` instead of failing; the assignments follow it.
    fn on_conflict_update(key: &str) -> String;

    /// In the assignments of [`Backend::on_conflict_update`], the value the INSERT proposed
    /// for `column`.
    fn inserted(column: &str) -> String;

    /// An SQL expression for the money column `column` in ten-thousandths, an exact integer:
    /// what amount filters compare, since SQLite's text money would compare as text and its
    /// arithmetic would round through floats.
    fn money_ten_thousandths(column: &str) -> String;

    /// The rows a statement matched. MySQL counts matched rather than changed rows because
    /// sqlx connects with `CLIENT_FOUND_ROWS`, as SQLite always does.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// SQLite takes its one write lock at `BEGIN IMMEDIATE`, so the rows a transaction reads
/// cannot change under it and no read needs a lock of its own.
impl Backend for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    /// A deferred transaction reads from one WAL snapshot, taken at its first read.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    /// `SQLITE_MAX_VARIABLE_NUMBER` of the bundled SQLite.
    const BOUND_VALUES_MAX: usize = 32_766;

    fn on_conflict_update(key: &str) -> String {
        format!("ON CONFLICT ({key}) DO UPDATE SET")
    }

    fn inserted(column: &str) -> String {
        format!("excluded.{column}")
    }

    /// The text is written at the currency's scale (at most four decimals): without its point
    /// it is a whole number of the scale's units, which an integer factor turns into
    /// ten-thousandths. Amounts stay far below 2^63 ten-thousandths.
    fn money_ten_thousandths(column: &str) -> String {
        format!(
            "(CAST(replace({column}, '.', '') AS INTEGER) * CASE instr({column}, '.') \
             WHEN 0 THEN 10000 ELSE CASE length({column}) - instr({column}, '.') \
             WHEN 1 THEN 1000 WHEN 2 THEN 100 WHEN 3 THEN 10 ELSE 1 END END)"
        )
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// InnoDB locks rows, not the database: a transaction that must not interleave with another
/// writer reads the rows it depends on `FOR UPDATE`. `ON DUPLICATE KEY UPDATE` fires on any
/// unique key, not only the primary key; every table the read store upserts has no other.
/// `VALUES(column)` is what MariaDB understands; MySQL 8 accepts it with a deprecation note.
impl Backend for MySql {
    const BEGIN_WRITE: &'static str = "START TRANSACTION";
    /// InnoDB takes the snapshot at once rather than at the first read; it holds for the whole
    /// transaction under REPEATABLE READ, which a read-only store sets on every connection.
    const BEGIN_SNAPSHOT: &'static str = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// MariaDB's spelling, which MySQL 8 also accepts.
    const FOR_SHARE: &'static str = " LOCK IN SHARE MODE";
    /// The protocol's 16-bit count of statement parameters.
    const BOUND_VALUES_MAX: usize = 65_535;

    fn on_conflict_update(_key: &str) -> String {
        "ON DUPLICATE KEY UPDATE".to_owned()
    }

    fn inserted(column: &str) -> String {
        format!("VALUES({column})")
    }

    /// `DECIMAL` arithmetic is exact.
    fn money_ten_thousandths(column: &str) -> String {
        format!("({column} * 10000)")
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Sqlite {}
    impl Sealed for sqlx::MySql {}
}

/// Arguments that accept a value of type `T`.
pub trait Bind<T> {
    fn bind_value(&mut self, value: T) -> Result<(), BoxDynError>;
}

impl<A: Arguments, T> Bind<T> for A
where
    T: for<'t> Encode<'t, A::Database> + Type<A::Database>,
{
    fn bind_value(&mut self, value: T) -> Result<(), BoxDynError> {
        self.add(value)
    }
}

/// A row that yields a value of type `T` from a named column.
pub trait Get<T> {
    /// Named `value`, not `get` or `column`, which [`Row`] already uses.
    fn value(&self, column: &str) -> Result<T, sqlx::Error>;
}

impl<R: Row, T> Get<T> for R
where
    T: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    fn value(&self, column: &str) -> Result<T, sqlx::Error> {
        self.try_get(column)
    }
}

/// The values every backend binds: text, integers, money, and their NULLs. Borrowed text is
/// `'static` (names and codes); other text is bound owned.
pub trait Binds:
    Bind<String>
    + Bind<&'static str>
    + Bind<i64>
    + Bind<Money>
    + Bind<Option<String>>
    + Bind<Option<&'static str>>
    + Bind<Option<i64>>
{
}

impl<A> Binds for A where
    A: Bind<String>
        + Bind<&'static str>
        + Bind<i64>
        + Bind<Money>
        + Bind<Option<String>>
        + Bind<Option<&'static str>>
        + Bind<Option<i64>>
{
}

/// The values every backend reads back: the same as [`Binds`], owned.
pub trait Gets:
    Get<String> + Get<i64> + Get<Money> + Get<Option<String>> + Get<Option<i64>>
{
}

impl<R> Gets for R where
    R: Get<String> + Get<i64> + Get<Money> + Get<Option<String>> + Get<Option<i64>>
{
}

/// A connection that runs statements: what `&mut` of it is, as an [`Executor`].
pub trait Executes<DB: Database> {
    fn executor(&mut self) -> impl Executor<'_, Database = DB>;
}

impl<DB: Database, C> Executes<DB> for C
where
    for<'c> &'c mut C: Executor<'c, Database = DB>,
{
    fn executor(&mut self) -> impl Executor<'_, Database = DB> {
        self
    }
}
