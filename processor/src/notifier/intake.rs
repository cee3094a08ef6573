//! The intake: notifications from the topic into the delivery log, then committed as consumed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tally_commands::log::{
    ConsumedOffset, Consumer, EventLog, LogError, Polled, Record, Topic, TopicPartition,
};
use tally_domain::notification::NotificationRequested;
use tally_projections::ReadStore;
use tokio::sync::watch;

use super::deliveries::{self, now_ms};
use super::{GROUP, NotifierError, NotifierSettings};
use crate::retry::{RetryPolicy, backoff_ceiling_ms, jittered_ms};
use crate::shutdown;

/// Pause before a fenced notifier joins its group again, so a member fenced in a loop does
/// not spin.
const REJOIN_DELAY: Duration = Duration::from_millis(200);

/// How a failing read store is retried by the intake: quickly at first, then every 5 s.
const STORE_RETRY: RetryPolicy = RetryPolicy {
    delay_ms_min: 100,
    delay_ms_max: 5_000,
    attempts_warn_max: 10,
};

pub(super) async fn run(
    log: Arc<dyn EventLog>,
    store: ReadStore,
    settings: NotifierSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NotifierError> {
    let mut consumer = join(&*log).await?;
    let wait = Duration::from_millis(settings.poll_wait_ms);

    // Endless until shutdown or a lasting failure of the log. Shutdown is checked between
    // polls, and a poll waits at most `poll_wait_ms`.
    while !shutdown::is_requested(&shutdown) {
        let polled = consumer.poll(settings.batch_records_max, wait).await;
        let result = match polled {
            Ok(Polled::Records(records)) if !records.is_empty() => {
                take(&store, &mut *consumer, &records, &mut shutdown).await
            }
            Ok(Polled::Assigned(partitions)) => {
                tracing::info!(partitions = partitions.len(), "notifications assigned");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {}
            // Fenced, or its client failed for good (as a broker restart can leave it): a new
            // member carries on from the committed offsets.
            Err(error @ (LogError::Fenced | LogError::Storage(_))) => {
                tracing::warn!(group = GROUP, %error, "notifier lost its membership; rejoining");
                consumer = rejoin(&*log, &shutdown).await?;
            }
            Err(error) => return Err(NotifierError::Log(error)),
        }
    }
    Ok(())
}

/// Joins the group again, trying until it succeeds or shutdown comes: the log may still be
/// coming back.
async fn rejoin(
    log: &dyn EventLog,
    shutdown: &watch::Receiver<bool>,
) -> Result<Box<dyn Consumer>, NotifierError> {
    // Endless while the cluster is unreachable; shutdown ends it with the last failure.
    loop {
        tokio::time::sleep(REJOIN_DELAY).await;
        match log.consumer(GROUP, &[Topic::Notifications]).await {
            Ok(consumer) => return Ok(consumer),
            Err(error @ LogError::Storage(_)) if !shutdown::is_requested(shutdown) => {
                tracing::warn!(group = GROUP, %error, "cannot join the group yet; retrying");
            }
            Err(error) => return Err(NotifierError::Log(error)),
        }
    }
}

async fn join(log: &dyn EventLog) -> Result<Box<dyn Consumer>, NotifierError> {
    log.consumer(GROUP, &[Topic::Notifications])
        .await
        .map_err(NotifierError::Log)
}

/// Puts a batch in the delivery log, then commits it as consumed. When shutdown comes while
/// the store is failing, nothing is committed and the batch is read again on the next start.
#[tracing::instrument(skip_all, fields(records = records.len()))]
async fn take(
    store: &ReadStore,
    consumer: &mut dyn Consumer,
    records: &[Record],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), LogError> {
    let requests: Vec<NotificationRequested> = records.iter().filter_map(decode).collect();
    if !insert_until_stored(store, &requests, shutdown).await {
        return Ok(());
    }
    consumer
        .commit(consumed_offsets(records), Vec::new())
        .await?;
    tracing::debug!(notifications = requests.len(), "notifications taken");
    Ok(())
}

/// A record no notifier could ever read is skipped, loudly: retrying it would stop every
/// notification behind it in its partition for good.
fn decode(record: &Record) -> Option<NotificationRequested> {
    match NotificationRequested::from_json(&record.payload) {
        Ok(request) => Some(request),
        Err(error) => {
            tracing::error!(
                topic = record.topic.name(),
                partition = record.partition,
                offset = record.offset,
                error = %error,
                "unreadable notification skipped"
            );
            None
        }
    }
}

/// Inserts until the store takes the rows (`true`) or shutdown is asked for (`false`).
async fn insert_until_stored(
    store: &ReadStore,
    requests: &[NotificationRequested],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    // Endless on purpose: a batch that is not stored must not be committed, and skipping it
    // would lose it. It stops when shutdown is asked for, during any backoff.
    let mut retry = 0_u32;
    loop {
        let error = match deliveries::insert_new(store, requests, now_ms()).await {
            Ok(()) => return true,
            Err(error) => error,
        };
        retry = retry.saturating_add(1);
        let delay_ms = jittered_ms(backoff_ceiling_ms(retry, &STORE_RETRY), &mut rand::rng());
        tracing::warn!(retry, delay_ms, error = %error, "delivery log insert failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            () = shutdown::requested(shutdown) => return false,
        }
    }
}

/// One past the last record of each partition in the batch.
fn consumed_offsets(records: &[Record]) -> Vec<ConsumedOffset> {
    let mut next: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    for record in records {
        let offset = next.entry(record.topic_partition()).or_default();
        *offset = (*offset).max(record.offset + 1);
    }
    let offset = |(partition, next_offset)| ConsumedOffset {
        partition,
        next_offset,
    };
    next.into_iter().map(offset).collect()
}
