//! The librdkafka client context of the adapter's producers, readers and admin client: their
//! log lines and client errors go to `tracing`, with the client's role as a field.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use super::errors::is_transient_error;

/// Logs for one client, named by its role (`append`, `reader`, `member-txn`, `admin`).
#[derive(Clone, Copy, Debug)]
pub(super) struct LogContext {
    pub(super) role: &'static str,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(self.role, level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(self.role, &error, reason);
    }
}

/// Readers use the plain consumer behaviour: they are assigned partitions, never rebalanced.
impl ConsumerContext for LogContext {}

/// One librdkafka log line at the level librdkafka gave it.
pub(super) fn log_line(role: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(client = role, facility, message, "librdkafka error");
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(client = role, facility, message, "librdkafka warning");
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(client = role, facility, message, "librdkafka notice");
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(client = role, facility, message, "librdkafka debug");
        }
    }
}

/// A client-level error. Transient ones (a broker down, a connection reset) are retried by
/// librdkafka itself, so they are warnings; anything else needs someone to look.
pub(super) fn log_client_error(role: &str, error: &KafkaError, reason: &str) {
    if is_transient_error(error) {
        tracing::warn!(client = role, %error, reason, "kafka client error; librdkafka retries");
    } else {
        tracing::error!(client = role, %error, reason, "kafka client error");
    }
}
