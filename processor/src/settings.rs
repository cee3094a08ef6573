//! The processor's settings: every limit it works within, with its default and the reason for
//! it. Checked once, when the worker starts.

use crate::retry::RetryPolicy;

/// Events handled per batch. A batch is committed in one log transaction together with
/// what it produced (about three records per event at most); 500 keeps that transaction
/// small while sharing its cost widely.
pub const BATCH_RECORDS_MAX_DEFAULT: usize = 500;

/// The most a batch may hold: the embedded log returns at most this many records per poll.
pub const BATCH_RECORDS_MAX_LIMIT: usize = 10_000;

/// How long a poll waits for events. Shutdown is noticed between polls, so this bounds how
/// late it is noticed when the log is quiet.
pub const POLL_WAIT_MS_DEFAULT: u64 = 200;

/// Provider calls under way at once. Enough to overlap the latency of a batch's top-ups,
/// few enough not to trip a provider's rate limit.
pub const AIRTIME_IN_FLIGHT_MAX_DEFAULT: usize = 64;

/// The ceiling of the first retry delay of a provider call or a commit.
pub const RETRY_DELAY_MS_MIN_DEFAULT: u64 = 200;

/// The ceiling of every retry delay: a provider back after an outage is used within 30 s.
pub const RETRY_DELAY_MS_MAX_DEFAULT: u64 = 30_000;

/// Retries of one provider call logged at warn level before they are logged at error level.
/// Ten retries span about two minutes at the default delays: longer needs someone to look.
pub const RETRY_ATTEMPTS_WARN_MAX_DEFAULT: u32 = 10;

/// Attempts at committing a batch when the log's storage fails. A storage failure that
/// outlasts a few seconds of retries is for the supervisor to handle by restarting the role.
pub const COMMIT_ATTEMPTS_MAX_DEFAULT: u32 = 5;

/// Events read per call while rebuilding a partition's state: bounds the memory one read takes.
pub const REBUILD_READ_RECORDS_MAX_DEFAULT: usize = 1_000;

#[derive(Clone, Debug)]
pub struct ProcessorSettings {
    pub batch_records_max: usize,
    pub poll_wait_ms: u64,
    pub airtime_in_flight_max: usize,
    pub retry_delay_ms_min: u64,
    pub retry_delay_ms_max: u64,
    pub retry_attempts_warn_max: u32,
    pub commit_attempts_max: u32,
    pub rebuild_read_records_max: usize,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            batch_records_max: BATCH_RECORDS_MAX_DEFAULT,
            poll_wait_ms: POLL_WAIT_MS_DEFAULT,
            airtime_in_flight_max: AIRTIME_IN_FLIGHT_MAX_DEFAULT,
            retry_delay_ms_min: RETRY_DELAY_MS_MIN_DEFAULT,
            retry_delay_ms_max: RETRY_DELAY_MS_MAX_DEFAULT,
            retry_attempts_warn_max: RETRY_ATTEMPTS_WARN_MAX_DEFAULT,
            commit_attempts_max: COMMIT_ATTEMPTS_MAX_DEFAULT,
            rebuild_read_records_max: REBUILD_READ_RECORDS_MAX_DEFAULT,
        }
    }
}

impl ProcessorSettings {
    /// Names the first setting out of its range.
    pub fn validate(&self) -> Result<(), &'static str> {
        let checks = [
            (
                (1..=BATCH_RECORDS_MAX_LIMIT).contains(&self.batch_records_max),
                "batch_records_max must be 1 to 10000",
            ),
            (
                (1..=60_000).contains(&self.poll_wait_ms),
                "poll_wait_ms must be 1 to 60000",
            ),
            (
                (1..=4_096).contains(&self.airtime_in_flight_max),
                "airtime_in_flight_max must be 1 to 4096",
            ),
            (
                self.retry_delay_ms_min >= 1 && self.retry_delay_ms_min <= self.retry_delay_ms_max,
                "retry_delay_ms_min must be at least 1 and at most retry_delay_ms_max",
            ),
            (
                self.retry_delay_ms_max <= 3_600_000,
                "retry_delay_ms_max must be at most an hour",
            ),
            (
                self.commit_attempts_max >= 1,
                "commit_attempts_max must be at least 1",
            ),
            (
                self.rebuild_read_records_max >= 1,
                "rebuild_read_records_max must be at least 1",
            ),
        ];
        match checks.into_iter().find(|(valid, _)| !valid) {
            Some((_, problem)) => Err(problem),
            None => Ok(()),
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            delay_ms_min: self.retry_delay_ms_min,
            delay_ms_max: self.retry_delay_ms_max,
            attempts_warn_max: self.retry_attempts_warn_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(ProcessorSettings::default().validate(), Ok(()));
    }

    #[test]
    fn a_retry_floor_above_its_ceiling_is_refused() {
        let settings = ProcessorSettings {
            retry_delay_ms_min: 5_000,
            retry_delay_ms_max: 1_000,
            ..ProcessorSettings::default()
        };
        assert!(settings.validate().is_err());
    }

    #[test]
    fn zero_limits_are_refused() {
        let batch = ProcessorSettings {
            batch_records_max: 0,
            ..ProcessorSettings::default()
        };
        let in_flight = ProcessorSettings {
            airtime_in_flight_max: 0,
            ..ProcessorSettings::default()
        };
        assert!(batch.validate().is_err());
        assert!(in_flight.validate().is_err());
    }
}
