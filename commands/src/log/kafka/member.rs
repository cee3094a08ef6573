//! A member of a Kafka consumer group, with the transactional producer it commits through.
//!
//! How the port's promises are kept:
//! - Assignment changes come from librdkafka's rebalance callbacks (see `rebalance`), which
//!   run inside `poll`. A poll returns pending changes before any record, and records that
//!   arrived after a change wait until the change was returned, so no record of a partition is
//!   delivered before its `Assigned`. Records of a revoked partition that were not returned yet
//!   are dropped; the partition's next owner reads them from the committed offsets.
//! - Each poll that returns records remembers the group metadata (generation and member id)
//!   they were delivered under. A commit sends its offsets with that metadata, so the group
//!   coordinator refuses them once the group has moved on without this member (KIP-447), and
//!   a commit for a partition the member no longer owns is refused before it reaches Kafka.
//! - A fenced member fails every later call with `LogError::Fenced`; a member whose producer
//!   failed for good fails them with `LogError::Storage`. Either must be replaced by a new
//!   `consumer()`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer as _, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::context::LogContext;
use super::errors::{from_kafka, storage};
use super::reader::{message_to_record, partition_index};
use super::rebalance::{Change, MemberContext};
use super::transaction::{After, Failure, KafkaOffset, Transaction, step};
use super::{GROUP_NAME_BYTES_MAX, POLL_WAIT_MAX, RECORDS_PER_READ_MAX};
use super::{Shared, config};
use crate::log::check_request_size;
use crate::log::{
    ConsumedOffset, Consumer, LogError, NewRecord, Polled, Position, Record, Topic, TopicPartition,
};

/// Pause after a consumer error before polling again, so a repeating error cannot spin.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Pause before trying a seek again while librdkafka is still fetching the committed offsets
/// of a partition just assigned (it refuses seeks until it starts fetching).
const SEEK_RETRY_PAUSE: Duration = Duration::from_millis(10);

type Committed = Result<Vec<Position>, Failure>;

/// A member of a Kafka consumer group. Dropping it leaves the group, which waits for the
/// broker to answer.
pub struct KafkaConsumer {
    shared: Arc<Shared>,
    group_id: String,
    /// The member's topics, sorted.
    topics: Vec<Topic>,
    consumer: Arc<StreamConsumer<MemberContext>>,
    producer: FutureProducer<LogContext>,
    /// Assignment changes not yet returned by `poll`.
    changes: VecDeque<Change>,
    /// Records received but not yet returned, in arrival order.
    buffered: VecDeque<Record>,
    /// The group metadata of the last poll that returned records.
    group_metadata: Option<Arc<ConsumerGroupMetadata>>,
    state: After,
    /// A commit whose caller stopped waiting; the member waits for it before its next call.
    abandoned: Option<JoinHandle<Committed>>,
}

impl KafkaConsumer {
    /// Joins `group` and waits for the member's first assignment, which the first poll
    /// returns.
    pub(super) async fn join(
        shared: Arc<Shared>,
        group: &str,
        topics: &[Topic],
    ) -> Result<Self, LogError> {
        check_group_name(group)?;
        let topics = sorted_topics(topics)?;
        let group_id = shared.settings.group_id(group);
        let producer = start_transactions(&shared, &group_id).await?;

        let context = MemberContext::new(&group_id, shared.names.clone());
        let consumer: StreamConsumer<MemberContext> = config::member(&shared.settings, &group_id)
            .create_with_context(context)
            .map_err(from_kafka)?;
        let names: Vec<&str> = topics
            .iter()
            .map(|&topic| shared.names.name(topic))
            .collect();
        consumer.subscribe(&names).map_err(from_kafka)?;

        let mut member = Self {
            shared,
            group_id,
            topics,
            consumer: Arc::new(consumer),
            producer,
            changes: VecDeque::new(),
            buffered: VecDeque::new(),
            group_metadata: None,
            state: After::Usable,
            abandoned: None,
        };
        member.await_first_assignment().await?;
        Ok(member)
    }

    async fn await_first_assignment(&mut self) -> Result<(), LogError> {
        let timeout_ms = self.shared.settings.timeouts.group_join_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while !self
            .changes
            .iter()
            .any(|c| matches!(c, Change::Assigned(_)))
        {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(storage(format!(
                    "group {} assigned nothing to a new member within {timeout_ms} ms",
                    self.group_id
                )));
            }
            let received = self.receive(remaining).await?;
            self.absorb(received);
        }
        tracing::info!(group = %self.group_id, "member joined");
        Ok(())
    }

    /// Waits up to `wait` for one record, serving rebalance callbacks meanwhile; returns
    /// early, with no record, when a callback recorded a change.
    async fn receive(&mut self, wait: Duration) -> Result<Option<Record>, LogError> {
        let consumer = Arc::clone(&self.consumer);
        let received = tokio::select! {
            // In this order, so that a zero wait still takes a record that is ready.
            biased;
            received = consumer.recv() => received,
            () = consumer.context().changed() => return Ok(None),
            () = tokio::time::sleep(wait) => return Ok(None),
        };
        let error = match received {
            Ok(message) => return message_to_record(&self.shared.names, &message).map(Some),
            Err(error) => error,
        };
        if let KafkaError::MessageConsumptionFatal(_) = error {
            tracing::error!(group = %self.group_id, %error, "consumer failed for good");
            self.state = After::Broken;
            return Err(from_kafka(error));
        }
        // librdkafka reports these and carries on (a broker down, a topic not yet known).
        tracing::warn!(group = %self.group_id, %error, "consumer error; librdkafka retries");
        tokio::time::sleep(CONSUMER_ERROR_PAUSE.min(wait)).await;
        Ok(None)
    }

    /// Takes the changes the callbacks recorded, drops unreturned records of revoked
    /// partitions, then buffers `received`, which arrived after those changes.
    fn absorb(&mut self, received: Option<Record>) {
        for change in self.consumer.context().take_changes() {
            if let Change::Revoked(revoked) = &change {
                self.buffered
                    .retain(|r| !revoked.contains(&r.topic_partition()));
            }
            self.changes.push_back(change);
        }
        self.buffered.extend(received);
    }

    /// Waits for a commit whose caller stopped waiting, then refuses calls to a member that
    /// was fenced or failed for good.
    async fn settle(&mut self) -> Result<(), LogError> {
        if let Some(abandoned) = self.abandoned.take()
            && let Err(error) = self.conclude(abandoned.await)
        {
            tracing::warn!(group = %self.group_id, %error, "an abandoned commit failed");
        }
        match self.state {
            After::Usable => Ok(()),
            After::Fenced => Err(LogError::Fenced),
            After::Broken => Err(storage(format!(
                "this member of {} failed for good; join the group again",
                self.group_id
            ))),
        }
    }

    /// Records what a finished commit means for the member and returns its outcome.
    fn conclude(
        &mut self,
        finished: Result<Committed, tokio::task::JoinError>,
    ) -> Result<Vec<Position>, LogError> {
        match finished {
            Ok(Ok(positions)) => Ok(positions),
            Ok(Err(failure)) => {
                self.state = failure.after;
                Err(failure.error)
            }
            Err(join_error) => {
                self.state = After::Broken;
                Err(storage(join_error))
            }
        }
    }

    /// Returns the first `count` buffered records and keeps the group metadata they are
    /// delivered under, unless the assignment was lost meanwhile: then the records are
    /// dropped and the revocation comes next. Records leave the buffer only after the last
    /// wait, so a poll cancelled meanwhile loses none.
    async fn deliver(&mut self, count: usize) -> Result<Polled, LogError> {
        let consumer = Arc::clone(&self.consumer);
        let read = tokio::task::spawn_blocking(move || {
            // The metadata first: if the assignment is lost after it was read, the broker
            // refuses it; if before, the check below sees the loss.
            let metadata = consumer.group_metadata();
            (metadata, consumer.assignment_lost())
        });
        let (metadata, lost) = read.await.map_err(storage)?;
        if lost {
            tracing::warn!(group = %self.group_id, records = self.buffered.len(),
                "assignment lost; undelivered records dropped");
            self.buffered.clear();
            self.group_metadata = None;
            return Ok(Polled::Records(Vec::new()));
        }
        self.group_metadata = metadata.map(Arc::new);
        Ok(Polled::Records(self.buffered.drain(..count).collect()))
    }

    /// Refuses a partition outside the member's topics or the log's range.
    fn check_subscribed(&self, partition: TopicPartition) -> Result<(), LogError> {
        let in_range = partition.partition < self.shared.partition_count.get();
        if in_range && self.topics.binary_search(&partition.topic).is_ok() {
            return Ok(());
        }
        Err(LogError::Invalid(format!(
            "partition {} of {} is not read by this member of {}",
            partition.partition,
            partition.topic.name(),
            self.group_id
        )))
    }

    /// The consumed offsets as Kafka takes them. A partition the member no longer owns fences
    /// it: another member owns the partition now.
    fn kafka_offsets(&mut self, consumed: &[ConsumedOffset]) -> Result<Vec<KafkaOffset>, LogError> {
        let mut offsets = Vec::with_capacity(consumed.len());
        for ConsumedOffset {
            partition,
            next_offset,
        } in consumed
        {
            self.check_subscribed(*partition)?;
            let offset = i64::try_from(*next_offset)
                .map_err(|_| LogError::Invalid(format!("offset {next_offset} is out of range")))?;
            if !self.consumer.context().owns(*partition) {
                tracing::warn!(group = %self.group_id, topic = partition.topic.name(),
                    partition = partition.partition, "commit for a partition no longer owned");
                self.state = After::Fenced;
                return Err(LogError::Fenced);
            }
            let name = self.shared.names.name(partition.topic).to_owned();
            offsets.push((name, partition_index(*partition)?, offset));
        }
        Ok(offsets)
    }

    /// The group metadata to commit offsets with: that of the records' poll, else the
    /// current one, checked as `deliver` checks it.
    async fn commit_metadata(&mut self) -> Result<Arc<ConsumerGroupMetadata>, LogError> {
        if let Some(metadata) = &self.group_metadata {
            return Ok(Arc::clone(metadata));
        }
        let consumer = Arc::clone(&self.consumer);
        let read = tokio::task::spawn_blocking(move || {
            (consumer.group_metadata(), consumer.assignment_lost())
        });
        match read.await.map_err(storage)? {
            (Some(metadata), false) => Ok(Arc::new(metadata)),
            (_, true) => {
                self.state = After::Fenced;
                Err(LogError::Fenced)
            }
            (None, false) => Err(storage("the consumer has no group metadata")),
        }
    }

    /// One seek on the blocking pool; `Ok(false)` while librdkafka has not started fetching
    /// the partition yet.
    async fn try_seek(&self, partition: TopicPartition, offset: i64) -> Result<bool, LogError> {
        let consumer = Arc::clone(&self.consumer);
        let name = self.shared.names.name(partition.topic).to_owned();
        let index = partition_index(partition)?;
        let timeout = Duration::from_millis(self.shared.settings.timeouts.request_timeout_ms);
        let sought = tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::with_capacity(1);
            list.add_partition_offset(&name, index, Offset::Offset(offset))?;
            let list = consumer.seek_partitions(list, timeout)?;
            match list.find_partition(&name, index) {
                Some(element) => element.error(),
                None => Err(KafkaError::Seek(
                    "the seek result lost its partition".into(),
                )),
            }
        });
        match sought.await.map_err(storage)? {
            Ok(()) => Ok(true),
            Err(KafkaError::OffsetFetch(
                RDKafkaErrorCode::State | RDKafkaErrorCode::PreviousInProgress,
            )) => Ok(false),
            Err(error) => Err(from_kafka(error)),
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max_records: usize, wait: Duration) -> Result<Polled, LogError> {
        self.settle().await?;
        let max_records = max_records.min(RECORDS_PER_READ_MAX);
        let deadline = Instant::now() + wait.min(POLL_WAIT_MAX);

        // Ends with a change, with enough records, or when nothing more arrives in time:
        // once a record is buffered, further receives do not wait.
        loop {
            if let Some(change) = self.changes.pop_front() {
                return Ok(match change {
                    Change::Assigned(partitions) => Polled::Assigned(partitions),
                    Change::Revoked(partitions) => Polled::Revoked(partitions),
                });
            }
            if self.buffered.len() >= max_records {
                break;
            }
            let wait = match self.buffered.is_empty() {
                true => deadline.saturating_duration_since(Instant::now()),
                false => Duration::ZERO,
            };
            let received = self.receive(wait).await?;
            let nothing = received.is_none();
            self.absorb(received);
            if nothing && self.changes.is_empty() && (wait.is_zero() || Instant::now() >= deadline)
            {
                break;
            }
        }

        match max_records.min(self.buffered.len()) {
            0 => Ok(Polled::Records(Vec::new())),
            count => self.deliver(count).await,
        }
    }

    async fn seek(&mut self, partition: TopicPartition, next_offset: u64) -> Result<(), LogError> {
        self.settle().await?;
        self.check_subscribed(partition)?;
        if !self.consumer.context().owns(partition) {
            return Err(LogError::Invalid(format!(
                "partition {} of {} is not owned by this member of {}",
                partition.partition,
                partition.topic.name(),
                self.group_id
            )));
        }
        let offset = i64::try_from(next_offset)
            .map_err(|_| LogError::Invalid(format!("offset {next_offset} is out of range")))?;
        self.buffered.retain(|r| r.topic_partition() != partition);

        let timeout_ms = self.shared.settings.timeouts.request_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        // Ends once the seek took, or at the deadline.
        while !self.try_seek(partition, offset).await? {
            if Instant::now() >= deadline {
                return Err(storage(format!(
                    "partition {} of {} did not start fetching within {timeout_ms} ms",
                    partition.partition,
                    partition.topic.name()
                )));
            }
            tokio::time::sleep(SEEK_RETRY_PAUSE).await;
        }
        Ok(())
    }

    async fn commit(
        &mut self,
        consumed: Vec<ConsumedOffset>,
        produced: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError> {
        self.settle().await?;
        check_request_size(&produced)?;
        let offsets = self.kafka_offsets(&consumed)?;
        if offsets.is_empty() && produced.is_empty() {
            return Ok(Vec::new());
        }
        let metadata = match offsets.is_empty() {
            true => None,
            false => Some(self.commit_metadata().await?),
        };

        let timeouts = &self.shared.settings.timeouts;
        let transaction = Transaction {
            group: self.group_id.clone(),
            producer: self.producer.clone(),
            names: self.shared.names.clone(),
            partition_count: self.shared.partition_count,
            records: produced,
            offsets,
            metadata,
            request_timeout: Duration::from_millis(timeouts.request_timeout_ms),
            delivery_timeout: Duration::from_millis(timeouts.delivery_timeout_ms),
        };
        let caller = CallerGone::default();
        let handle = tokio::spawn(transaction.run(Arc::clone(&caller.0)));
        let finished = self.abandoned.insert(handle).await;
        self.abandoned = None;
        self.conclude(finished)
    }
}

/// Tells a commit's task, when dropped, that its caller is gone (it stays set after a normal
/// return too, when the task has finished anyway).
#[derive(Default)]
struct CallerGone(Arc<AtomicBool>);

impl Drop for CallerGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Creates the member's transactional producer and registers it with the transaction
/// coordinator, which first aborts any transaction an earlier holder of the same
/// transactional id left open.
async fn start_transactions(
    shared: &Shared,
    group_id: &str,
) -> Result<FutureProducer<LogContext>, LogError> {
    let settings = &shared.settings;
    let transactional_id = settings.transactional_id(group_id);
    let producer: FutureProducer<LogContext> =
        config::transactional_producer(settings, &transactional_id)
            .create_with_context(LogContext { role: "member-txn" })
            .map_err(from_kafka)?;

    // librdkafka calls a failure of this step retriable when it may pass (a coordinator
    // loading or moving); `step` retries those.
    let timeout = Duration::from_millis(settings.timeouts.request_timeout_ms);
    step(&producer, "init_transactions", move |producer| {
        producer.init_transactions(timeout)
    })
    .await
    .map_err(from_kafka)?;
    tracing::debug!(
        group = group_id,
        transactional_id,
        "transactional producer ready"
    );
    Ok(producer)
}

fn check_group_name(group: &str) -> Result<(), LogError> {
    if !group.is_empty() && group.len() <= GROUP_NAME_BYTES_MAX {
        return Ok(());
    }
    Err(LogError::Invalid(format!(
        "a group name must have 1 to {GROUP_NAME_BYTES_MAX} bytes, not {}",
        group.len()
    )))
}

fn sorted_topics(topics: &[Topic]) -> Result<Vec<Topic>, LogError> {
    let mut topics = topics.to_vec();
    topics.sort();
    topics.dedup();
    if topics.is_empty() {
        return Err(LogError::Invalid(
            "a consumer needs at least one topic".into(),
        ));
    }
    Ok(topics)
}
