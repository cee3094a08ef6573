//! Tally's topics on the cluster: their names under the prefix, and their creation and check at
//! start-up.
//!
//! Topics are created explicitly (the broker's automatic creation would pick its own partition
//! count and retention). An event log keeps everything forever: `cleanup.policy=delete` with
//! unlimited retention, never compaction, which would keep only the last record of each key.
//! A topic that exists with another partition count or a policy that can drop records is
//! refused, not altered.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::context::LogContext;
use super::errors::{Backoff, from_kafka, is_transient, is_transient_error, storage};
use super::settings::KafkaLogSettings;
use crate::log::{LogError, Topic};

/// The topic configuration every Tally topic is created with, and checked for when it exists.
/// `message.timestamp.type=LogAppendTime` makes a record's timestamp the time the log stored it,
/// which is what the port's `Record::timestamp_ms` means.
/// The decider's admission rule (`tally_domain::ledger::admitted`) rests on that meaning.
const REQUIRED_CONFIG: [(&str, &str); 4] = [
    ("cleanup.policy", "delete"),
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    ("message.timestamp.type", "LogAppendTime"),
];

/// With this many replicas or more, topics are created with `min.insync.replicas=2`.
const REPLICATION_FACTOR_FOR_TWO_IN_SYNC: u16 = 3;

/// The full names of Tally's topics under one prefix.
#[derive(Clone, Debug)]
pub(super) struct TopicNames {
    commands: String,
    events: String,
    notifications: String,
    dead_letters: String,
}

impl TopicNames {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            commands: format!("{prefix}{}", Topic::Commands.name()),
            events: format!("{prefix}{}", Topic::Events.name()),
            notifications: format!("{prefix}{}", Topic::Notifications.name()),
            dead_letters: format!("{prefix}{}", Topic::DeadLetters.name()),
        }
    }

    pub(super) fn name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Commands => &self.commands,
            Topic::Events => &self.events,
            Topic::Notifications => &self.notifications,
            Topic::DeadLetters => &self.dead_letters,
        }
    }

    /// The topic a full name belongs to, if it is one of Tally's under this prefix.
    pub(super) fn topic_of(&self, name: &str) -> Option<Topic> {
        Topic::ALL
            .into_iter()
            .find(|&topic| self.name(topic) == name)
    }
}

/// Creates the topics that are missing and checks every topic's partition count and
/// retention, retrying transient failures of the cluster.
pub(super) async fn ensure(
    settings: &KafkaLogSettings,
    names: &TopicNames,
) -> Result<(), LogError> {
    let admin: AdminClient<LogContext> = super::config::admin(settings)
        .create_with_context(LogContext { role: "admin" })
        .map_err(from_kafka)?;
    let admin = Arc::new(admin);
    let timeout = Duration::from_millis(settings.timeouts.request_timeout_ms);

    create_missing(&admin, settings, names, timeout).await?;
    for topic in Topic::ALL {
        let name = names.name(topic);
        check_partitions(&admin, name, settings.partition_count, timeout).await?;
        check_config(&admin, name, timeout).await?;
    }
    Ok(())
}

async fn create_missing(
    admin: &AdminClient<LogContext>,
    settings: &KafkaLogSettings,
    names: &TopicNames,
    timeout: Duration,
) -> Result<(), LogError> {
    let partitions = i32::try_from(settings.partition_count)
        .map_err(|_| LogError::Invalid("partition_count does not fit an i32".into()))?;
    let replicas = i32::from(settings.replication_factor);
    let in_sync = if settings.replication_factor >= REPLICATION_FACTOR_FOR_TWO_IN_SYNC {
        "2"
    } else {
        "1"
    };
    let new_topics: Vec<NewTopic<'_>> = Topic::ALL
        .into_iter()
        .map(|topic| {
            let replication = TopicReplication::Fixed(replicas);
            let mut new_topic = NewTopic::new(names.name(topic), partitions, replication);
            for (key, value) in REQUIRED_CONFIG {
                new_topic = new_topic.set(key, value);
            }
            new_topic.set("min.insync.replicas", in_sync)
        })
        .collect();
    // The request timeout bounds a try that reaches no broker at all (an unreachable or
    // untrusted cluster), which would otherwise wait out librdkafka's `socket.timeout.ms`.
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));

    let mut backoff = Backoff::new();
    loop {
        let failed = match admin.create_topics(&new_topics, &options).await {
            Ok(results) => first_creation_failure(results)?,
            Err(error) => Some(error),
        };
        let Some(error) = failed else { return Ok(()) };
        retry_or_fail(&mut backoff, "creating topics", error).await?;
    }
}

/// The first transient failure among the per-topic results, so the caller retries; a topic
/// that already exists counts as created, and a permanent failure fails start-up.
fn first_creation_failure(
    results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
) -> Result<Option<KafkaError>, LogError> {
    let mut transient = None;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) if is_transient(code) => transient = Some(KafkaError::AdminOp(code)),
            Err((name, code)) => {
                let error = KafkaError::AdminOp(code);
                tracing::error!(topic = %name, %error, "topic creation refused");
                return Err(from_kafka(error));
            }
        }
    }
    Ok(transient)
}

/// Refuses a topic whose partition count differs, and waits until every partition has a
/// leader, so the first append does not race the topic's creation.
async fn check_partitions(
    admin: &Arc<AdminClient<LogContext>>,
    name: &str,
    partition_count: u32,
    timeout: Duration,
) -> Result<(), LogError> {
    let mut backoff = Backoff::at_startup();
    loop {
        let failure = match partitions_with_leaders(admin, name, timeout).await? {
            Ok((count, _)) if count != partition_count => {
                return Err(LogError::Invalid(format!(
                    "topic {name} has {count} partitions, but the log is configured with \
                     {partition_count}: changing the count would move keys between partitions"
                )));
            }
            Ok((_, true)) => return Ok(()),
            Ok((_, false)) => KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable),
            Err(error) => error,
        };
        retry_or_fail(&mut backoff, "waiting for partition leaders", failure).await?;
    }
}

/// The topic's partition count and whether each partition has a leader, from the metadata.
async fn partitions_with_leaders(
    admin: &Arc<AdminClient<LogContext>>,
    name: &str,
    timeout: Duration,
) -> Result<Result<(u32, bool), KafkaError>, LogError> {
    let admin = Arc::clone(admin);
    let topic = name.to_owned();
    let fetched = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(Some(&topic), timeout)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic));
        };
        if let Some(error) = found.error() {
            return Err(KafkaError::MetadataFetch(error.into()));
        }
        let partitions = found.partitions();
        let led = partitions
            .iter()
            .all(|p| p.error().is_none() && p.leader() >= 0);
        Ok((u32::try_from(partitions.len()).unwrap_or(u32::MAX), led))
    });
    fetched.await.map_err(storage)
}

/// Refuses a topic whose configuration could drop records.
async fn check_config(
    admin: &AdminClient<LogContext>,
    name: &str,
    timeout: Duration,
) -> Result<(), LogError> {
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let resource = ResourceSpecifier::Topic(name);
    let mut backoff = Backoff::new();
    let described = loop {
        let error = match admin.describe_configs([&resource], &options).await {
            Ok(mut results) => match results.pop() {
                Some(Ok(described)) => break described,
                Some(Err(code)) => KafkaError::AdminOp(code),
                None => KafkaError::AdminOp(RDKafkaErrorCode::Fail),
            },
            Err(error) => error,
        };
        retry_or_fail(&mut backoff, "describing a topic", error).await?;
    };

    for (key, required) in REQUIRED_CONFIG {
        let actual = described.get(key).and_then(|entry| entry.value.as_deref());
        if actual != Some(required) {
            return Err(LogError::Invalid(format!(
                "topic {name} has {key}={} but an event log needs {key}={required}",
                actual.unwrap_or("(unset)")
            )));
        }
    }
    Ok(())
}

/// Pauses before the next try of a transient failure; fails on a permanent one or when the
/// tries are spent.
async fn retry_or_fail(
    backoff: &mut Backoff,
    what: &'static str,
    error: KafkaError,
) -> Result<(), LogError> {
    if !is_transient_error(&error) {
        return Err(from_kafka(error));
    }
    let attempt = backoff.attempt();
    let Some(delay) = backoff.next_delay() else {
        tracing::error!(what, attempt, %error, "kafka request failed; giving up");
        return Err(from_kafka(error));
    };
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    tracing::warn!(what, attempt, delay_ms, %error, "kafka request failed; retrying");
    tokio::time::sleep(delay).await;
    Ok(())
}
