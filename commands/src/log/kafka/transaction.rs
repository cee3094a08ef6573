//! One member commit as a Kafka transaction: begin, produce the records, add the consumed
//! offsets with the member's group metadata (KIP-447), commit; on any failure, abort.
//!
//! The group coordinator checks the metadata's generation and member id against the group when
//! the offsets are added, so a member that lost its partitions to another cannot commit: the
//! transaction is aborted and what it produced stays invisible to read_committed readers.
//!
//! A commit runs as its own task, so a caller that stops waiting cannot leave a transaction
//! half done: the task sees that the caller is gone and aborts instead of committing (unless
//! it already reached the commit), and the member waits for it before its next call.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::context::LogContext;
use super::errors::{Backoff, from_kafka, is_fencing, storage};
use super::produce;
use super::topics::TopicNames;
use crate::log::{LogError, NewRecord, Position};

/// A consumed offset as Kafka takes it: topic name, partition, next offset.
pub(super) type KafkaOffset = (String, i32, i64);

/// What a commit needs, moved into its task.
pub(super) struct Transaction {
    pub(super) group: String,
    pub(super) producer: FutureProducer<LogContext>,
    pub(super) names: TopicNames,
    pub(super) partition_count: NonZeroU32,
    pub(super) records: Vec<NewRecord>,
    pub(super) offsets: Vec<KafkaOffset>,
    /// The group metadata of the poll that delivered the consumed records; `None` when the
    /// commit consumed nothing.
    pub(super) metadata: Option<Arc<ConsumerGroupMetadata>>,
    pub(super) request_timeout: Duration,
    pub(super) delivery_timeout: Duration,
}

/// A failed commit: the error for the caller, and whether the member can commit again.
pub(super) struct Failure {
    pub(super) error: LogError,
    pub(super) after: After,
}

/// The member's state after a failed commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum After {
    /// The transaction was aborted; the member may commit again.
    Usable,
    /// Another member owns what this one committed for; it may write nothing more.
    Fenced,
    /// The transactional producer failed for good; the member must be replaced.
    Broken,
}

impl Transaction {
    /// Runs the transaction. `caller_gone` turns true when the caller stopped waiting.
    pub(super) async fn run(self, caller_gone: Arc<AtomicBool>) -> Result<Vec<Position>, Failure> {
        if let Err(error) = self.producer.begin_transaction() {
            // Only a producer in a wrong state or after a fatal error refuses to begin.
            return Err(self.failed_for_good(error));
        }
        let produced = produce::send_all(
            &self.producer,
            &self.names,
            self.partition_count,
            &self.records,
            self.delivery_timeout,
        );
        // librdkafka reports every record within the delivery timeout, except, as seen after
        // a broker restart, while the producer waits for a producer id it does not get. A
        // producer stuck there is given up: the member is replaced, and its successor's
        // producer, with the same transactional id, aborts whatever this one left open.
        let deadline = self.delivery_timeout + self.request_timeout;
        let positions = match tokio::time::timeout(deadline, produced).await {
            Ok(Ok(positions)) => positions,
            Ok(Err(error)) => return Err(self.abort_after(error).await),
            Err(_elapsed) => return Err(self.stalled(deadline)),
        };
        if let Err(error) = self.send_offsets().await {
            return Err(self.abort_after(error).await);
        }
        if caller_gone.load(Ordering::Acquire) {
            return Err(self.abort_after(KafkaError::Canceled).await);
        }
        let timeout = self.request_timeout;
        let committed = step(&self.producer, "commit_transaction", move |producer| {
            producer.commit_transaction(timeout)
        });
        match committed.await {
            Ok(()) => Ok(positions),
            Err(error) => Err(self.abort_after(error).await),
        }
    }

    /// Adds the consumed offsets to the transaction, checked by the group coordinator.
    async fn send_offsets(&self) -> KafkaResult<()> {
        let Some(metadata) = &self.metadata else {
            return Ok(());
        };
        let (offsets, metadata) = (self.offsets.clone(), Arc::clone(metadata));
        let timeout = self.request_timeout;
        step(
            &self.producer,
            "send_offsets_to_transaction",
            move |producer| {
                let mut list = TopicPartitionList::with_capacity(offsets.len());
                for (topic, partition, offset) in &offsets {
                    list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                }
                producer.send_offsets_to_transaction(&list, &metadata, timeout)
            },
        )
        .await
    }

    /// Aborts after `error`, so nothing the transaction produced becomes visible.
    async fn abort_after(&self, error: KafkaError) -> Failure {
        if is_fatal(&error) {
            return self.failed_for_good(error);
        }
        let timeout = self.request_timeout;
        let aborted = step(&self.producer, "abort_transaction", move |producer| {
            producer.abort_transaction(timeout)
        });
        if let Err(abort_error) = aborted.await {
            tracing::error!(group = %self.group, %error, %abort_error,
                "aborting a failed transaction failed; the member cannot commit again");
            return self.failed_for_good(error);
        }

        let fenced = fencing(&error);
        tracing::warn!(group = %self.group, %error, fenced, "transaction aborted");
        let after = if fenced { After::Fenced } else { After::Usable };
        Failure {
            error: from_kafka(error),
            after,
        }
    }

    /// A producer that acknowledged nothing within `waited`: it cannot be trusted with another
    /// transaction.
    fn stalled(&self, waited: Duration) -> Failure {
        let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        tracing::error!(group = %self.group, waited_ms,
            "transactional producer acknowledged nothing within the delivery timeout");
        Failure {
            error: storage("the transactional producer stopped acknowledging"),
            after: After::Broken,
        }
    }

    /// A failure after which the producer cannot run another transaction.
    fn failed_for_good(&self, error: KafkaError) -> Failure {
        if fencing(&error) {
            tracing::warn!(group = %self.group, %error, "member fenced");
            return Failure {
                error: LogError::Fenced,
                after: After::Fenced,
            };
        }
        tracing::error!(group = %self.group, %error, "transactional producer failed for good");
        Failure {
            error: storage(error),
            after: After::Broken,
        }
    }
}

/// Runs one blocking call of librdkafka's transaction API on the blocking pool, trying again
/// while librdkafka calls the failure retriable (a timeout, a coordinator moving).
pub(super) async fn step<F>(
    producer: &FutureProducer<LogContext>,
    what: &'static str,
    call: F,
) -> KafkaResult<()>
where
    F: Fn(&FutureProducer<LogContext>) -> KafkaResult<()> + Clone + Send + 'static,
{
    let mut backoff = Backoff::new();
    loop {
        let (producer, call) = (producer.clone(), call.clone());
        let result = tokio::task::spawn_blocking(move || call(&producer)).await;
        let error = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_join_error) => return Err(KafkaError::Canceled),
        };
        let retriable = matches!(&error, KafkaError::Transaction(e) if e.is_retriable());
        let attempt = backoff.attempt();
        match backoff.next_delay() {
            Some(delay) if retriable => {
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(what, attempt, delay_ms, %error,
                    "transaction step failed; retrying");
                tokio::time::sleep(delay).await;
            }
            _ => return Err(error),
        }
    }
}

fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(error) => error.is_fatal(),
        other => other.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::Fatal),
    }
}

fn fencing(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_fencing)
}
