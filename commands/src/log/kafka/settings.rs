//! The Kafka adapter's settings, their defaults and their validation.
//!
//! Settings are checked once, before any client is created, so a wrong value fails `open` with
//! `LogError::Invalid` instead of surfacing later as a broker error.

use std::fmt;
use std::num::NonZeroU32;

use super::PARTITION_COUNT_MAX;
use crate::log::LogError;

/// librdkafka properties the adapter sets itself because its guarantees depend on them. Passing
/// one through `KafkaLogSettings::properties` is refused rather than silently overridden.
pub const PINNED_PROPERTIES: [&str; 26] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "partition.assignment.strategy",
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "partitioner",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "allow.auto.create.topics",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
];

/// The longest topic prefix. Kafka topic names have at most 249 characters and the longest
/// topic name Tally appends is `tally.notifications`.
pub const TOPIC_PREFIX_CHARS_MAX: usize = 200;

/// Concurrent `read` and `end_offset` calls unless the settings say otherwise: each holds one
/// reader client (a librdkafka consumer with its own connections and prefetch buffer).
pub const READERS_MAX_DEFAULT: usize = 4;

/// Settings of the Kafka event log.
#[derive(Clone)]
pub struct KafkaLogSettings {
    /// Bootstrap brokers as `host:port` separated by commas (`bootstrap.servers`).
    pub brokers: String,
    /// Prepended to every topic name, consumer group id and transactional id, so that several
    /// installations (or tests) can share a cluster without sharing data. Empty by default:
    /// the topics are then `tally.commands`, `tally.events` and `tally.notifications`.
    pub topic_prefix: String,
    /// Partitions per topic. Topics are created with it; an existing topic with another count
    /// is refused, since changing it would move keys to other partitions.
    pub partition_count: u32,
    /// Replicas per partition for topics the adapter creates. With three or more, topics also
    /// get `min.insync.replicas=2`, so an acknowledged record survives the loss of a broker.
    pub replication_factor: u16,
    /// Prefix of every client's `client.id`, which names the process in broker logs and quotas.
    pub client_id: String,
    /// Prefix of every member's `transactional.id`, followed by the group id and the
    /// instance id (or a random suffix without one).
    pub transactional_id_prefix: String,
    /// Names this process among the members of its groups and keeps its transactional ids
    /// the same across restarts. A restarted process then aborts, on its first transaction
    /// step, whatever its killed predecessor left open, so readers go on at once instead of
    /// waiting out `transaction.timeout.ms`. Each process of an installation needs its own:
    /// two processes with one instance id keep fencing each other. Without it every member
    /// takes a random suffix and a killed member's open transaction holds readers back until
    /// the broker times it out.
    pub instance_id: Option<String>,
    /// librdkafka properties passed verbatim to every client, for what the adapter does not
    /// decide itself: `security.protocol`, `sasl.*`, `ssl.*`, or tuning such as `linger.ms`.
    /// Keys in [`PINNED_PROPERTIES`] are refused. Values are never printed.
    pub properties: Vec<(String, String)>,
    /// Reader clients kept for `read` and `end_offset`; more concurrent calls wait their turn.
    pub readers_max: usize,
    pub timeouts: KafkaTimeouts,
}

impl KafkaLogSettings {
    /// Settings with the defaults: no prefix, replication factor 1, client id `tally`.
    pub fn new(brokers: impl Into<String>, partition_count: u32) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            partition_count,
            replication_factor: 1,
            client_id: "tally".to_owned(),
            transactional_id_prefix: "tally-".to_owned(),
            instance_id: None,
            properties: Vec::new(),
            readers_max: READERS_MAX_DEFAULT,
            timeouts: KafkaTimeouts::default(),
        }
    }

    /// Checks every setting and returns the partition count.
    pub(super) fn validate(&self) -> Result<NonZeroU32, LogError> {
        require(
            !self.brokers.trim().is_empty(),
            "brokers must name at least one broker",
        )?;
        check_topic_prefix(&self.topic_prefix)?;
        require(
            self.replication_factor >= 1,
            "replication_factor must be at least 1",
        )?;
        require(!self.client_id.is_empty(), "client_id must not be empty")?;
        if let Some(instance_id) = &self.instance_id {
            check_instance_id(instance_id)?;
        }
        require(self.readers_max >= 1, "readers_max must be at least 1")?;
        check_properties(&self.properties)?;
        self.timeouts.validate()?;
        match NonZeroU32::new(self.partition_count) {
            Some(count) if count.get() <= PARTITION_COUNT_MAX => Ok(count),
            _ => Err(LogError::Invalid(format!(
                "partition_count {} is outside 1..={PARTITION_COUNT_MAX}",
                self.partition_count
            ))),
        }
    }

    /// The `transactional.id` of this process's member of the group `group_id`.
    pub(super) fn transactional_id(&self, group_id: &str) -> String {
        let suffix = match &self.instance_id {
            Some(instance_id) => instance_id.clone(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        format!("{}{group_id}.{suffix}", self.transactional_id_prefix)
    }

    /// The consumer group id of `group` in this installation.
    pub(super) fn group_id(&self, group: &str) -> String {
        format!("{}{group}", self.topic_prefix)
    }
}

/// Property values may hold passwords, so only their keys are shown.
impl fmt::Debug for KafkaLogSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let property_keys: Vec<&str> = self.properties.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaLogSettings")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partition_count", &self.partition_count)
            .field("replication_factor", &self.replication_factor)
            .field("client_id", &self.client_id)
            .field("transactional_id_prefix", &self.transactional_id_prefix)
            .field("instance_id", &self.instance_id)
            .field("property_keys", &property_keys)
            .field("readers_max", &self.readers_max)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// Every wait the adapter does against the cluster, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct KafkaTimeouts {
    /// One request that is neither a produce nor a fetch: creating or describing topics,
    /// metadata, end offsets, a seek, and each transaction step (init, offsets, commit,
    /// abort). A request that runs out is retried while attempts remain. Default 10 s.
    pub request_timeout_ms: u64,
    /// How long `append` lets librdkafka deliver a record, its retries included
    /// (`message.timeout.ms`, Java's `delivery.timeout.ms`). Default 30 s.
    pub delivery_timeout_ms: u64,
    /// How long the broker lets a transaction stay open before aborting it
    /// (`transaction.timeout.ms`). Without an instance id it bounds how long a member that
    /// died in the middle of a commit holds back read_committed readers of the partitions it
    /// wrote (plus up to the broker's abort check interval, 10 s by default). Every commit
    /// must finish within it. Default 10 s, as Kafka Streams chooses for exactly-once.
    pub transaction_timeout_ms: u64,
    /// A member whose heartbeats stop this long is removed from its group
    /// (`session.timeout.ms`). The broker refuses values below its
    /// `group.min.session.timeout.ms` (6 s by default). Default 45 s.
    pub session_timeout_ms: u64,
    /// How often a member heartbeats (`heartbeat.interval.ms`); at most a third of the session
    /// timeout. Default 3 s.
    pub heartbeat_interval_ms: u64,
    /// A member that does not poll for this long leaves its group and loses its partitions;
    /// its next commit is fenced (`max.poll.interval.ms`). At least the session timeout.
    /// Default 300 s.
    pub max_poll_interval_ms: u64,
    /// How long `consumer()` waits for the new member's first assignment. A rebalance waits
    /// for every current member to rejoin, up to their `max_poll_interval_ms`. Default 60 s.
    pub group_join_timeout_ms: u64,
    /// How long `read` waits for records it knows are there (below the end offset) before it
    /// returns those it has, or fails when it has none. Default 10 s.
    pub read_timeout_ms: u64,
}

impl Default for KafkaTimeouts {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            delivery_timeout_ms: 30_000,
            transaction_timeout_ms: 10_000,
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            group_join_timeout_ms: 60_000,
            read_timeout_ms: 10_000,
        }
    }
}

impl KafkaTimeouts {
    fn validate(&self) -> Result<(), LogError> {
        let all = [
            self.request_timeout_ms,
            self.delivery_timeout_ms,
            self.transaction_timeout_ms,
            self.session_timeout_ms,
            self.heartbeat_interval_ms,
            self.max_poll_interval_ms,
            self.group_join_timeout_ms,
            self.read_timeout_ms,
        ];
        // librdkafka keeps these in 32-bit signed milliseconds.
        let limit = u64::from(i32::MAX.unsigned_abs());
        require(
            all.iter().all(|&ms| ms >= 1 && ms <= limit),
            "every timeout must be between 1 ms and i32::MAX ms",
        )?;
        require(
            self.transaction_timeout_ms >= 1_000,
            "transaction_timeout_ms must be at least 1000 (librdkafka's minimum)",
        )?;
        require(
            self.heartbeat_interval_ms * 3 <= self.session_timeout_ms,
            "heartbeat_interval_ms must be at most a third of session_timeout_ms",
        )?;
        require(
            self.max_poll_interval_ms >= self.session_timeout_ms,
            "max_poll_interval_ms must be at least session_timeout_ms",
        )
    }
}

/// The longest instance id; it ends up in transactional ids and logs.
pub const INSTANCE_ID_CHARS_MAX: usize = 64;

fn check_instance_id(instance_id: &str) -> Result<(), LogError> {
    let well_formed = !instance_id.is_empty()
        && instance_id.len() <= INSTANCE_ID_CHARS_MAX
        && instance_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    require(
        well_formed,
        "instance_id must have 1 to 64 characters among A-Z, a-z, 0-9, '.', '_' and '-'",
    )
}

fn require(condition: bool, message: &str) -> Result<(), LogError> {
    if condition {
        return Ok(());
    }
    Err(LogError::Invalid(message.to_owned()))
}

/// Kafka topic names allow ASCII letters, digits, `.`, `_` and `-`.
fn check_topic_prefix(prefix: &str) -> Result<(), LogError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    require(
        prefix.len() <= TOPIC_PREFIX_CHARS_MAX && prefix.chars().all(legal),
        "topic_prefix must have at most 200 characters from [A-Za-z0-9._-]",
    )
}

fn check_properties(properties: &[(String, String)]) -> Result<(), LogError> {
    for (key, value) in properties {
        require(!key.is_empty(), "a property key must not be empty")?;
        require(
            !key.contains('\0') && !value.contains('\0'),
            "a property must not contain NUL",
        )?;
        if PINNED_PROPERTIES.contains(&key.as_str()) {
            return Err(LogError::Invalid(format!(
                "property {key} is set by the Kafka adapter itself and cannot be passed through"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KafkaLogSettings {
        KafkaLogSettings::new("127.0.0.1:9092", 4)
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(settings().validate().expect("valid").get(), 4);
    }

    #[test]
    fn a_pinned_property_is_refused() {
        let mut settings = settings();
        settings.properties = vec![("enable.idempotence".into(), "false".into())];
        assert!(matches!(settings.validate(), Err(LogError::Invalid(_))));
    }

    #[test]
    fn a_prefix_with_characters_kafka_refuses_is_refused() {
        let mut settings = settings();
        settings.topic_prefix = "test/".into();
        assert!(matches!(settings.validate(), Err(LogError::Invalid(_))));
    }

    #[test]
    fn a_partition_count_out_of_range_is_refused() {
        for count in [0, PARTITION_COUNT_MAX + 1] {
            let settings = KafkaLogSettings::new("127.0.0.1:9092", count);
            assert!(matches!(settings.validate(), Err(LogError::Invalid(_))));
        }
    }

    #[test]
    fn a_heartbeat_slower_than_a_third_of_the_session_is_refused() {
        let mut settings = settings();
        settings.timeouts.heartbeat_interval_ms = settings.timeouts.session_timeout_ms / 2;
        assert!(matches!(settings.validate(), Err(LogError::Invalid(_))));
    }

    #[test]
    fn an_instance_id_keeps_transactional_ids_across_restarts() {
        let mut settings = settings();
        settings.instance_id = Some("decider-0".to_owned());
        assert!(settings.validate().is_ok());
        let id = settings.transactional_id("decider");
        assert_eq!(id, "tally-decider.decider-0");
        assert_eq!(settings.transactional_id("decider"), id);
    }

    #[test]
    fn without_an_instance_id_every_member_has_its_own_transactional_id() {
        let settings = settings();
        assert_ne!(
            settings.transactional_id("decider"),
            settings.transactional_id("decider")
        );
    }

    #[test]
    fn a_malformed_instance_id_is_refused() {
        for instance_id in [
            "",
            "has space",
            "slash/",
            &"x".repeat(INSTANCE_ID_CHARS_MAX + 1),
        ] {
            let mut settings = settings();
            settings.instance_id = Some(instance_id.to_owned());
            assert!(
                matches!(settings.validate(), Err(LogError::Invalid(_))),
                "{instance_id:?}"
            );
        }
    }

    #[test]
    fn debug_output_shows_property_keys_but_not_values() {
        let mut settings = settings();
        settings.properties = vec![("sasl.password".into(), "hunter2".into())];
        let shown = format!("{settings:?}");
        assert!(shown.contains("sasl.password"));
        assert!(!shown.contains("hunter2"));
    }
}
