//! A stand-in for the SMS provider's Messages API, for tests and local runs: the shape only.
//!
//! [`sms_stub_router`] answers `POST /2010-04-01/Accounts/{account_sid}/Messages.json` as the
//! provider does, and sends nothing anywhere. It checks what a real provider would refuse, so
//! a sender that gets the shape wrong is caught:
//!
//! | request | answer |
//! |---|---|
//! | no basic auth, or a user other than the path's account SID | 401, code 20003 |
//! | not a form | 400, code 21000 |
//! | `To` not an E.164 number | 400, code 21211 |
//! | `Body` empty | 400, code 21602 |
//! | `Body` over 1600 characters | 400, code 21617 |
//! | neither `From` nor `MessagingServiceSid` | 400, code 21603 |
//! | otherwise | 201 with a message resource, `status` `queued` and a fresh `sid` |

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Path};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;
use tally_domain::PhoneNumber;
use uuid::Uuid;

/// The largest request the stub reads. A form with a 1600-character body is under 8 KiB.
pub const STUB_BODY_BYTES_MAX: usize = 16 * 1024;

/// The longest body the provider takes, in characters.
pub const BODY_CHARS_MAX: usize = 1_600;

/// The provider's Messages API, answered locally.
pub fn sms_stub_router() -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages.json",
            post(create_message),
        )
        .layer(DefaultBodyLimit::max(STUB_BODY_BYTES_MAX))
}

async fn create_message(
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    if basic_auth_user(&headers).as_deref() != Some(account_sid.as_str()) {
        return refusal(StatusCode::UNAUTHORIZED, 20003, "Authenticate".to_owned());
    }
    let Ok(Form(form)) = form else {
        return refusal(
            StatusCode::BAD_REQUEST,
            21000,
            "The request is not a form".to_owned(),
        );
    };
    match check(&form) {
        Ok(to) => created(&account_sid, &form, to),
        Err((code, message)) => refusal(StatusCode::BAD_REQUEST, code, message),
    }
}

/// The user of an `Authorization: Basic` header.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| user.to_owned())
}

/// The normalized `To`, or the provider's code and message for what is wrong.
fn check(form: &HashMap<String, String>) -> Result<PhoneNumber, (u32, String)> {
    let to = form.get("To").map(String::as_str).unwrap_or_default();
    let to = PhoneNumber::parse(to).map_err(|_| {
        (
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        )
    })?;
    let body = form.get("Body").map(String::as_str).unwrap_or_default();
    if body.trim().is_empty() {
        return Err((21602, "Message body is required.".to_owned()));
    }
    if body.chars().count() > BODY_CHARS_MAX {
        let message = "The concatenated message body exceeds the 1600 character limit.";
        return Err((21617, message.to_owned()));
    }
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return Err((21603, "A 'From' phone number is required.".to_owned()));
    }
    Ok(to)
}

fn created(account_sid: &str, form: &HashMap<String, String>, to: PhoneNumber) -> Response {
    let sid = format!("SM{}", Uuid::new_v4().simple());
    let resource = json!({
        "sid": sid,
        "account_sid": account_sid,
        "to": to.as_str(),
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "body": form.get("Body"),
        "status": "queued",
        "api_version": "2010-04-01",
    });
    (StatusCode::CREATED, Json(resource)).into_response()
}

/// An error answer as the provider shapes it.
fn refusal(status: StatusCode, code: u32, message: String) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}
