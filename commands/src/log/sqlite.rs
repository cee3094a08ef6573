//! The embedded adapter of the event log: one SQLite database in a data directory, serving a
//! single Tally process.
//!
//! What it owns: the data directory (`log.db` and its WAL files, plus `log.lock`, held with an
//! exclusive lock for the life of the log so a second process cannot open it), the schema
//! (migrations in `migrations/log-sqlite`), offsets, consumer group generations and committed
//! offsets.
//!
//! How the work is split:
//! - one writer task owns the only write connection and group-commits appends, consumer
//!   commits and group joins in arrival order (`writer`);
//! - reads go through a pool of read-only connections, which WAL lets run beside the writer;
//! - consumers wait on an in-process signal the writer raises after every transaction, so a
//!   poll returns as soon as records land (`consumer`).
//!
//! Partitioning is Kafka's ([`super::murmur2`]), so the Kafka adapter can take over the same
//! keys without moving accounts between partitions. An embedded consumer group has one live
//! member at a time that owns every partition of its topics; a new member fences the old one.

mod consumer;
mod setup;
mod shared;
mod store;
mod writer;

use std::fs::File;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

pub use consumer::{GROUP_NAME_BYTES_MAX, POLL_WAIT_MAX, SqliteConsumer};

use super::murmur2::partition_for_key;
use super::{Consumer, EventLog, LogError, NewRecord, Position, Record, Topic, TopicPartition};
use shared::Shared;
use writer::{Request, Write, Writer};

/// Records per write transaction unless the settings say otherwise. A transaction of a thousand
/// small records commits in a few milliseconds, so one fsync is shared widely while no caller
/// waits long behind others.
pub const APPEND_BATCH_SIZE_MAX_DEFAULT: usize = 1_000;

/// The most partitions a topic may have. Every partition is tracked in memory and owned by a
/// single embedded member; beyond this there is no parallelism left to gain on one node.
pub const PARTITION_COUNT_MAX: u32 = 1_024;

/// The most records one `read` or `poll` returns, whatever the caller asks, so a single call
/// cannot load an unbounded part of the log into memory.
pub const RECORDS_PER_READ_MAX: usize = 10_000;

/// The most requests waiting for the writer. Callers beyond it wait to enqueue, which pushes
/// back on producers instead of growing memory without bound.
const WRITE_QUEUE_REQUESTS_MAX: usize = 4_096;

/// Settings of the embedded log.
#[derive(Clone, Debug)]
pub struct SqliteLogSettings {
    /// Directory holding `log.db` and `log.lock`; created when missing.
    pub data_dir: PathBuf,
    /// Partitions per topic; fixed when the log is created.
    pub partition_count: u32,
    /// The most records the writer puts in one transaction (a single larger request is still
    /// written whole, alone).
    pub append_batch_size_max: usize,
    /// `PRAGMA synchronous=FULL` when true (durable across power loss), `NORMAL` when false
    /// (durable across process crashes only). The journal is always WAL.
    pub synchronous_full: bool,
}

impl SqliteLogSettings {
    /// Settings with the default batch size and full synchronous writes.
    pub fn new(data_dir: impl Into<PathBuf>, partition_count: u32) -> Self {
        Self {
            data_dir: data_dir.into(),
            partition_count,
            append_batch_size_max: APPEND_BATCH_SIZE_MAX_DEFAULT,
            synchronous_full: true,
        }
    }
}

/// The embedded, SQLite-backed event log. Cheap to share: clone the `Arc`. The data directory
/// stays locked until the log and every consumer made from it are dropped.
pub struct SqliteLog {
    inner: Arc<Inner>,
}

/// What the log and its consumers share. The data directory stays locked until the log and
/// every consumer made from it are dropped.
struct Inner {
    partition_count: NonZeroU32,
    read_pool: SqlitePool,
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    _data_dir_lock: File,
}

impl SqliteLog {
    /// Opens (or creates) the log in `settings.data_dir`, applies pending migrations and
    /// starts the writer task. Must be called inside a Tokio runtime.
    ///
    /// Fails with `LogError::Locked` when another `SqliteLog` holds the directory and with
    /// `LogError::Invalid` when the settings are out of range or the partition count differs
    /// from the one the log was created with.
    pub async fn open(settings: SqliteLogSettings) -> Result<Arc<SqliteLog>, LogError> {
        let partition_count = setup::validate(&settings)?;
        let data_dir_lock = setup::lock_data_dir(&settings.data_dir)?;
        let db_path = settings.data_dir.join(setup::DB_FILE_NAME);

        let mut write_conn = setup::connect_writer(&db_path, settings.synchronous_full).await?;
        setup::migrate(&mut write_conn).await?;
        setup::check_partition_count(&mut write_conn, partition_count).await?;
        let ends = store::load_ends(&mut write_conn, partition_count).await?;
        let read_pool = setup::connect_readers(&db_path).await?;

        let shared = Arc::new(Shared::new(ends.clone()));
        let (requests, queue) = mpsc::channel(WRITE_QUEUE_REQUESTS_MAX);
        let writer = Writer::new(
            write_conn,
            queue,
            Arc::clone(&shared),
            partition_count,
            ends,
        );
        tokio::spawn(writer.run(settings.append_batch_size_max));

        tracing::info!(
            data_dir = %settings.data_dir.display(),
            partition_count = partition_count.get(),
            "event log opened"
        );
        let inner = Inner {
            partition_count,
            read_pool,
            requests,
            shared,
            _data_dir_lock: data_dir_lock,
        };
        Ok(Arc::new(SqliteLog {
            inner: Arc::new(inner),
        }))
    }
}

/// Refuses a partition number outside the range of a log of `partition_count` partitions.
fn check_partition(partition: TopicPartition, partition_count: NonZeroU32) -> Result<(), LogError> {
    if partition.partition < partition_count.get() {
        return Ok(());
    }
    Err(LogError::Invalid(format!(
        "partition {} of {} is out of range: the log has {} partitions",
        partition.partition,
        partition.topic.name(),
        partition_count
    )))
}

impl Inner {
    /// Hands a request to the writer task and waits for its answer.
    async fn call<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Request,
    ) -> Result<T, LogError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| writer::stopped())?;
        answer.await.map_err(|_| writer::stopped())?
    }
}

#[async_trait]
impl EventLog for SqliteLog {
    fn partition_count(&self) -> u32 {
        self.inner.partition_count.get()
    }

    fn partition_for(&self, key: &str) -> u32 {
        partition_for_key(key.as_bytes(), self.inner.partition_count)
    }

    async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Position>, LogError> {
        super::check_request_size(&records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .call(|reply| {
                Request::Write(Write {
                    records,
                    offsets: None,
                    reply,
                })
            })
            .await
    }

    async fn read(
        &self,
        partition: TopicPartition,
        from_offset: u64,
        max_records: usize,
    ) -> Result<Vec<Record>, LogError> {
        check_partition(partition, self.inner.partition_count)?;
        let limit = max_records.min(RECORDS_PER_READ_MAX);
        store::read_records(&self.inner.read_pool, partition, from_offset, limit).await
    }

    async fn end_offset(&self, partition: TopicPartition) -> Result<u64, LogError> {
        check_partition(partition, self.inner.partition_count)?;
        store::read_end_offset(&self.inner.read_pool, partition).await
    }

    async fn consumer(&self, group: &str, topics: &[Topic]) -> Result<Box<dyn Consumer>, LogError> {
        let consumer = SqliteConsumer::join(Arc::clone(&self.inner), group, topics).await?;
        Ok(Box::new(consumer))
    }
}

/// The embedded log opened only to read it, beside the process that holds it: what an audit or
/// a replay uses while Tally runs. It takes no lock on the data directory, runs no migration
/// and never writes; WAL lets its reads run beside the writer, and every read sees only
/// committed records. Appending and joining a consumer group are refused.
pub struct SqliteLogReader {
    partition_count: NonZeroU32,
    read_pool: SqlitePool,
}

impl SqliteLogReader {
    /// Opens the log in `data_dir`, which must exist: its partition count is the one the log
    /// was created with.
    pub async fn open(data_dir: &Path) -> Result<Arc<SqliteLogReader>, LogError> {
        let db_path = data_dir.join(setup::DB_FILE_NAME);
        if !db_path.is_file() {
            return Err(LogError::Invalid(format!(
                "no event log at {}",
                db_path.display()
            )));
        }
        let read_pool = setup::connect_readers(&db_path).await?;
        let count: i64 = sqlx::query_scalar("SELECT partition_count FROM log_meta WHERE id = 1")
            .fetch_one(&read_pool)
            .await
            .map_err(store::storage)?;
        let partition_count = u32::try_from(count)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| store::storage(format!("partition count {count} in the database")))?;
        tracing::info!(
            data_dir = %data_dir.display(),
            partition_count = partition_count.get(),
            "event log opened to read only"
        );
        Ok(Arc::new(SqliteLogReader {
            partition_count,
            read_pool,
        }))
    }
}

#[async_trait]
impl EventLog for SqliteLogReader {
    fn partition_count(&self) -> u32 {
        self.partition_count.get()
    }

    fn partition_for(&self, key: &str) -> u32 {
        partition_for_key(key.as_bytes(), self.partition_count)
    }

    async fn append(&self, _records: Vec<NewRecord>) -> Result<Vec<Position>, LogError> {
        Err(read_only())
    }

    async fn read(
        &self,
        partition: TopicPartition,
        from_offset: u64,
        max_records: usize,
    ) -> Result<Vec<Record>, LogError> {
        check_partition(partition, self.partition_count)?;
        let limit = max_records.min(RECORDS_PER_READ_MAX);
        store::read_records(&self.read_pool, partition, from_offset, limit).await
    }

    async fn end_offset(&self, partition: TopicPartition) -> Result<u64, LogError> {
        check_partition(partition, self.partition_count)?;
        store::read_end_offset(&self.read_pool, partition).await
    }

    async fn consumer(
        &self,
        _group: &str,
        _topics: &[Topic],
    ) -> Result<Box<dyn Consumer>, LogError> {
        Err(read_only())
    }
}

fn read_only() -> LogError {
    LogError::Invalid("this log was opened to read only".into())
}
