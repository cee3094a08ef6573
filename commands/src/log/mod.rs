//! The event log port: the one seam between Tally's roles and its durable log.
//!
//! The port mirrors Kafka's model so that an embedded adapter and a Kafka adapter can serve the
//! same callers unchanged: named topics with a fixed number of partitions, a record key that
//! decides the partition, per-partition offsets, consumer groups that own partitions, and one
//! atomic step that appends produced records and commits consumed offsets together (Kafka's
//! transactional read-process-write).
//!
//! What the port leaves to callers: the meaning of payloads (they are opaque bytes here) and
//! where projections keep their own offsets (in their read store, not in the log).

pub mod kafka;
pub mod murmur2;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;

/// The most records one `append` or one consumer `commit` may carry. Either is written as one
/// transaction, whose records every adapter holds in memory until the log has them all.
pub const RECORDS_PER_REQUEST_MAX: usize = 100_000;

/// Refuses requests carrying more records than one transaction may hold.
pub(crate) fn check_request_size(records: &[NewRecord]) -> Result<(), LogError> {
    if records.len() <= RECORDS_PER_REQUEST_MAX {
        return Ok(());
    }
    Err(LogError::Invalid(format!(
        "{} records in one request exceed the limit of {RECORDS_PER_REQUEST_MAX}",
        records.len()
    )))
}

/// The topics Tally uses. Every topic has the same partition count, so an account lives in
/// the same partition number in each of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Commands from the API and the processor, keyed by account id.
    Commands,
    /// Account and transaction events decided by the deciders, keyed by account id.
    Events,
    /// Notification events emitted by the processor and the API, keyed by account id.
    Notifications,
    /// Notifications the notifier gave up on after its last attempt, keyed like the
    /// notification (the account id, or the notification id when there is no account).
    DeadLetters,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Topic::Commands,
        Topic::Events,
        Topic::Notifications,
        Topic::DeadLetters,
    ];

    /// The topic's name on the wire and in storage.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Commands => "tally.commands",
            Topic::Events => "tally.events",
            Topic::Notifications => "tally.notifications",
            Topic::DeadLetters => "tally.notifications.dead",
        }
    }
}

/// A partition of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Topic,
    pub partition: u32,
}

/// A record to append. The key decides the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub topic: Topic,
    pub key: String,
    pub payload: Vec<u8>,
}

/// A record as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub payload: Vec<u8>,
    /// When the log stored the record, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Record {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic,
            partition: self.partition,
        }
    }
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
}

/// The next offset a consumer group will read from a partition: one past the last record
/// it consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumedOffset {
    pub partition: TopicPartition,
    pub next_offset: u64,
}

/// What a poll returns.
#[derive(Debug)]
pub enum Polled {
    /// The member now owns these partitions and must (re)build any state it keeps for them
    /// before handling records from them. Reading starts at the group's committed offsets.
    Assigned(Vec<TopicPartition>),
    /// The member no longer owns these partitions and must drop the state it kept for them.
    Revoked(Vec<TopicPartition>),
    /// Records in offset order within each partition; empty when the wait ran out.
    Records(Vec<Record>),
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another member took over a partition this member wrote for; it may write nothing more.
    #[error("this member was fenced: another member owns its partitions")]
    Fenced,
    /// The data directory is held by another process.
    #[error("the log is locked by another process: {0}")]
    Locked(String),
    /// The log refused an argument, such as a topic partition out of range.
    #[error("invalid request to the log: {0}")]
    Invalid(String),
    /// The storage under the log failed; the call may be retried.
    #[error("log storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The durable, partitioned log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// How many partitions every topic has. Fixed for the life of the log.
    fn partition_count(&self) -> u32;

    /// Which partition a key belongs to. Equal keys always map to the same partition.
    fn partition_for(&self, key: &str) -> u32;

    /// Appends records durably, in order, and returns where each landed (same order as input).
    /// Concurrent callers are batched together into one write.
    async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Position>, LogError>;

    /// Reads up to `max_records` from one partition starting at `from_offset`, without any
    /// consumer group. Used to rebuild state, replay, and audit.
    async fn read(
        &self,
        partition: TopicPartition,
        from_offset: u64,
        max_records: usize,
    ) -> Result<Vec<Record>, LogError>;

    /// One past the last offset in a partition (0 when it is empty).
    async fn end_offset(&self, partition: TopicPartition) -> Result<u64, LogError>;

    /// Joins a consumer group reading `topics`. The group's committed offsets decide where
    /// reading starts; a group with none starts at the beginning.
    async fn consumer(&self, group: &str, topics: &[Topic]) -> Result<Box<dyn Consumer>, LogError>;
}

/// A member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `wait` for records from the owned partitions, or reports an assignment
    /// change. The first poll of a new member always returns `Polled::Assigned`.
    async fn poll(&mut self, max_records: usize, wait: Duration) -> Result<Polled, LogError>;

    /// Moves this member's read position in an owned partition, for callers that keep their
    /// own offsets (projections store theirs with their rows).
    async fn seek(&mut self, partition: TopicPartition, next_offset: u64) -> Result<(), LogError>;

    /// The atomic read-process-write step: appends `produced` and commits `consumed` for this
    /// group, all or nothing. Fails with `LogError::Fenced` when the member no longer owns
    /// a partition it commits for.
    async fn commit(
        &mut self,
        consumed: Vec<ConsumedOffset>,
        produced: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError>;
}
