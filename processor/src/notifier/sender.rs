//! The sender: claims due notifications from the delivery log, sends each once, settles it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_commands::log::{EventLog, NewRecord, Topic};
use tally_domain::notification::NotificationRequested;
use tally_projections::ReadStore;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::deliveries::{self, Claimed, Settle, now_ms};
use super::{DeadLetter, NotifierError, NotifierSettings};
use crate::notify::{Delivery, Notifier};
use crate::retry::{RetryPolicy, backoff_ceiling_ms};
use crate::shutdown;

/// Attempts at settling a row before it is left to its lease. A row left so is sent again
/// when the lease runs out, so settling tries a few times first.
const SETTLE_ATTEMPTS_MAX: u32 = 5;

/// Pause between attempts at settling a row.
const SETTLE_RETRY_DELAY: Duration = Duration::from_millis(200);

/// What every send of one sender shares.
struct Context {
    log: Arc<dyn EventLog>,
    store: ReadStore,
    notifier: Arc<Notifier>,
    settings: NotifierSettings,
    /// This sender's name on the rows it claims: unique per process start.
    claimer: String,
    counters: Counters,
}

/// Totals since start, logged as fields.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
}

impl Counters {
    fn count(&self, settle: &Settle) {
        let counter = match settle {
            Settle::Sent { .. } => &self.sent,
            Settle::Failed { .. } => &self.failed,
            Settle::Retry { .. } => &self.retried,
            Settle::Dead { .. } => &self.dead,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) async fn run(
    log: Arc<dyn EventLog>,
    store: ReadStore,
    notifier: Arc<Notifier>,
    settings: NotifierSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NotifierError> {
    let context = Arc::new(Context {
        log,
        store,
        notifier,
        claimer: format!("notifier-{}", Uuid::new_v4().simple()),
        settings,
        counters: Counters::default(),
    });
    let idle = Duration::from_millis(context.settings.idle_wait_ms);
    let mut sends = JoinSet::new();

    // Endless until shutdown: keeps up to `sends_in_flight_max` sends under way, claiming more
    // as slots free up, so one slow send holds back no other. After shutdown it claims
    // nothing more and waits for the sends under way (each bounded by its sender's timeout),
    // so that it leaves nothing claimed that it could still settle.
    while !shutdown::is_requested(&shutdown) {
        while sends.try_join_next().is_some() {}
        let free = context.settings.sends_in_flight_max - sends.len();
        let claimed = match free {
            0 => Vec::new(),
            _ => claim(&context, free).await,
        };
        if !claimed.is_empty() {
            log_counters(&context.counters, claimed.len(), sends.len());
        }
        let claimed_any = !claimed.is_empty();
        for row in claimed {
            sends.spawn(attempt(Arc::clone(&context), row));
        }
        if !claimed_any {
            // Wait for work: a send to finish (a slot frees), the idle wait, or shutdown.
            tokio::select! {
                Some(_) = sends.join_next(), if !sends.is_empty() => {}
                () = tokio::time::sleep(idle) => {}
                () = shutdown::requested(&mut shutdown) => {}
            }
        }
    }
    while sends.join_next().await.is_some() {}
    Ok(())
}

/// Claims up to `limit` due rows; none when the store fails, which the next look retries.
async fn claim(context: &Context, limit: usize) -> Vec<Claimed> {
    let lease_ms = i64::try_from(context.settings.lease_ms).unwrap_or(i64::MAX);
    let claimed =
        deliveries::claim_due(&context.store, &context.claimer, now_ms(), lease_ms, limit).await;
    claimed.unwrap_or_else(|error| {
        tracing::warn!(error = %error, "claiming due notifications failed");
        Vec::new()
    })
}

fn log_counters(counters: &Counters, claimed: usize, in_flight: usize) {
    tracing::info!(
        claimed,
        in_flight,
        sent = counters.sent.load(Ordering::Relaxed),
        failed = counters.failed.load(Ordering::Relaxed),
        retried = counters.retried.load(Ordering::Relaxed),
        dead = counters.dead.load(Ordering::Relaxed),
        "notifications claimed"
    );
}

/// One attempt at one claimed row, settled.
#[tracing::instrument(skip_all, fields(
    notification_id = %row.notification_id,
    attempt = row.attempts,
))]
async fn attempt(context: Arc<Context>, row: Claimed) {
    let settle = match &row.request {
        None => Settle::Failed {
            error: "the stored notification can no longer be read".to_owned(),
        },
        // Attempts beyond the last are counted only when a row was claimed and never settled
        // (its sender died mid-send, or publishing its dead letter failed): it is not sent
        // again, only given up on.
        Some(_) if row.attempts > context.settings.attempts_max => {
            let error = row.last_error.clone().unwrap_or_else(|| {
                "the last attempt ended without an outcome (the sender stopped)".to_owned()
            });
            give_up(&context, &row, error).await
        }
        Some(request) => {
            let delivery = context.notifier.deliver(request).await;
            settle_of(&context, &row, delivery).await
        }
    };
    context.counters.count(&settle);
    settle_with_retries(&context, &row, &settle).await;
}

/// How an attempt's outcome settles its row.
async fn settle_of(context: &Context, row: &Claimed, delivery: Delivery) -> Settle {
    match delivery {
        Delivery::Sent { reference } => Settle::Sent { reference },
        Delivery::Permanent(error) => Settle::Failed { error },
        Delivery::Transient(error) if row.attempts >= context.settings.attempts_max => {
            give_up(context, row, error).await
        }
        Delivery::Transient(error) => {
            let delay_ms = retry_delay_ms(row.attempts, &context.settings, &mut rand::rng());
            let delay_ms = i64::try_from(delay_ms).unwrap_or(i64::MAX);
            Settle::Retry {
                error,
                next_attempt_at_ms: now_ms().saturating_add(delay_ms),
            }
        }
    }
}

/// Full jitter: anywhere from no delay to the exponential ceiling of the `attempts`-th retry,
/// so that notifications that failed together (a server outage) come back spread out.
pub(super) fn retry_delay_ms(
    attempts: u32,
    settings: &NotifierSettings,
    rng: &mut impl rand::Rng,
) -> u64 {
    let policy = RetryPolicy {
        delay_ms_min: settings.retry_delay_ms_min,
        delay_ms_max: settings.retry_delay_ms_max,
        attempts_warn_max: u32::MAX,
    };
    let ceiling_ms = backoff_ceiling_ms(attempts, &policy);
    rng.random_range(0..=ceiling_ms)
}

/// Publishes the dead letter, then settles the row `DEAD`. When the log does not take the
/// letter, the row waits for a later attempt, which publishes it without sending again.
async fn give_up(context: &Context, row: &Claimed, error: String) -> Settle {
    let letter = DeadLetter {
        notification_id: row.notification_id.clone(),
        attempts: row.attempts,
        last_error: error.clone(),
        dead_at_ms: now_ms(),
        request: row.request.clone(),
    };
    let record = NewRecord {
        topic: Topic::DeadLetters,
        key: key_of(row.request.as_ref(), &row.notification_id),
        payload: letter.to_json(),
    };
    match context.log.append(vec![record]).await {
        Ok(_) => {
            tracing::error!(
                attempts = row.attempts,
                error,
                "notification given up as dead"
            );
            Settle::Dead { error }
        }
        Err(append_error) => {
            tracing::warn!(error = %append_error, "dead letter not published; retrying later");
            let delay_ms = i64::try_from(context.settings.retry_delay_ms_min).unwrap_or(0);
            Settle::Retry {
                error,
                next_attempt_at_ms: now_ms().saturating_add(delay_ms),
            }
        }
    }
}

/// The account the notification is about, as every topic is keyed; the notification id when
/// it is about no account.
fn key_of(request: Option<&NotificationRequested>, notification_id: &str) -> String {
    request
        .and_then(|request| request.account_id)
        .map_or_else(|| notification_id.to_owned(), |account| account.to_string())
}

async fn settle_with_retries(context: &Context, row: &Claimed, settle: &Settle) {
    for attempt in 1..=SETTLE_ATTEMPTS_MAX {
        let settled = deliveries::settle(
            &context.store,
            &row.notification_id,
            &context.claimer,
            settle,
            now_ms(),
        )
        .await;
        match settled {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!("claim lost before the notification was settled");
                return;
            }
            Err(error) if attempt < SETTLE_ATTEMPTS_MAX => {
                tracing::warn!(attempt, error = %error, "settling failed; retrying");
                tokio::time::sleep(SETTLE_RETRY_DELAY).await;
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    "settling failed; the notification is tried again when its lease runs out"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_fully_jittered_under_a_doubling_ceiling() {
        let settings = NotifierSettings {
            retry_delay_ms_min: 100,
            retry_delay_ms_max: 1_000,
            ..NotifierSettings::default()
        };
        let mut rng = rand::rng();
        for (attempts, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (40, 1_000),
        ] {
            let delays: Vec<u64> = (0..500)
                .map(|_| retry_delay_ms(attempts, &settings, &mut rng))
                .collect();
            assert!(delays.iter().all(|delay| *delay <= ceiling), "{attempts}");
            assert!(
                delays.iter().any(|delay| *delay < ceiling / 4),
                "{attempts}"
            );
        }
    }
}
