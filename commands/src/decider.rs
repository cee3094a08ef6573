//! The decider: the only writer of the events topic.
//!
//! One decider owns a set of partitions of the commands topic and, with them, the streams of
//! every account keyed there. It keeps those streams in memory, decides each command with the
//! domain, and in one atomic step appends the resulting events and commits the commands it
//! consumed. Because exactly one decider owns a partition at a time, and the log fences a
//! decider that lost it, two debits of one account are always decided one after the other.
//!
//! Being the only writer of its partitions of the events topic, it also links every event into
//! its partition's hash chain ([`tally_domain::chain`]): it learns each chain's head while it
//! rebuilds the streams, links the events of a batch in the order they are appended, and moves
//! the heads on only once the batch is committed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tally_domain::{AccountId, AccountLedger, CommandContext, EventEnvelope, EventHash, ledger};
use tokio::sync::watch;
use tracing::{debug, error, info, instrument, warn};

use crate::log::{
    ConsumedOffset, Consumer, EventLog, LogError, NewRecord, Polled, Record, Topic, TopicPartition,
};
use crate::message::CommandEnvelope;

/// The consumer group of every decider.
pub const GROUP: &str = "decider";

/// Records read per call while rebuilding a partition's streams: large enough to amortize a
/// read, small enough to keep a batch's memory in the low megabytes.
const REBUILD_READ_RECORDS_MAX: usize = 5_000;

#[derive(Clone, Debug)]
pub struct DeciderSettings {
    /// Most commands decided and committed in one atomic step.
    pub batch_records_max: usize,
    /// How long one poll waits for commands before checking for shutdown.
    pub poll_wait_ms: u64,
    /// Pause before rejoining the group after a failed commit.
    pub rejoin_delay_ms: u64,
}

impl Default for DeciderSettings {
    fn default() -> Self {
        DeciderSettings {
            batch_records_max: 1_000,
            poll_wait_ms: 100,
            rejoin_delay_ms: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("the log failed")]
    Log(#[from] LogError),
    #[error("event {offset} of partition {partition} is unreadable")]
    CorruptEvent {
        partition: u32,
        offset: u64,
        source: serde_json::Error,
    },
    #[error("the stream of account {account_id} is broken at offset {offset}")]
    BrokenStream {
        account_id: AccountId,
        offset: u64,
        source: tally_domain::ledger::StreamError,
    },
    /// An event would go to a partition whose chain head this decider never learned: its key
    /// and its command's key disagree. Linking it from a guess would break the chain.
    #[error("an event for account {account_id} goes to partition {partition}, not caught up")]
    UnknownChainHead {
        account_id: AccountId,
        partition: u32,
    },
}

/// The streams of the partitions one decider owns.
#[derive(Default)]
struct Streams {
    ledgers: HashMap<AccountId, AccountLedger>,
    /// Per events partition, the offset up to which its events are applied.
    applied_to: HashMap<u32, u64>,
    /// Per events partition, the hash of its last committed event: what the next event
    /// written there chains from.
    heads: HashMap<u32, EventHash>,
    /// Partitions assigned but not yet decided in. Before the first decision in one, its
    /// events are read again from where the rebuild stopped: a member that lost the partition
    /// may have had a transaction completing while the rebuild read, whose events became
    /// visible only after. The consumer hands over the first command only once the group's
    /// offsets are stable, which is after that transaction completed.
    unchecked: HashSet<u32>,
}

/// Runs a decider until `shutdown` turns true. A failed or fenced commit rejoins the group,
/// which rebuilds the streams from the log, so memory never runs ahead of what the log holds.
pub async fn run(
    log: Arc<dyn EventLog>,
    settings: DeciderSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DecideError> {
    // Endless on purpose: a decider lives as long as the process; shutdown ends it.
    loop {
        match run_member(&log, &settings, &mut shutdown).await {
            Ok(()) => return Ok(()),
            // A fenced member wrote nothing: its partitions went to another member (after a
            // stall, say). It joins the group again as a new member and rebuilds whatever
            // partitions it is given from the log, so nothing it held in memory survives.
            Err(DecideError::Log(error)) => {
                warn!(error = %error, "decider lost its membership; rejoining");
                tokio::time::sleep(Duration::from_millis(settings.rejoin_delay_ms)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn run_member(
    log: &Arc<dyn EventLog>,
    settings: &DeciderSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), DecideError> {
    let mut consumer = log.consumer(GROUP, &[Topic::Commands]).await?;
    let mut streams = Streams::default();
    let wait = Duration::from_millis(settings.poll_wait_ms);
    while !*shutdown.borrow() {
        match consumer.poll(settings.batch_records_max, wait).await? {
            Polled::Assigned(partitions) => {
                for partition in partitions {
                    streams.catch_up(log.as_ref(), partition.partition).await?;
                    streams.unchecked.insert(partition.partition);
                }
            }
            Polled::Revoked(partitions) => streams.drop_partitions(log.as_ref(), &partitions),
            Polled::Records(batch) if batch.is_empty() => {}
            Polled::Records(batch) => {
                streams.check_before_deciding(log.as_ref(), &batch).await?;
                decide_batch(log.as_ref(), consumer.as_mut(), &mut streams, batch).await?;
            }
        }
    }
    Ok(())
}

/// Decides a batch of commands, links their events into their partitions' chains, and commits
/// them with the consumed offsets. The chain heads move only once the commit succeeded: a
/// batch that was fenced or aborted left nothing in the log to chain from.
#[instrument(skip_all, fields(commands = batch.len()))]
async fn decide_batch(
    log: &dyn EventLog,
    consumer: &mut dyn Consumer,
    streams: &mut Streams,
    batch: Vec<Record>,
) -> Result<(), DecideError> {
    let consumed = consumed_offsets(&batch);
    let mut produced = Vec::with_capacity(batch.len() * 3);
    let mut heads = HashMap::new();
    for record in batch {
        let Some(command) = decode_command(&record) else {
            continue;
        };
        if !ledger::admitted(&command.command, record.timestamp_ms) {
            // Stored after its admission window: the API has stopped waiting for it and may
            // have renewed its request, so deciding it could apply the request twice.
            let (partition, offset) = (record.partition, record.offset);
            let command_id = command.command_id;
            warn!(partition, offset, %command_id, "command stored too late to be decided");
            continue;
        }
        for envelope in streams.decide(command).await {
            produced.push(streams.link(log, &mut heads, envelope)?);
        }
    }
    let events = produced.len();
    consumer.commit(consumed, produced).await?;
    streams.heads.extend(heads);
    debug!(events, "batch decided");
    Ok(())
}

fn decode_command(record: &Record) -> Option<CommandEnvelope> {
    match CommandEnvelope::from_json(&record.payload) {
        Ok(command) => Some(command),
        Err(cause) => {
            // No retry can make these bytes a command; skipping is the only way forward, and
            // the record stays in the log for audit.
            let (partition, offset) = (record.partition, record.offset);
            error!(partition, offset, error = %cause, "undecodable command skipped");
            None
        }
    }
}

fn consumed_offsets(batch: &[Record]) -> Vec<ConsumedOffset> {
    let mut next: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    for record in batch {
        let offset = next.entry(record.topic_partition()).or_default();
        *offset = (*offset).max(record.offset + 1);
    }
    next.into_iter()
        .map(|(partition, next_offset)| ConsumedOffset {
            partition,
            next_offset,
        })
        .collect()
}

impl Streams {
    async fn decide(&mut self, envelope: CommandEnvelope) -> Vec<EventEnvelope> {
        let account_id = envelope.account_id;
        let ledger = self
            .ledgers
            .entry(account_id)
            .or_insert_with(|| AccountLedger::new(account_id));
        let context = CommandContext {
            command_id: envelope.command_id,
            issued_at: envelope.issued_at,
            now: Utc::now(),
        };
        let decision = ledger.decide(envelope.command, context).await;
        if let Some(code) = decision.rejection {
            let command_id = envelope.command_id;
            info!(%account_id, %command_id, rejection = code, "command rejected");
        }
        decision.events
    }

    /// Links a decided event after the head of its partition in this batch (`batch_heads`,
    /// which starts from the committed heads) and makes it a record of the events topic.
    fn link(
        &self,
        log: &dyn EventLog,
        batch_heads: &mut HashMap<u32, EventHash>,
        mut envelope: EventEnvelope,
    ) -> Result<NewRecord, DecideError> {
        let key = envelope.account_id.to_string();
        let partition = log.partition_for(&key);
        let head = match batch_heads.get(&partition) {
            Some(head) => *head,
            None => *self
                .heads
                .get(&partition)
                .ok_or(DecideError::UnknownChainHead {
                    account_id: envelope.account_id,
                    partition,
                })?,
        };
        let payload = envelope.link(head);
        if let Some(hash) = envelope.hash {
            batch_heads.insert(partition, hash);
        }
        Ok(NewRecord {
            topic: Topic::Events,
            key,
            payload,
        })
    }

    /// Applies the events of one partition from where its streams stand to the partition's
    /// end: every event on first assignment.
    #[instrument(skip_all, fields(partition))]
    async fn catch_up(&mut self, log: &dyn EventLog, partition: u32) -> Result<(), DecideError> {
        let events = TopicPartition {
            topic: Topic::Events,
            partition,
        };
        let end = log.end_offset(events).await?;
        let from = self.applied_to.get(&partition).copied().unwrap_or(0);
        let mut next = from;
        while next < end {
            let records = log.read(events, next, REBUILD_READ_RECORDS_MAX).await?;
            // An empty read means only transaction markers remain before the end.
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in &records {
                self.replay(record)?;
            }
        }
        self.applied_to.insert(partition, next.max(end));
        self.heads.entry(partition).or_insert(EventHash::GENESIS);
        info!(partition, from, to = next.max(end), "partition caught up");
        Ok(())
    }

    /// Catches up every partition of the batch that has not been decided in since it was
    /// assigned.
    async fn check_before_deciding(
        &mut self,
        log: &dyn EventLog,
        batch: &[Record],
    ) -> Result<(), DecideError> {
        let partitions: BTreeSet<u32> = batch.iter().map(|record| record.partition).collect();
        for partition in partitions {
            if self.unchecked.remove(&partition) {
                self.catch_up(log, partition).await?;
            }
        }
        Ok(())
    }

    fn replay(&mut self, record: &Record) -> Result<(), DecideError> {
        let (partition, offset) = (record.partition, record.offset);
        let envelope = EventEnvelope::from_json(&record.payload).map_err(|source| {
            DecideError::CorruptEvent {
                partition,
                offset,
                source,
            }
        })?;
        self.follow_chain(partition, offset, &envelope);
        let account_id = envelope.account_id;
        let ledger = self
            .ledgers
            .entry(account_id)
            .or_insert_with(|| AccountLedger::new(account_id));
        ledger
            .apply(&envelope)
            .map_err(|source| DecideError::BrokenStream {
                account_id,
                offset,
                source,
            })
    }

    /// Moves the partition's chain head to a stored event. Its content is not hashed again
    /// here, which would slow every rebuild; `tally verify` does that. A link that does not
    /// match is only logged: the log is what it is, and the next event chains from it.
    fn follow_chain(&mut self, partition: u32, offset: u64, envelope: &EventEnvelope) {
        let Some(hash) = envelope.hash else {
            debug!(
                partition,
                offset, "event without a hash; the chain skips it"
            );
            return;
        };
        let head = self
            .heads
            .get(&partition)
            .copied()
            .unwrap_or(EventHash::GENESIS);
        if envelope.previous_hash != Some(head) {
            error!(
                partition,
                offset, "event does not chain from the one before it"
            );
        }
        self.heads.insert(partition, hash);
    }

    fn drop_partitions(&mut self, log: &dyn EventLog, partitions: &[TopicPartition]) {
        let owned_elsewhere = |account_id: &AccountId| {
            let partition = log.partition_for(&account_id.to_string());
            partitions
                .iter()
                .any(|revoked| revoked.partition == partition)
        };
        self.ledgers
            .retain(|account_id, _| !owned_elsewhere(account_id));
        for revoked in partitions {
            self.applied_to.remove(&revoked.partition);
            self.heads.remove(&revoked.partition);
            self.unchecked.remove(&revoked.partition);
        }
    }
}
