//! The event log port's contract, checked the same way against every adapter.
//!
//! Each function is one test, given a factory that opens the log under test. The properties
//! are those both adapters promise: offsets within a partition strictly increase (the embedded
//! adapter's are gapless, Kafka's skip transaction markers), what is read back equals what was
//! appended, a commit is all or nothing, and a member that lost its partitions is fenced.
//! Records a commit produced may become visible a moment after it returns (Kafka writes the
//! transaction's markers then), so reads after a commit wait for them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tally_commands::log::{
    ConsumedOffset, Consumer, EventLog, LogError, NewRecord, Polled, Record, Topic, TopicPartition,
};

/// How long a test waits for something that should happen at once; generous for slow CI.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A poll wait far longer than `PROMPTLY`, so a poll that returns in time was woken.
const LONG_WAIT: Duration = Duration::from_secs(30);

/// Opens the log under test. Its future need not be `Send`: tests await it on their own
/// runtime, and the embedded adapter's opening future is not provably `Send`.
#[async_trait(?Send)]
pub trait LogFactory {
    /// Opens the log. Every call opens the same log; callers drop the previous handle and its
    /// consumers first.
    async fn open(&self) -> Arc<dyn EventLog>;
}

pub fn record(topic: Topic, key: &str, payload: &str) -> NewRecord {
    NewRecord {
        topic,
        key: key.to_owned(),
        payload: payload.as_bytes().to_vec(),
    }
}

pub fn partition_of(log: &dyn EventLog, topic: Topic, key: &str) -> TopicPartition {
    TopicPartition {
        topic,
        partition: log.partition_for(key),
    }
}

pub fn payloads(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|record| String::from_utf8_lossy(&record.payload).into_owned())
        .collect()
}

/// Joins a group and takes the assignment the first poll reports.
pub async fn member(log: &dyn EventLog, group: &str, topics: &[Topic]) -> Box<dyn Consumer> {
    let mut consumer = log.consumer(group, topics).await.expect("member joins");
    let polled = consumer
        .poll(100, Duration::ZERO)
        .await
        .expect("first poll");
    assert!(
        matches!(polled, Polled::Assigned(_)),
        "first poll must assign, got {polled:?}"
    );
    consumer
}

/// Polls until `count` records arrived.
pub async fn poll_records(consumer: &mut dyn Consumer, count: usize) -> Vec<Record> {
    let mut records = Vec::new();
    while records.len() < count {
        let polled = tokio::time::timeout(PROMPTLY, consumer.poll(count, LONG_WAIT))
            .await
            .expect("records arrive promptly")
            .expect("poll succeeds");
        match polled {
            Polled::Records(batch) => records.extend(batch),
            other => panic!("expected records, got {other:?}"),
        }
    }
    records
}

/// Reads a partition from `from_offset` until `count` records arrived, waiting for records
/// a commit made visible a moment ago.
pub async fn read_until(
    log: &dyn EventLog,
    partition: TopicPartition,
    from_offset: u64,
    count: usize,
) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let mut records: Vec<Record> = Vec::new();
    while records.len() < count {
        let from = records.last().map_or(from_offset, |last| last.offset + 1);
        let read = log.read(partition, from, count - records.len()).await;
        let read = read.expect("read succeeds");
        if read.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} records became readable",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        records.extend(read);
    }
    records
}

/// Every record of a partition, read in pieces up to its end offset.
pub async fn read_all(log: &dyn EventLog, partition: TopicPartition) -> Vec<Record> {
    let end = log.end_offset(partition).await.expect("end offset");
    let mut records: Vec<Record> = Vec::new();
    loop {
        let from = records.last().map_or(0, |last| last.offset + 1);
        let read = log.read(partition, from, 300).await.expect("read");
        if read.is_empty() {
            break;
        }
        records.extend(read);
    }
    assert!(records.last().is_none_or(|last| last.offset < end));
    records
}

fn assert_increasing(offsets: &[u64]) {
    assert!(
        offsets.windows(2).all(|pair| pair[0] < pair[1]),
        "offsets must strictly increase: {offsets:?}"
    );
}

pub async fn append_then_read_returns_records_in_order_with_increasing_offsets(
    factory: &dyn LogFactory,
) {
    let log = factory.open().await;
    let partition = partition_of(&*log, Topic::Events, "account-1");
    let first: Vec<NewRecord> = (0..5)
        .map(|i| record(Topic::Events, "account-1", &format!("e{i}")))
        .collect();
    let second: Vec<NewRecord> = (5..8)
        .map(|i| record(Topic::Events, "account-1", &format!("e{i}")))
        .collect();

    let first_positions = log.append(first).await.expect("first append");
    let second_positions = log.append(second).await.expect("second append");

    let positions: Vec<_> = first_positions.iter().chain(&second_positions).collect();
    assert!(
        positions
            .iter()
            .all(|p| (p.topic, p.partition) == (partition.topic, partition.partition))
    );
    let offsets: Vec<u64> = positions.iter().map(|position| position.offset).collect();
    assert_increasing(&offsets);
    let records = read_until(&*log, partition, 0, 8).await;
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
    let end = log.end_offset(partition).await.expect("end offset");
    assert!(
        end > offsets[7],
        "end offset {end} must pass the last offset"
    );
    let sixth = log.read(partition, offsets[6], 1).await.expect("read");
    assert_eq!(payloads(&sixth), vec!["e6"]);
    let past_end = log
        .read(partition, end, 10)
        .await
        .expect("read past the end");
    assert!(past_end.is_empty());
}

pub async fn the_same_key_always_lands_in_the_same_partition_as_kafka_would_put_it(
    factory: &dyn LogFactory,
) {
    let log = factory.open().await;
    let count = log.partition_count();

    // Kafka's UtilsTest.testMurmur2: murmur2("foobar") = -790332482, murmur2("21") = -973932308.
    let kafka_partition = |hash: i32| (hash & 0x7fff_ffff).cast_unsigned() % count;
    assert_eq!(log.partition_for("foobar"), kafka_partition(-790_332_482));
    assert_eq!(log.partition_for("21"), kafka_partition(-973_932_308));

    for key in ["foobar", "21", "account-7"] {
        let records = (0..3).map(|_| record(Topic::Commands, key, "c")).collect();
        let positions = log.append(records).await.expect("append");
        let partitions: BTreeSet<u32> = positions.iter().map(|p| p.partition).collect();
        assert_eq!(
            partitions,
            BTreeSet::from([log.partition_for(key)]),
            "key {key}"
        );
    }
}

pub async fn a_thousand_concurrent_appends_from_fifty_tasks_land_exactly_once(
    factory: &dyn LogFactory,
) {
    let log = factory.open().await;
    let tasks: Vec<_> = (0..50)
        .map(|task| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut landed = Vec::new();
                for i in 0..20 {
                    let key = format!("account-{}", (task + i) % 7);
                    let payload = format!("{task}-{i}");
                    let append = log.append(vec![record(Topic::Events, &key, &payload)]);
                    let position = append.await.expect("append").remove(0);
                    landed.push((position, payload));
                }
                landed
            })
        })
        .collect();
    let mut appended: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for task in tasks {
        for (position, payload) in task.await.expect("task finishes") {
            let previous = appended.insert((position.partition, position.offset), payload);
            assert!(previous.is_none(), "two appends landed at {position:?}");
        }
    }

    let mut read_back: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for partition in 0..log.partition_count() {
        let tp = TopicPartition {
            topic: Topic::Events,
            partition,
        };
        let records = read_all(&*log, tp).await;
        assert_increasing(&records.iter().map(|r| r.offset).collect::<Vec<_>>());
        for (record, payload) in records.iter().zip(payloads(&records)) {
            read_back.insert((partition, record.offset), payload);
        }
    }
    assert_eq!(read_back.len(), 1_000, "every append landed exactly once");
    assert_eq!(
        read_back, appended,
        "each record reads back where its append said"
    );
}

pub async fn a_consumer_resumes_from_committed_offsets_after_the_log_is_reopened(
    factory: &dyn LogFactory,
) {
    let partition;
    {
        let log = factory.open().await;
        partition = partition_of(&*log, Topic::Commands, "account-1");
        let records = (0..5).map(|i| record(Topic::Commands, "account-1", &format!("c{i}")));
        let positions = log.append(records.collect()).await.expect("append");

        let mut consumer = member(&*log, "processor", &[Topic::Commands]).await;
        let read = poll_records(consumer.as_mut(), 5).await;
        assert_eq!(payloads(&read), vec!["c0", "c1", "c2", "c3", "c4"]);
        let consumed = vec![ConsumedOffset {
            partition,
            next_offset: positions[3].offset,
        }];
        consumer.commit(consumed, Vec::new()).await.expect("commit");
    }

    let log = factory.open().await;
    let mut consumer = log
        .consumer("processor", &[Topic::Commands])
        .await
        .expect("joins");
    let assigned = consumer.poll(10, Duration::ZERO).await.expect("first poll");
    let Polled::Assigned(partitions) = assigned else {
        panic!("expected assignment")
    };
    assert_eq!(partitions.len(), log.partition_count() as usize);
    assert!(partitions.iter().all(|p| p.topic == Topic::Commands));
    assert!(partitions.contains(&partition));
    assert_eq!(
        payloads(&poll_records(consumer.as_mut(), 2).await),
        vec!["c3", "c4"]
    );
}

pub async fn a_commit_makes_its_produced_records_and_its_offsets_visible_together(
    factory: &dyn LogFactory,
) {
    let log = factory.open().await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    let opened = log.append(vec![record(Topic::Commands, "account-1", "open")]);
    let opened = opened.await.expect("append");

    let mut consumer = member(&*log, "decider", &[Topic::Commands]).await;
    poll_records(consumer.as_mut(), 1).await;
    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset: opened[0].offset + 1,
    }];
    let produced = vec![record(Topic::Events, "account-1", "opened")];
    let positions = consumer.commit(consumed, produced).await.expect("commit");

    assert_eq!(positions.len(), 1);
    assert_eq!(
        (positions[0].topic, positions[0].partition),
        (events.topic, events.partition)
    );
    let visible = read_until(&*log, events, 0, 1).await;
    assert_eq!(payloads(&visible), vec!["opened"]);
    assert_eq!(visible[0].offset, positions[0].offset);

    // The next member starts after the committed command: it sees only the new one.
    drop(consumer);
    log.append(vec![record(Topic::Commands, "account-1", "deposit")])
        .await
        .expect("append");
    let mut next = member(&*log, "decider", &[Topic::Commands]).await;
    assert_eq!(
        payloads(&poll_records(next.as_mut(), 1).await),
        vec!["deposit"]
    );
}

/// Returns the events partition the fenced commit wrote for, so an adapter's own test can
/// inspect what physically landed there.
pub async fn a_taken_over_member_is_fenced_and_writes_nothing(
    factory: &dyn LogFactory,
) -> TopicPartition {
    let log = factory.open().await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    let opened = log.append(vec![record(Topic::Commands, "account-1", "open")]);
    let next_offset = opened.await.expect("append")[0].offset + 1;

    let mut first = member(&*log, "decider", &[Topic::Commands]).await;
    poll_records(first.as_mut(), 1).await;
    // The first member polls no more, so the group takes its partitions away.
    let mut second = log
        .consumer("decider", &[Topic::Commands])
        .await
        .expect("second member joins");
    let polled = second.poll(100, Duration::ZERO).await.expect("first poll");
    let Polled::Assigned(taken) = polled else {
        panic!("first poll must assign, got {polled:?}")
    };
    assert!(
        taken.contains(&commands),
        "the second member took {taken:?}"
    );

    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset,
    }];
    let produced = vec![record(Topic::Events, "account-1", "opened")];
    let stale = first.commit(consumed.clone(), produced.clone()).await;
    assert!(matches!(stale, Err(LogError::Fenced)), "got {stale:?}");
    assert!(matches!(
        first.poll(10, Duration::ZERO).await,
        Err(LogError::Fenced)
    ));
    assert!(log.read(events, 0, 10).await.expect("read").is_empty());

    // The command was not consumed for the group: the second member gets it and commits.
    assert_eq!(
        payloads(&poll_records(second.as_mut(), 1).await),
        vec!["open"]
    );
    second
        .commit(consumed, produced)
        .await
        .expect("second commits");
    assert_eq!(
        payloads(&read_until(&*log, events, 0, 1).await),
        vec!["opened"]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let all = log.read(events, 0, 10).await.expect("read");
    assert_eq!(
        payloads(&all),
        vec!["opened"],
        "only the second commit is visible"
    );
    events
}

pub async fn seek_moves_the_read_position_of_an_owned_partition(factory: &dyn LogFactory) {
    let log = factory.open().await;
    let partition = partition_of(&*log, Topic::Events, "account-1");
    let records = (0..4).map(|i| record(Topic::Events, "account-1", &format!("e{i}")));
    let positions = log.append(records.collect()).await.expect("append");

    let mut consumer = member(&*log, "projector", &[Topic::Events]).await;
    consumer
        .seek(partition, positions[2].offset)
        .await
        .expect("seek");
    assert_eq!(
        payloads(&poll_records(consumer.as_mut(), 2).await),
        vec!["e2", "e3"]
    );

    consumer.seek(partition, 0).await.expect("seek back");
    assert_eq!(
        payloads(&poll_records(consumer.as_mut(), 4).await),
        vec!["e0", "e1", "e2", "e3"]
    );

    let foreign = TopicPartition {
        topic: Topic::Commands,
        partition: 0,
    };
    assert!(matches!(
        consumer.seek(foreign, 0).await,
        Err(LogError::Invalid(_))
    ));
}

pub async fn poll_wakes_promptly_when_an_append_arrives(factory: &dyn LogFactory) {
    let log = factory.open().await;
    let mut consumer = member(&*log, "notifier", &[Topic::Notifications]).await;

    let producer = Arc::clone(&log);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let notification = record(Topic::Notifications, "account-1", "sent");
        producer.append(vec![notification]).await.expect("append");
    });
    let polled = tokio::time::timeout(PROMPTLY, consumer.poll(10, LONG_WAIT))
        .await
        .expect("poll returns before the timeout")
        .expect("poll succeeds");

    let Polled::Records(records) = polled else {
        panic!("expected records")
    };
    assert_eq!(payloads(&records), vec!["sent"]);
}
