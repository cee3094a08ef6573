//! A member of an embedded consumer group.
//!
//! An embedded group has one live member at a time, owning every partition of its topics. The
//! member keeps its read positions in memory, starting from the group's committed offsets; it
//! reads through the read pool and, when there is nothing new, waits on the writer's change
//! signal instead of sleeping. Committing goes through the writer, which refuses it once a
//! newer member has joined the group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{self, to_sql};
use super::writer::{self, GroupOffsets, Join, Joined, Request, Write};
use super::{Inner, RECORDS_PER_READ_MAX};
use crate::log::check_request_size;
use crate::log::{
    ConsumedOffset, Consumer, LogError, NewRecord, Polled, Position, Record, Topic, TopicPartition,
};

/// The longest a poll waits. Longer waits are cut to this so a deadline can always be
/// computed; callers poll in a loop anyway.
pub const POLL_WAIT_MAX: Duration = Duration::from_secs(3_600);

/// The longest group name, in bytes. Group names are short identifiers such as
/// `tally.processor`; a longer one is a bug, and it would be repeated in every offset row.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// A member of an embedded consumer group. Keeps the log open while it lives.
pub struct SqliteConsumer {
    inner: Arc<Inner>,
    group: String,
    generation: u64,
    /// Every partition of the member's topics, sorted.
    partitions: Vec<TopicPartition>,
    /// The next offset to read from each partition.
    positions: BTreeMap<TopicPartition, u64>,
    assignment_reported: bool,
    changes: watch::Receiver<u64>,
    /// Which partition is served first in the next fetch, so that small polls rotate fairly.
    first_partition: usize,
}

impl SqliteConsumer {
    /// Joins `group` as its only member, fencing the previous one.
    pub(super) async fn join(
        inner: Arc<Inner>,
        group: &str,
        topics: &[Topic],
    ) -> Result<Self, LogError> {
        check_group_name(group)?;
        let mut topics = topics.to_vec();
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Err(LogError::Invalid(
                "a consumer needs at least one topic".into(),
            ));
        }

        let changes = inner.shared.subscribe();
        let request = |reply| {
            Request::Join(Join {
                group: group.to_owned(),
                topics: topics.clone(),
                reply,
            })
        };
        let Joined {
            generation,
            committed,
        } = inner.call(request).await?;

        let partitions: Vec<TopicPartition> = topics
            .iter()
            .flat_map(|&topic| {
                (0..inner.partition_count.get())
                    .map(move |partition| TopicPartition { topic, partition })
            })
            .collect();
        let positions = starting_positions(&partitions, &committed);
        Ok(Self {
            inner,
            group: group.to_owned(),
            generation,
            partitions,
            positions,
            assignment_reported: false,
            changes,
            first_partition: 0,
        })
    }

    /// Fails with `Fenced` once a newer member has joined the group.
    fn check_current(&self) -> Result<(), LogError> {
        match self.inner.shared.generation(&self.group) {
            Some(current) if current == self.generation => Ok(()),
            _ => Err(LogError::Fenced),
        }
    }

    /// Refuses a partition this member does not own.
    fn check_owned(&self, partition: TopicPartition) -> Result<(), LogError> {
        if self.partitions.binary_search(&partition).is_ok() {
            return Ok(());
        }
        Err(LogError::Invalid(format!(
            "partition {} of {} is not owned by this member of {}",
            partition.partition,
            partition.topic.name(),
            self.group
        )))
    }

    fn position(&self, partition: TopicPartition) -> u64 {
        self.positions.get(&partition).copied().unwrap_or(0)
    }

    /// Reads what is committed past the member's positions, up to `max_records`, sharing them
    /// fairly across partitions. Positions move only when every read succeeded.
    async fn fetch(&mut self, max_records: usize) -> Result<Vec<Record>, LogError> {
        let order = rotated(&self.partitions, self.first_partition);
        let available: Vec<u64> = order
            .iter()
            .map(|&partition| {
                self.inner
                    .shared
                    .end_offset(partition)
                    .saturating_sub(self.position(partition))
            })
            .collect();
        let shares = fair_shares(&available, max_records);

        let mut records = Vec::new();
        let mut advanced = Vec::new();
        for (partition, share) in order
            .into_iter()
            .zip(shares)
            .filter(|(_, share)| *share > 0)
        {
            let from = self.position(partition);
            let read = store::read_records(&self.inner.read_pool, partition, from, share).await?;
            if let Some(last) = read.last() {
                advanced.push((partition, last.offset.saturating_add(1)));
            }
            records.extend(read);
        }

        if !records.is_empty() {
            self.positions.extend(advanced);
            self.first_partition = (self.first_partition + 1) % self.partitions.len().max(1);
        }
        Ok(records)
    }
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn poll(&mut self, max_records: usize, wait: Duration) -> Result<Polled, LogError> {
        self.check_current()?;
        if !self.assignment_reported {
            self.assignment_reported = true;
            return Ok(Polled::Assigned(self.partitions.clone()));
        }

        let max_records = max_records.min(RECORDS_PER_READ_MAX);
        let deadline = Instant::now() + wait.min(POLL_WAIT_MAX);
        loop {
            // Marks what is seen now, so a commit landing during the fetch still wakes us.
            self.changes.borrow_and_update();
            self.check_current()?;
            let records = self.fetch(max_records).await?;
            if !records.is_empty() || max_records == 0 {
                return Ok(Polled::Records(records));
            }
            match tokio::time::timeout_at(deadline, self.changes.changed()).await {
                Err(_elapsed) => return Ok(Polled::Records(Vec::new())),
                Ok(Err(_closed)) => return Err(writer::stopped()),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn seek(&mut self, partition: TopicPartition, next_offset: u64) -> Result<(), LogError> {
        self.check_owned(partition)?;
        self.positions.insert(partition, next_offset);
        Ok(())
    }

    async fn commit(
        &mut self,
        consumed: Vec<ConsumedOffset>,
        produced: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError> {
        check_request_size(&produced)?;
        for offset in &consumed {
            self.check_owned(offset.partition)?;
            to_sql(offset.next_offset)?;
        }
        self.check_current()?;

        let offsets = GroupOffsets {
            group: self.group.clone(),
            generation: self.generation,
            consumed,
        };
        let request = |reply| {
            Request::Write(Write {
                records: produced,
                offsets: Some(offsets),
                reply,
            })
        };
        self.inner.call(request).await
    }
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

/// Where a new member starts reading: the group's committed offsets, else the beginning.
fn starting_positions(
    partitions: &[TopicPartition],
    committed: &HashMap<TopicPartition, u64>,
) -> BTreeMap<TopicPartition, u64> {
    partitions
        .iter()
        .map(|partition| (*partition, committed.get(partition).copied().unwrap_or(0)))
        .collect()
}

/// `partitions` starting at index `first`, wrapping around.
fn rotated(partitions: &[TopicPartition], first: usize) -> Vec<TopicPartition> {
    let first = first.min(partitions.len());
    partitions[first..]
        .iter()
        .chain(&partitions[..first])
        .copied()
        .collect()
}

/// Splits up to `max_records` across partitions with `available` records each: every round
/// gives each partition that still has records an equal part of what is left, so a busy
/// partition cannot starve the others. Earlier partitions get the remainder of a round.
fn fair_shares(available: &[u64], max_records: usize) -> Vec<usize> {
    let available: Vec<usize> = available
        .iter()
        .map(|&count| usize::try_from(count).unwrap_or(usize::MAX))
        .collect();
    let mut shares = vec![0; available.len()];
    let mut left = max_records;

    // Each round hands out at least one record or ends the loop, so it stops.
    loop {
        let hungry = shares
            .iter()
            .zip(&available)
            .filter(|(share, avail)| share < avail)
            .count();
        if left == 0 || hungry == 0 {
            return shares;
        }
        let each = (left / hungry).max(1);
        for (share, &avail) in shares.iter_mut().zip(&available) {
            let give = each.min(avail - *share).min(left);
            *share += give;
            left -= give;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_split_evenly_between_busy_partitions() {
        assert_eq!(fair_shares(&[100, 100, 100], 30), vec![10, 10, 10]);
    }

    #[test]
    fn fair_shares_give_what_a_quiet_partition_leaves_to_the_busy_ones() {
        assert_eq!(fair_shares(&[2, 100, 0, 100], 30), vec![2, 14, 0, 14]);
    }

    #[test]
    fn fair_shares_never_exceed_the_maximum_or_what_is_available() {
        assert_eq!(fair_shares(&[5, 5, 5], 2), vec![1, 1, 0]);
        assert_eq!(fair_shares(&[1, 2], 100), vec![1, 2]);
        assert_eq!(fair_shares(&[], 10), Vec::<usize>::new());
        assert_eq!(fair_shares(&[7], 0), vec![0]);
    }

    #[test]
    fn rotated_starts_at_the_given_partition_and_wraps_around() {
        let partitions: Vec<TopicPartition> = (0..3)
            .map(|partition| TopicPartition {
                topic: Topic::Events,
                partition,
            })
            .collect();
        let order: Vec<u32> = rotated(&partitions, 1)
            .iter()
            .map(|p| p.partition)
            .collect();
        assert_eq!(order, vec![1, 2, 0]);
    }
}
