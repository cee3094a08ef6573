//! Tally's processor: the one role that acts on the world outside the ledger.
//!
//! It reads the events topic as the consumer group [`GROUP`], buys airtime for every
//! reservation of a `SEND_AIRTIME` transaction and asks for notifications of what happened to
//! accounts. What a batch of events produces (`CompleteAirtime` commands, `NotificationRequested`
//! records) is appended in the same log step that commits the batch as consumed, so each event's
//! records are written exactly once, across crashes and restarts. The provider call itself is
//! at least once: it carries the transaction id as its idempotency reference, and the provider
//! deduplicates.
//!
//! - [`airtime`]: the airtime provider port, the simulator and the HTTP adapter.
//! - [`effects`]: what one event asks for, given what is known of its partition (pure).
//! - [`notifier`]: the notifier role, which delivers the notifications topic through
//!   [`notify`], each notification once, with retries and a dead-letter topic.
//! - [`notify`]: templates, rendering, and the email and SMS senders.
//! - [`state`]: what the processor remembers of each events partition.
//! - [`retry`]: the endless, backed-off retry of provider calls.
//! - [`settings`]: the worker's limits, with their defaults.
//! - [`worker`]: the consume, act and commit loop and its errors.
//!
//! What it leaves to others: deciding (the `CompleteAirtime` commands it appends are decided by
//! the commands crate like any other), the read side. The
//! notifier lives here too but runs as a role of its own, in its own consumer group.

pub mod airtime;
pub mod effects;
pub mod notifier;
pub mod notify;
pub mod retry;
pub mod settings;
mod shutdown;
pub mod state;
pub mod worker;

pub use airtime::{
    AirtimeProvider, AirtimeRequest, HttpProvider, HttpProviderSettings, ProviderError, Simulator,
    simulator_router,
};
pub use settings::ProcessorSettings;
pub use worker::{GROUP, ProcessorError, run};
