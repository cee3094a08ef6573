//! The worker: consume a batch of events, act on it, commit it with what it produced.
//!
//! Each batch goes through the same steps:
//! 1. bring each partition's [`PartitionState`] up to the batch's first event (rebuilding it
//!    from the partition's start after an assignment or a restart), then fold the batch's
//!    events into it, collecting their [`effects`](crate::effects);
//! 2. buy the batch's airtime, and after a rebuild again that of reservations still open
//!    (see [`Worker::plan`]), the calls running concurrently up to a bound, each retried until
//!    the provider answers;
//! 3. in one [`Consumer::commit`], append the notifications and `CompleteAirtime` commands
//!    and commit the batch's offsets.
//!
//! A batch is committed whole or not at all. When shutdown comes before every provider has
//! answered, the worker stops without committing: the batch is redelivered on the next start
//! and the provider, deduplicating by transaction id, answers it again without buying twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_commands::log::{
    ConsumedOffset, Consumer, EventLog, LogError, NewRecord, Polled, Record, Topic, TopicPartition,
};
use tally_commands::message::CommandEnvelope;
use tally_domain::notification::NotificationRequested;
use tally_domain::{AccountId, AirtimeOutcome, EventEnvelope, LedgerCommand, TransactionId};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Span;

use crate::airtime::{AirtimeProvider, AirtimeRequest};
use crate::effects::{airtime_request, effects_of};
use crate::retry::{RetryPolicy, backoff_ceiling_ms, chain, jittered_ms, send_until_answered};
use crate::settings::ProcessorSettings;
use crate::shutdown;
use crate::state::PartitionState;

/// The consumer group the processor reads the events topic as.
pub const GROUP: &str = "processor";

/// Pause before a fenced processor joins its group again, so that a member fenced in a loop
/// does not spin.
const REJOIN_DELAY: Duration = Duration::from_millis(200);

/// Why the worker stopped before shutdown was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("invalid processor settings: {0}")]
    InvalidSettings(&'static str),

    /// The log failed for good.
    #[error("the event log failed")]
    Log(#[source] LogError),

    /// An event this processor cannot read, such as a newer event version. Skipping it could
    /// skip a top-up, so the worker stops until someone deploys a processor that reads it.
    #[error("the event at offset {offset} of events partition {partition} cannot be read")]
    UnreadableEvent {
        partition: u32,
        offset: u64,
        #[source]
        source: serde_json::Error,
    },

    /// Rebuilding a partition's state found no event where one must be.
    #[error("events partition {partition} has no event at offset {offset}")]
    PartitionGap { partition: u32, offset: u64 },
}

/// Runs the processor until shutdown is asked for (`true` on `shutdown`, or its sender
/// dropped), then returns `Ok`. A processor fenced by another member joins its group again.
/// Returns an error when the log fails for good or when an event cannot be read.
pub async fn run(
    log: Arc<dyn EventLog>,
    provider: Arc<dyn AirtimeProvider>,
    settings: ProcessorSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    settings
        .validate()
        .map_err(ProcessorError::InvalidSettings)?;
    let consumer = log
        .consumer(GROUP, &[Topic::Events])
        .await
        .map_err(ProcessorError::Log)?;
    tracing::info!(group = GROUP, "processor started");

    let buyer = AirtimeBuyer {
        provider,
        in_flight_max: settings.airtime_in_flight_max,
        policy: settings.retry_policy(),
        shutdown: shutdown.clone(),
    };
    let mut worker = Worker {
        log,
        buyer,
        settings,
        consumer,
        states: HashMap::new(),
        shutdown,
    };
    worker.run().await?;
    tracing::info!(group = GROUP, "processor stopped");
    Ok(())
}

struct Worker {
    log: Arc<dyn EventLog>,
    buyer: AirtimeBuyer,
    settings: ProcessorSettings,
    consumer: Box<dyn Consumer>,
    /// The state of every owned events partition, as of the last event handled in it.
    states: HashMap<TopicPartition, PartitionState>,
    shutdown: watch::Receiver<bool>,
}

/// How a batch ended.
#[derive(Debug, PartialEq, Eq)]
enum BatchEnd {
    Committed,
    /// Shutdown came before every provider answered; nothing was committed.
    Stopped,
}

/// What a batch's events produced before any provider was called.
#[derive(Default)]
struct Plan {
    notifications: Vec<NewRecord>,
    airtime: Vec<AirtimeJob>,
}

struct AirtimeJob {
    account_id: AccountId,
    request: AirtimeRequest,
}

impl Worker {
    async fn run(&mut self) -> Result<(), ProcessorError> {
        let wait = Duration::from_millis(self.settings.poll_wait_ms);

        // Endless until shutdown or a lasting failure. Shutdown is checked between polls, and
        // a poll waits at most `poll_wait_ms`; polls are not cancelled, since the port does
        // not promise that cancelling one is safe.
        while !shutdown::is_requested(&self.shutdown) {
            match self.step(wait).await {
                Ok(BatchEnd::Stopped) => break,
                Ok(_) => {}
                Err(ProcessorError::Log(error)) if member_replaceable(&error) => {
                    self.rejoin(&error).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// One poll and what it asks for.
    async fn step(&mut self, wait: Duration) -> Result<BatchEnd, ProcessorError> {
        let polled = self
            .consumer
            .poll(self.settings.batch_records_max, wait)
            .await
            .map_err(ProcessorError::Log)?;
        match polled {
            Polled::Assigned(partitions) => self.assign(&partitions),
            Polled::Revoked(partitions) => self.revoke(&partitions),
            Polled::Records(records) if records.is_empty() => {}
            Polled::Records(records) => return self.handle_batch(records).await,
        }
        Ok(BatchEnd::Committed)
    }

    /// A fenced member wrote nothing: its partitions went to another member (after a stall,
    /// say). A member whose log client failed for good (a broker restart can leave a
    /// transactional producer unusable) committed nothing since its last commit. Either way
    /// it joins the group again as a new member, from empty state; whatever partitions it is
    /// given are rebuilt from the log as their first events arrive. Joining is tried until it
    /// succeeds or shutdown comes: the log may still be coming back.
    async fn rejoin(&mut self, cause: &LogError) -> Result<(), ProcessorError> {
        tracing::warn!(group = GROUP, error = %cause, "processor lost its membership; rejoining");
        self.states.clear();
        // Endless while the log refuses to let the member join, which it does only while the
        // cluster is unreachable; shutdown ends it.
        loop {
            tokio::time::sleep(REJOIN_DELAY).await;
            match self.log.consumer(GROUP, &[Topic::Events]).await {
                Ok(consumer) => {
                    self.consumer = consumer;
                    return Ok(());
                }
                Err(error) if member_replaceable(&error) => {
                    if shutdown::is_requested(&self.shutdown) {
                        return Ok(());
                    }
                    tracing::warn!(group = GROUP, %error, "cannot join the group yet; retrying");
                }
                Err(error) => return Err(ProcessorError::Log(error)),
            }
        }
    }

    /// Starts every assigned partition from an empty state; the first event handled in it
    /// rebuilds the state up to that event.
    fn assign(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            self.states.insert(*partition, PartitionState::default());
        }
        tracing::info!(partitions = partitions.len(), "partitions assigned");
    }

    fn revoke(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            self.states.remove(partition);
        }
        tracing::info!(partitions = partitions.len(), "partitions revoked");
    }

    #[tracing::instrument(
        skip_all,
        fields(records = records.len(), partitions, notifications, airtime_requests)
    )]
    async fn handle_batch(&mut self, records: Vec<Record>) -> Result<BatchEnd, ProcessorError> {
        let consumed = consumed_offsets(&records);
        let plan = self.plan(&records).await?;
        let span = Span::current();
        span.record("partitions", consumed.len());
        span.record("notifications", plan.notifications.len());
        span.record("airtime_requests", plan.airtime.len());

        let Some(completions) = self.buyer.buy(plan.airtime).await else {
            tracing::info!("shutdown before every provider answered; batch left for redelivery");
            return Ok(BatchEnd::Stopped);
        };

        let mut produced = plan.notifications;
        produced.extend(completions);
        self.commit(consumed, produced).await?;
        tracing::debug!("batch committed");
        Ok(BatchEnd::Committed)
    }

    /// Folds the batch into the partitions' states and collects what its events ask for.
    ///
    /// A partition whose state had to be rebuilt first (after an assignment or a restart) may
    /// hold reservations whose top-up was asked for before, by this member or another, and
    /// whose answer never became an event: it may still be on its way, or the commit that
    /// carried it may have been lost with a broker. Those still open once the batch is folded
    /// in are asked for again. The provider deduplicates by transaction id, so this buys
    /// nothing twice, and the decider refuses a second answer as already final.
    async fn plan(&mut self, records: &[Record]) -> Result<Plan, ProcessorError> {
        let mut plan = Plan::default();
        let mut asked_again: Vec<(TopicPartition, TransactionId)> = Vec::new();
        for record in records {
            let partition = record.topic_partition();
            let state = self.states.entry(partition).or_default();
            if state.follows(record.offset) {
                state.skip_to(record.offset);
            } else {
                let read_max = self.settings.rebuild_read_records_max;
                catch_up(&*self.log, partition, state, record.offset, read_max).await?;
                asked_again.retain(|(earlier, _)| *earlier != partition);
                let reserved = state.reserved_transactions();
                asked_again.extend(reserved.map(|transaction_id| (partition, transaction_id)));
            }

            let envelope = decode(record)?;
            let effects = effects_of(&envelope, state);
            state.apply(record.offset, &envelope);

            let notifications = effects.notifications.iter().map(notification_record);
            plan.notifications.extend(notifications);
            if let Some(request) = effects.airtime {
                let account_id = envelope.account_id;
                plan.airtime.push(AirtimeJob {
                    account_id,
                    request,
                });
            }
        }

        let mut again = Vec::new();
        for (partition, transaction_id) in asked_again {
            let Some(state) = self.states.get(&partition) else {
                continue;
            };
            let account_id = state.open_transaction(transaction_id).map(|t| t.account_id);
            if let (Some(account_id), Some(request)) =
                (account_id, airtime_request(state, transaction_id))
            {
                again.push(AirtimeJob {
                    account_id,
                    request,
                });
            }
        }
        if !again.is_empty() {
            tracing::info!(
                reservations = again.len(),
                "asking again for the top-ups of reservations open when partitions were rebuilt"
            );
            again.append(&mut plan.airtime);
            plan.airtime = again;
        }
        Ok(plan)
    }

    /// Appends what the batch produced and commits its offsets, in one step. Only storage
    /// failures are retried, a bounded number of times; a fenced or refused commit is final.
    ///
    /// A storage failure may hide a commit that landed. Retrying it then appends the batch's
    /// records twice, which both readers tolerate: notification ids repeat, and the decider
    /// refuses a second `CompleteAirtime` as `transaction_already_final`.
    async fn commit(
        &mut self,
        consumed: Vec<ConsumedOffset>,
        produced: Vec<NewRecord>,
    ) -> Result<(), ProcessorError> {
        let policy = self.settings.retry_policy();
        let mut attempt = 1;
        loop {
            let committed = self
                .consumer
                .commit(consumed.clone(), produced.clone())
                .await;
            let error = match committed {
                Ok(_positions) => return Ok(()),
                Err(error) => error,
            };
            let retryable = matches!(error, LogError::Storage(_));
            if !retryable || attempt >= self.settings.commit_attempts_max {
                return Err(ProcessorError::Log(error));
            }

            let delay_ms = jittered_ms(backoff_ceiling_ms(attempt, &policy), &mut rand::rng());
            tracing::warn!(attempt, delay_ms, error = %chain(&error), "commit failed; retrying");
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            attempt += 1;
        }
    }
}

/// Calls the airtime provider for a batch's top-ups.
struct AirtimeBuyer {
    provider: Arc<dyn AirtimeProvider>,
    in_flight_max: usize,
    policy: RetryPolicy,
    shutdown: watch::Receiver<bool>,
}

impl AirtimeBuyer {
    /// Buys every top-up of a batch, at most `in_flight_max` at once, and returns the
    /// `CompleteAirtime` commands in the order of their events; `None` when shutdown came
    /// before every provider answered.
    async fn buy(&self, jobs: Vec<AirtimeJob>) -> Option<Vec<NewRecord>> {
        let permits = Arc::new(Semaphore::new(self.in_flight_max));
        let policy = self.policy;
        let mut tasks = JoinSet::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let provider = Arc::clone(&self.provider);
            let permits = Arc::clone(&permits);
            let mut shutdown = self.shutdown.clone();
            tasks.spawn(async move {
                // The semaphore is never closed, so waiting for a permit cannot fail.
                let _permit = permits.acquire_owned().await.ok();
                let outcome =
                    send_until_answered(&*provider, &job.request, &policy, &mut shutdown).await;
                (index, job, outcome)
            });
        }

        let mut completions = Vec::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            let (index, job, outcome) = match joined {
                Ok(done) => done,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_cancelled) => return None,
            };
            // Returning drops the join set, which aborts the calls still under way: without
            // every answer the batch is not committed, so theirs would be thrown away anyway.
            let outcome = outcome?;
            log_outcome(&job, &outcome);
            completions.push((index, completion_record(&job, outcome)));
        }
        completions.sort_by_key(|(index, _)| *index);
        Some(completions.into_iter().map(|(_, record)| record).collect())
    }
}

/// Brings `state` up to `offset` by applying the partition's events before it: from where the
/// state stands, or from the partition's start when the state is past `offset` (the partition
/// is being read again). Applies no effects: they were carried out when the events were new.
async fn catch_up(
    log: &dyn EventLog,
    partition: TopicPartition,
    state: &mut PartitionState,
    offset: u64,
    read_records_max: usize,
) -> Result<(), ProcessorError> {
    if state.next_offset() == offset {
        return Ok(());
    }
    if state.next_offset() > offset {
        *state = PartitionState::default();
    }
    let started = Instant::now();
    let from_offset = state.next_offset();

    // Each pass applies at least one event or finds none left before `offset`, so the loop
    // ends. Offsets without an event are the log's transaction markers.
    while state.next_offset() < offset {
        let remaining = usize::try_from(offset - state.next_offset()).unwrap_or(usize::MAX);
        let read_max = remaining.min(read_records_max);
        let records = log
            .read(partition, state.next_offset(), read_max)
            .await
            .map_err(ProcessorError::Log)?;
        let before: Vec<&Record> = records
            .iter()
            .take_while(|record| record.offset < offset)
            .collect();
        if before.is_empty() {
            state.skip_to(offset);
            break;
        }
        for record in before {
            state.apply(record.offset, &decode(record)?);
        }
    }

    tracing::info!(
        partition = partition.partition,
        from_offset,
        to_offset = offset,
        open_transactions = state.open_transaction_count(),
        elapsed_ms = started.elapsed().as_millis(),
        "partition state rebuilt"
    );
    Ok(())
}

fn decode(record: &Record) -> Result<EventEnvelope, ProcessorError> {
    EventEnvelope::from_json(&record.payload).map_err(|source| ProcessorError::UnreadableEvent {
        partition: record.partition,
        offset: record.offset,
        source,
    })
}

/// One past the last offset of each partition in the batch.
fn consumed_offsets(records: &[Record]) -> Vec<ConsumedOffset> {
    let mut next: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    for record in records {
        let next_offset = next.entry(record.topic_partition()).or_default();
        *next_offset = (*next_offset).max(record.offset + 1);
    }
    let offset = |(partition, next_offset)| ConsumedOffset {
        partition,
        next_offset,
    };
    next.into_iter().map(offset).collect()
}

fn notification_record(notification: &NotificationRequested) -> NewRecord {
    // Every notification the processor requests is about an account, keyed by it.
    let key = notification
        .account_id
        .map(|account_id| account_id.to_string())
        .unwrap_or_default();
    NewRecord {
        topic: Topic::Notifications,
        key,
        payload: notification.to_json(),
    }
}

fn completion_record(job: &AirtimeJob, outcome: AirtimeOutcome) -> NewRecord {
    let command = LedgerCommand::CompleteAirtime {
        transaction_id: job.request.transaction_id,
        outcome,
    };
    CommandEnvelope::new(job.account_id, None, command).to_record()
}

fn log_outcome(job: &AirtimeJob, outcome: &AirtimeOutcome) {
    let transaction_id = job.request.transaction_id;
    match outcome {
        AirtimeOutcome::Delivered { provider_reference } => {
            tracing::debug!(%transaction_id, %provider_reference, "airtime delivered");
        }
        AirtimeOutcome::Rejected { provider_code } => {
            tracing::debug!(%transaction_id, %provider_code, "airtime rejected");
        }
    }
}

/// Whether a log failure ends only this member, so that a new one may carry on: fenced, or a
/// failure of the log's storage (the cluster), which may pass. A refused request or a locked
/// log ends the processor.
fn member_replaceable(error: &LogError) -> bool {
    matches!(error, LogError::Fenced | LogError::Storage(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: u32, offset: u64) -> Record {
        Record {
            topic: Topic::Events,
            partition,
            offset,
            key: String::new(),
            payload: Vec::new(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn each_partition_of_a_batch_is_consumed_up_to_its_last_record() {
        let records = [record(1, 7), record(0, 3), record(1, 8), record(0, 4)];
        let consumed: Vec<(u32, u64)> = consumed_offsets(&records)
            .iter()
            .map(|offset| (offset.partition.partition, offset.next_offset))
            .collect();
        assert_eq!(consumed, vec![(0, 5), (1, 9)]);
    }
}
