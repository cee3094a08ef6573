//! The notifier's limits, with their defaults and the reason for each. Checked once, when the
//! notifier starts.

/// Notifications read from the topic per batch. A batch is inserted into the delivery log in
/// one statement per 500 rows and then committed as consumed.
pub const BATCH_RECORDS_MAX_DEFAULT: usize = 500;

/// How long a poll of the notifications topic waits. Shutdown is noticed between polls.
pub const POLL_WAIT_MS_DEFAULT: u64 = 200;

/// Sends under way at once per notifier process. The SMTP sender bounds its own connections
/// further (`--smtp-connections-max`); this bounds what is claimed and held at once.
pub const SENDS_IN_FLIGHT_MAX_DEFAULT: usize = 16;

/// How long a sender with nothing due waits before it looks again: how late a notification
/// may start after it was read, or after its retry came due.
pub const IDLE_WAIT_MS_DEFAULT: u64 = 200;

/// How long a claim holds a row. It must outlast the slowest send (30 s for SMTP by default),
/// or a second sender could take the row while the first is still sending; it is also how
/// long the rows of a sender that died stay held before another sender takes them.
pub const LEASE_MS_DEFAULT: u64 = 120_000;

/// Attempts before a notification whose failures might pass is given up as dead. With the
/// default delays the twelve attempts span about ten minutes of an unreachable server.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 12;

/// The ceiling of the first retry's delay; each further retry doubles it.
pub const RETRY_DELAY_MS_MIN_DEFAULT: u64 = 1_000;

/// The ceiling no retry delay exceeds.
pub const RETRY_DELAY_MS_MAX_DEFAULT: u64 = 120_000;

#[derive(Clone, Debug)]
pub struct NotifierSettings {
    pub batch_records_max: usize,
    pub poll_wait_ms: u64,
    pub sends_in_flight_max: usize,
    pub idle_wait_ms: u64,
    pub lease_ms: u64,
    pub attempts_max: u32,
    pub retry_delay_ms_min: u64,
    pub retry_delay_ms_max: u64,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        NotifierSettings {
            batch_records_max: BATCH_RECORDS_MAX_DEFAULT,
            poll_wait_ms: POLL_WAIT_MS_DEFAULT,
            sends_in_flight_max: SENDS_IN_FLIGHT_MAX_DEFAULT,
            idle_wait_ms: IDLE_WAIT_MS_DEFAULT,
            lease_ms: LEASE_MS_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            retry_delay_ms_min: RETRY_DELAY_MS_MIN_DEFAULT,
            retry_delay_ms_max: RETRY_DELAY_MS_MAX_DEFAULT,
        }
    }
}

impl NotifierSettings {
    /// Names the first setting out of its range.
    pub fn validate(&self) -> Result<(), &'static str> {
        let checks = [
            (
                (1..=10_000).contains(&self.batch_records_max),
                "batch_records_max must be 1 to 10000",
            ),
            (
                (1..=60_000).contains(&self.poll_wait_ms),
                "poll_wait_ms must be 1 to 60000",
            ),
            (
                (1..=1_024).contains(&self.sends_in_flight_max),
                "sends_in_flight_max must be 1 to 1024",
            ),
            (
                (1..=60_000).contains(&self.idle_wait_ms),
                "idle_wait_ms must be 1 to 60000",
            ),
            (
                (1_000..=3_600_000).contains(&self.lease_ms),
                "lease_ms must be 1000 to 3600000",
            ),
            (
                (1..=1_000).contains(&self.attempts_max),
                "attempts_max must be 1 to 1000",
            ),
            (
                self.retry_delay_ms_min >= 1 && self.retry_delay_ms_min <= self.retry_delay_ms_max,
                "retry_delay_ms_min must be at least 1 and at most retry_delay_ms_max",
            ),
            (
                self.retry_delay_ms_max <= 86_400_000,
                "retry_delay_ms_max must be at most a day",
            ),
        ];
        match checks.into_iter().find(|(valid, _)| !valid) {
            Some((_, problem)) => Err(problem),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(NotifierSettings::default().validate(), Ok(()));
    }

    #[test]
    fn a_lease_shorter_than_a_second_is_refused() {
        let settings = NotifierSettings {
            lease_ms: 10,
            ..NotifierSettings::default()
        };
        assert!(settings.validate().is_err());
    }
}
