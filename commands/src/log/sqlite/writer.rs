//! The writer task: the only code that writes to the embedded log's database.
//!
//! Callers send requests through a bounded queue. The writer drains as many waiting appends and
//! consumer commits as fit in one batch, writes them in ONE transaction (one fsync for all of
//! them), then publishes the new end offsets, wakes waiting consumers and answers each caller.
//! Group joins are written in a transaction of their own. Because one task does every write in
//! arrival order, offsets are assigned from memory without races, and a commit's fencing check
//! cannot interleave with a join.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::shared::Shared;
use super::store::{self, from_sql, partition_from_sql, storage, to_sql};
use crate::log::murmur2::partition_for_key;
use crate::log::{ConsumedOffset, LogError, NewRecord, Position, Topic, TopicPartition};

/// Where the writer sends a caller its answer.
pub(super) type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// Work for the writer task.
pub(super) enum Request {
    /// Appends records and, for a consumer commit, commits the group's offsets with them.
    Write(Write),
    /// Makes a new member of a group, fencing the previous one.
    Join(Join),
}

/// Records to append, with the offsets of a consumer commit when there is one.
pub(super) struct Write {
    pub(super) records: Vec<NewRecord>,
    pub(super) offsets: Option<GroupOffsets>,
    pub(super) reply: Reply<Vec<Position>>,
}

/// Offsets a consumer group member commits; refused when its generation is not current.
pub(super) struct GroupOffsets {
    pub(super) group: String,
    pub(super) generation: u64,
    pub(super) consumed: Vec<ConsumedOffset>,
}

/// A request to join a group reading `topics`.
pub(super) struct Join {
    pub(super) group: String,
    pub(super) topics: Vec<Topic>,
    pub(super) reply: Reply<Joined>,
}

/// A new member's generation and where its group left off in each of its partitions.
pub(super) struct Joined {
    pub(super) generation: u64,
    pub(super) committed: HashMap<TopicPartition, u64>,
}

/// The error callers get when the writer task is gone.
pub(super) fn stopped() -> LogError {
    storage("the event log's writer task has stopped")
}

pub(super) struct Writer {
    conn: SqliteConnection,
    queue: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    partition_count: NonZeroU32,
    /// End offsets as of the last committed transaction; `None` after a failed one, until they
    /// are reloaded from the database.
    ends: Option<HashMap<TopicPartition, u64>>,
    /// A request taken from the queue that did not fit in the previous batch.
    held: Option<Request>,
}

/// What one batch changes, before it commits.
struct Staged<'a> {
    committed_ends: &'a HashMap<TopicPartition, u64>,
    written_ends: HashMap<TopicPartition, u64>,
    partition_count: NonZeroU32,
    timestamp_ms: i64,
}

impl Staged<'_> {
    fn next_offset(&self, partition: TopicPartition) -> u64 {
        let staged = self.written_ends.get(&partition);
        staged
            .or_else(|| self.committed_ends.get(&partition))
            .copied()
            .unwrap_or(0)
    }
}

/// Tells every caller of a failed batch that their request failed, with the shared cause.
#[derive(Debug)]
struct BatchFailed(Arc<LogError>);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the write transaction holding this request failed")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl Write {
    /// How much of a batch this request takes: its records, and at least one slot.
    fn size(&self) -> usize {
        self.records.len().max(1)
    }
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        queue: mpsc::Receiver<Request>,
        shared: Arc<Shared>,
        partition_count: NonZeroU32,
        ends: HashMap<TopicPartition, u64>,
    ) -> Self {
        Self {
            conn,
            queue,
            shared,
            partition_count,
            ends: Some(ends),
            held: None,
        }
    }

    /// Serves requests until the queue closes, which happens once the log and every consumer
    /// made from it are dropped. Then the write connection closes.
    pub(super) async fn run(mut self, batch_size_max: usize) {
        while let Some(request) = self.next_request().await {
            match request {
                Request::Join(join) => self.join(join).await,
                Request::Write(first) => {
                    let batch = self.collect(first, batch_size_max);
                    self.write(batch).await;
                }
            }
        }
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "event log write connection did not close cleanly");
        }
        tracing::debug!("event log writer stopped");
    }

    async fn next_request(&mut self) -> Option<Request> {
        match self.held.take() {
            Some(request) => Some(request),
            None => self.queue.recv().await,
        }
    }

    /// Takes waiting writes into the batch while they fit; a join or a write that does not fit
    /// is held for the next round.
    fn collect(&mut self, first: Write, batch_size_max: usize) -> Vec<Write> {
        let mut size = first.size();
        let mut batch = vec![first];
        while size < batch_size_max {
            match self.queue.try_recv() {
                Ok(Request::Write(write)) if size + write.size() <= batch_size_max => {
                    size += write.size();
                    batch.push(write);
                }
                Ok(other) => {
                    self.held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Writes a batch in one transaction and answers its callers.
    async fn write(&mut self, batch: Vec<Write>) {
        // A caller that gave up waiting never learns the outcome, so its request is dropped.
        let batch: Vec<Write> = batch
            .into_iter()
            .filter(|write| !write.reply.is_closed())
            .collect();
        if batch.is_empty() {
            return;
        }

        match self.write_batch(&batch).await {
            Ok(outcomes) => {
                for (write, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = write.reply.send(outcome);
                }
            }
            Err(error) => {
                tracing::error!(%error, requests = batch.len(), "event log write failed");
                let error = Arc::new(error);
                for write in batch {
                    let failed = BatchFailed(Arc::clone(&error));
                    let _ = write.reply.send(Err(LogError::Storage(Box::new(failed))));
                }
            }
        }
    }

    /// Runs the batch's transaction and publishes what it committed. Each request's outcome
    /// is its own (a fenced commit fails alone); an `Err` means nothing was written.
    async fn write_batch(
        &mut self,
        batch: &[Write],
    ) -> Result<Vec<Result<Vec<Position>, LogError>>, LogError> {
        // Taken out so that a failure leaves `None` behind and forces a reload.
        let mut ends = match self.ends.take() {
            Some(ends) => ends,
            None => store::load_ends(&mut self.conn, self.partition_count).await?,
        };

        let mut staged = Staged {
            committed_ends: &ends,
            written_ends: HashMap::new(),
            partition_count: self.partition_count,
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        };
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(storage)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            outcomes.push(apply_write(&mut tx, &mut staged, write).await?);
        }
        save_ends(&mut tx, &staged.written_ends).await?;
        tx.commit().await.map_err(storage)?;

        let written = staged.written_ends;
        self.shared.publish_ends(&written);
        ends.extend(written);
        self.ends = Some(ends);
        self.shared.signal_change();
        tracing::debug!(requests = batch.len(), "event log batch committed");
        Ok(outcomes)
    }

    /// Moves a group to its next generation and answers with where the group left off.
    async fn join(&mut self, join: Join) {
        let result = self.join_group(&join.group, &join.topics).await;
        match &result {
            Ok(joined) => self.publish_join(&join.group, joined.generation),
            Err(error) => tracing::error!(%error, group = %join.group, "joining a group failed"),
        }
        let _ = join.reply.send(result);
    }

    /// Makes a join visible to members: the fenced one fails its next poll or commit, and is
    /// woken if it is waiting in a poll.
    fn publish_join(&self, group: &str, generation: u64) {
        self.shared.publish_generation(group, generation);
        self.shared.signal_change();
        tracing::info!(group, generation, "member joined");
    }

    async fn join_group(&mut self, group: &str, topics: &[Topic]) -> Result<Joined, LogError> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(storage)?;
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO consumer_groups (group_name, generation) VALUES (?, 1) \
             ON CONFLICT (group_name) DO UPDATE SET generation = generation + 1 \
             RETURNING generation",
        )
        .bind(group)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage)?;
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT topic, partition_no, next_offset FROM consumer_offsets WHERE group_name = ?",
        )
        .bind(group)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;

        let mut committed = HashMap::new();
        for (topic, partition, next_offset) in rows {
            let partition = partition_from_sql(&topic, partition, self.partition_count)?;
            if topics.contains(&partition.topic) {
                committed.insert(partition, from_sql(next_offset)?);
            }
        }
        Ok(Joined {
            generation: from_sql(generation)?,
            committed,
        })
    }
}

/// Applies one request inside the batch's transaction. The inner result is the request's own
/// outcome; the outer one fails the whole batch.
async fn apply_write(
    conn: &mut SqliteConnection,
    staged: &mut Staged<'_>,
    write: &Write,
) -> Result<Result<Vec<Position>, LogError>, LogError> {
    if let Some(offsets) = &write.offsets {
        if !is_current(conn, &offsets.group, offsets.generation).await? {
            return Ok(Err(LogError::Fenced));
        }
        save_offsets(conn, offsets).await?;
    }

    let mut positions = Vec::with_capacity(write.records.len());
    for record in &write.records {
        positions.push(insert_record(conn, staged, record).await?);
    }
    Ok(Ok(positions))
}

/// Whether `generation` is still the group's current one.
async fn is_current(
    conn: &mut SqliteConnection,
    group: &str,
    generation: u64,
) -> Result<bool, LogError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT generation FROM consumer_groups WHERE group_name = ?")
            .bind(group)
            .fetch_optional(conn)
            .await
            .map_err(storage)?;
    Ok(current == Some(to_sql(generation)?))
}

async fn save_offsets(conn: &mut SqliteConnection, offsets: &GroupOffsets) -> Result<(), LogError> {
    for consumed in &offsets.consumed {
        sqlx::query(
            "INSERT INTO consumer_offsets (group_name, topic, partition_no, next_offset) \
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (group_name, topic, partition_no) \
             DO UPDATE SET next_offset = excluded.next_offset",
        )
        .bind(&offsets.group)
        .bind(consumed.partition.topic.name())
        .bind(consumed.partition.partition)
        .bind(to_sql(consumed.next_offset)?)
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    }
    Ok(())
}

/// Inserts a record at the next offset of its key's partition.
async fn insert_record(
    conn: &mut SqliteConnection,
    staged: &mut Staged<'_>,
    record: &NewRecord,
) -> Result<Position, LogError> {
    let partition = partition_for_key(record.key.as_bytes(), staged.partition_count);
    let topic_partition = TopicPartition {
        topic: record.topic,
        partition,
    };
    let offset = staged.next_offset(topic_partition);

    sqlx::query(
        "INSERT INTO log_records \
         (topic, partition_no, record_offset, record_key, payload, timestamp_ms) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(record.topic.name())
    .bind(partition)
    .bind(to_sql(offset)?)
    .bind(&record.key)
    .bind(&record.payload)
    .bind(staged.timestamp_ms)
    .execute(conn)
    .await
    .map_err(storage)?;

    staged.written_ends.insert(topic_partition, offset + 1);
    Ok(Position {
        topic: record.topic,
        partition,
        offset,
    })
}

/// Stores the new end offsets of the partitions the batch wrote to.
async fn save_ends(
    conn: &mut SqliteConnection,
    written_ends: &HashMap<TopicPartition, u64>,
) -> Result<(), LogError> {
    for (partition, end) in written_ends {
        sqlx::query(
            "INSERT INTO log_partitions (topic, partition_no, next_offset) VALUES (?, ?, ?) \
             ON CONFLICT (topic, partition_no) DO UPDATE SET next_offset = excluded.next_offset",
        )
        .bind(partition.topic.name())
        .bind(partition.partition)
        .bind(to_sql(*end)?)
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    }
    Ok(())
}
