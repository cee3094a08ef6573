//! The delivery log: the notifier's table of every notification it has read and what became
//! of it (`notification_deliveries`, migration `0004`), each statement written once for every
//! backend.
//!
//! Rows go in through [`insert_new`], which leaves a notification already there untouched,
//! so a redelivered event adds nothing. Senders take due rows with [`claim_due`], one
//! conditional UPDATE per row, so that two senders (in one process or in several) never hold
//! the same row, and settle them with [`settle`], which only the row's claimer can do.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Pool;
use tally_domain::NotificationId;
use tally_domain::notification::NotificationRequested;
use tally_projections::{Backend, Get, ReadStore, Sql, with_pool};

/// Rows inserted per statement: 9 values each, far below every backend's bound-value limit.
const INSERT_ROWS_MAX: usize = 500;

/// Where a notification's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not settled yet: waiting for its first or next attempt, or being tried.
    Pending,
    /// The server or provider accepted it.
    Sent,
    /// Refused for good (a rejected recipient, an unrenderable request); never retried.
    Failed,
    /// Every attempt failed for a reason that might have passed; published as a dead letter.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "PENDING",
            DeliveryStatus::Sent => "SENT",
            DeliveryStatus::Failed => "FAILED",
            DeliveryStatus::Dead => "DEAD",
        }
    }

    fn parse(text: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Sent,
            DeliveryStatus::Failed,
            DeliveryStatus::Dead,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// A row of the delivery log, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRow {
    pub notification_id: String,
    pub channel: String,
    pub recipient: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub provider_reference: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub next_attempt_at_ms: i64,
}

/// A row a sender holds: the request to send and how many attempts it has had, this one
/// included.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub notification_id: String,
    /// The stored request; `None` when it no longer decodes (it did when it was stored).
    pub request: Option<NotificationRequested>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// How a sender settles a claimed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    Sent {
        reference: Option<String>,
    },
    /// Back to waiting, until `next_attempt_at_ms`.
    Retry {
        error: String,
        next_attempt_at_ms: i64,
    },
    Failed {
        error: String,
    },
    Dead {
        error: String,
    },
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |elapsed| {
        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
    })
}

/// Adds the notifications not yet in the log as `PENDING`, due at once. Those already there,
/// whatever their status, are left as they are.
pub async fn insert_new(
    store: &ReadStore,
    requests: &[NotificationRequested],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    for chunk in requests.chunks(INSERT_ROWS_MAX) {
        with_pool!(store, pool => insert_chunk(pool, chunk, now_ms).await)?;
    }
    Ok(())
}

async fn insert_chunk<DB: Backend>(
    pool: &Pool<DB>,
    requests: &[NotificationRequested],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = Sql::<DB>::new(
        "INSERT INTO notification_deliveries (notification_id, channel, recipient, request, \
         status, attempts, created_at_ms, updated_at_ms, next_attempt_at_ms) ",
    );
    sql.push_values(requests, |row, request| {
        let json = String::from_utf8_lossy(&request.to_json()).into_owned();
        row.bind(request.notification_id.to_string())
            .bind(request.channel.as_str())
            .bind(request.recipient.clone())
            .bind(json)
            .bind(DeliveryStatus::Pending.as_str())
            .bind(0_i64)
            .bind(now_ms)
            .bind(now_ms)
            .bind(now_ms);
    });
    // An upsert that changes nothing: the row already there wins, and no other error (a
    // value too long, say) is swallowed as `INSERT IGNORE` would on MySQL.
    sql.push(" ");
    sql.push(&DB::on_conflict_update("notification_id"));
    sql.push(" notification_id = notification_id");
    sql.execute(&mut *pool.acquire().await?).await?;
    Ok(())
}

/// Claims up to `limit` due rows for `claimer` until `now_ms + lease_ms`, counting an attempt
/// for each, and returns them. A row is due when it is `PENDING`, its next attempt has come,
/// and no live lease holds it.
pub async fn claim_due(
    store: &ReadStore,
    claimer: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    with_pool!(store, pool => claim_due_on(pool, claimer, now_ms, lease_ms, limit).await)
}

async fn claim_due_on<DB: Backend>(
    pool: &Pool<DB>,
    claimer: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let candidates = Sql::<DB>::new(
        "SELECT notification_id FROM notification_deliveries \
         WHERE status = ? AND next_attempt_at_ms <= ? \
         AND (lease_until_ms IS NULL OR lease_until_ms <= ?) \
         ORDER BY next_attempt_at_ms LIMIT ?",
    )
    .bind(DeliveryStatus::Pending.as_str())
    .bind(now_ms)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&mut conn)
    .await?;

    let mut claimed = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let notification_id: String = candidate.value("notification_id")?;
        // The same conditions again: another sender may have claimed the row since the
        // SELECT, and then this matches nothing.
        let result = Sql::<DB>::new(
            "UPDATE notification_deliveries SET claimed_by = ?, lease_until_ms = ?, \
             attempts = attempts + 1, updated_at_ms = ? \
             WHERE notification_id = ? AND status = ? AND next_attempt_at_ms <= ? \
             AND (lease_until_ms IS NULL OR lease_until_ms <= ?)",
        )
        .bind(claimer.to_owned())
        .bind(now_ms.saturating_add(lease_ms))
        .bind(now_ms)
        .bind(notification_id.clone())
        .bind(DeliveryStatus::Pending.as_str())
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut conn)
        .await?;
        if DB::rows_affected(&result) == 1 {
            claimed.extend(load_claimed::<DB>(&mut conn, &notification_id, claimer).await?);
        }
    }
    Ok(claimed)
}

async fn load_claimed<DB: Backend>(
    conn: &mut DB::Connection,
    notification_id: &str,
    claimer: &str,
) -> Result<Option<Claimed>, sqlx::Error> {
    let row = Sql::<DB>::new(
        "SELECT request, attempts, last_error FROM notification_deliveries \
         WHERE notification_id = ? AND claimed_by = ?",
    )
    .bind(notification_id.to_owned())
    .bind(claimer.to_owned())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let request: String = row.value("request")?;
    let attempts: i64 = row.value("attempts")?;
    Ok(Some(Claimed {
        notification_id: notification_id.to_owned(),
        request: NotificationRequested::from_json(request.as_bytes()).ok(),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: row.value("last_error")?,
    }))
}

/// Settles a row `claimer` holds and releases it. `false` when the claim was lost (the lease
/// ran out and another sender took the row), in which case nothing is written.
pub async fn settle(
    store: &ReadStore,
    notification_id: &str,
    claimer: &str,
    settle: &Settle,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    with_pool!(store, pool => settle_on(pool, notification_id, claimer, settle, now_ms).await)
}

async fn settle_on<DB: Backend>(
    pool: &Pool<DB>,
    notification_id: &str,
    claimer: &str,
    settle: &Settle,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let (status, error, reference, next_attempt_at_ms) = match settle {
        Settle::Sent { reference } => (DeliveryStatus::Sent, None, reference.clone(), now_ms),
        Settle::Retry {
            error,
            next_attempt_at_ms,
        } => (
            DeliveryStatus::Pending,
            Some(error.clone()),
            None,
            *next_attempt_at_ms,
        ),
        Settle::Failed { error } => (DeliveryStatus::Failed, Some(error.clone()), None, now_ms),
        Settle::Dead { error } => (DeliveryStatus::Dead, Some(error.clone()), None, now_ms),
    };
    // A send that succeeded keeps the error of the attempt before it, which says why it
    // took more than one.
    let result = Sql::<DB>::new(
        "UPDATE notification_deliveries SET status = ?, \
         last_error = COALESCE(?, last_error), provider_reference = ?, \
         next_attempt_at_ms = ?, updated_at_ms = ?, claimed_by = NULL, lease_until_ms = NULL \
         WHERE notification_id = ? AND claimed_by = ?",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(reference)
    .bind(next_attempt_at_ms)
    .bind(now_ms)
    .bind(notification_id.to_owned())
    .bind(claimer.to_owned())
    .execute(&mut *pool.acquire().await?)
    .await?;
    Ok(DB::rows_affected(&result) == 1)
}

/// The delivery of one notification, if the notifier has read it.
pub async fn find(
    store: &ReadStore,
    notification_id: NotificationId,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    let id = notification_id.to_string();
    with_pool!(store, pool => find_on(pool, id).await)
}

async fn find_on<DB: Backend>(
    pool: &Pool<DB>,
    notification_id: String,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    let row = Sql::<DB>::new(
        "SELECT notification_id, channel, recipient, status, attempts, last_error, \
         provider_reference, created_at_ms, updated_at_ms, next_attempt_at_ms \
         FROM notification_deliveries WHERE notification_id = ?",
    )
    .bind(notification_id)
    .fetch_optional(&mut *pool.acquire().await?)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.value("status")?;
    let status = DeliveryStatus::parse(&status)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown delivery status {status:?}").into()))?;
    Ok(Some(DeliveryRow {
        notification_id: row.value("notification_id")?,
        channel: row.value("channel")?,
        recipient: row.value("recipient")?,
        status,
        attempts: row.value("attempts")?,
        last_error: row.value("last_error")?,
        provider_reference: row.value("provider_reference")?,
        created_at_ms: row.value("created_at_ms")?,
        updated_at_ms: row.value("updated_at_ms")?,
        next_attempt_at_ms: row.value("next_attempt_at_ms")?,
    }))
}

/// How many rows have each status, for tests and operators.
pub async fn count_by_status(
    store: &ReadStore,
    status: DeliveryStatus,
) -> Result<i64, sqlx::Error> {
    with_pool!(store, pool => count_on(pool, status).await)
}

async fn count_on<DB: Backend>(
    pool: &Pool<DB>,
    status: DeliveryStatus,
) -> Result<i64, sqlx::Error> {
    let row = Sql::<DB>::new("SELECT COUNT(*) AS n FROM notification_deliveries WHERE status = ?")
        .bind(status.as_str())
        .fetch_one(&mut *pool.acquire().await?)
        .await?;
    row.value("n")
}
