//! The librdkafka configuration of each client the adapter creates.
//!
//! Every client is built in three layers: tunables (batching and buffering; a pass-through
//! property may change them), then the pass-through properties, then the pinned properties the
//! adapter's guarantees rest on (a pass-through property may not name them). Where librdkafka's
//! default differs from the Java client's and it matters, the pinned value says so.

use rdkafka::ClientConfig;

use super::settings::KafkaLogSettings;

/// How long the append producer waits for more records before sending a batch. Small, since
/// an API request waits for its append; long enough to batch concurrent appends together.
const LINGER_MS: u32 = 2;

/// Most records in one produce batch (librdkafka's default, stated).
const BATCH_RECORDS_MAX: u32 = 10_000;

/// Most bytes in one produce batch: 1 MB, the broker's default `message.max.bytes`.
const BATCH_BYTES_MAX: u32 = 1_000_000;

/// Most records waiting in a producer's queue; beyond it `append` waits for room.
const PRODUCER_QUEUE_RECORDS_MAX: u32 = 100_000;

/// Most kilobytes waiting in a producer's queue (256 MiB; librdkafka's default is 1 GiB).
const PRODUCER_QUEUE_KBYTES_MAX: u32 = 262_144;

/// Prefetch a reader keeps per partition, bounded so idle pooled readers hold little memory.
const READER_PREFETCH_KBYTES_MAX: u32 = 16_384;

/// How long the broker may hold a member's fetch waiting for new data. A fetch answers as
/// soon as any of its partitions has data, but a partition whose position just changed (new
/// assignment, seek) waits for the fetch in flight; librdkafka's and Java's 500 ms would delay
/// it that long, while 100 ms costs an idle member ten small requests a second.
const MEMBER_FETCH_WAIT_MS: u32 = 100;

/// Records a reader prefetches per partition before it stops fetching.
const READER_PREFETCH_RECORDS_MIN: u32 = 10_000;

/// How long the broker may hold a reader's fetch waiting for new data. Reads stop at the end
/// offset they measured first, so a long wait buys nothing, and a fetch held open delays the
/// reader's next request on the same connection.
const READER_FETCH_WAIT_MS: u32 = 10;

type Properties = Vec<(&'static str, String)>;

/// The idempotent producer behind `append`.
pub(super) fn append_producer(settings: &KafkaLogSettings) -> ClientConfig {
    let mut pinned = producer_pinned();
    // librdkafka's default is 300 s, Java's delivery.timeout.ms 120 s; ours is a setting.
    let delivery_timeout = settings.timeouts.delivery_timeout_ms.to_string();
    pinned.push(("message.timeout.ms", delivery_timeout));
    layered(settings, "append", producer_tunables(), pinned)
}

/// The transactional producer a group member commits with. Its message and socket timeouts
/// follow `transaction.timeout.ms`, as librdkafka derives them.
pub(super) fn transactional_producer(
    settings: &KafkaLogSettings,
    transactional_id: &str,
) -> ClientConfig {
    let mut pinned = producer_pinned();
    pinned.push(("transactional.id", transactional_id.to_owned()));
    let transaction_timeout = settings.timeouts.transaction_timeout_ms.to_string();
    pinned.push(("transaction.timeout.ms", transaction_timeout));
    layered(settings, "member-txn", producer_tunables(), pinned)
}

/// A consumer group member.
pub(super) fn member(settings: &KafkaLogSettings, group_id: &str) -> ClientConfig {
    let timeouts = &settings.timeouts;
    let mut pinned = consumer_pinned();
    pinned.extend([
        ("group.id", group_id.to_owned()),
        // The classic protocol, stated: fencing below rests on its generations (KIP-447).
        ("group.protocol", "classic".to_owned()),
        // Eager range assignment (Java's default puts cooperative-sticky second): every topic
        // has the same partition count, so one member gets the same partition numbers of
        // every topic it reads, and a rebalance revokes everything before assigning, so the
        // group generation only moves inside `poll`.
        ("partition.assignment.strategy", "range".to_owned()),
        // Both clients default to latest, which would skip what was written before the group
        // first joined.
        ("auto.offset.reset", "earliest".to_owned()),
        (
            "session.timeout.ms",
            timeouts.session_timeout_ms.to_string(),
        ),
        (
            "heartbeat.interval.ms",
            timeouts.heartbeat_interval_ms.to_string(),
        ),
        (
            "max.poll.interval.ms",
            timeouts.max_poll_interval_ms.to_string(),
        ),
    ]);
    let tunables = vec![("fetch.wait.max.ms", MEMBER_FETCH_WAIT_MS.to_string())];
    layered(settings, "member", tunables, pinned)
}

/// A reader for `read` and `end_offset`: assigned partitions, never a group member. librdkafka
/// needs a `group.id` for `assign`; this one never joins and never commits.
pub(super) fn reader(settings: &KafkaLogSettings) -> ClientConfig {
    let tunables = vec![
        ("fetch.wait.max.ms", READER_FETCH_WAIT_MS.to_string()),
        (
            "queued.max.messages.kbytes",
            READER_PREFETCH_KBYTES_MAX.to_string(),
        ),
        (
            "queued.min.messages",
            READER_PREFETCH_RECORDS_MIN.to_string(),
        ),
    ];
    let mut pinned = consumer_pinned();
    pinned.extend([
        ("group.id", settings.group_id("tally.reader")),
        // A read starts at an offset the caller chose; jumping elsewhere would skip or repeat
        // records, so an offset out of range is an error.
        ("auto.offset.reset", "error".to_owned()),
    ]);
    layered(settings, "reader", tunables, pinned)
}

/// The admin client that creates and checks the topics at start-up.
pub(super) fn admin(settings: &KafkaLogSettings) -> ClientConfig {
    layered(settings, "admin", Vec::new(), Vec::new())
}

fn producer_tunables() -> Properties {
    vec![
        ("linger.ms", LINGER_MS.to_string()),
        ("batch.num.messages", BATCH_RECORDS_MAX.to_string()),
        ("batch.size", BATCH_BYTES_MAX.to_string()),
        (
            "queue.buffering.max.messages",
            PRODUCER_QUEUE_RECORDS_MAX.to_string(),
        ),
        (
            "queue.buffering.max.kbytes",
            PRODUCER_QUEUE_KBYTES_MAX.to_string(),
        ),
    ]
}

fn producer_pinned() -> Properties {
    vec![
        // librdkafka's default is off (Java's is on since 3.0): without it a retried batch
        // can be written twice or out of order.
        ("enable.idempotence", "true".to_owned()),
        // Idempotence requires it; stated so that nobody lowers it.
        ("acks", "all".to_owned()),
        // The most idempotence allows while keeping order; Java's default too.
        ("max.in.flight.requests.per.connection", "5".to_owned()),
        // librdkafka's default is consistent_random (CRC32), Java's murmur2. Records carry an
        // explicit partition from the same murmur2, so every client of the topics agrees.
        ("partitioner", "murmur2_random".to_owned()),
    ]
}

fn consumer_pinned() -> Properties {
    vec![
        // librdkafka's default, but Java's is read_uncommitted: never read what an open or
        // aborted transaction wrote.
        ("isolation.level", "read_committed".to_owned()),
        // Both default to true. Offsets are committed only inside transactions.
        ("enable.auto.commit", "false".to_owned()),
        ("enable.auto.offset.store", "false".to_owned()),
        ("enable.partition.eof", "false".to_owned()),
        // Topics are created at start-up, explicitly and with their configuration.
        ("allow.auto.create.topics", "false".to_owned()),
    ]
}

fn layered(
    settings: &KafkaLogSettings,
    role: &str,
    tunables: Properties,
    pinned: Properties,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in tunables {
        config.set(key, value);
    }
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", format!("{}-{role}", settings.client_id));
    for (key, value) in pinned {
        config.set(key, value);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KafkaLogSettings {
        let mut settings = KafkaLogSettings::new("127.0.0.1:9092", 4);
        settings.properties = vec![("linger.ms".into(), "7".into())];
        settings
    }

    #[test]
    fn producers_are_idempotent_with_acks_all_and_the_java_partitioner() {
        for config in [
            append_producer(&settings()),
            transactional_producer(&settings(), "tally-decider.1"),
        ] {
            assert_eq!(config.get("enable.idempotence"), Some("true"));
            assert_eq!(config.get("acks"), Some("all"));
            assert_eq!(
                config.get("max.in.flight.requests.per.connection"),
                Some("5")
            );
            assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        }
    }

    #[test]
    fn members_read_committed_from_the_earliest_offset_without_auto_commit() {
        let config = member(&settings(), "test.decider");
        assert_eq!(config.get("group.id"), Some("test.decider"));
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(config.get("partition.assignment.strategy"), Some("range"));
    }

    #[test]
    fn readers_read_committed_and_never_reset_their_offset() {
        let config = reader(&settings());
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("auto.offset.reset"), Some("error"));
    }

    #[test]
    fn pass_through_properties_override_tunables() {
        assert_eq!(append_producer(&settings()).get("linger.ms"), Some("7"));
    }
}
