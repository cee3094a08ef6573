//! Tally's read side: the projector that materializes read tables from the event log, the
//! read store that holds them, and the queries the API answers from.
//!
//! What this crate owns: the read tables (`migrations/sqlite/0001_read_models.sql`, the
//! analysis tables of `0006_analysis.sql`, and their MySQL twins in `migrations/mysql/`) and
//! the only code that writes them, on SQLite or on
//! MySQL and MariaDB through one implementation of each query ([`Backend`]). It reads the log
//! and never writes to it, and it knows no HTTP: views are plain serializable rows, and the
//! API decides what to show.
//!
//! The projection is exactly-once: each batch of log records is applied in one database
//! transaction together with the offsets it reached, and the projector resumes from those
//! offsets, never from the log's consumer-group offsets. Every row can be rebuilt by replaying
//! the log into an empty store.
//!
//! It also owns the audit, which proves exactly that: [`compare`] sets the read tables of two
//! stores side by side, row by row, and [`verify`] checks the log's hash chains and every
//! account's money, then compares the read store with a replay of the log.

mod analysis;
mod backend;
mod batch;
pub mod compare;
mod error;
mod history;
mod money;
mod projector;
mod queries;
mod sql;
mod store;
pub mod swap;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
#[cfg(test)]
mod testing;
pub mod verify;
mod writes;

pub use backend::{Backend, Bind, Binds, Executes, Get, Gets};
pub use error::ProjectionError;
pub use history::{AppliedEvent, AsOf, PointInTimeBalance};
pub use money::{MONEY_COLUMN_DIGITS, MONEY_COLUMN_SCALE, Money};
pub use projector::{
    PROJECTION_NAME, Progress, ProjectorSettings, ReplayProgress, Replayed, lag, next_offset,
    replay, replay_until, run,
};
pub use queries::{
    ACCOUNT_EVENTS_PAGE_SIZE_MAX, AccountEventRow, AccountView, StoredOffset,
    TRANSACTIONS_PAGE_SIZE_MAX, TransactionCursor, TransactionFilter, TransactionView,
};
pub use sql::{Sql, Tuple};
pub use store::{ReadStore, Snapshot, StorePool};
