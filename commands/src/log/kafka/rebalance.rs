//! The consumer context of a group member: librdkafka's rebalance callbacks become the
//! assignment changes that `poll` reports, and the set of partitions the member owns.
//!
//! The callbacks run inside librdkafka's poll, that is inside the member's `poll` (or while the
//! member closes), never beside a commit. Ownership changes in the callback itself, before
//! librdkafka fetches for a new assignment or after it stops fetching a revoked one; the change
//! is reported to the caller by the next `poll`.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::Notify;

use super::context::{log_client_error, log_line};
use super::topics::TopicNames;
use crate::log::TopicPartition;

/// An assignment change not yet reported by `poll`.
#[derive(Debug)]
pub(super) enum Change {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

#[derive(Default)]
struct Assignment {
    owned: BTreeSet<TopicPartition>,
    changes: Vec<Change>,
}

pub(super) struct MemberContext {
    group: String,
    names: TopicNames,
    assignment: Mutex<Assignment>,
    /// Raised by every recorded change. A callback runs inside librdkafka's poll without
    /// ending the wait for a record, so the member also waits on this.
    changed: Notify,
}

impl MemberContext {
    pub(super) fn new(group: &str, names: TopicNames) -> Self {
        Self {
            group: group.to_owned(),
            names,
            assignment: Mutex::new(Assignment::default()),
            changed: Notify::new(),
        }
    }

    /// Completes once a change was recorded since the last completion (at once if one was
    /// recorded while nobody waited).
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The changes recorded since the last call, oldest first.
    pub(super) fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut self.lock().changes)
    }

    /// Whether the member owns `partition` right now.
    pub(super) fn owns(&self, partition: TopicPartition) -> bool {
        self.lock().owned.contains(&partition)
    }

    fn lock(&self) -> MutexGuard<'_, Assignment> {
        // The guarded data stays consistent whatever panicked while holding it.
        self.assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<TopicPartition> {
        let mut partitions = Vec::with_capacity(list.count());
        for element in list.elements() {
            let topic = self.names.topic_of(element.topic());
            match (topic, u32::try_from(element.partition())) {
                (Some(topic), Ok(partition)) => {
                    partitions.push(TopicPartition { topic, partition })
                }
                _ => tracing::warn!(group = %self.group, topic = element.topic(),
                    partition = element.partition(), "rebalance named a foreign partition"),
            }
        }
        partitions.sort();
        partitions
    }

    fn revoke(&self, partitions: Vec<TopicPartition>, lost: bool) {
        tracing::info!(group = %self.group, partitions = partitions.len(), lost,
            "partitions revoked");
        let mut assignment = self.lock();
        for partition in &partitions {
            assignment.owned.remove(partition);
        }
        assignment.changes.push(Change::Revoked(partitions));
        self.changed.notify_one();
    }

    fn assign(&self, partitions: Vec<TopicPartition>) {
        tracing::info!(group = %self.group, partitions = partitions.len(), "partitions assigned");
        let mut assignment = self.lock();
        assignment.owned.extend(partitions.iter().copied());
        assignment.changes.push(Change::Assigned(partitions));
        self.changed.notify_one();
    }
}

impl ClientContext for MemberContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        log_line("member", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error("member", &error, reason);
    }
}

impl ConsumerContext for MemberContext {
    /// Ownership ends before librdkafka stops fetching the revoked partitions. A rebalance
    /// error makes librdkafka drop the whole assignment, so it revokes everything owned.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                self.revoke(self.partitions(list), consumer.assignment_lost())
            }
            Rebalance::Error(error) => {
                tracing::error!(group = %self.group, %error, "rebalance failed");
                let owned: Vec<TopicPartition> = self.lock().owned.iter().copied().collect();
                self.revoke(owned, true);
            }
            Rebalance::Assign(_) => {}
        }
    }

    /// Ownership starts once librdkafka has taken the assignment.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.assign(self.partitions(list));
        }
    }
}
