//! The airtime provider port: buying airtime for a phone, and what can go wrong doing it.
//!
//! A provider either answers (the top-up was delivered, or refused for a reason it names) or
//! fails with a [`ProviderError`]. The difference matters for money: only an answer may end a
//! transaction. A failure is ambiguous (the top-up may have gone through before the connection
//! dropped), so every [`ProviderError`] is retried with the same idempotency reference, never
//! turned into a rejection. Some failures need an operator (bad credentials, an answer that
//! breaks the contract); they are still retried, and [`ProviderError::needs_operator`] makes
//! them loud.
//!
//! - [`simulator`]: the default provider, deterministic, and an HTTP stub serving it.
//! - [`http`]: the adapter for a real provider's HTTP API.

pub mod http;
pub mod simulator;
mod wire;

use std::error::Error;

use async_trait::async_trait;
use tally_domain::{AirtimeOutcome, Amount, Currency, PhoneNumber, TransactionId};

pub use http::{HttpProvider, HttpProviderError, HttpProviderSettings};
pub use simulator::{Simulator, simulator_router};

/// One top-up to buy. The transaction id is the idempotency reference: asking twice for the
/// same transaction buys once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AirtimeRequest {
    pub transaction_id: TransactionId,
    pub phone_number: PhoneNumber,
    pub amount: Amount,
    pub currency: Currency,
}

/// Why a provider gave no answer. Every kind is retried; none ends a transaction.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer within the timeout. The top-up may or may not have happened.
    #[error("the airtime provider did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },

    /// The request or its answer was lost on the way: connection refused or reset, DNS, TLS.
    #[error("the airtime provider could not be reached")]
    Unreachable(#[source] Box<dyn Error + Send + Sync>),

    /// The provider is overloaded or failing (408, 429, 5xx); it is expected to recover.
    #[error("the airtime provider is unavailable (status {status})")]
    Unavailable { status: u16 },

    /// The provider refused our credentials (401, 403). A misconfiguration that only an
    /// operator can fix, but the transaction's funds stay held until it is fixed: retried.
    #[error("the airtime provider refused our credentials (status {status})")]
    Unauthorized { status: u16 },

    /// The answer breaks the provider's contract: an unknown status or shape, a missing or
    /// oversized field. Retried, since it says nothing certain about the top-up.
    #[error("the airtime provider's answer was not understood (status {status}): {detail}")]
    UnexpectedAnswer { status: u16, detail: String },
}

impl ProviderError {
    /// Whether retrying can only succeed after someone acts; such errors are logged at error
    /// level from the first attempt.
    pub fn needs_operator(&self) -> bool {
        match self {
            ProviderError::Timeout { .. }
            | ProviderError::Unreachable(_)
            | ProviderError::Unavailable { .. } => false,
            ProviderError::Unauthorized { .. } | ProviderError::UnexpectedAnswer { .. } => true,
        }
    }
}

/// Something that can buy airtime.
#[async_trait]
pub trait AirtimeProvider: Send + Sync {
    /// Buys the top-up once per `request.transaction_id`, or tells why it could not answer.
    /// Calling again with the same request must give the same answer without buying again.
    async fn send(&self, request: &AirtimeRequest) -> Result<AirtimeOutcome, ProviderError>;
}
