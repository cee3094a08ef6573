//! Notifications asked for through the API, kept by the API in the read store's database
//! (`notification_requests`, migration `0004`), each statement written once for every backend.
//!
//! A request is recorded before its event is appended, so that a status poll right after the
//! 202 finds it while the notifier has not read it yet; the notifier's delivery log answers
//! from then on. A request whose append failed is removed again, since it will never be sent.

use sqlx::Pool;
use tally_domain::NotificationId;
use tally_domain::notification::Channel;
use tally_projections::{Backend, Get, ReadStore, Sql, with_pool};
use uuid::Uuid;

/// A request as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationRequestRow {
    pub notification_id: String,
    pub channel: String,
    pub recipient: String,
    pub created_at_ms: i64,
}

const INSERT_REQUEST: &str = "INSERT INTO notification_requests (notification_id, channel, \
    recipient, requested_by, created_at_ms) VALUES (?, ?, ?, ?, ?)";

pub async fn record(
    store: &ReadStore,
    notification_id: NotificationId,
    channel: Channel,
    recipient: &str,
    requested_by: Uuid,
    created_at_ms: i64,
) -> Result<(), sqlx::Error> {
    let row = NotificationRequestRow {
        notification_id: notification_id.to_string(),
        channel: channel.as_str().to_owned(),
        recipient: recipient.to_owned(),
        created_at_ms,
    };
    with_pool!(store, pool => insert(pool, row, requested_by).await)
}

async fn insert<DB: Backend>(
    pool: &Pool<DB>,
    row: NotificationRequestRow,
    requested_by: Uuid,
) -> Result<(), sqlx::Error> {
    Sql::<DB>::new(INSERT_REQUEST)
        .bind(row.notification_id)
        .bind(row.channel)
        .bind(row.recipient)
        .bind(requested_by.to_string())
        .bind(row.created_at_ms)
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(())
}

/// Removes a request whose event never made it into the log.
pub async fn forget(store: &ReadStore, notification_id: NotificationId) -> Result<(), sqlx::Error> {
    let id = notification_id.to_string();
    with_pool!(store, pool => delete(pool, id).await)
}

async fn delete<DB: Backend>(pool: &Pool<DB>, notification_id: String) -> Result<(), sqlx::Error> {
    Sql::<DB>::new("DELETE FROM notification_requests WHERE notification_id = ?")
        .bind(notification_id)
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(())
}

pub async fn find(
    store: &ReadStore,
    notification_id: NotificationId,
) -> Result<Option<NotificationRequestRow>, sqlx::Error> {
    let id = notification_id.to_string();
    with_pool!(store, pool => find_on(pool, id).await)
}

async fn find_on<DB: Backend>(
    pool: &Pool<DB>,
    notification_id: String,
) -> Result<Option<NotificationRequestRow>, sqlx::Error> {
    let row = Sql::<DB>::new(
        "SELECT notification_id, channel, recipient, created_at_ms \
         FROM notification_requests WHERE notification_id = ?",
    )
    .bind(notification_id)
    .fetch_optional(&mut *pool.acquire().await?)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(NotificationRequestRow {
        notification_id: row.value("notification_id")?,
        channel: row.value("channel")?,
        recipient: row.value("recipient")?,
        created_at_ms: row.value("created_at_ms")?,
    }))
}
