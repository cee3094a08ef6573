//! The notifier: delivers what the notifications topic asks for, by email and SMS, each
//! notification once.
//!
//! It is a role of its own, reading the notifications topic as the consumer group [`GROUP`],
//! so a slow or unreachable mail server or SMS provider holds back nothing but notifications:
//! the decider, the projector and the processor never wait for it. It works as an outbox in
//! two loops that share only the delivery log ([`deliveries`]) in the read store:
//!
//! 1. The intake reads a batch of notifications, inserts each one the log does not hold yet
//!    as `PENDING` (a redelivered notification, after a crash or a rebalance, finds its row
//!    and adds nothing), and only then commits the batch as consumed. Nothing is consumed
//!    before it is in the log, so nothing read is lost.
//! 2. The sender claims due `PENDING` rows with a lease (several notifier processes may share
//!    one log, each row held by one at a time), renders and sends each once, and settles it:
//!    `SENT`; `FAILED` with the server's reason when it refused for good (a rejected
//!    recipient), never retried; or, after a failure that may pass (a refused connection,
//!    SMTP 4xx, SMS 429 or 5xx), `PENDING` again until a later attempt, after an exponential
//!    backoff with full jitter. A notification whose last allowed attempt failed that way is
//!    published on the dead-letter topic and settles `DEAD`: nothing is dropped silently.
//!
//! A notification is sent once per id, with one exception that no sender of email can close:
//! a crash between the server accepting a message and its row being settled `SENT`. The row
//! stays claimed until its lease runs out; then a sender takes it again and sends it a second
//! time. The attempt was counted when the row was claimed, so the second send is visible in
//! `attempts`, and the email carries the same `Message-ID` (built from the notification id)
//! both times, so a mail system or a reader can recognise the duplicate. An SMS has no such
//! header; the same crash sends it twice.
//!
//! The counters `sent`, `failed`, `retried` and `dead` (totals since start) are fields of the
//! log line the sender writes whenever it claims notifications.

pub mod deliveries;
mod intake;
mod sender;
pub mod settings;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tally_commands::log::{EventLog, LogError};
use tally_domain::notification::NotificationRequested;
use tally_projections::ReadStore;
use tokio::sync::watch;

use crate::notify::Notifier;
pub use settings::NotifierSettings;

/// The consumer group the notifier reads the notifications topic as.
pub const GROUP: &str = "notifier";

/// Why the notifier stopped before shutdown was asked for.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("invalid notifier settings: {0}")]
    InvalidSettings(&'static str),

    /// The log failed for good.
    #[error("the event log failed")]
    Log(#[source] LogError),
}

/// What the dead-letter topic carries for a notification given up on: enough to send it by
/// hand, or to find out why it could not be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub notification_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at_ms: i64,
    /// The notification as it was requested; `None` only if its stored copy no longer reads.
    pub request: Option<NotificationRequested>,
}

impl DeadLetter {
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and a notification: serialization cannot fail.
        serde_json::to_vec(self).expect("a dead letter always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<DeadLetter, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Runs the notifier's intake and sender until shutdown is asked for (`true` on `shutdown`,
/// or its sender dropped), then returns `Ok` once the sends under way have settled. Returns
/// an error when the log fails for good.
pub async fn run(
    log: Arc<dyn EventLog>,
    store: ReadStore,
    notifier: Arc<Notifier>,
    settings: NotifierSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NotifierError> {
    settings
        .validate()
        .map_err(NotifierError::InvalidSettings)?;
    tracing::info!(group = GROUP, "notifier started");
    let intake = intake::run(
        Arc::clone(&log),
        store.clone(),
        settings.clone(),
        shutdown.clone(),
    );
    let sender = sender::run(log, store, notifier, settings, shutdown);
    tokio::try_join!(intake, sender)?;
    tracing::info!(group = GROUP, "notifier stopped");
    Ok(())
}
