//! The Kafka adapter of the event log: Tally's topics on an Apache Kafka cluster, through
//! librdkafka (the `rdkafka` crate).
//!
//! What it owns: the three topics under a prefix (created at start-up, see `topics`), the
//! configuration of every client it creates (`config`), one idempotent producer for `append`
//! (`append`: bounded in time, and replaced when it stops acknowledging),
//! a pool of read_committed readers for `read` and `end_offset` (`reader`), and for each
//! group member a consumer and a transactional producer of its own (`member`, `transaction`).
//!
//! How it maps the port:
//! - `partition_for` is the embedded adapter's murmur2, and every record is produced to that
//!   partition explicitly; producers also use librdkafka's `murmur2_random`, so any other
//!   client keyed the same way agrees.
//! - A member commits by a Kafka transaction that produces the records and adds the consumed
//!   offsets with the member's group metadata (KIP-447): a member the group moved on from is
//!   fenced by the group coordinator, and what it produced stays invisible.
//! - Readers and members are read_committed: records of open or aborted transactions are never
//!   returned.
//!
//! Where it differs from the embedded adapter, within the port's contract:
//! - Offsets increase but have gaps: transaction markers and aborted records take offsets.
//!   `end_offset` is the last stable offset (see `reader`), which may lie past the last record.
//! - A commit's records become visible to readers a few milliseconds after it returns, once
//!   the transaction coordinator has written its markers.
//! - `append` is not atomic across records: after a failure, some may have landed (each at most
//!   once). A group has many members, each owning some partitions; `consumer()` returns once
//!   the group gave the new member its first assignment, which waits for a rebalance.
//!
//! Encryption and authentication come from librdkafka's own properties, passed through
//! `KafkaLogSettings::properties`: `security.protocol=SSL` or `SASL_SSL` with `ssl.*` (OpenSSL
//! is built into the binary by rdkafka's `ssl-vendored` feature), and SASL PLAIN, SCRAM or
//! OAUTHBEARER with `sasl.*`. GSSAPI (Kerberos) is not built in: it needs Cyrus SASL.

mod append;
mod config;
mod context;
mod errors;
mod member;
mod produce;
mod reader;
mod rebalance;
mod settings;
mod topics;
mod transaction;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::producer::{FutureProducer, Producer as _};

use append::AppendProducer;

pub use member::KafkaConsumer;
pub use settings::{
    KafkaLogSettings, KafkaTimeouts, PINNED_PROPERTIES, READERS_MAX_DEFAULT, TOPIC_PREFIX_CHARS_MAX,
};

use super::murmur2::partition_for_key;
use super::{Consumer, EventLog, LogError, NewRecord, Position, Record, Topic, TopicPartition};
use context::LogContext;
use errors::from_kafka;
use reader::{ReadTimeouts, ReaderPool};
use topics::TopicNames;

/// The most partitions a topic may have, as in the embedded adapter, so either adapter can
/// take over the other's keys.
pub const PARTITION_COUNT_MAX: u32 = 1_024;

/// The most records one `read` or `poll` returns, whatever the caller asks.
pub const RECORDS_PER_READ_MAX: usize = 10_000;

/// The longest group name, in bytes, as in the embedded adapter.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// The longest a poll waits; longer waits are cut to this.
pub const POLL_WAIT_MAX: Duration = Duration::from_secs(3_600);

/// The Kafka event log. Cheap to share: clone the `Arc`.
pub struct KafkaLog {
    shared: Arc<Shared>,
}

/// What the log and its members share. Members keep it alive.
struct Shared {
    settings: KafkaLogSettings,
    partition_count: NonZeroU32,
    names: TopicNames,
    producer: AppendProducer,
    readers: Arc<ReaderPool>,
}

impl KafkaLog {
    /// Checks the settings, creates the topics that are missing and checks those that exist,
    /// then starts the append producer. Must be called inside a Tokio runtime.
    ///
    /// Fails with `LogError::Invalid` when a setting is out of range or an existing topic has
    /// another partition count or a retention that can drop records, and with
    /// `LogError::Storage` when the cluster cannot be reached (after retries).
    pub async fn open(settings: KafkaLogSettings) -> Result<Arc<KafkaLog>, LogError> {
        let partition_count = settings.validate()?;
        let names = TopicNames::new(&settings.topic_prefix);
        topics::ensure(&settings, &names).await?;

        let producer = AppendProducer::new(config::append_producer(&settings))?;
        let request_timeout = Duration::from_millis(settings.timeouts.request_timeout_ms);
        warm_up(&producer.current().producer, &names, request_timeout).await?;
        let read_timeouts = ReadTimeouts {
            request: Duration::from_millis(settings.timeouts.request_timeout_ms),
            read: Duration::from_millis(settings.timeouts.read_timeout_ms),
        };
        let readers = ReaderPool::new(
            config::reader(&settings),
            names.clone(),
            read_timeouts,
            settings.readers_max,
        )?;

        tracing::info!(
            brokers = %settings.brokers,
            topic_prefix = %settings.topic_prefix,
            partition_count = partition_count.get(),
            "kafka event log opened"
        );
        let shared = Shared {
            settings,
            partition_count,
            names,
            producer,
            readers: Arc::new(readers),
        };
        Ok(Arc::new(KafkaLog {
            shared: Arc::new(shared),
        }))
    }

    /// The full name of `topic` on the cluster, prefix included.
    pub fn topic_name(&self, topic: Topic) -> &str {
        self.shared.names.name(topic)
    }

    /// The consumer group id `group` has on the cluster, prefix included.
    pub fn group_id(&self, group: &str) -> String {
        self.shared.settings.group_id(group)
    }

    fn check_partition(&self, partition: TopicPartition) -> Result<(), LogError> {
        if partition.partition < self.shared.partition_count.get() {
            return Ok(());
        }
        Err(LogError::Invalid(format!(
            "partition {} of {} is out of range: the log has {} partitions",
            partition.partition,
            partition.topic.name(),
            self.shared.partition_count
        )))
    }
}

/// Loads the topics' metadata into the append producer, so the first append does not wait
/// for librdkafka to discover their partitions.
async fn warm_up(
    producer: &FutureProducer<LogContext>,
    names: &TopicNames,
    timeout: Duration,
) -> Result<(), LogError> {
    let (producer, names) = (producer.clone(), names.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        for topic in Topic::ALL {
            producer
                .client()
                .fetch_metadata(Some(names.name(topic)), timeout)?;
        }
        Ok(())
    });
    loaded.await.map_err(errors::storage)?.map_err(from_kafka)
}

#[async_trait]
impl EventLog for KafkaLog {
    fn partition_count(&self) -> u32 {
        self.shared.partition_count.get()
    }

    fn partition_for(&self, key: &str) -> u32 {
        partition_for_key(key.as_bytes(), self.shared.partition_count)
    }

    async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Position>, LogError> {
        super::check_request_size(&records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let timeouts = &shared.settings.timeouts;
        let queue_wait = Duration::from_millis(timeouts.delivery_timeout_ms);
        let deadline =
            append::append_deadline(timeouts.delivery_timeout_ms, timeouts.request_timeout_ms);
        let generation = shared.producer.current();
        let sent = produce::send_all(
            &generation.producer,
            &shared.names,
            shared.partition_count,
            &records,
            queue_wait,
        );
        match tokio::time::timeout(deadline, sent).await {
            Ok(Ok(positions)) => Ok(positions),
            Ok(Err(error)) => {
                tracing::warn!(records = records.len(), %error, "append failed");
                Err(from_kafka(error))
            }
            Err(_elapsed) => {
                tracing::warn!(
                    records = records.len(),
                    waited_ms = deadline.as_millis(),
                    "append not acknowledged within the delivery timeout"
                );
                shared.producer.replace(generation.number)?;
                Err(errors::storage(
                    "the append was not acknowledged within the delivery timeout",
                ))
            }
        }
    }

    async fn read(
        &self,
        partition: TopicPartition,
        from_offset: u64,
        max_records: usize,
    ) -> Result<Vec<Record>, LogError> {
        self.check_partition(partition)?;
        let max_records = max_records.min(RECORDS_PER_READ_MAX);
        self.shared
            .readers
            .read(partition, from_offset, max_records)
            .await
    }

    /// The last stable offset: one past the last offset that a read_committed reader can
    /// reach, that is below the first record of any open transaction (the high watermark
    /// when none is open). It counts transaction markers, so it may lie past the last record.
    async fn end_offset(&self, partition: TopicPartition) -> Result<u64, LogError> {
        self.check_partition(partition)?;
        self.shared.readers.end_offset(partition).await
    }

    async fn consumer(&self, group: &str, topics: &[Topic]) -> Result<Box<dyn Consumer>, LogError> {
        let member = KafkaConsumer::join(Arc::clone(&self.shared), group, topics).await?;
        Ok(Box::new(member))
    }
}
