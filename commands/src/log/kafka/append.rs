//! The idempotent producer behind `append`, and what keeps an append from waiting forever.
//!
//! librdkafka promises a delivery report within `message.timeout.ms` of handing it a record.
//! After a broker restart, a producer has been seen to keep records queued with no broker
//! connection and no report at all. So every append is bounded: one that outlives the delivery
//! timeout by a request timeout fails, and the producer it used is replaced by a new one. The
//! old producer's queued and in-flight records are purged, which fails the appends still
//! waiting on it at once. A purged record may still have reached the broker; its caller was
//! told the append failed, as with any timeout, and may append it again.

use std::sync::RwLock;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer as _, PurgeConfig};

use super::context::LogContext;
use super::errors::from_kafka;
use crate::log::LogError;

/// The append producer in use, numbered so that many appends failing at once replace it once.
pub(super) struct AppendProducer {
    config: ClientConfig,
    current: RwLock<Generation>,
}

/// One producer and its number.
#[derive(Clone)]
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) producer: FutureProducer<LogContext>,
}

impl AppendProducer {
    pub(super) fn new(config: ClientConfig) -> Result<AppendProducer, LogError> {
        let producer = create(&config)?;
        Ok(AppendProducer {
            config,
            current: RwLock::new(Generation {
                number: 0,
                producer,
            }),
        })
    }

    /// The producer appends use now.
    pub(super) fn current(&self) -> Generation {
        // A poisoned lock only means a panic elsewhere while it was held; the value inside
        // is always a whole producer.
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the producer of generation `stalled` by a new one, unless that was done
    /// already, and purges the old one's records on a blocking thread.
    pub(super) fn replace(&self, stalled: u64) -> Result<(), LogError> {
        let mut current = match self.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.number != stalled {
            return Ok(());
        }
        let fresh = Generation {
            number: stalled + 1,
            producer: create(&self.config)?,
        };
        let old = std::mem::replace(&mut *current, fresh);
        drop(current);
        tracing::warn!(
            generation = old.number,
            "append producer stopped acknowledging; replaced by a new one"
        );
        // Purging and dropping wait on librdkafka's threads; keep them off the runtime.
        tokio::task::spawn_blocking(move || {
            old.producer
                .purge(PurgeConfig::default().queue().inflight());
            drop(old);
        });
        Ok(())
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer<LogContext>, LogError> {
    config
        .create_with_context(LogContext { role: "append" })
        .map_err(from_kafka)
}

/// How long an append may wait for its acknowledgements before its producer is deemed stuck:
/// librdkafka's delivery timeout, plus a request timeout for its last try to come back.
pub(super) fn append_deadline(delivery_timeout_ms: u64, request_timeout_ms: u64) -> Duration {
    Duration::from_millis(delivery_timeout_ms.saturating_add(request_timeout_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer that never connects: nothing listens on the discard port here.
    fn config() -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        config
    }

    #[tokio::test]
    async fn many_appends_stalled_on_one_producer_replace_it_once() {
        let append = AppendProducer::new(config()).expect("producer");
        assert_eq!(append.current().number, 0);

        append.replace(0).expect("replaced");
        append.replace(0).expect("already replaced");

        assert_eq!(append.current().number, 1);
        append.replace(1).expect("replaced again");
        assert_eq!(append.current().number, 2);
    }
}
