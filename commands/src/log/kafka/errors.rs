//! How Kafka's errors map onto the port's, and the bounded backoff used to retry the
//! transient ones.
//!
//! - Fencing (a newer producer epoch, a stale group generation or member, a lost assignment)
//!   becomes `LogError::Fenced`: the member may write nothing more.
//! - Refusals of the request itself (a record too large, a bad configuration) become
//!   `LogError::Invalid`: retrying cannot help.
//! - Everything else becomes `LogError::Storage`; the transient part of it is retried here
//!   first, a bounded number of times.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::log::LogError;

/// Tries of one request that fails transiently, the first included.
pub(super) const RETRY_ATTEMPTS_MAX: u32 = 5;

/// Pause after the first transient failure; it doubles after each further one.
const RETRY_DELAY_MS_MIN: u64 = 100;

/// The longest pause between tries: five tries then span about 3.5 s.
const RETRY_DELAY_MS_MAX: u64 = 2_000;

/// Tries of the wait for a new topic's partition leaders at start-up: a broker that has just
/// started can take several seconds to elect them. Twelve tries span about 17 s. (A cluster
/// that cannot be reached at all fails earlier, when the topics are created.)
pub(super) const STARTUP_ATTEMPTS_MAX: u32 = 12;

/// Wraps any failure of the cluster under the log.
pub(super) fn storage(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LogError {
    LogError::Storage(error.into())
}

/// The port's error for a Kafka error.
pub(super) fn from_kafka(error: KafkaError) -> LogError {
    if matches!(error, KafkaError::ClientConfig(..)) {
        return LogError::Invalid(error.to_string());
    }
    match error.rdkafka_error_code() {
        Some(code) if is_fencing(code) => LogError::Fenced,
        Some(code) if is_refusal(code) => LogError::Invalid(error.to_string()),
        _ => storage(error),
    }
}

/// Codes that mean another member or producer owns what this one wrote for.
pub(super) fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::AssignmentLost
    )
}

/// Codes that refuse the request itself, whatever the state of the cluster.
fn is_refusal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::PolicyViolation
    )
}

/// Codes of failures that pass on their own: a broker restarting, a leader moving, a
/// coordinator loading, a request timing out.
pub(super) fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::TimedOutQueue
            | RDKafkaErrorCode::WaitingForCoordinator
            | RDKafkaErrorCode::Retry
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::ReplicaNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::NotEnoughReplicas
            | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
            | RDKafkaErrorCode::KafkaStorageError
            | RDKafkaErrorCode::FencedLeaderEpoch
            | RDKafkaErrorCode::UnknownLeaderEpoch
            | RDKafkaErrorCode::ThrottlingQuotaExceeded
            | RDKafkaErrorCode::ConcurrentTransactions
            | RDKafkaErrorCode::UnstableOffsetCommit
    )
}

/// Whether retrying the request that failed with `error` may succeed.
pub(super) fn is_transient_error(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(error) => error.is_retriable(),
        _ => error.rdkafka_error_code().is_some_and(is_transient),
    }
}

/// Exponential backoff for one request: `RETRY_ATTEMPTS_MAX` tries, pauses doubling from
/// `RETRY_DELAY_MS_MIN` up to `RETRY_DELAY_MS_MAX`.
pub(super) struct Backoff {
    attempt: u32,
    attempts_max: u32,
    delay_ms: u64,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self::with_attempts(RETRY_ATTEMPTS_MAX)
    }

    /// A backoff for waiting on partition leaders at start-up, when a young cluster is slow.
    pub(super) fn at_startup() -> Self {
        Self::with_attempts(STARTUP_ATTEMPTS_MAX)
    }

    fn with_attempts(attempts_max: u32) -> Self {
        Self {
            attempt: 1,
            attempts_max,
            delay_ms: RETRY_DELAY_MS_MIN,
        }
    }

    /// The try that just failed, counting from 1.
    pub(super) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The pause before the next try, or `None` when the tries are spent.
    pub(super) fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.attempts_max {
            return None;
        }
        let delay = Duration::from_millis(self.delay_ms);
        self.attempt += 1;
        self.delay_ms = (self.delay_ms * 2).min(RETRY_DELAY_MS_MAX);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_generation_or_member_is_fencing() {
        for code in [
            RDKafkaErrorCode::IllegalGeneration,
            RDKafkaErrorCode::UnknownMemberId,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::Fenced,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert!(matches!(from_kafka(error), LogError::Fenced), "{code:?}");
        }
    }

    #[test]
    fn a_record_too_large_is_a_refusal() {
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(from_kafka(error), LogError::Invalid(_)));
    }

    #[test]
    fn a_broker_transport_failure_is_transient_storage() {
        let error = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(is_transient_error(&error));
        assert!(matches!(from_kafka(error), LogError::Storage(_)));
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_stops_after_the_last_attempt() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = std::iter::from_fn(|| backoff.next_delay())
            .map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800]);
        assert_eq!(backoff.attempt(), RETRY_ATTEMPTS_MAX);
    }

    #[test]
    fn the_start_up_backoff_waits_longer_for_a_young_cluster() {
        let mut backoff = Backoff::at_startup();
        let waited_ms: u64 = std::iter::from_fn(|| backoff.next_delay())
            .map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .sum();
        assert_eq!(backoff.attempt(), STARTUP_ATTEMPTS_MAX);
        assert_eq!(waited_ms, 100 + 200 + 400 + 800 + 1_600 + 6 * 2_000);
    }
}
