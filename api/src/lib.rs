//! Tally's HTTP API: the one crate that knows HTTP, JSON shapes and callers.
//!
//! The modules here turn requests into commands and queries for the crates below and turn
//! their answers, and every failure, into responses. Nothing below this crate sees a status
//! code, a header or a token.
//!
//! - [`error`]: the single [`error::ApiError`] and its RFC 9457 problem+json responses.
//! - [`extract`]: request extractors whose rejections are [`error::ApiError`]s.
//! - [`auth`]: users, passwords, tokens, API keys and the [`auth::Caller`] extractor.
//! - [`listing`]: the filters, cursor and record of `GET /transactions`, which
//!   [`export`] (`tally export transactions`) shares.

pub mod app;
pub mod auth;
pub mod bench;
pub mod error;
pub mod export;
pub mod extract;
pub mod listing;
pub mod notifications;
pub mod reads;
pub mod requests;
pub mod routes;
pub mod senders;
pub mod settings;
pub mod state;
