//! `POST /notification/email`, `POST /notification/sms` and `GET /notification/{id}`: messages
//! written by administrators and service accounts, and what became of them.
//!
//! A message is checked here, recorded, and appended to the notifications topic as a custom
//! notification; the answer is 202 with its id once the event is durably in the log. The
//! notifier delivers it like any other, and `GET` shows its delivery: `QUEUED` until the
//! notifier has read it, then `PENDING`, and at last `SENT`, `FAILED` or `DEAD`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tally_commands::log::{NewRecord, Topic};
use tally_domain::contact::{NAME_CHARS_MAX, parse_email};
use tally_domain::notification::{Channel, NotificationRequested, Outcome, Template};
use tally_domain::{NotificationId, PhoneNumber};
use tally_processor::notifier::deliveries::{self, DeliveryRow};
use tally_processor::notify::render::{SMS_CHARS_MAX, SUBJECT_CHARS_MAX, VALUE_CHARS_MAX};
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{JsonBody, Path};
use crate::notifications::{self, NotificationRequestRow};
use crate::state::AppState;

/// The template values of a custom message.
const VALUE_NAME: &str = "name";
const VALUE_SUBJECT: &str = "subject";
const VALUE_MESSAGE: &str = "message";

/// The status of a notification the notifier has not read yet.
const STATUS_QUEUED: &str = "QUEUED";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/notification/email", post(send_email))
        .route("/notification/sms", post(send_sms))
        .route("/notification/{notification_id}", get(delivery))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EmailBody {
    email: String,
    subject: String,
    body: String,
    /// How the recipient is greeted and named in `To`; the address's local part without it.
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SmsBody {
    phone_number: String,
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    notification_id: NotificationId,
    status: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryView {
    notification_id: String,
    channel: String,
    recipient: String,
    status: &'static str,
    attempts: i64,
    last_error: Option<String>,
    provider_reference: Option<String>,
    created_at: String,
    updated_at: String,
    next_attempt_at: Option<String>,
}

async fn send_email(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<EmailBody>,
) -> Result<Response, ApiError> {
    require_sender(&caller)?;
    let email = parse_email(&body.email)
        .map_err(|_| ApiError::invalid("invalid_email", "email is not a valid address"))?;
    let subject = one_line(&body.subject, SUBJECT_CHARS_MAX).ok_or_else(|| {
        let detail = format!("subject must be 1 to {SUBJECT_CHARS_MAX} characters on one line");
        ApiError::invalid("invalid_subject", detail)
    })?;
    let message = text(&body.body, VALUE_CHARS_MAX).ok_or_else(|| {
        let detail = format!("body must be 1 to {VALUE_CHARS_MAX} characters");
        ApiError::invalid("invalid_body", detail)
    })?;
    let name = match &body.name {
        Some(name) => one_line(name, NAME_CHARS_MAX).ok_or_else(|| {
            let detail = format!("name must be 1 to {NAME_CHARS_MAX} characters on one line");
            ApiError::invalid("invalid_name", detail)
        })?,
        None => email.split('@').next().unwrap_or_default().to_owned(),
    };
    let values = [
        (VALUE_NAME, name),
        (VALUE_SUBJECT, subject),
        (VALUE_MESSAGE, message),
    ];
    enqueue(&state, &caller, Channel::Email, email, &values).await
}

async fn send_sms(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<SmsBody>,
) -> Result<Response, ApiError> {
    require_sender(&caller)?;
    let phone_number = PhoneNumber::parse(&body.phone_number).map_err(|_| {
        let detail = "phoneNumber must be an E.164 number such as +14155552671";
        ApiError::invalid("invalid_phone_number", detail)
    })?;
    let message = text(&body.message, SMS_CHARS_MAX).ok_or_else(|| {
        let detail = format!("message must be 1 to {SMS_CHARS_MAX} characters");
        ApiError::invalid("invalid_message", detail)
    })?;
    let recipient = phone_number.as_str().to_owned();
    let values = [(VALUE_MESSAGE, message)];
    enqueue(&state, &caller, Channel::Sms, recipient, &values).await
}

async fn delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(notification_id): Path<Uuid>,
) -> Result<Json<DeliveryView>, ApiError> {
    require_sender(&caller)?;
    let notification_id = NotificationId(notification_id);
    if let Some(row) = deliveries::find(&state.store, notification_id).await? {
        return Ok(Json(view_of_delivery(row)));
    }
    match notifications::find(&state.store, notification_id).await? {
        Some(row) => Ok(Json(view_of_request(row))),
        None => Err(ApiError::not_found(
            "notification_not_found",
            "no notification has this id",
        )),
    }
}

/// Only administrators and service accounts send messages of their own.
fn require_sender(caller: &Caller) -> Result<(), ApiError> {
    if caller.has_role(Role::Admin) || caller.has_role(Role::Service) {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        detail: "this needs the ROLE_ADMIN or ROLE_SERVICE role".to_owned(),
    })
}

/// `text` trimmed, when it has 1 to `chars_max` characters and no line break or other
/// control character: a subject or a name is one header line.
fn one_line(text: &str, chars_max: usize) -> Option<String> {
    let trimmed = text.trim();
    let fits = !trimmed.is_empty() && trimmed.chars().count() <= chars_max;
    (fits && !trimmed.contains(char::is_control)).then(|| trimmed.to_owned())
}

/// `text` trimmed, when it has 1 to `chars_max` characters. Line breaks are kept.
fn text(text: &str, chars_max: usize) -> Option<String> {
    let trimmed = text.trim();
    let fits = !trimmed.is_empty() && trimmed.chars().count() <= chars_max;
    fits.then(|| trimmed.to_owned())
}

/// Records the request, appends its event and answers 202.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    channel: Channel,
    recipient: String,
    values: &[(&str, String)],
) -> Result<Response, ApiError> {
    let notification_id = NotificationId::new();
    let now = Utc::now();
    let request = NotificationRequested {
        notification_id,
        account_id: None,
        channel,
        recipient,
        template: Template::Custom,
        outcome: Outcome::Success,
        values: values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect::<BTreeMap<_, _>>(),
        occurred_at: now,
        correlation_id: notification_id.0,
        causation_id: Uuid::now_v7(),
    };
    let now_ms = now.timestamp_millis();
    let recipient = &request.recipient;
    notifications::record(
        &state.store,
        notification_id,
        channel,
        recipient,
        caller.uid,
        now_ms,
    )
    .await?;
    append(state, &request).await?;

    let body = Accepted {
        notification_id,
        status: STATUS_QUEUED,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let location = format!("/notification/{notification_id}");
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Appends the event, keyed by its own id (it is about no account). A log that cannot take it
/// answers 503, and the request is forgotten: it will never be sent.
async fn append(state: &AppState, request: &NotificationRequested) -> Result<(), ApiError> {
    let record = NewRecord {
        topic: Topic::Notifications,
        key: request.notification_id.to_string(),
        payload: request.to_json(),
    };
    let Err(error) = state.log.append(vec![record]).await else {
        return Ok(());
    };
    tracing::error!(error = %error, "notification append failed");
    if let Err(error) = notifications::forget(&state.store, request.notification_id).await {
        tracing::warn!(error = %error, "the request of an unsent notification stays queued");
    }
    Err(ApiError::ServiceUnavailable { retry_after_s: 1 })
}

fn view_of_delivery(row: DeliveryRow) -> DeliveryView {
    let settled = row.status != deliveries::DeliveryStatus::Pending;
    DeliveryView {
        notification_id: row.notification_id,
        channel: row.channel,
        recipient: row.recipient,
        status: row.status.as_str(),
        attempts: row.attempts,
        last_error: row.last_error,
        provider_reference: row.provider_reference,
        created_at: timestamp(row.created_at_ms),
        updated_at: timestamp(row.updated_at_ms),
        next_attempt_at: (!settled).then(|| timestamp(row.next_attempt_at_ms)),
    }
}

fn view_of_request(row: NotificationRequestRow) -> DeliveryView {
    DeliveryView {
        notification_id: row.notification_id,
        channel: row.channel,
        recipient: row.recipient,
        status: STATUS_QUEUED,
        attempts: 0,
        last_error: None,
        provider_reference: None,
        created_at: timestamp(row.created_at_ms),
        updated_at: timestamp(row.created_at_ms),
        next_attempt_at: None,
    }
}

/// RFC 3339 in UTC, to the millisecond.
fn timestamp(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use crate::auth::CredentialKind;

    use super::*;

    fn caller(roles: &[Role]) -> Caller {
        Caller {
            uid: Uuid::now_v7(),
            roles: roles.to_vec(),
            credential: CredentialKind::ApiKey,
        }
    }

    #[test]
    fn administrators_and_services_may_send_and_users_may_not() {
        assert!(require_sender(&caller(&[Role::User, Role::Admin])).is_ok());
        assert!(require_sender(&caller(&[Role::User, Role::Service])).is_ok());
        let refused = require_sender(&caller(&[Role::User])).expect_err("forbidden");
        assert_eq!(refused.code(), "forbidden");
    }

    #[test]
    fn a_subject_is_one_trimmed_line_within_its_bound() {
        assert_eq!(one_line("  Hello ", 10), Some("Hello".to_owned()));
        assert_eq!(one_line("Hello\r\nBcc: x@example.com", 100), None);
        assert_eq!(one_line("   ", 10), None);
        assert_eq!(one_line(&"x".repeat(11), 10), None);
    }

    #[test]
    fn a_body_keeps_its_line_breaks() {
        assert_eq!(text("a\nb", 10), Some("a\nb".to_owned()));
        assert_eq!(text("", 10), None);
    }
}
