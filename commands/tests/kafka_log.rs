//! The Kafka event log against a real broker: the shared conformance suite, then what only
//! Kafka has (topic configuration, transactions left open or aborted by other producers,
//! fencing by the group coordinator).
//!
//! Needs a broker at `TALLY_KAFKA_BROKERS` (`deploy/infra.sh up`, then
//! `eval "$(deploy/infra.sh env)"`); without it every test fails. Each test works under a topic
//! prefix of its own, so tests share the broker but no topic or group.

mod log_conformance;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log_conformance::{
    LogFactory, PROMPTLY, member, partition_of, payloads, poll_records, read_until, record,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tally_commands::log::kafka::{KafkaLog, KafkaLogSettings};
use tally_commands::log::{ConsumedOffset, EventLog, LogError, Polled, Topic, TopicPartition};

const PARTITION_COUNT: u32 = 4;

/// How long one raw client call of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker address from the environment, or a failure that says how to get one.
fn brokers() -> String {
    match std::env::var("TALLY_KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => brokers,
        _ => panic!(
            "TALLY_KAFKA_BROKERS is not set: the Kafka log tests need a broker. Start one with \
             `deploy/infra.sh up` and export the address with `eval \"$(deploy/infra.sh env)\"`"
        ),
    }
}

/// A topic prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("test-{test}-{millis}-{}-{sequence}.", std::process::id())
}

/// Settings for a test: its own prefix, and group timeouts short enough that a takeover
/// completes in seconds (6 s is the broker's smallest session timeout).
fn settings(test: &str) -> KafkaLogSettings {
    let mut settings = KafkaLogSettings::new(brokers(), PARTITION_COUNT);
    settings.topic_prefix = unique_prefix(test);
    settings.client_id = format!("tally-test-{test}");
    settings.timeouts.session_timeout_ms = 6_000;
    settings.timeouts.heartbeat_interval_ms = 500;
    settings.timeouts.max_poll_interval_ms = 6_000;
    settings.timeouts.group_join_timeout_ms = 30_000;
    settings
}

struct KafkaFactory {
    settings: KafkaLogSettings,
}

impl KafkaFactory {
    fn new(test: &str) -> Self {
        Self {
            settings: settings(test),
        }
    }

    async fn open_kafka(&self) -> Arc<KafkaLog> {
        KafkaLog::open(self.settings.clone())
            .await
            .expect("kafka log opens")
    }

    fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.settings.topic_prefix, topic.name())
    }
}

/// Deletes the test's topics once it passed; a failed test keeps them for inspection.
impl Drop for KafkaFactory {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let names: Vec<String> = Topic::ALL.map(|topic| self.topic_name(topic)).to_vec();
        // The test's runtime may be the one dropping this, so the deletion gets its own.
        let deleting = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT));
            // Topics that were never created fail to delete, which is fine.
            let _ = runtime.block_on(admin().delete_topics(&names, &options));
        });
        let _ = deleting.join();
    }
}

#[async_trait::async_trait(?Send)]
impl LogFactory for KafkaFactory {
    async fn open(&self) -> Arc<dyn EventLog> {
        self.open_kafka().await
    }
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers());
    config
}

fn admin() -> AdminClient<DefaultClientContext> {
    client_config().create().expect("admin client")
}

/// A transactional producer of the test's own, as another application would run one.
async fn foreign_transactional_producer(test: &str) -> Arc<FutureProducer> {
    let producer: FutureProducer = client_config()
        .set("transactional.id", unique_prefix(test))
        .create()
        .expect("producer");
    let producer = Arc::new(producer);
    blocking(&producer, |p| p.init_transactions(CLIENT_TIMEOUT)).await;
    producer.begin_transaction().expect("begin");
    producer
}

/// Runs a blocking transaction call of `producer` off the test's runtime thread.
async fn blocking(
    producer: &Arc<FutureProducer>,
    call: impl FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
) {
    let producer = Arc::clone(producer);
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .expect("blocking call finishes")
        .expect("transaction call succeeds");
}

/// Produces `payloads` inside the producer's open transaction and waits for the broker to
/// acknowledge each one, returning the offsets they took. A record whose delivery failed
/// would leave nothing behind to abort or hold back, so it fails the test here rather than
/// later as a puzzling offset.
async fn produce_in_transaction(
    producer: &FutureProducer,
    topic: &str,
    partition: u32,
    payloads: &[&str],
) -> Vec<i64> {
    let index = i32::try_from(partition).expect("partition fits");
    let mut offsets = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let message = FutureRecord::to(topic)
            .partition(index)
            .key("account-1")
            .payload(*payload);
        let delivery = producer.send(message, CLIENT_TIMEOUT).await;
        let delivery = delivery.map_err(|(e, _)| e).expect("delivered");
        assert_eq!(delivery.partition, index);
        offsets.push(delivery.offset);
    }
    offsets
}

/// Every record physically in a partition, aborted ones included, as a read_uncommitted
/// consumer sees them.
async fn uncommitted_payloads(topic: String, partition: u32) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config()
            .set("group.id", unique_prefix("inspector"))
            .set("isolation.level", "read_uncommitted")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let index = i32::try_from(partition).expect("partition fits");
        let (_, high) = consumer
            .fetch_watermarks(&topic, index, CLIENT_TIMEOUT)
            .expect("watermarks");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, index, Offset::Beginning)
            .expect("assignment");
        consumer.assign(&assignment).expect("assign");
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + PROMPTLY;
        // Stops at the high watermark, which may lie past the last record (a marker).
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => {
                    let payload = message.payload().unwrap_or_default();
                    seen.push(String::from_utf8_lossy(payload).into_owned());
                }
                Some(Err(error)) => panic!("inspection failed: {error}"),
                None => {
                    let positions = consumer.position().expect("position");
                    let position = positions.find_partition(&topic, index).map(|p| p.offset());
                    if matches!(position, Some(Offset::Offset(at)) if at >= high) {
                        break;
                    }
                }
            }
        }
        seen
    })
    .await
    .expect("inspection finishes")
}

// ---- the conformance suite ----------------------------------------------------------------

#[tokio::test]
async fn conformance_append_then_read_returns_records_in_order_with_increasing_offsets() {
    let factory = KafkaFactory::new("append-read");
    log_conformance::append_then_read_returns_records_in_order_with_increasing_offsets(&factory)
        .await;
}

#[tokio::test]
async fn conformance_the_same_key_always_lands_in_the_same_partition_as_kafka_would_put_it() {
    let factory = KafkaFactory::new("same-key");
    log_conformance::the_same_key_always_lands_in_the_same_partition_as_kafka_would_put_it(
        &factory,
    )
    .await;
}

#[tokio::test]
async fn conformance_a_thousand_concurrent_appends_from_fifty_tasks_land_exactly_once() {
    let factory = KafkaFactory::new("concurrent");
    log_conformance::a_thousand_concurrent_appends_from_fifty_tasks_land_exactly_once(&factory)
        .await;
}

#[tokio::test]
async fn conformance_a_consumer_resumes_from_committed_offsets_after_the_log_is_reopened() {
    let factory = KafkaFactory::new("resume");
    log_conformance::a_consumer_resumes_from_committed_offsets_after_the_log_is_reopened(&factory)
        .await;
}

#[tokio::test]
async fn conformance_a_commit_makes_its_produced_records_and_its_offsets_visible_together() {
    let factory = KafkaFactory::new("commit");
    log_conformance::a_commit_makes_its_produced_records_and_its_offsets_visible_together(&factory)
        .await;
}

/// Also shows that the group coordinator, not the adapter, refused the stale member: its
/// record reached the partition (the adapter's own checks run before anything is produced)
/// and stays there aborted, invisible to read_committed readers.
#[tokio::test]
async fn conformance_a_taken_over_member_is_fenced_and_writes_nothing() {
    let factory = KafkaFactory::new("takeover");
    let events = log_conformance::a_taken_over_member_is_fenced_and_writes_nothing(&factory).await;

    let physically = uncommitted_payloads(factory.topic_name(events.topic), events.partition);
    assert_eq!(
        physically.await,
        vec!["opened", "opened"],
        "the fenced member's aborted record, then the second member's committed one"
    );
}

#[tokio::test]
async fn conformance_seek_moves_the_read_position_of_an_owned_partition() {
    let factory = KafkaFactory::new("seek");
    log_conformance::seek_moves_the_read_position_of_an_owned_partition(&factory).await;
}

#[tokio::test]
async fn conformance_poll_wakes_promptly_when_an_append_arrives() {
    let factory = KafkaFactory::new("wake");
    log_conformance::poll_wakes_promptly_when_an_append_arrives(&factory).await;
}

// ---- Kafka only ---------------------------------------------------------------------------

#[tokio::test]
async fn opening_creates_each_topic_with_the_partition_count_and_a_retention_that_keeps_everything()
{
    let factory = KafkaFactory::new("topics");
    let log = factory.open_kafka().await;
    let admin = Arc::new(admin());

    for topic in Topic::ALL {
        let name = log.topic_name(topic).to_owned();
        assert_eq!(name, factory.topic_name(topic));
        let fetched = {
            let (admin, name) = (Arc::clone(&admin), name.clone());
            tokio::task::spawn_blocking(move || {
                let metadata = admin.inner().fetch_metadata(Some(&name), CLIENT_TIMEOUT);
                metadata.expect("metadata").topics()[0].partitions().len()
            })
        };
        assert_eq!(
            fetched.await.expect("metadata task"),
            PARTITION_COUNT as usize
        );

        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(&name)], &AdminOptions::new())
            .await
            .expect("describe")
            .remove(0)
            .expect("topic config");
        let value = |key: &str| described.get(key).and_then(|e| e.value.clone());
        assert_eq!(value("cleanup.policy").as_deref(), Some("delete"), "{name}");
        assert_eq!(value("retention.ms").as_deref(), Some("-1"), "{name}");
        assert_eq!(value("retention.bytes").as_deref(), Some("-1"), "{name}");
        assert_eq!(
            value("message.timestamp.type").as_deref(),
            Some("LogAppendTime")
        );
    }
}

#[tokio::test]
async fn opening_with_another_partition_count_than_the_topics_have_is_refused() {
    let factory = KafkaFactory::new("partition-count");
    drop(factory.open_kafka().await);

    let mut other = factory.settings.clone();
    other.partition_count = PARTITION_COUNT + 1;
    let reopened = KafkaLog::open(other).await;
    assert!(
        matches!(&reopened, Err(LogError::Invalid(m)) if m.contains("partitions")),
        "got {:?}",
        reopened.err()
    );
}

#[tokio::test]
async fn opening_over_a_compacted_topic_is_refused() {
    let factory = KafkaFactory::new("compacted");
    let name = factory.topic_name(Topic::Events);
    let compacted =
        NewTopic::new(&name, 4, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let created = admin()
        .create_topics([&compacted], &AdminOptions::new())
        .await;
    created.expect("create").remove(0).expect("topic created");

    let opened = KafkaLog::open(factory.settings.clone()).await;
    assert!(
        matches!(&opened, Err(LogError::Invalid(m)) if m.contains("cleanup.policy")),
        "got {:?}",
        opened.err()
    );
}

#[tokio::test]
async fn a_property_the_adapter_pins_cannot_be_passed_through() {
    let mut settings = settings("pinned");
    settings.properties = vec![("isolation.level".into(), "read_uncommitted".into())];
    let opened = KafkaLog::open(settings).await;
    assert!(matches!(opened, Err(LogError::Invalid(_))));
}

#[tokio::test]
async fn another_client_keying_with_the_java_partitioner_agrees_with_partition_for() {
    let factory = KafkaFactory::new("partitioner");
    let log = factory.open_kafka().await;
    let topic = factory.topic_name(Topic::Commands);
    let producer: rdkafka::producer::FutureProducer = client_config()
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");

    for key in [
        "foobar",
        "21",
        "account-1",
        "account-2",
        "account-3",
        "account-42",
    ] {
        let message = rdkafka::producer::FutureRecord::to(&topic)
            .key(key)
            .payload("c");
        let delivery = producer.send(message, CLIENT_TIMEOUT).await;
        let delivery = delivery.map_err(|(e, _)| e).expect("delivered");
        assert_eq!(
            u32::try_from(delivery.partition).expect("partition"),
            log.partition_for(key),
            "key {key}"
        );
    }
}

#[tokio::test]
async fn a_transaction_another_producer_aborted_is_invisible_to_reads_and_members() {
    let factory = KafkaFactory::new("aborted");
    let log = factory.open_kafka().await;
    let events = partition_of(&*log, Topic::Events, "account-1");
    let producer = foreign_transactional_producer("aborted").await;
    let topic = factory.topic_name(Topic::Events);
    let aborted =
        produce_in_transaction(&producer, &topic, events.partition, &["a0", "a1", "a2"]).await;
    blocking(&producer, |p| p.abort_transaction(CLIENT_TIMEOUT)).await;

    let kept = log.append(vec![record(Topic::Events, "account-1", "kept")]);
    let kept = kept.await.expect("append")[0];
    // The coordinator writes the abort marker after it answers, so the kept record may land
    // before the marker or after it; either way it comes after the aborted records.
    let last_aborted = u64::try_from(aborted[2]).expect("offset");
    assert!(
        kept.offset > last_aborted,
        "the aborted records took {aborted:?}, yet the kept record landed at {}",
        kept.offset
    );

    let read = read_until(&*log, events, 0, 1).await;
    assert_eq!(payloads(&read), vec!["kept"]);
    assert_eq!(read[0].offset, kept.offset);
    let mut consumer = member(&*log, "projector", &[Topic::Events]).await;
    assert_eq!(
        payloads(&poll_records(consumer.as_mut(), 1).await),
        vec!["kept"]
    );
    assert_eq!(
        uncommitted_payloads(topic, events.partition).await,
        vec!["a0", "a1", "a2", "kept"]
    );
}

#[tokio::test]
async fn an_open_transaction_holds_back_the_end_offset_and_reads_until_it_commits() {
    let factory = KafkaFactory::new("open-txn");
    let log = factory.open_kafka().await;
    let events = partition_of(&*log, Topic::Events, "account-1");
    let producer = foreign_transactional_producer("open-txn").await;
    let topic = factory.topic_name(Topic::Events);
    produce_in_transaction(&producer, &topic, events.partition, &["pending"]).await;

    let after = log.append(vec![record(Topic::Events, "account-1", "after")]);
    let after = after.await.expect("append")[0];
    assert_eq!(
        after.offset, 1,
        "the open transaction's record took offset 0"
    );
    assert_eq!(
        log.end_offset(events).await.expect("end offset"),
        0,
        "the end offset is the last stable offset, held at the open transaction"
    );
    assert!(log.read(events, 0, 10).await.expect("read").is_empty());

    blocking(&producer, |p| p.commit_transaction(CLIENT_TIMEOUT)).await;
    assert_eq!(
        payloads(&read_until(&*log, events, 0, 2).await),
        vec!["pending", "after"]
    );
    assert!(log.end_offset(events).await.expect("end offset") > after.offset);
}

#[tokio::test]
async fn a_commit_refused_midway_writes_nothing_and_commits_no_offsets() {
    let factory = KafkaFactory::new("refused");
    let log = factory.open_kafka().await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    log.append(vec![record(Topic::Commands, "account-1", "open")])
        .await
        .expect("append");

    let mut consumer = member(&*log, "decider", &[Topic::Commands]).await;
    let taken = poll_records(consumer.as_mut(), 1).await;
    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset: taken[0].offset + 1,
    }];
    // Past the producer's 1 MB `message.max.bytes`: librdkafka refuses it after the first
    // record joined the transaction.
    let too_large = "x".repeat(2_000_000);
    let produced = vec![
        record(Topic::Events, "account-1", "opened"),
        record(Topic::Events, "account-1", &too_large),
    ];
    let refused = consumer.commit(consumed.clone(), produced).await;
    assert!(
        matches!(refused, Err(LogError::Invalid(_))),
        "got {refused:?}"
    );
    assert!(log.read(events, 0, 10).await.expect("read").is_empty());

    // The transaction was aborted, so the member commits again; a new member of the group
    // sees that only that second commit consumed the command.
    let produced = vec![record(Topic::Events, "account-1", "opened")];
    consumer
        .commit(consumed, produced)
        .await
        .expect("commit after the abort");
    assert_eq!(
        payloads(&read_until(&*log, events, 0, 1).await),
        vec!["opened"]
    );
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

#[tokio::test]
async fn a_commit_whose_caller_gives_up_lands_whole_or_not_at_all() {
    let factory = KafkaFactory::new("cancelled");
    let log = factory.open_kafka().await;
    let commands = partition_of(&*log, Topic::Commands, "account-1");
    let events = partition_of(&*log, Topic::Events, "account-1");
    log.append(vec![record(Topic::Commands, "account-1", "open")])
        .await
        .expect("append");

    let mut consumer = member(&*log, "decider", &[Topic::Commands]).await;
    let taken = poll_records(consumer.as_mut(), 1).await;
    let consumed = vec![ConsumedOffset {
        partition: commands,
        next_offset: taken[0].offset + 1,
    }];
    let produced: Vec<_> = (0..500)
        .map(|i| record(Topic::Events, "account-1", &format!("e{i}")))
        .collect();
    let commit = consumer.commit(consumed, produced);
    let gave_up = tokio::time::timeout(Duration::from_millis(5), commit).await;
    assert!(
        gave_up.is_err(),
        "a 500-record transaction takes longer than 5 ms"
    );

    // The member waits for the abandoned transaction before it answers again.
    let polled = consumer.poll(10, Duration::from_millis(100)).await;
    assert!(matches!(polled, Ok(Polled::Records(_))), "got {polled:?}");
    drop(consumer);

    // A new member starts once the group's offsets are stable, so it tells how the
    // transaction ended: with the command consumed (committed) or not (aborted).
    let mut next = member(&*log, "decider", &[Topic::Commands]).await;
    let redelivered = next.poll(10, Duration::from_secs(3)).await.expect("poll");
    let Polled::Records(redelivered) = redelivered else {
        panic!("expected records, got {redelivered:?}")
    };
    if redelivered.is_empty() {
        assert_eq!(read_until(&*log, events, 0, 500).await.len(), 500);
    } else {
        assert_eq!(payloads(&redelivered), vec!["open"]);
        assert!(log.read(events, 0, 1_000).await.expect("read").is_empty());
    }
}

#[tokio::test]
async fn group_ids_carry_the_prefix_and_partitions_out_of_range_are_refused() {
    let factory = KafkaFactory::new("names");
    let log = factory.open_kafka().await;
    assert_eq!(
        log.group_id("decider"),
        format!("{}decider", factory.settings.topic_prefix)
    );
    let out_of_range = TopicPartition {
        topic: Topic::Events,
        partition: PARTITION_COUNT,
    };
    assert!(matches!(
        log.read(out_of_range, 0, 1).await,
        Err(LogError::Invalid(_))
    ));
    assert!(matches!(
        log.end_offset(out_of_range).await,
        Err(LogError::Invalid(_))
    ));
}
