//! The projector worker: follows the events and commands topics and applies every record to
//! the read tables exactly once.
//!
//! Exactly-once comes from the store, not the log: each batch is applied in one database
//! transaction together with the offsets it reaches, and on (re)assignment the projector seeks
//! the log to the offsets stored with the rows. It never commits offsets to its consumer group.
//! A batch that fails on a transient error is applied again from scratch, which is safe
//! because its transaction rolled back and its offsets did not move.

use std::collections::{BTreeSet, HashMap};
use std::error::Error;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use tally_commands::log::{Consumer, EventLog, LogError, Polled, Record, Topic, TopicPartition};
use tokio::sync::watch;

use crate::analysis;
use crate::backend::Backend;
use crate::batch::{self, Changes, Decoded, Loaded, OffsetAdvance};
use crate::error::ProjectionError;
use crate::queries::{self, StoredOffset};
use crate::store::ReadStore;
use crate::{with_pool, writes};

/// The projector's consumer group, and its name in `projection_offsets`.
pub const PROJECTION_NAME: &str = "projector";

/// Events make the read tables; commands show a transaction as ACCEPTED before its events.
const TOPICS: [Topic; 2] = [Topic::Events, Topic::Commands];

/// The largest batch accepted in settings: the embedded log serves at most this many records
/// per poll, and one transaction of this size still commits in well under a second.
const BATCH_RECORDS_LIMIT: usize = 10_000;

/// How the projector batches and retries. Defaults suit the embedded log on a small server.
#[derive(Clone, Debug)]
pub struct ProjectorSettings {
    /// The most records applied in one database transaction. Five thousand amortizes the
    /// commit and the per-statement round trips (on MariaDB, 1,000 applied about 7,000
    /// records a second and 5,000 about 11,000) while a batch's rows stay within a few
    /// megabytes.
    pub batch_records_max: usize,
    /// How long one poll waits for records. Short, so a quiet log still lets the projector
    /// notice shutdown promptly; the log wakes a waiting poll as soon as records land.
    pub poll_wait_ms: u64,
    /// How many times a step that failed on a transient error is tried again before the
    /// projector gives up and returns the error.
    pub retry_attempts_max: u32,
    /// The pause before the first retry; each further pause doubles, up to the maximum.
    pub retry_delay_ms_min: u64,
    /// The longest pause between two tries: with eight tries, about 11 s in all, enough to
    /// ride out a checkpoint or a busy writer but not to hide a dead disk.
    pub retry_delay_ms_max: u64,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        ProjectorSettings {
            batch_records_max: 5_000,
            poll_wait_ms: 50,
            retry_attempts_max: 8,
            retry_delay_ms_min: 50,
            retry_delay_ms_max: 5_000,
        }
    }
}

impl ProjectorSettings {
    fn validate(&self) -> Result<(), ProjectionError> {
        if !(1..=BATCH_RECORDS_LIMIT).contains(&self.batch_records_max) {
            return Err(ProjectionError::InvalidSettings(format!(
                "batch_records_max must be within 1..={BATCH_RECORDS_LIMIT}, not {}",
                self.batch_records_max
            )));
        }
        if self.retry_delay_ms_min > self.retry_delay_ms_max {
            return Err(ProjectionError::InvalidSettings(
                "retry_delay_ms_min must not exceed retry_delay_ms_max".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Runs the projector until `shutdown` turns true or its sender is dropped, or until an error
/// that retrying cannot fix (a corrupt read model, a fenced consumer, retries spent).
///
/// Shutdown is checked between batches: a batch being applied commits first, so stopping
/// loses nothing. A shutdown during the pause between retries stops at once with the error
/// being retried, since that batch never committed.
pub async fn run(
    log: Arc<dyn EventLog>,
    store: ReadStore,
    settings: ProjectorSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProjectionError> {
    settings.validate()?;
    let mut consumer = log.consumer(PROJECTION_NAME, &TOPICS).await?;
    tracing::info!(
        batch_records_max = settings.batch_records_max,
        "projector started"
    );

    // Where the store stands: the next offset to apply in each owned partition, and the
    // generation of the tables those offsets belong to.
    let mut positions: HashMap<TopicPartition, u64> = HashMap::new();
    let mut generation = 0;
    // Endless on purpose: the projector follows the log for the life of the process, and
    // stops through `shutdown` or an error.
    while !shutdown_requested(&shutdown) {
        match next_poll(consumer.as_mut(), &settings, &mut shutdown).await? {
            Polled::Assigned(partitions) => {
                // Every owned partition is resumed with the new ones, so that all positions
                // come from one generation of the tables.
                generation = resume(
                    &store,
                    consumer.as_mut(),
                    &partitions,
                    &mut positions,
                    &settings,
                    &mut shutdown,
                )
                .await?;
                tracing::info!(
                    partitions = positions.len(),
                    generation,
                    "partitions assigned; resuming from the store"
                );
            }
            Polled::Revoked(partitions) => {
                for partition in &partitions {
                    positions.remove(partition);
                }
                tracing::info!(partitions = partitions.len(), "partitions revoked");
            }
            Polled::Records(records) if records.is_empty() => {}
            Polled::Records(records) => {
                let records = drop_applied(consumer.as_mut(), &positions, records).await;
                if records.is_empty() {
                    continue;
                }
                let decoded = batch::decode(&records);
                match apply(&store, &decoded, Some(generation), &settings, &mut shutdown).await {
                    Ok(()) => {
                        for record in &records {
                            positions.insert(record.topic_partition(), record.offset + 1);
                        }
                    }
                    Err(
                        error @ (ProjectionError::TablesSwapped { .. }
                        | ProjectionError::OffsetsMoved { .. }),
                    ) => {
                        // The batch rolled back, and the store stands elsewhere than this
                        // projector thought: its tables were swapped for a rebuilt set (which
                        // stands at least as far as the ones it replaced), or another writer
                        // moved its offsets. Its offsets say what its rows hold, so resuming
                        // from them neither loses a record nor applies one twice.
                        generation = resume(
                            &store,
                            consumer.as_mut(),
                            &[],
                            &mut positions,
                            &settings,
                            &mut shutdown,
                        )
                        .await?;
                        tracing::warn!(%error, generation, "resumed from the store's offsets");
                    }
                    Err(error) => return Err(error),
                }
            }
        }
    }
    tracing::info!("projector stopped");
    Ok(())
}

/// What [`replay`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records applied (or skipped as undecodable) by this replay.
    pub records: u64,
    /// Batches, each applied in one database transaction with its offsets.
    pub batches: u64,
}

/// Rebuilds the read tables from the log: applies every record of every partition the
/// projector reads, from where the store's offsets stand (the start, in an empty store) to
/// the end each partition had when the replay reached it, in the same batches and database
/// transactions the projector uses. A replay cut short resumes where it stopped, and a
/// projector started on the store afterwards goes on from there.
///
/// It reads the log directly, not through the projector's consumer group, so it never takes
/// partitions from a live projector; it must not write to a store a live projector writes.
pub async fn replay(
    log: &dyn EventLog,
    store: &ReadStore,
    settings: &ProjectorSettings,
    progress: &Progress<'_>,
) -> Result<Replayed, ProjectionError> {
    replay_within(log, store, settings, None, progress).await
}

/// How far a replay has come, reported after every batch it applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Records applied so far.
    pub records: u64,
    /// Offsets behind the replay, out of `offsets_total`. Offsets measure the work: on Kafka
    /// they also count transaction markers, so they run ahead of records.
    pub offsets_done: u64,
    /// Offsets between where the store stood and where the replay stops, over every
    /// partition, as measured when it began.
    pub offsets_total: u64,
}

/// What a replay reports its progress to.
pub type Progress<'a> = dyn Fn(ReplayProgress) + Send + Sync + 'a;

/// Like [`replay`], but stops each partition where `until` says another store's projection
/// stopped (its `next_offset`; a partition `until` does not name is not read): the store then
/// holds exactly what that one held at those offsets, which is what an audit compares.
pub async fn replay_until(
    log: &dyn EventLog,
    store: &ReadStore,
    settings: &ProjectorSettings,
    until: &[StoredOffset],
    progress: &Progress<'_>,
) -> Result<Replayed, ProjectionError> {
    replay_within(log, store, settings, Some(until), progress).await
}

async fn replay_within(
    log: &dyn EventLog,
    store: &ReadStore,
    settings: &ProjectorSettings,
    until: Option<&[StoredOffset]>,
    progress: &Progress<'_>,
) -> Result<Replayed, ProjectionError> {
    settings.validate()?;
    let stored = store.offsets().await?;
    let mut ranges = Vec::new();
    for partition in 0..log.partition_count() {
        // Commands first, so that a transaction shows ACCEPTED before its events move it on,
        // as it does live.
        for topic in [Topic::Commands, Topic::Events] {
            let partition = TopicPartition { topic, partition };
            let from = next_offset(&stored, partition);
            let end = match until.map(|until| next_offset(until, partition)) {
                // Already there: the log need not be asked where the partition ends.
                Some(until) if until <= from => from,
                Some(until) => until.min(log.end_offset(partition).await?),
                None => log.end_offset(partition).await?,
            };
            ranges.push((partition, from..end));
        }
    }
    let mut tracker = Tracker {
        replayed: Replayed::default(),
        progress: ReplayProgress {
            offsets_total: ranges.iter().map(|(_, range)| range_len(range)).sum(),
            ..ReplayProgress::default()
        },
        report: progress,
    };
    for (partition, range) in ranges {
        let done_before = tracker.progress.offsets_done;
        replay_partition(log, store, settings, partition, range.clone(), &mut tracker).await?;
        tracker.progress.offsets_done = done_before + range_len(&range);
        (tracker.report)(tracker.progress);
    }
    Ok(tracker.replayed)
}

/// What a replay has done, and where it reports it.
struct Tracker<'a, 'b> {
    replayed: Replayed,
    progress: ReplayProgress,
    report: &'a Progress<'b>,
}

fn range_len(range: &Range<u64>) -> u64 {
    range.end.saturating_sub(range.start)
}

/// Applies the records of one partition whose offsets lie in `range`.
async fn replay_partition(
    log: &dyn EventLog,
    store: &ReadStore,
    settings: &ProjectorSettings,
    partition: TopicPartition,
    range: Range<u64>,
    tracker: &mut Tracker<'_, '_>,
) -> Result<(), ProjectionError> {
    let done_before = tracker.progress.offsets_done;
    // Nothing stops a replay half-way but an error; the sender stays alive so that retries
    // wait out their pauses.
    let (_never_sent, mut never) = watch::channel(false);
    let read = |from: u64| {
        let end = range.end;
        async move {
            if from >= end {
                return Ok(Vec::new());
            }
            let mut records = log
                .read(partition, from, settings.batch_records_max)
                .await?;
            records.truncate(records.partition_point(|record| record.offset < end));
            Ok::<_, LogError>(records)
        }
    };
    let mut records = read(range.start).await?;
    // An empty read means the end, or only transaction markers before it.
    while let Some(last) = records.last() {
        let decoded = batch::decode(&records);
        // The next batch is read while this one is written.
        let (applied, following) = tokio::join!(
            apply(store, &decoded, None, settings, &mut never),
            read(last.offset + 1)
        );
        applied?;
        tracker.replayed.records += records.len() as u64;
        tracker.replayed.batches += 1;
        tracker.progress.records += records.len() as u64;
        tracker.progress.offsets_done = done_before + (last.offset + 1 - range.start);
        (tracker.report)(tracker.progress);
        records = following?;
    }
    Ok(())
}

/// Records in the log the projection has not applied yet, over every partition it reads.
pub async fn lag(log: &dyn EventLog, store: &ReadStore) -> Result<u64, ProjectionError> {
    let stored = store.offsets().await?;
    let mut behind = 0;
    for topic in TOPICS {
        for partition in 0..log.partition_count() {
            let partition = TopicPartition { topic, partition };
            let end = log.end_offset(partition).await?;
            behind += end.saturating_sub(next_offset(&stored, partition));
        }
    }
    Ok(behind)
}

fn shutdown_requested(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Polls the consumer, retrying transient failures of the log.
async fn next_poll(
    consumer: &mut dyn Consumer,
    settings: &ProjectorSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Polled, ProjectionError> {
    let wait = Duration::from_millis(settings.poll_wait_ms);
    let mut backoff = Backoff::new(settings);
    loop {
        match consumer.poll(settings.batch_records_max, wait).await {
            Ok(polled) => return Ok(polled),
            Err(error) => backoff.pause(error.into(), shutdown).await?,
        }
    }
}

/// Drops the records of a batch that the store already holds, and moves the consumer back to
/// where the store stands in their partitions.
///
/// The consumer is moved to the store's offsets when partitions are assigned, but a consumer
/// that has just reconnected (after a broker restart, say) has been seen to deliver records
/// it fetched from the group's start before that move took. They were applied once already;
/// applying them again would be refused by the store's offset check and stop the projector.
async fn drop_applied(
    consumer: &mut dyn Consumer,
    positions: &HashMap<TopicPartition, u64>,
    mut records: Vec<Record>,
) -> Vec<Record> {
    let applied = |record: &Record| {
        positions
            .get(&record.topic_partition())
            .is_some_and(|&next| record.offset < next)
    };
    let stale: BTreeSet<TopicPartition> = (records.iter())
        .filter(|record| applied(record))
        .map(Record::topic_partition)
        .collect();
    if stale.is_empty() {
        return records;
    }
    records.retain(|record| !applied(record));
    for partition in stale {
        let next = positions[&partition];
        tracing::warn!(
            topic = partition.topic.name(),
            partition = partition.partition,
            next,
            "records already applied were delivered again; dropped, and the consumer moved"
        );
        if let Err(error) = consumer.seek(partition, next).await {
            // Dropping keeps the projection exact; a consumer left behind only reads more.
            tracing::warn!(%error, "could not move the consumer; it reads on from where it is");
        }
    }
    records
}

/// Moves the consumer to where the store says the projection stopped in every partition of
/// `positions` and in each of `assigned`, records those offsets in `positions`, and returns
/// the generation of the tables that hold them.
///
/// The generation is read before the offsets: a swap between the two reads leaves an old
/// generation with new offsets, which the next batch notices, and never the reverse.
async fn resume(
    store: &ReadStore,
    consumer: &mut dyn Consumer,
    assigned: &[TopicPartition],
    positions: &mut HashMap<TopicPartition, u64>,
    settings: &ProjectorSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, ProjectionError> {
    let mut backoff = Backoff::new(settings);
    let (generation, stored) = loop {
        let read =
            async { Ok::<_, ProjectionError>((store.generation().await?, store.offsets().await?)) };
        match read.await {
            Ok(read) => break read,
            Err(error) => backoff.pause(error, shutdown).await?,
        }
    };
    let owned: BTreeSet<TopicPartition> = positions.keys().chain(assigned).copied().collect();
    for partition in owned {
        let next_offset = next_offset(&stored, partition);
        consumer.seek(partition, next_offset).await?;
        positions.insert(partition, next_offset);
    }
    Ok(generation)
}

/// Applies a decoded batch, applying it again from scratch after a transient failure. With a
/// `generation`, the batch is refused unless the tables are still of that generation.
async fn apply(
    store: &ReadStore,
    batch: &[Decoded],
    generation: Option<u64>,
    settings: &ProjectorSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ProjectionError> {
    let mut backoff = Backoff::new(settings);
    loop {
        match apply_batch_of(store, batch, generation).await {
            Ok(()) => return Ok(()),
            Err(error) => backoff.pause(error, shutdown).await?,
        }
    }
}

/// Applies a batch and its offsets in one transaction, on whichever backend the store runs.
#[cfg(test)]
pub(crate) async fn apply_batch(
    store: &ReadStore,
    batch: &[Decoded],
) -> Result<(), ProjectionError> {
    apply_batch_of(store, batch, None).await
}

#[tracing::instrument(skip_all, fields(records = batch.len()))]
async fn apply_batch_of(
    store: &ReadStore,
    batch: &[Decoded],
    generation: Option<u64>,
) -> Result<(), ProjectionError> {
    let changes = with_pool!(store, pool => apply_batch_on(pool, batch, generation).await)?;
    log_applied(&changes);
    Ok(())
}

/// The transaction first reads the generation of the tables, under a shared lock on MySQL,
/// which a swap of the tables holds exclusively; then the stored offsets, so that no other
/// writer can move them before it commits: SQLite's `BEGIN IMMEDIATE` takes the database's
/// write lock, MySQL's `SELECT ... FOR UPDATE` the offsets' rows (and the gap where they will
/// go, before the first batch). The rows read after it cannot change either, as only a
/// projector holding those offsets writes them; InnoDB takes the snapshot they are read from
/// at the first plain read, after the lock is held, so it holds every batch committed before.
async fn apply_batch_on<DB: Backend>(
    pool: &Pool<DB>,
    batch: &[Decoded],
    generation: Option<u64>,
) -> Result<Changes, ProjectionError> {
    let touched = batch::touched(batch);
    let mut transaction = pool.begin_with(DB::BEGIN_WRITE).await?;
    let conn = &mut *transaction;

    if let Some(expected) = generation {
        let found = queries::generation::<DB>(conn, PROJECTION_NAME, DB::FOR_SHARE).await?;
        if found != expected {
            return Err(ProjectionError::TablesSwapped { expected, found });
        }
    }
    let stored = queries::stored_offsets_for_update::<DB>(conn, PROJECTION_NAME).await?;
    check_offsets(&stored, &batch::offset_advances(batch))?;
    let loaded = Loaded {
        accounts: queries::accounts_by_id::<DB>(conn, &touched.accounts).await?,
        stream_heads: queries::stream_heads::<DB>(conn, &touched.accounts).await?,
        transactions: queries::transactions_by_id::<DB>(conn, &touched.transactions).await?,
    };
    let changes = batch::fold(batch, loaded)?;

    writes::write::<DB>(conn, PROJECTION_NAME, &changes).await?;
    settle_analysis::<DB>(conn, &changes).await?;
    transaction.commit().await?;
    Ok(changes)
}

/// Moves the analysis rows the batch's transactions count in. Done last, just before the
/// commit, because on MySQL the rows it locks are shared with the projectors of every other
/// partition, which wait for them until this transaction ends.
async fn settle_analysis<DB: Backend>(
    conn: &mut DB::Connection,
    changes: &Changes,
) -> Result<(), ProjectionError> {
    if changes.analysis.is_empty() {
        return Ok(());
    }
    let days = changes.analysis.days();
    let current = queries::analysis_rows_for_update::<DB>(conn, &days).await?;
    let settled = analysis::settle(changes.analysis.clone(), &current)?;
    writes::write_analysis::<DB>(conn, &settled).await?;
    Ok(())
}

/// No partition of the batch may start before where the projection stopped: that would mean
/// a second projector writes to this store, or the consumer repeated records. It may start
/// after it, since a log with transactions spends offsets on its commit markers.
fn check_offsets(
    stored: &[StoredOffset],
    advances: &[OffsetAdvance],
) -> Result<(), ProjectionError> {
    for advance in advances {
        let stored = next_offset(stored, advance.partition);
        if advance.first_offset < stored {
            return Err(ProjectionError::OffsetsMoved {
                topic: advance.partition.topic.name(),
                partition: advance.partition.partition,
                stored,
                first: advance.first_offset,
            });
        }
    }
    Ok(())
}

/// The next offset the projection applies in `partition`, by the stored offsets: every record
/// before it is in the tables. 0 for a partition it has not applied from yet.
pub fn next_offset(stored: &[StoredOffset], partition: TopicPartition) -> u64 {
    stored
        .iter()
        .find(|offset| offset.topic_partition() == partition)
        .map_or(0, |offset| offset.next_offset)
}

fn log_applied(changes: &Changes) {
    let skipped: u64 = changes.offsets.iter().map(|o| o.skipped_records).sum();
    tracing::debug!(
        events = changes.account_events.len(),
        accounts = changes.accounts.len(),
        transactions = changes.transactions.len(),
        statement_lines = changes.statement_lines.len(),
        skipped,
        "batch applied"
    );
}

/// Exponential backoff for one step, bounded in tries and in delay.
struct Backoff {
    attempt: u32,
    attempts_max: u32,
    delay: Duration,
    delay_max: Duration,
}

impl Backoff {
    fn new(settings: &ProjectorSettings) -> Backoff {
        Backoff {
            attempt: 0,
            attempts_max: settings.retry_attempts_max,
            delay: Duration::from_millis(settings.retry_delay_ms_min),
            delay_max: Duration::from_millis(settings.retry_delay_ms_max),
        }
    }

    /// Waits before the next try of a step that failed with `error`. Gives the error back
    /// instead when it is not transient, when the tries are spent, or on shutdown.
    async fn pause(
        &mut self,
        error: ProjectionError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        if !error.is_transient() || self.attempt >= self.attempts_max {
            return Err(error);
        }
        self.attempt += 1;
        tracing::warn!(
            attempt = self.attempt,
            delay_ms = u64::try_from(self.delay.as_millis()).unwrap_or(u64::MAX),
            error = cause_chain(&error),
            "transient failure; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(self.delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Err(error),
        }
        self.delay = (self.delay * 2).min(self.delay_max);
        Ok(())
    }
}

/// An error and its sources, outermost first: `read store query failed: database is locked`.
fn cause_chain(error: &dyn Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use tally_commands::log::Record;
    use tally_domain::{AccountEvent, EventEnvelope, LedgerEvent, TransactionId};

    use super::*;
    use crate::backend_tests;
    use crate::sql::Sql;
    use crate::test_support::{TestBackend, TestStore};
    use crate::testing::*;

    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn records_delivered_again_below_the_stored_offset_are_dropped_and_skipped_over() {
        use tally_commands::log::NewRecord;
        use tally_commands::log::sqlite::{SqliteLog, SqliteLogSettings};

        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(SqliteLogSettings::new(dir.path(), 1))
            .await
            .unwrap();
        let record = || NewRecord {
            topic: Topic::Commands,
            key: "k".to_owned(),
            payload: b"{}".to_vec(),
        };
        log.append((0..5).map(|_| record()).collect())
            .await
            .unwrap();
        let mut consumer = log.consumer(PROJECTION_NAME, &TOPICS).await.unwrap();
        let wait = Duration::from_millis(100);
        while !matches!(consumer.poll(10, wait).await.unwrap(), Polled::Assigned(_)) {}
        let partition = TopicPartition {
            topic: Topic::Commands,
            partition: 0,
        };
        let delivered = log.read(partition, 0, 10).await.unwrap();
        let positions = HashMap::from([(partition, 3)]);

        let kept = drop_applied(consumer.as_mut(), &positions, delivered).await;

        let offsets: Vec<u64> = kept.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, [3, 4]);
        let next = loop {
            if let Polled::Records(records) = consumer.poll(10, wait).await.unwrap()
                && let Some(first) = records.first()
            {
                break first.offset;
            }
        };
        assert_eq!(next, 3, "the consumer was moved to the stored offset");
    }

    #[test]
    fn the_projector_can_be_spawned_on_a_multi_threaded_runtime() {
        fn check(log: Arc<dyn EventLog>, store: ReadStore, shutdown: watch::Receiver<bool>) {
            let projector = run(log, store, ProjectorSettings::default(), shutdown);
            assert_send(&projector);
        }
        let _ = check;
    }

    async fn apply_records(store: &ReadStore, records: &[Record]) -> Result<(), ProjectionError> {
        apply_batch(store, &batch::decode(records)).await
    }

    backend_tests!(
        a_batch_is_stored_with_its_offsets_and_reads_back_at_the_currency_scale,
        account_events_page_after_a_sequence_with_their_payloads,
        a_batch_that_breaks_a_balance_commits_neither_rows_nor_offsets,
        a_batch_that_starts_before_where_the_projection_stopped_is_refused,
        a_batch_may_start_after_where_the_projection_stopped,
        a_batch_blocked_by_another_writer_fails_with_an_error_worth_retrying,
        a_batch_for_tables_swapped_since_is_refused_and_writes_nothing,
    );

    async fn a_batch_for_tables_swapped_since_is_refused_and_writes_nothing(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let mut stream = Stream::new(7);
        let opened = stream.decide(open()).await;
        apply_batch_of(store, &batch::decode(&opened), Some(0))
            .await
            .unwrap();
        test.execute("UPDATE projection_control SET generation = 1")
            .await;
        let added = stream.decide(add_money(TransactionId::new(), "5")).await;

        let stale = apply_batch_of(store, &batch::decode(&added), Some(0)).await;
        let offsets_after_refusal = store.offsets().await.unwrap();
        let current = apply_batch_of(store, &batch::decode(&added), Some(1)).await;

        assert!(matches!(
            stale,
            Err(ProjectionError::TablesSwapped {
                expected: 0,
                found: 1
            })
        ));
        assert_eq!(offsets_after_refusal[0].next_offset, 1);
        current.unwrap();
        assert_eq!(store.generation().await.unwrap(), 1);
    }

    async fn a_batch_is_stored_with_its_offsets_and_reads_back_at_the_currency_scale(
        backend: TestBackend,
    ) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let mut stream = Stream::new(7);
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "69.5")).await);

        apply_records(store, &records).await.unwrap();

        let account = store.account(stream.account_id).await.unwrap().unwrap();
        assert_eq!(account.balance.to_string(), "69.50");
        let json = serde_json::to_value(&account).unwrap();
        assert_eq!(json["available"], "69.50");
        let stored = test
            .text("SELECT CAST(balance AS CHAR) FROM accounts")
            .await;
        let expected = match backend {
            TestBackend::Sqlite => "69.50",
            TestBackend::MySql => "69.5000",
        };
        assert_eq!(stored.as_deref(), Some(expected));
        let offsets = store.offsets().await.unwrap();
        assert_eq!(offsets.len(), 1);
        assert_eq!(
            (offsets[0].topic, offsets[0].next_offset),
            (Topic::Events, 4)
        );
    }

    async fn account_events_page_after_a_sequence_with_their_payloads(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let mut stream = Stream::new(7);
        let mut records = stream.decide(open()).await;
        records.extend(stream.decide(add_money(TransactionId::new(), "1")).await);
        apply_records(store, &records).await.unwrap();

        let page = store.account_events(stream.account_id, 1, 2).await.unwrap();

        let sequences: Vec<u64> = page.iter().map(|event| event.sequence).collect();
        assert_eq!(sequences, vec![2, 3]);
        assert_eq!(page[1].event_type, "AccountCredited");
        assert_eq!(page[1].payload["balanceAfter"], "1.00");
        assert_eq!(page[1].log_offset, 2);
    }

    async fn a_batch_that_breaks_a_balance_commits_neither_rows_nor_offsets(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let mut stream = Stream::new(7);
        let mut records = stream.decide(open()).await;
        let mut credit = stream.decide(add_money(TransactionId::new(), "5")).await;
        let mut envelope = EventEnvelope::from_json(&credit[1].payload).unwrap();
        if let LedgerEvent::Account(AccountEvent::AccountCredited { balance_after, .. }) =
            &mut envelope.event
        {
            *balance_after = Decimal::from(500);
        }
        credit[1].payload = envelope.to_json();
        records.extend(credit);

        let applied = apply_records(store, &records).await;

        assert!(matches!(
            applied,
            Err(ProjectionError::MoneyMismatch { .. })
        ));
        for table in [
            "accounts",
            "transactions",
            "account_events",
            "projection_offsets",
        ] {
            assert_eq!(test.count(table).await, 0, "{table}");
        }
    }

    async fn a_batch_that_starts_before_where_the_projection_stopped_is_refused(
        backend: TestBackend,
    ) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let mut stream = Stream::new(7);
        let records = stream.decide(open()).await;
        apply_records(store, &records).await.unwrap();

        let repeated = apply_records(store, &records).await;

        assert!(matches!(
            repeated,
            Err(ProjectionError::OffsetsMoved {
                stored: 1,
                first: 0,
                ..
            })
        ));
    }

    async fn a_batch_may_start_after_where_the_projection_stopped(backend: TestBackend) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let mut stream = Stream::new(7);
        let records = stream.decide(open()).await;
        apply_records(store, &records).await.unwrap();
        let mut later = stream.decide(add_money(TransactionId::new(), "5")).await;
        // A log with transactions spends an offset on each commit marker.
        for record in &mut later {
            record.offset += 1;
        }

        apply_records(store, &later).await.unwrap();

        let offsets = store.offsets().await.unwrap();
        assert!(
            offsets
                .iter()
                .any(|offset| offset.next_offset == later.last().unwrap().offset + 1)
        );
    }

    /// Another writer's uncommitted offsets: SQLite's write lock, InnoDB's row lock.
    async fn hold_offsets<DB: Backend>(pool: &Pool<DB>) -> sqlx::Transaction<'static, DB> {
        let mut transaction = pool.begin_with(DB::BEGIN_WRITE).await.unwrap();
        let insert = "INSERT INTO projection_offsets (projection, topic, partition_no, \
                      next_offset) VALUES (?, ?, 0, 0)";
        let insert = Sql::<DB>::new(insert)
            .bind(PROJECTION_NAME)
            .bind(Topic::Events.name());
        insert.execute(&mut transaction).await.unwrap();
        transaction
    }

    async fn a_batch_blocked_by_another_writer_fails_with_an_error_worth_retrying(
        backend: TestBackend,
    ) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let records = Stream::new(7).decide(open()).await;
        let held: Box<dyn std::any::Any + Send> = with_pool!(store, pool => {
            Box::new(hold_offsets(pool).await)
        });

        let applied = apply_records(store, &records).await;

        let error = applied.expect_err("the other writer holds the lock");
        assert!(error.is_transient(), "{error:?}");
        drop(held);
    }
}
