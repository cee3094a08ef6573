//! `read` and `end_offset`: a small pool of reader clients, each a librdkafka consumer that is
//! assigned one partition at a time and never joins a group.
//!
//! Readers are read_committed, so the end of a partition is its last stable offset (LSO): one
//! past the last offset below which every transaction is decided. Records of open or aborted
//! transactions are never returned, and neither are transaction markers; they leave gaps in the
//! offsets a read returns.
//!
//! librdkafka's calls here block, so each call runs on Tokio's blocking pool, holding one
//! reader; `readers_max` bounds how many run at once. A read assigns its partition and
//! unassigns it when done, so an idle reader fetches nothing. (Keeping the partition assigned
//! but paused, to continue the next read from the prefetched queue, was tried: librdkafka then
//! sometimes started the next assignment's fetch only a second later.)
//!
//! End offsets come from a separate client that never fetches: a broker answers one
//! connection's requests in order, so a query behind a fetch the broker holds open would wait
//! for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;

use super::context::LogContext;
use super::errors::{Backoff, from_kafka, is_transient_error, storage};
use super::topics::TopicNames;
use crate::log::{LogError, Record, TopicPartition};

/// How long one poll of a reader waits for its queue while records are still due. Short, so
/// that reaching the end through trailing transaction markers is noticed within a step.
const READ_POLL_STEP: Duration = Duration::from_millis(10);

/// End-offset queries running at once. They are single small requests; the bound only keeps
/// a burst of callers from occupying the blocking pool.
const END_OFFSET_QUERIES_MAX: usize = 16;

/// The timeouts a reader works with.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadTimeouts {
    /// One end-offset query or assignment.
    pub(super) request: Duration,
    /// How long one read waits for records it knows exist.
    pub(super) read: Duration,
}

pub(super) struct ReaderPool {
    config: ClientConfig,
    names: TopicNames,
    timeouts: ReadTimeouts,
    idle: Mutex<Vec<Reader>>,
    /// One permit per reader that may exist; the semaphore is never closed.
    permits: Semaphore,
    /// The client end offsets are queried with; it is never assigned a partition.
    offsets: Arc<BaseConsumer<LogContext>>,
    /// One permit per end-offset query running; never closed.
    offset_permits: Semaphore,
}

impl ReaderPool {
    pub(super) fn new(
        config: ClientConfig,
        names: TopicNames,
        timeouts: ReadTimeouts,
        readers_max: usize,
    ) -> Result<Self, LogError> {
        let offsets = config
            .create_with_context(LogContext { role: "offsets" })
            .map_err(from_kafka)?;
        Ok(Self {
            config,
            names,
            timeouts,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(readers_max),
            offsets: Arc::new(offsets),
            offset_permits: Semaphore::new(END_OFFSET_QUERIES_MAX),
        })
    }

    /// Up to `max_records` committed records of `partition` from `from_offset` on.
    pub(super) async fn read(
        self: &Arc<Self>,
        partition: TopicPartition,
        from_offset: u64,
        max_records: usize,
    ) -> Result<Vec<Record>, LogError> {
        let _permit = self.permits.acquire().await.map_err(storage)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let pool = Arc::clone(self);
        let ran = tokio::task::spawn_blocking(move || {
            let mut reader = match idle {
                Some(reader) => reader,
                None => Reader::new(&pool.config)?,
            };
            let records = reader.read(&pool, partition, from_offset, max_records);
            Ok::<_, LogError>((reader, records))
        });
        // A reader whose read was abandoned is dropped when its thread finishes; the pool
        // creates another when it needs one.
        let (reader, records) = ran.await.map_err(storage)??;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reader);
        records
    }

    /// The partition's last stable offset, as a read_committed consumer sees it.
    pub(super) async fn end_offset(
        self: &Arc<Self>,
        partition: TopicPartition,
    ) -> Result<u64, LogError> {
        let _permit = self.offset_permits.acquire().await.map_err(storage)?;
        let pool = Arc::clone(self);
        let queried = tokio::task::spawn_blocking(move || pool.query_end_offset(partition));
        queried.await.map_err(storage)?
    }

    /// Asks the partition leader for the last stable offset (ListOffsets, read_committed),
    /// retrying transient failures.
    fn query_end_offset(&self, partition: TopicPartition) -> Result<u64, LogError> {
        let name = self.names.name(partition.topic);
        let index = partition_index(partition)?;
        let mut backoff = Backoff::new();
        loop {
            let queried = self
                .offsets
                .fetch_watermarks(name, index, self.timeouts.request);
            let error = match queried {
                Ok((_low, high)) => return offset_from_kafka(high),
                Err(error) => error,
            };
            pause_or_fail(&mut backoff, "querying an end offset", partition, error)?;
        }
    }
}

struct Reader {
    consumer: BaseConsumer<LogContext>,
}

impl Reader {
    fn new(config: &ClientConfig) -> Result<Self, LogError> {
        let consumer = config
            .create_with_context(LogContext { role: "reader" })
            .map_err(from_kafka)?;
        Ok(Self { consumer })
    }

    fn read(
        &mut self,
        pool: &ReaderPool,
        partition: TopicPartition,
        from_offset: u64,
        max_records: usize,
    ) -> Result<Vec<Record>, LogError> {
        let end = pool.query_end_offset(partition)?;
        if from_offset >= end || max_records == 0 {
            return Ok(Vec::new());
        }
        let start = partition_list(pool, partition, from_offset)?;
        self.consumer.assign(&start).map_err(from_kafka)?;
        let deadline = Instant::now() + pool.timeouts.read;
        let collected = self.collect(pool, partition, from_offset, end, max_records, deadline);
        // Unassigned while idle, so the reader fetches nothing until its next read.
        self.consumer.unassign().map_err(from_kafka)?;
        collected
    }

    /// Polls until `max_records` arrived, the position reached `end`, or the deadline passed.
    fn collect(
        &mut self,
        pool: &ReaderPool,
        partition: TopicPartition,
        from_offset: u64,
        end: u64,
        max_records: usize,
        deadline: Instant,
    ) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        let mut next = from_offset;
        let mut backoff = Backoff::new();
        while records.len() < max_records && next < end {
            // Polling without a wait first serves queued transaction markers, which move the
            // position without yielding a record.
            let mut polled = self.consumer.poll(Duration::ZERO);
            if polled.is_none() {
                if self.position(pool, partition)?.is_some_and(|at| at >= end) {
                    break;
                }
                if Instant::now() >= deadline {
                    return timed_out(records, partition, from_offset, end);
                }
                polled = self.consumer.poll(READ_POLL_STEP);
            }
            match polled {
                None => {}
                Some(Ok(message)) => {
                    let Some(record) = to_record(&pool.names, partition, &message)? else {
                        continue;
                    };
                    if record.offset < next {
                        continue;
                    }
                    next = record.offset + 1;
                    records.push(record);
                }
                Some(Err(error)) => pause_or_fail(&mut backoff, "reading", partition, error)?,
            }
        }
        Ok(records)
    }

    /// The offset after the last record or marker this reader served, once it served one.
    fn position(
        &self,
        pool: &ReaderPool,
        partition: TopicPartition,
    ) -> Result<Option<u64>, LogError> {
        let positions = self.consumer.position().map_err(from_kafka)?;
        let name = pool.names.name(partition.topic);
        let found = positions.find_partition(name, partition_index(partition)?);
        Ok(match found.map(|element| element.offset()) {
            Some(Offset::Offset(offset)) => u64::try_from(offset).ok(),
            _ => None,
        })
    }
}

/// The record in `message`, or `None` for a leftover of an earlier assignment.
pub(super) fn to_record(
    names: &TopicNames,
    expected: TopicPartition,
    message: &impl Message,
) -> Result<Option<Record>, LogError> {
    let record = message_to_record(names, message)?;
    Ok(Some(record).filter(|record| record.topic_partition() == expected))
}

/// Converts a fetched message into the port's record.
pub(super) fn message_to_record(
    names: &TopicNames,
    message: &impl Message,
) -> Result<Record, LogError> {
    let topic = names.topic_of(message.topic()).ok_or_else(|| {
        storage(format!(
            "a message arrived from unknown topic {}",
            message.topic()
        ))
    })?;
    let partition = u32::try_from(message.partition()).map_err(|_| {
        storage(format!(
            "a message arrived from partition {}",
            message.partition()
        ))
    })?;
    let offset = offset_from_kafka(message.offset())?;
    let key = message.key().unwrap_or_default();
    let key = String::from_utf8(key.to_vec()).unwrap_or_else(|error| {
        tracing::warn!(
            topic = topic.name(),
            partition,
            offset,
            "record key is not UTF-8"
        );
        String::from_utf8_lossy(error.as_bytes()).into_owned()
    });
    Ok(Record {
        topic,
        partition,
        offset,
        key,
        payload: message.payload().unwrap_or_default().to_vec(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    })
}

/// An offset Kafka reported, which is never negative for a real position.
pub(super) fn offset_from_kafka(offset: i64) -> Result<u64, LogError> {
    u64::try_from(offset).map_err(|_| storage(format!("kafka reported offset {offset}")))
}

/// A list of one partition, starting at `from_offset`.
fn partition_list(
    pool: &ReaderPool,
    partition: TopicPartition,
    from_offset: u64,
) -> Result<TopicPartitionList, LogError> {
    let offset = i64::try_from(from_offset)
        .map_err(|_| LogError::Invalid(format!("offset {from_offset} is out of range")))?;
    let mut list = TopicPartitionList::with_capacity(1);
    list.add_partition_offset(
        pool.names.name(partition.topic),
        partition_index(partition)?,
        Offset::Offset(offset),
    )
    .map_err(from_kafka)?;
    Ok(list)
}

pub(super) fn partition_index(partition: TopicPartition) -> Result<i32, LogError> {
    i32::try_from(partition.partition).map_err(|_| {
        LogError::Invalid(format!("partition {} is out of range", partition.partition))
    })
}

/// A read that ran out of time: the records it has, or a failure when it has none, since an
/// empty answer would claim there is nothing below the end.
fn timed_out(
    records: Vec<Record>,
    partition: TopicPartition,
    from_offset: u64,
    end: u64,
) -> Result<Vec<Record>, LogError> {
    if !records.is_empty() {
        return Ok(records);
    }
    Err(storage(format!(
        "no record of {} partition {} arrived between offsets {from_offset} and {end} in time",
        partition.topic.name(),
        partition.partition
    )))
}

/// Sleeps before the next try of a transient failure (this runs on the blocking pool), or
/// fails.
fn pause_or_fail(
    backoff: &mut Backoff,
    what: &'static str,
    partition: TopicPartition,
    error: KafkaError,
) -> Result<(), LogError> {
    let (topic, index) = (partition.topic.name(), partition.partition);
    let attempt = backoff.attempt();
    match backoff.next_delay() {
        Some(delay) if is_transient_error(&error) => {
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(what, topic, partition = index, attempt, delay_ms, %error,
                "kafka read failed; retrying");
            thread::sleep(delay);
            Ok(())
        }
        _ => {
            tracing::error!(what, topic, partition = index, attempt, %error, "kafka read failed");
            Err(from_kafka(error))
        }
    }
}
