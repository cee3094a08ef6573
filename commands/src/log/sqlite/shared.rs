//! What the writer task publishes to the rest of the process after each transaction commits:
//! partition end offsets, consumer group generations, and a signal that something changed.
//!
//! Everything here trails the database: a value is published only once it is durable, so a
//! reader that trusts it never sees a record or a generation that a crash could undo.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};

use tokio::sync::watch;

use crate::log::TopicPartition;

pub(super) struct Shared {
    /// One past the last committed offset of each partition that has records.
    ends: RwLock<HashMap<TopicPartition, u64>>,
    /// The current generation of each group that a member joined since the log opened.
    generations: Mutex<HashMap<String, u64>>,
    /// Counts committed write transactions; consumers wait for it to move.
    changes: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new(ends: HashMap<TopicPartition, u64>) -> Self {
        Self {
            ends: RwLock::new(ends),
            generations: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
        }
    }

    /// One past the last committed offset of `partition` (0 when it is empty).
    pub(super) fn end_offset(&self, partition: TopicPartition) -> u64 {
        let ends = self.ends.read().unwrap_or_else(PoisonError::into_inner);
        ends.get(&partition).copied().unwrap_or(0)
    }

    /// Records new end offsets of the partitions a transaction wrote to.
    pub(super) fn publish_ends(&self, written: &HashMap<TopicPartition, u64>) {
        let mut ends = self.ends.write().unwrap_or_else(PoisonError::into_inner);
        ends.extend(written.iter().map(|(partition, end)| (*partition, *end)));
    }

    /// Records the generation a group moved to when a member joined.
    pub(super) fn publish_generation(&self, group: &str, generation: u64) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generations.insert(group.to_owned(), generation);
    }

    /// The group's current generation, if a member joined it since the log opened.
    pub(super) fn generation(&self, group: &str) -> Option<u64> {
        let generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generations.get(group).copied()
    }

    /// Wakes every consumer waiting for news.
    pub(super) fn signal_change(&self) {
        self.changes
            .send_modify(|committed| *committed = committed.wrapping_add(1));
    }

    /// A receiver that sees every change signalled after this call.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
