//! The JSON shapes of the provider's HTTP API, shared by the adapter and the simulator stub.
//!
//! `POST /v1/topups` takes a [`TopupBody`]. A 200 or 201 carries a [`TopupAnswer`]; a 400 or
//! 422 carries a [`RejectionBody`] naming why the provider refused the top-up.

use serde::{Deserialize, Serialize};

/// The path of the top-up endpoint, below the provider's base URL.
pub const TOPUPS_PATH: &str = "v1/topups";

/// The header carrying the idempotency reference.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The largest request or answer body either side reads. A top-up is a few hundred bytes.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// The longest provider reference or rejection code kept. Both end up in the log and in
/// notifications; longer text breaks the contract.
pub const PROVIDER_TEXT_CHARS_MAX: usize = 200;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopupBody {
    /// The transaction id.
    pub reference: String,
    /// E.164, such as `+254712345678`.
    pub phone_number: String,
    /// Plain decimal at the currency's scale, such as `30.50`.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
}

pub const STATUS_DELIVERED: &str = "DELIVERED";
pub const STATUS_REJECTED: &str = "REJECTED";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopupAnswer {
    /// [`STATUS_DELIVERED`] or [`STATUS_REJECTED`].
    pub status: String,
    /// Present when delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_reference: Option<String>,
    /// Present when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RejectionBody {
    pub code: String,
}
