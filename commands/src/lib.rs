//! Tally's write side: the event log port and its adapters, the command messages carried by
//! the log, and the decider that turns commands into events.
//!
//! Nothing here knows HTTP or the read store. Callers append commands; the decider is the only
//! writer of the events topic.

pub mod decider;
pub mod log;
pub mod message;
