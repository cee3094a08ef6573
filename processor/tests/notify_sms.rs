//! The SMS sender against HTTP servers on 127.0.0.1: the provider stub, servers that record
//! or fail on purpose, one that never answers, and a port nobody listens on.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::SecretString;
use serde_json::{Value, json};
use tally_domain::{NotificationId, PhoneNumber};
use tally_processor::notify::{
    Delivery, DryRunSmsSender, SmsFrom, SmsMessage, SmsSender as _, SmsSettings, TwilioSmsSender,
    sms_stub_router,
};
use uuid::Uuid;

use support::{serve, unused_port};

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const SERVICE_SID: &str = "MG0123456789abcdef0123456789abcdef";
const MESSAGES_PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";

fn settings_for(address: SocketAddr, from: SmsFrom) -> SmsSettings {
    SmsSettings {
        base_url: format!("http://{address}"),
        timeout_ms: 2_000,
        ..SmsSettings::twilio(ACCOUNT_SID, SecretString::from("auth-token"), from)
    }
}

fn sender_to(address: SocketAddr) -> TwilioSmsSender {
    let from = SmsFrom::MessagingService(SERVICE_SID.to_owned());
    TwilioSmsSender::new(settings_for(address, from)).expect("valid sms settings")
}

fn text() -> SmsMessage {
    SmsMessage {
        notification_id: NotificationId(Uuid::new_v4()),
        to: PhoneNumber::parse("+254712345678").expect("a valid test number"),
        text: "Tally: 30.50 USD added to your account. Ref 42".to_owned(),
    }
}

#[tokio::test]
async fn a_text_through_the_stub_is_sent_with_the_sid_it_was_given() {
    let sender = sender_to(serve(sms_stub_router()).await);

    let delivery = sender.send(&text()).await;

    let Delivery::Sent {
        reference: Some(sid),
    } = delivery
    else {
        panic!("not sent with a sid: {delivery:?}");
    };
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
}

#[tokio::test]
async fn a_text_from_a_number_is_accepted_by_the_stub() {
    let address = serve(sms_stub_router()).await;
    let from = SmsFrom::Number(PhoneNumber::parse("+15005550006").expect("a valid number"));
    let sender = TwilioSmsSender::new(settings_for(address, from)).expect("valid sms settings");

    let delivery = sender.send(&text()).await;

    assert!(
        matches!(delivery, Delivery::Sent { reference: Some(_) }),
        "{delivery:?}"
    );
}

#[tokio::test]
async fn the_stub_refuses_credentials_for_another_account() {
    let address = serve(sms_stub_router()).await;
    let response = reqwest::Client::new()
        .post(format!("http://{address}{MESSAGES_PATH}"))
        .basic_auth("ACsomeoneelse", Some("token"))
        .form(&[
            ("To", "+254712345678"),
            ("Body", "hi"),
            ("From", "+15005550006"),
        ])
        .send()
        .await
        .expect("an answer");

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["code"], json!(20003));
}

#[tokio::test]
async fn the_stub_refuses_a_text_without_a_sender_or_with_a_bad_number() {
    let address = serve(sms_stub_router()).await;
    let post = |form: &'static [(&'static str, &'static str)]| {
        reqwest::Client::new()
            .post(format!("http://{address}{MESSAGES_PATH}"))
            .basic_auth(ACCOUNT_SID, Some("token"))
            .form(form)
            .send()
    };

    let no_sender = post(&[("To", "+254712345678"), ("Body", "hi")])
        .await
        .expect("an answer");
    let bad_number = post(&[("To", "0712"), ("Body", "hi"), ("From", "+15005550006")])
        .await
        .expect("an answer");

    for (response, code) in [(no_sender, 21603), (bad_number, 21211)] {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["code"], json!(code));
    }
}

/// What the recording server saw of each request.
#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    authorization: Option<String>,
    form: HashMap<String, String>,
}

async fn record(
    State(seen): State<Arc<Mutex<Vec<Recorded>>>>,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let authorization = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let path = uri.path().to_owned();
    seen.lock().expect("an unpoisoned lock").push(Recorded {
        path,
        authorization,
        form,
    });
    (
        StatusCode::CREATED,
        Json(json!({"sid": "SMrecorded", "status": "queued"})),
    )
        .into_response()
}

#[tokio::test]
async fn the_sender_posts_to_body_and_service_as_a_form_with_basic_auth() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let router = Router::new()
        .route(MESSAGES_PATH, post(record))
        .with_state(seen.clone());
    let sms = text();

    let delivery = sender_to(serve(router).await).send(&sms).await;

    let reference = Some("SMrecorded".to_owned());
    assert_eq!(delivery, Delivery::Sent { reference });
    let seen = seen.lock().expect("an unpoisoned lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, MESSAGES_PATH);
    // base64 of "{ACCOUNT_SID}:auth-token"
    let expected = "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjphdXRoLXRva2Vu";
    assert_eq!(seen[0].authorization.as_deref(), Some(expected));
    let form = &seen[0].form;
    assert_eq!(form.get("To").map(String::as_str), Some("+254712345678"));
    assert_eq!(form.get("Body"), Some(&sms.text));
    assert_eq!(
        form.get("MessagingServiceSid").map(String::as_str),
        Some(SERVICE_SID)
    );
    assert_eq!(form.get("From"), None);
}

async fn fail_twice_then_create(State(calls): State<Arc<AtomicUsize>>) -> Response {
    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
        let body = json!({"code": 20500, "message": "Internal Server Error", "status": 500});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
    }
    (
        StatusCode::CREATED,
        Json(json!({"sid": "SMthird", "status": "queued"})),
    )
        .into_response()
}

#[tokio::test]
async fn a_provider_failing_twice_then_accepting_is_transient_twice_then_sent() {
    let calls = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(MESSAGES_PATH, post(fail_twice_then_create))
        .with_state(calls.clone());
    let sender = sender_to(serve(router).await);
    let sms = text();

    let first = sender.send(&sms).await;
    let second = sender.send(&sms).await;
    let third = sender.send(&sms).await;

    let reason = "status 500: code 20500: Internal Server Error".to_owned();
    assert_eq!(first, Delivery::Transient(reason.clone()));
    assert_eq!(second, Delivery::Transient(reason));
    assert_eq!(
        third,
        Delivery::Sent {
            reference: Some("SMthird".to_owned())
        }
    );
    // The sender does not retry by itself: one send, one call.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

fn answering(status: StatusCode, body: Value) -> Router {
    let handler = move || {
        let body = body.clone();
        async move { (status, Json(body)).into_response() }
    };
    Router::new().route(MESSAGES_PATH, post(handler))
}

#[tokio::test]
async fn a_twilio_style_client_error_is_permanent_with_its_code_and_message() {
    let body = json!({
        "code": 21211,
        "message": "The 'To' number +254712345678 is not a valid phone number.",
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    });
    let sender = sender_to(serve(answering(StatusCode::BAD_REQUEST, body)).await);

    let delivery = sender.send(&text()).await;

    let reason =
        "status 400: code 21211: The 'To' number +254712345678 is not a valid phone number.";
    assert_eq!(delivery, Delivery::Permanent(reason.to_owned()));
}

#[tokio::test]
async fn too_many_requests_is_transient() {
    let body = json!({"code": 20429, "message": "Too Many Requests", "status": 429});
    let sender = sender_to(serve(answering(StatusCode::TOO_MANY_REQUESTS, body)).await);

    let delivery = sender.send(&text()).await;

    let reason = "status 429: code 20429: Too Many Requests".to_owned();
    assert_eq!(delivery, Delivery::Transient(reason));
}

#[tokio::test]
async fn a_provider_that_does_not_answer_in_time_is_transient() {
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        StatusCode::CREATED
    };
    let address = serve(Router::new().route(MESSAGES_PATH, post(slow))).await;
    let settings = SmsSettings {
        timeout_ms: 200,
        ..settings_for(address, SmsFrom::MessagingService(SERVICE_SID.to_owned()))
    };
    let sender = TwilioSmsSender::new(settings).expect("valid sms settings");

    let delivery = sender.send(&text()).await;

    let reason = "the sms provider did not answer within 200 ms".to_owned();
    assert_eq!(delivery, Delivery::Transient(reason));
}

#[tokio::test]
async fn a_provider_nobody_listens_on_is_transient() {
    let address = SocketAddr::from(([127, 0, 0, 1], unused_port()));

    let delivery = sender_to(address).send(&text()).await;

    let Delivery::Transient(reason) = delivery else {
        panic!("not transient: {delivery:?}");
    };
    assert!(
        reason.starts_with("the sms provider could not be reached"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_dry_run_sends_nothing_and_calls_it_sent() {
    let delivery = DryRunSmsSender.send(&text()).await;
    assert_eq!(delivery, Delivery::Sent { reference: None });
}
