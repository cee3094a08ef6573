//! The one error type of the read side, for the projector and the queries alike.
//!
//! Variants fall in two kinds. Transient storage failures (a busy database, a pool timeout, the
//! log's storage) may succeed when retried, and the projector retries them. Everything else
//! says the read model, the log or the settings are wrong, and retrying cannot help: the
//! projector stops and someone must act.

use rust_decimal::Decimal;
use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::sqlite::SqliteError;
use tally_commands::log::LogError;
use tally_domain::{AccountId, TransactionId};

/// SQLite's primary result codes for "the database is busy" and "a table is locked"; the
/// extended codes keep them in their low byte.
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

/// MySQL's error numbers for "lock wait timeout exceeded" and "deadlock found": InnoDB rolled
/// back the statement or the transaction, and the same work may succeed when tried again.
const MYSQL_LOCK_WAIT_TIMEOUT: u16 = 1205;
const MYSQL_DEADLOCK: u16 = 1213;

/// MySQL's "table definition has changed, please retry transaction": a table was put in place
/// (by a swap of the projected tables) after the transaction's snapshot was taken.
const MYSQL_TABLE_DEFINITION_CHANGED: u16 = 1412;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The read store failed a statement or could not be reached.
    #[error("read store query failed")]
    Database(#[from] sqlx::Error),

    /// The read store's schema could not be brought up to date.
    #[error("read store migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The event log failed a poll or a read.
    #[error("event log failed")]
    Log(#[from] LogError),

    /// The database URL names no database the read store runs on, or does not parse. The
    /// reason never repeats the URL, which may hold a password.
    #[error("invalid database url: {0}")]
    InvalidDatabaseUrl(String),

    /// The projector was started with settings outside their bounds.
    #[error("invalid projector settings: {0}")]
    InvalidSettings(String),

    /// A column holds a value the read side never writes: the store was changed by hand or is
    /// damaged.
    #[error("read store holds an unreadable {column}: {value:?}")]
    UnreadableColumn { column: &'static str, value: String },

    /// Money in an event disagrees with the read model after applying it: the read model or
    /// the log is corrupt, and no later balance could be trusted.
    #[error(
        "{field} of account {account_id} at sequence {sequence} is {projected} in the read \
         model but {in_event} in the event"
    )]
    MoneyMismatch {
        account_id: AccountId,
        sequence: u64,
        field: &'static str,
        projected: Decimal,
        in_event: Decimal,
    },

    /// An event is not after the last one projected for its account: applying it would count
    /// it twice.
    #[error(
        "event {sequence} of account {account_id} is not after the last one projected ({head})"
    )]
    SequenceRepeated {
        account_id: AccountId,
        head: u64,
        sequence: u64,
    },

    /// An account event for an account the read model never saw opened.
    #[error("{event_type} at sequence {sequence} of account {account_id}, which was never opened")]
    AccountNotOpened {
        account_id: AccountId,
        sequence: u64,
        event_type: String,
    },

    /// A second AccountOpened for an account the read model already holds.
    #[error("account {account_id} opened again at sequence {sequence}")]
    AccountOpenedTwice {
        account_id: AccountId,
        sequence: u64,
    },

    /// A transaction ended that the read model never saw start.
    #[error("{event_type} for transaction {transaction_id}, which never started")]
    TransactionNotStarted {
        transaction_id: TransactionId,
        event_type: String,
    },

    /// A row of an analysis table would count fewer than no transactions, or hold an amount
    /// while counting none: the analysis tables disagree with `transactions`, which they sum.
    #[error("analysis row {row} would count {count} transactions totalling {amount}")]
    AnalysisMismatch {
        row: String,
        count: i64,
        amount: Decimal,
    },

    /// A batch starts before where the projection stopped: another projector writes to the
    /// same store, or the consumer repeated records.
    #[error(
        "{topic} partition {partition} is projected up to offset {stored}, but the batch \
         starts at {first}"
    )]
    OffsetsMoved {
        topic: &'static str,
        partition: u32,
        stored: u64,
        first: u64,
    },

    /// The projected tables were swapped for a rebuilt set since the projector read its
    /// offsets: the batch was not applied, and the projector must resume from the store.
    #[error("the projected tables were swapped (generation {expected}, now {found})")]
    TablesSwapped { expected: u64, found: u64 },

    /// `tally replay --swap` cannot put the rebuilt tables in place of the live ones.
    #[error("cannot swap the rebuilt tables in: {0}")]
    SwapRefused(String),
}

impl ProjectionError {
    /// Whether the same step may succeed when tried again.
    pub fn is_transient(&self) -> bool {
        match self {
            ProjectionError::Database(error) => is_transient_database_error(error),
            ProjectionError::Log(LogError::Storage(_)) => true,
            _ => false,
        }
    }
}

fn is_transient_database_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => is_lock_conflict(database.as_ref()),
        _ => false,
    }
}

/// Whether the database refused a statement only because another transaction held a lock.
fn is_lock_conflict(error: &dyn DatabaseError) -> bool {
    if let Some(mysql) = error.try_downcast_ref::<MySqlDatabaseError>() {
        return matches!(
            mysql.number(),
            MYSQL_LOCK_WAIT_TIMEOUT | MYSQL_DEADLOCK | MYSQL_TABLE_DEFINITION_CHANGED
        );
    }
    error
        .try_downcast_ref::<SqliteError>()
        .and_then(|sqlite| sqlite.code())
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}
