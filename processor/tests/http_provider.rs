//! The HTTP provider against real servers on 127.0.0.1: the simulator stub, a server that
//! fails before it answers, one that never answers, and a port nobody listens on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::SecretString;
use serde_json::{Value, json};
use tally_domain::{AirtimeOutcome, Amount, Currency, PhoneNumber, TransactionId};
use tally_processor::retry::{RetryPolicy, send_until_answered};
use tally_processor::{
    AirtimeProvider, AirtimeRequest, HttpProvider, HttpProviderSettings, ProviderError,
    simulator_router,
};
use tokio::net::TcpListener;

/// Serves `router` on a free port of 127.0.0.1 and returns its address.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free local port");
    let address = listener.local_addr().expect("a bound address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

fn provider_at(address: SocketAddr, timeout_ms: u64) -> HttpProvider {
    let api_key = SecretString::from("test-key");
    let settings = HttpProviderSettings {
        timeout_ms,
        ..HttpProviderSettings::new(format!("http://{address}"), api_key)
    };
    HttpProvider::new(settings).expect("valid provider settings")
}

fn request_to(phone_number: &str) -> AirtimeRequest {
    AirtimeRequest {
        transaction_id: TransactionId::new(),
        phone_number: PhoneNumber::parse(phone_number).expect("a valid test number"),
        amount: Amount::parse("30.5", Currency::USD).expect("a valid test amount"),
        currency: Currency::USD,
    }
}

#[tokio::test]
async fn the_simulator_stub_delivers_over_http() {
    let provider = provider_at(serve(simulator_router()).await, 5_000);
    let request = request_to("+254712345678");

    let outcome = provider.send(&request).await.expect("an answer");

    let provider_reference = format!("sim-{}", request.transaction_id);
    assert_eq!(outcome, AirtimeOutcome::Delivered { provider_reference });
}

#[tokio::test]
async fn the_simulator_stub_rejects_numbers_ending_in_four_zeros_over_http() {
    let provider = provider_at(serve(simulator_router()).await, 5_000);

    let outcome = provider.send(&request_to("+254700000000")).await;

    let provider_code = "number_rejected".to_owned();
    assert_eq!(
        outcome.ok(),
        Some(AirtimeOutcome::Rejected { provider_code })
    );
}

#[tokio::test]
async fn the_simulator_stub_refuses_a_call_without_credentials() {
    let address = serve(simulator_router()).await;
    let body = json!({"reference": TransactionId::new().to_string(),
        "phoneNumber": "+254712345678", "amount": "1.00", "currency": "USD"});

    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/topups"))
        .json(&body)
        .send()
        .await
        .expect("the stub answers");

    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
}

/// What the flaky server saw: each call's headers and body.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(HeaderMap, Value)>>,
}

/// Answers 500 to the first two calls, then delivers.
async fn fail_twice_then_deliver(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let calls = {
        let mut calls = seen.calls.lock().expect("no test thread panicked");
        calls.push((headers, body));
        calls.len()
    };
    if calls <= 2 {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let answer = json!({"status": "DELIVERED", "providerReference": "flaky-1"});
    (StatusCode::CREATED, Json(answer)).into_response()
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_reference_until_the_provider_delivers() {
    let seen = Arc::new(Seen::default());
    let router = Router::new()
        .route("/v1/topups", post(fail_twice_then_deliver))
        .with_state(Arc::clone(&seen));
    let provider = provider_at(serve(router).await, 5_000);
    let request = request_to("+254712345678");
    let policy = RetryPolicy {
        delay_ms_min: 1,
        delay_ms_max: 10,
        attempts_warn_max: 10,
    };
    let (_keep_running, mut shutdown) = tokio::sync::watch::channel(false);

    let outcome = send_until_answered(&provider, &request, &policy, &mut shutdown).await;

    let provider_reference = "flaky-1".to_owned();
    assert_eq!(
        outcome,
        Some(AirtimeOutcome::Delivered { provider_reference })
    );
    let calls = seen.calls.lock().expect("no test thread panicked");
    assert_eq!(calls.len(), 3);
    let reference = request.transaction_id.to_string();
    let expected_body = json!({"reference": reference, "phoneNumber": "+254712345678",
        "amount": "30.50", "currency": "USD"});
    for (headers, body) in calls.iter() {
        assert_eq!(body, &expected_body);
        assert_eq!(headers["idempotency-key"], reference.as_str());
        assert_eq!(headers["authorization"], "Bearer test-key");
    }
}

#[tokio::test]
async fn a_provider_that_answers_too_late_times_out() {
    async fn too_slow() -> StatusCode {
        tokio::time::sleep(Duration::from_secs(10)).await;
        StatusCode::CREATED
    }
    let router = Router::new().route("/v1/topups", post(too_slow));
    let provider = provider_at(serve(router).await, 100);

    let error = provider.send(&request_to("+254712345678")).await;

    assert!(matches!(
        error,
        Err(ProviderError::Timeout { timeout_ms: 100 })
    ));
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free local port");
    let address = listener.local_addr().expect("a bound address");
    drop(listener);
    let provider = provider_at(address, 1_000);

    let error = provider.send(&request_to("+254712345678")).await;

    let error = error.expect_err("nobody answers");
    assert!(matches!(error, ProviderError::Unreachable(_)), "{error:?}");
    assert!(!error.needs_operator());
}
