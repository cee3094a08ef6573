//! The default airtime provider: a deterministic stand-in for a paid one.
//!
//! The [`Simulator`] rejects every phone number ending in [`REJECTED_NUMBER_SUFFIX`] and
//! delivers to every other. The same request always gets the same answer, as a real provider's
//! idempotency promises. [`simulator_router`] serves it behind the provider's HTTP interface,
//! so a stub process or a test can stand in for the real provider at the network level.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tally_domain::{AirtimeOutcome, Amount, Currency, PhoneNumber, TransactionId};
use uuid::Uuid;

use super::wire::{
    BODY_BYTES_MAX, RejectionBody, STATUS_DELIVERED, STATUS_REJECTED, TOPUPS_PATH, TopupAnswer,
    TopupBody,
};
use super::{AirtimeProvider, AirtimeRequest, ProviderError};

/// Phone numbers ending in these digits are rejected, so tests and demos can ask for a
/// failure on purpose.
pub const REJECTED_NUMBER_SUFFIX: &str = "0000";

/// The code the simulator gives when it rejects a number.
pub const REJECTED_NUMBER_CODE: &str = "number_rejected";

/// A provider that needs no network and always answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Simulator;

impl Simulator {
    /// The simulator's answer to a request: the same every time.
    pub fn answer(request: &AirtimeRequest) -> AirtimeOutcome {
        if request
            .phone_number
            .as_str()
            .ends_with(REJECTED_NUMBER_SUFFIX)
        {
            return AirtimeOutcome::Rejected {
                provider_code: REJECTED_NUMBER_CODE.to_owned(),
            };
        }
        AirtimeOutcome::Delivered {
            provider_reference: format!("sim-{}", request.transaction_id),
        }
    }
}

#[async_trait]
impl AirtimeProvider for Simulator {
    async fn send(&self, request: &AirtimeRequest) -> Result<AirtimeOutcome, ProviderError> {
        Ok(Simulator::answer(request))
    }
}

/// The simulator behind the provider's HTTP interface: `POST /v1/topups`.
///
/// Any bearer token is accepted, but one must be sent (401 otherwise), so a client that
/// forgets its credentials is caught. A body that is not a valid top-up gets a 400 with a
/// `code`; a delivery a 201 and a rejection a 200, as the real provider answers.
pub fn simulator_router() -> Router {
    Router::new()
        .route(&format!("/{TOPUPS_PATH}"), post(topup))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
}

async fn topup(headers: HeaderMap, body: Bytes) -> Response {
    if !has_bearer_token(&headers) {
        return refusal(StatusCode::UNAUTHORIZED, "missing_credentials");
    }
    let request = match parse_topup(&body) {
        Ok(request) => request,
        Err(code) => return refusal(StatusCode::BAD_REQUEST, code),
    };

    let (status, answer) = match Simulator::answer(&request) {
        AirtimeOutcome::Delivered { provider_reference } => (
            StatusCode::CREATED,
            TopupAnswer {
                status: STATUS_DELIVERED.to_owned(),
                provider_reference: Some(provider_reference),
                code: None,
            },
        ),
        AirtimeOutcome::Rejected { provider_code } => (
            StatusCode::OK,
            TopupAnswer {
                status: STATUS_REJECTED.to_owned(),
                provider_reference: None,
                code: Some(provider_code),
            },
        ),
    };
    (status, Json(answer)).into_response()
}

fn has_bearer_token(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty())
}

/// Reads a top-up body, or names the first rule it breaks.
fn parse_topup(body: &[u8]) -> Result<AirtimeRequest, &'static str> {
    let topup: TopupBody = serde_json::from_slice(body).map_err(|_| "invalid_request")?;
    let reference = Uuid::parse_str(&topup.reference).map_err(|_| "invalid_reference")?;
    let phone_number = PhoneNumber::parse(&topup.phone_number).map_err(|error| error.code())?;
    let currency: Currency = topup.currency.parse().map_err(|_| "unknown_currency")?;
    let amount = Amount::parse(&topup.amount, currency).map_err(|error| error.code())?;
    Ok(AirtimeRequest {
        transaction_id: TransactionId(reference),
        phone_number,
        amount,
        currency,
    })
}

fn refusal(status: StatusCode, code: &str) -> Response {
    let body = RejectionBody {
        code: code.to_owned(),
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_to(phone_number: &str) -> AirtimeRequest {
        AirtimeRequest {
            transaction_id: TransactionId::new(),
            phone_number: PhoneNumber::parse(phone_number).expect("a valid test number"),
            amount: Amount::parse("30.50", Currency::USD).expect("a valid test amount"),
            currency: Currency::USD,
        }
    }

    #[test]
    fn numbers_ending_in_four_zeros_are_rejected() {
        let answer = Simulator::answer(&request_to("+254700000000"));
        let expected = AirtimeOutcome::Rejected {
            provider_code: "number_rejected".to_owned(),
        };
        assert_eq!(answer, expected);
    }

    #[test]
    fn other_numbers_are_delivered_with_a_reference_naming_the_transaction() {
        let request = request_to("+254712345678");
        let expected = AirtimeOutcome::Delivered {
            provider_reference: format!("sim-{}", request.transaction_id),
        };
        assert_eq!(Simulator::answer(&request), expected);
    }

    #[test]
    fn numbers_with_zeros_elsewhere_are_delivered() {
        let answer = Simulator::answer(&request_to("+254700000100"));
        assert!(matches!(answer, AirtimeOutcome::Delivered { .. }));
    }

    #[tokio::test]
    async fn asking_twice_gets_the_same_answer() {
        for phone_number in ["+254712345678", "+254700000000"] {
            let request = request_to(phone_number);
            let first = Simulator
                .send(&request)
                .await
                .expect("the simulator answers");
            let second = Simulator
                .send(&request)
                .await
                .expect("the simulator answers");
            assert_eq!(first, second);
        }
    }

    #[test]
    fn a_valid_body_parses_into_the_request_it_describes() {
        let request = request_to("+254712345678");
        let body = serde_json::json!({
            "reference": request.transaction_id.to_string(),
            "phoneNumber": "+254712345678",
            "amount": "30.50",
            "currency": "USD",
        });
        let parsed = parse_topup(body.to_string().as_bytes());
        assert_eq!(parsed, Ok(request));
    }

    #[test]
    fn a_body_breaking_a_rule_is_refused_with_its_code() {
        let body = serde_json::json!({
            "reference": Uuid::nil().to_string(),
            "phoneNumber": "0712345678",
            "amount": "30.50",
            "currency": "USD",
        });
        let parsed = parse_topup(body.to_string().as_bytes());
        assert_eq!(parsed, Err("invalid_phone_number"));
        assert_eq!(parse_topup(b"not json"), Err("invalid_request"));
    }
}
