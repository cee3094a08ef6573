//! Producing records: each to the partition its key hashes to, all handed to librdkafka at once
//! so it batches them, then every acknowledgement awaited.
//!
//! Used by `append` (the idempotent producer) and by a member's commit (its transactional
//! producer, inside the open transaction).

use std::num::NonZeroU32;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::time::Instant;

use super::context::LogContext;
use super::topics::TopicNames;
use crate::log::murmur2::partition_for_key;
use crate::log::{NewRecord, Position};

/// Pause while librdkafka's queue is full, before offering the record again. Delivery frees
/// room within milliseconds, so a short pause keeps throughput without spinning.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Produces `records` and returns where each landed, in input order.
///
/// Every record that was handed to librdkafka is awaited, even after another failed, so no
/// delivery is left unobserved; the first failure is returned. Records of one partition land
/// in input order (idempotence keeps order across retries). Outside a transaction this is not
/// atomic: after a failure, earlier records may have landed.
pub(super) async fn send_all(
    producer: &FutureProducer<LogContext>,
    names: &TopicNames,
    partition_count: NonZeroU32,
    records: &[NewRecord],
    queue_wait: Duration,
) -> Result<Vec<Position>, KafkaError> {
    let deadline = Instant::now() + queue_wait;
    let mut deliveries = Vec::with_capacity(records.len());
    let mut failure = None;
    for record in records {
        let partition = partition_for_key(record.key.as_bytes(), partition_count);
        match enqueue(
            producer,
            names.name(record.topic),
            partition,
            record,
            deadline,
        )
        .await
        {
            Ok(delivery) => deliveries.push((record.topic, delivery)),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }

    let mut positions = Vec::with_capacity(deliveries.len());
    for (topic, delivery) in deliveries {
        match delivered(delivery).await {
            Ok((partition, offset)) => positions.push(Position {
                topic,
                partition,
                offset,
            }),
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(positions),
    }
}

/// Hands one record to librdkafka, waiting while its queue is full until `deadline`.
async fn enqueue(
    producer: &FutureProducer<LogContext>,
    topic_name: &str,
    partition: u32,
    record: &NewRecord,
    deadline: Instant,
) -> Result<DeliveryFuture, KafkaError> {
    let partition = i32::try_from(partition)
        .map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition))?;
    // Endless only while the queue stays full and the deadline is ahead; each pass either
    // enqueues, fails, or sleeps towards the deadline.
    loop {
        let message = FutureRecord::to(topic_name)
            .partition(partition)
            .key(record.key.as_str())
            .payload(record.payload.as_slice());
        match producer.send_result(message) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Waits for one acknowledgement and returns the partition and offset it reports.
async fn delivered(delivery: DeliveryFuture) -> Result<(u32, u64), KafkaError> {
    let delivery = match delivery.await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err((error, _message))) => return Err(error),
        Err(_canceled) => return Err(KafkaError::Canceled),
    };
    let partition = u32::try_from(delivery.partition);
    let offset = u64::try_from(delivery.offset);
    match (partition, offset) {
        (Ok(partition), Ok(offset)) => Ok((partition, offset)),
        _ => Err(KafkaError::MessageProduction(RDKafkaErrorCode::BadMessage)),
    }
}
