//! The embedded event log against a real SQLite database in a temporary directory.

mod log_conformance;

use log_conformance::{member, partition_of, payloads, poll_records, record};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{ConnectOptions, sqlite::SqliteConnectOptions};
use tally_commands::log::sqlite::{SqliteLog, SqliteLogSettings};
use tally_commands::log::{
    ConsumedOffset, EventLog, LogError, NewRecord, Polled, Topic, TopicPartition,
};
use tempfile::TempDir;

const PARTITION_COUNT: u32 = 4;

/// How long a test waits for something that should happen at once; generous for slow CI.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A poll wait far longer than `PROMPTLY`, so a poll that returns in time was woken.
const LONG_WAIT: Duration = Duration::from_secs(30);

async fn open(dir: &TempDir) -> Arc<SqliteLog> {
    SqliteLog::open(SqliteLogSettings::new(dir.path(), PARTITION_COUNT))
        .await
        .expect("log opens")
}

#[tokio::test]
async fn append_then_read_returns_records_in_order_with_gapless_offsets() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;
    let partition = partition_of(&*log, Topic::Events, "account-1");

    let first: Vec<NewRecord> = (0..5)
        .map(|i| record(Topic::Events, "account-1", &format!("e{i}")))
        .collect();
    let second: Vec<NewRecord> = (5..8)
        .map(|i| record(Topic::Events, "account-1", &format!("e{i}")))
        .collect();
    let first_positions = log.append(first).await.expect("first append");
    let second_positions = log.append(second).await.expect("second append");

    let offsets: Vec<u64> = first_positions
        .iter()
        .chain(&second_positions)
        .map(|position| position.offset)
        .collect();
    assert_eq!(offsets, (0..8).collect::<Vec<u64>>());
    let records = log.read(partition, 0, 100).await.expect("read");
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        offsets
    );
    assert_eq!(
        payloads(&records),
        (0..8).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    assert!(
        records
            .iter()
            .all(|r| r.key == "account-1" && r.timestamp_ms > 0)
    );
    assert_eq!(log.end_offset(partition).await.expect("end offset"), 8);
    assert_eq!(
        payloads(&log.read(partition, 6, 1).await.expect("read")),
        vec!["e6"]
    );
}

#[tokio::test]
async fn a_thousand_concurrent_appends_from_fifty_tasks_land_exactly_once_with_gapless_offsets() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;

    let tasks: Vec<_> = (0..50)
        .map(|task| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for i in 0..20 {
                    let key = format!("account-{}", (task + i) % 7);
                    let payload = format!("{task}-{i}");
                    let landed = log
                        .append(vec![record(Topic::Events, &key, &payload)])
                        .await;
                    positions.extend(landed.expect("append"));
                }
                positions
            })
        })
        .collect();
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for task in tasks {
        for position in task.await.expect("task finishes") {
            per_partition
                .entry(position.partition)
                .or_default()
                .push(position.offset);
        }
    }

    let mut payloads_seen = BTreeSet::new();
    for (partition, mut offsets) in per_partition {
        offsets.sort_unstable();
        let count = offsets.len() as u64;
        assert_eq!(
            offsets,
            (0..count).collect::<Vec<u64>>(),
            "partition {partition}"
        );
        let tp = TopicPartition {
            topic: Topic::Events,
            partition,
        };
        let records = log.read(tp, 0, 10_000).await.expect("read");
        assert_eq!(records.len() as u64, count);
        assert_eq!(log.end_offset(tp).await.expect("end offset"), count);
        payloads_seen.extend(payloads(&records));
    }
    assert_eq!(
        payloads_seen.len(),
        1_000,
        "every append landed exactly once"
    );
}

#[tokio::test]
async fn a_consumer_resumes_from_committed_offsets_after_the_log_is_reopened() {
    let dir = TempDir::new().expect("temp dir");
    let partition;
    {
        let log = open(&dir).await;
        partition = partition_of(&*log, Topic::Commands, "account-1");
        let records = (0..5).map(|i| record(Topic::Commands, "account-1", &format!("c{i}")));
        log.append(records.collect()).await.expect("append");

        let mut consumer = member(&*log, "processor", &[Topic::Commands]).await;
        let read = poll_records(consumer.as_mut(), 5).await;
        assert_eq!(payloads(&read), vec!["c0", "c1", "c2", "c3", "c4"]);
        let consumed = vec![ConsumedOffset {
            partition,
            next_offset: 3,
        }];
        consumer.commit(consumed, Vec::new()).await.expect("commit");
    }

    let log = open(&dir).await;
    let mut consumer = log
        .consumer("processor", &[Topic::Commands])
        .await
        .expect("joins");
    let assigned = consumer.poll(10, Duration::ZERO).await.expect("first poll");
    let Polled::Assigned(partitions) = assigned else {
        panic!("expected assignment")
    };
    assert_eq!(partitions.len(), PARTITION_COUNT as usize);
    assert!(partitions.iter().all(|p| p.topic == Topic::Commands));
    assert_eq!(
        payloads(&poll_records(consumer.as_mut(), 2).await),
        vec!["c3", "c4"]
    );
}

#[tokio::test]
async fn a_commit_makes_its_produced_records_and_its_offsets_visible_together() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    log.append(vec![record(Topic::Commands, "account-1", "open")])
        .await
        .expect("append");

    let mut consumer = member(&*log, "decider", &[Topic::Commands]).await;
    poll_records(consumer.as_mut(), 1).await;
    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset: 1,
    }];
    let produced = vec![record(Topic::Events, "account-1", "opened")];
    let positions = consumer.commit(consumed, produced).await.expect("commit");

    assert_eq!(positions.len(), 1);
    assert_eq!(
        (positions[0].topic, positions[0].partition),
        (events.topic, events.partition)
    );
    assert_eq!(
        payloads(&log.read(events, 0, 10).await.expect("read")),
        vec!["opened"]
    );
    drop(consumer);
    let mut next = member(&*log, "decider", &[Topic::Commands]).await;
    let polled = next
        .poll(10, Duration::from_millis(50))
        .await
        .expect("poll");
    assert!(matches!(polled, Polled::Records(records) if records.is_empty()));
}

#[tokio::test]
async fn a_commit_that_fails_midway_leaves_neither_records_nor_offsets() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    log.append(vec![record(Topic::Commands, "account-1", "open")])
        .await
        .expect("append");
    poison_records_keyed(&dir, "poison").await;

    let mut consumer = member(&*log, "decider", &[Topic::Commands]).await;
    poll_records(consumer.as_mut(), 1).await;
    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset: 1,
    }];
    let produced = vec![
        record(Topic::Events, "account-1", "opened"),
        record(Topic::Events, "poison", "fails"),
    ];
    let result = consumer.commit(consumed, produced).await;

    assert!(
        matches!(result, Err(LogError::Storage(_))),
        "got {result:?}"
    );
    assert_eq!(log.end_offset(events).await.expect("end offset"), 0);
    assert!(log.read(events, 0, 10).await.expect("read").is_empty());
    let mut next = member(&*log, "decider", &[Topic::Commands]).await;
    assert_eq!(
        payloads(&poll_records(next.as_mut(), 1).await),
        vec!["open"]
    );

    // The writer recovers: the next append takes offset 0 of the untouched partition.
    let positions = log
        .append(vec![record(Topic::Events, "account-1", "ok")])
        .await;
    assert_eq!(positions.expect("append after a failure")[0].offset, 0);
}

/// Makes every insert of a record with `key` fail, from a connection of the test's own.
async fn poison_records_keyed(dir: &TempDir, key: &str) {
    let mut conn = SqliteConnectOptions::new()
        .filename(dir.path().join("log.db"))
        .connect()
        .await
        .expect("test connection");
    let trigger = format!(
        "CREATE TRIGGER poison BEFORE INSERT ON log_records WHEN NEW.record_key = '{key}' \
         BEGIN SELECT RAISE(ABORT, 'poisoned record'); END"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
        .execute(&mut conn)
        .await
        .expect("trigger");
}

#[tokio::test]
async fn a_second_member_of_a_group_fences_the_first() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    log.append(vec![record(Topic::Commands, "account-1", "open")])
        .await
        .expect("append");

    let mut first = member(&*log, "decider", &[Topic::Commands]).await;
    poll_records(first.as_mut(), 1).await;
    let mut second = member(&*log, "decider", &[Topic::Commands]).await;

    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset: 1,
    }];
    let produced = vec![record(Topic::Events, "account-1", "opened")];
    let result = first.commit(consumed, produced).await;
    assert!(matches!(result, Err(LogError::Fenced)), "got {result:?}");
    assert!(matches!(
        first.poll(10, Duration::ZERO).await,
        Err(LogError::Fenced)
    ));
    assert_eq!(log.end_offset(events).await.expect("end offset"), 0);
    assert_eq!(
        payloads(&poll_records(second.as_mut(), 1).await),
        vec!["open"]
    );
}

#[tokio::test]
async fn a_fenced_member_waiting_in_poll_is_woken_with_fenced() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;
    let mut first = member(&*log, "projector", &[Topic::Events]).await;

    let waiting = tokio::spawn(async move { first.poll(10, LONG_WAIT).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _second = member(&*log, "projector", &[Topic::Events]).await;

    let polled = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("woken promptly");
    assert!(matches!(
        polled.expect("task finishes"),
        Err(LogError::Fenced)
    ));
}

#[tokio::test]
async fn reopening_with_a_different_partition_count_fails() {
    let dir = TempDir::new().expect("temp dir");
    drop(open(&dir).await);

    let reopened = SqliteLog::open(SqliteLogSettings::new(dir.path(), PARTITION_COUNT + 1)).await;
    assert!(matches!(reopened, Err(LogError::Invalid(_))));
}

#[tokio::test]
async fn a_second_open_of_a_held_directory_returns_locked() {
    let dir = TempDir::new().expect("temp dir");
    let _held = open(&dir).await;

    let second = SqliteLog::open(SqliteLogSettings::new(dir.path(), PARTITION_COUNT)).await;
    assert!(matches!(second, Err(LogError::Locked(_))));
}

#[tokio::test]
async fn polls_share_records_fairly_across_partitions() {
    let dir = TempDir::new().expect("temp dir");
    let log = open(&dir).await;
    let keys = distinct_partition_keys(&log, 2);
    for key in &keys {
        let records = (0..50).map(|i| record(Topic::Events, key, &format!("{key}-{i}")));
        log.append(records.collect()).await.expect("append");
    }

    let mut consumer = member(&*log, "projector", &[Topic::Events]).await;
    let polled = consumer.poll(10, LONG_WAIT).await.expect("poll");

    let Polled::Records(records) = polled else {
        panic!("expected records")
    };
    for key in &keys {
        let from_key: Vec<u64> = records
            .iter()
            .filter(|r| &r.key == key)
            .map(|r| r.offset)
            .collect();
        assert_eq!(from_key, (0..5).collect::<Vec<u64>>(), "key {key}");
    }
}

/// `count` keys that land in different partitions.
fn distinct_partition_keys(log: &SqliteLog, count: usize) -> Vec<String> {
    let mut by_partition = BTreeMap::new();
    for i in 0.. {
        let key = format!("account-{i}");
        by_partition.entry(log.partition_for(&key)).or_insert(key);
        if by_partition.len() == count {
            break;
        }
    }
    by_partition.into_values().collect()
}

/// Opens the embedded log in one temporary directory, for the shared conformance suite.
struct SqliteFactory {
    dir: TempDir,
}

impl SqliteFactory {
    fn new() -> Self {
        Self {
            dir: TempDir::new().expect("temp dir"),
        }
    }
}

#[async_trait::async_trait(?Send)]
impl log_conformance::LogFactory for SqliteFactory {
    async fn open(&self) -> Arc<dyn EventLog> {
        open(&self.dir).await
    }
}

#[tokio::test]
async fn conformance_append_then_read_returns_records_in_order_with_increasing_offsets() {
    let factory = SqliteFactory::new();
    log_conformance::append_then_read_returns_records_in_order_with_increasing_offsets(&factory)
        .await;
}

#[tokio::test]
async fn conformance_the_same_key_always_lands_in_the_same_partition_as_kafka_would_put_it() {
    let factory = SqliteFactory::new();
    log_conformance::the_same_key_always_lands_in_the_same_partition_as_kafka_would_put_it(
        &factory,
    )
    .await;
}

#[tokio::test]
async fn conformance_a_thousand_concurrent_appends_from_fifty_tasks_land_exactly_once() {
    let factory = SqliteFactory::new();
    log_conformance::a_thousand_concurrent_appends_from_fifty_tasks_land_exactly_once(&factory)
        .await;
}

#[tokio::test]
async fn conformance_a_consumer_resumes_from_committed_offsets_after_the_log_is_reopened() {
    let factory = SqliteFactory::new();
    log_conformance::a_consumer_resumes_from_committed_offsets_after_the_log_is_reopened(&factory)
        .await;
}

#[tokio::test]
async fn conformance_a_commit_makes_its_produced_records_and_its_offsets_visible_together() {
    let factory = SqliteFactory::new();
    log_conformance::a_commit_makes_its_produced_records_and_its_offsets_visible_together(&factory)
        .await;
}

#[tokio::test]
async fn conformance_a_taken_over_member_is_fenced_and_writes_nothing() {
    let factory = SqliteFactory::new();
    let events = log_conformance::a_taken_over_member_is_fenced_and_writes_nothing(&factory).await;

    // The embedded log never wrote the fenced commit's record: the second one took offset 0.
    let log = log_conformance::LogFactory::open(&factory).await;
    assert_eq!(log.end_offset(events).await.expect("end offset"), 1);
}

#[tokio::test]
async fn conformance_seek_moves_the_read_position_of_an_owned_partition() {
    let factory = SqliteFactory::new();
    log_conformance::seek_moves_the_read_position_of_an_owned_partition(&factory).await;
}

#[tokio::test]
async fn conformance_poll_wakes_promptly_when_an_append_arrives() {
    let factory = SqliteFactory::new();
    log_conformance::poll_wakes_promptly_when_an_append_arrives(&factory).await;
}
