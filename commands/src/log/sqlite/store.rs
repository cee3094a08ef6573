//! The SQL both sides of the adapter share, and the conversions between the port's types and
//! SQLite's: topics are stored by name, offsets and generations as signed 64-bit integers.

use std::collections::HashMap;
use std::num::NonZeroU32;

use sqlx::{SqliteConnection, SqlitePool};

use crate::log::{LogError, Record, Topic, TopicPartition};

/// Wraps any failure of the storage under the log.
pub(super) fn storage(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LogError {
    LogError::Storage(error.into())
}

/// An offset or generation as SQLite stores it.
pub(super) fn to_sql(value: u64) -> Result<i64, LogError> {
    i64::try_from(value)
        .map_err(|_| LogError::Invalid(format!("{value} is beyond the largest offset stored")))
}

/// An offset or generation read back from SQLite; negative values mean a damaged database.
pub(super) fn from_sql(value: i64) -> Result<u64, LogError> {
    u64::try_from(value).map_err(|_| storage(format!("negative offset {value} in the database")))
}

/// The topic stored under `name`.
pub(super) fn topic_named(name: &str) -> Result<Topic, LogError> {
    Topic::ALL
        .into_iter()
        .find(|topic| topic.name() == name)
        .ok_or_else(|| storage(format!("unknown topic {name:?} in the database")))
}

/// A topic partition read back from SQLite, checked against the partition count.
pub(super) fn partition_from_sql(
    topic: &str,
    partition: i64,
    partition_count: NonZeroU32,
) -> Result<TopicPartition, LogError> {
    let topic = topic_named(topic)?;
    match u32::try_from(partition) {
        Ok(partition) if partition < partition_count.get() => {
            Ok(TopicPartition { topic, partition })
        }
        _ => Err(storage(format!(
            "partition {partition} of {} is out of range",
            topic.name()
        ))),
    }
}

/// The end offset of every partition that has records.
pub(super) async fn load_ends(
    conn: &mut SqliteConnection,
    partition_count: NonZeroU32,
) -> Result<HashMap<TopicPartition, u64>, LogError> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT topic, partition_no, next_offset FROM log_partitions")
            .fetch_all(conn)
            .await
            .map_err(storage)?;

    rows.into_iter()
        .map(|(topic, partition, end)| {
            Ok((
                partition_from_sql(&topic, partition, partition_count)?,
                from_sql(end)?,
            ))
        })
        .collect()
}

/// Up to `limit` records of one partition from `from_offset` on, in offset order.
pub(super) async fn read_records(
    pool: &SqlitePool,
    partition: TopicPartition,
    from_offset: u64,
    limit: usize,
) -> Result<Vec<Record>, LogError> {
    let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT record_offset, record_key, payload, timestamp_ms FROM log_records \
         WHERE topic = ? AND partition_no = ? AND record_offset >= ? \
         ORDER BY record_offset LIMIT ?",
    )
    .bind(partition.topic.name())
    .bind(partition.partition)
    .bind(to_sql(from_offset)?)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(storage)?;

    rows.into_iter()
        .map(|(offset, key, payload, timestamp_ms)| {
            Ok(Record {
                topic: partition.topic,
                partition: partition.partition,
                offset: from_sql(offset)?,
                key,
                payload,
                timestamp_ms,
            })
        })
        .collect()
}

/// One past the last offset of a partition, as committed in the database.
pub(super) async fn read_end_offset(
    pool: &SqlitePool,
    partition: TopicPartition,
) -> Result<u64, LogError> {
    let end: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM log_partitions WHERE topic = ? AND partition_no = ?",
    )
    .bind(partition.topic.name())
    .bind(partition.partition)
    .fetch_optional(pool)
    .await
    .map_err(storage)?;

    end.map_or(Ok(0), from_sql)
}
