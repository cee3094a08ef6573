//! The API's one error type and how it becomes an HTTP response.
//!
//! Every handler and extractor fails with an [`ApiError`]. [`ApiError::kind`] is the single
//! exhaustive match that gives each variant its status, stable `code` and title; the response
//! is an RFC 9457 `application/problem+json` body. Codes are snake_case predicates that are
//! never renamed or reused: clients branch on them.
//!
//! Server errors (5xx) say nothing internal in their body; an [`ApiError::Internal`] logs its
//! whole cause chain once, at error level, as a field. Client errors (4xx) are the caller's
//! business and are logged at debug level only.
//!
//! Turning domain and command errors into [`ApiError`]s is left to the handlers that call them.

use axum::Json;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_projections::ProjectionError;

/// Media type of every error body (RFC 9457 section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of the problem `type` URI; the stable `code` completes it.
pub const PROBLEM_TYPE_BASE: &str = "https://tally.dev/problems/";

/// The `WWW-Authenticate` challenge sent with every 401 (RFC 9110 section 11.6.1 requires one).
const BEARER_CHALLENGE: &str = "Bearer";

/// A request that failed, as the client will be told about it.
///
/// The `Display` text of each variant is the problem's `detail`: lowercase, no trailing
/// period, and for 5xx variants free of anything internal.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field broke a rule of the request; `code` names the rule (`amount_not_positive`).
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },

    /// The body is not JSON at all.
    #[error("{detail}")]
    MalformedJson { detail: String },

    /// The body names a field the endpoint does not know.
    #[error("{detail}")]
    UnknownField { detail: String },

    /// A field has the wrong type, an unknown enum value, or is missing.
    #[error("{detail}")]
    InvalidFieldValue { detail: String },

    /// A path segment does not parse (a `uid` that is not a UUID).
    #[error("{detail}")]
    InvalidPath { detail: String },

    #[error("the request has no content-type; send application/json")]
    MissingContentType,

    #[error("the request content-type is not supported; send application/json")]
    UnsupportedMediaType,

    #[error("the request body is larger than this endpoint accepts")]
    BodyTooLarge,

    /// No credentials were presented.
    #[error("this endpoint needs a bearer token or an api key")]
    Unauthorized,

    /// Login failed. Unknown user, wrong password and inactive user look the same.
    #[error("the username or password is wrong")]
    InvalidCredentials,

    #[error("the bearer token is invalid or expired")]
    InvalidToken,

    #[error("the api key is invalid or revoked")]
    InvalidApiKey,

    /// The caller is known but may not do this.
    #[error("{detail}")]
    Forbidden { detail: String },

    /// The resource does not exist, or the caller may not know that it does.
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },

    #[error("the method is not allowed on this path")]
    MethodNotAllowed,

    /// The request clashes with existing state (`username_taken`, `idempotency_key_reused`).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },

    /// A dependency is saturated or down; the client should retry later.
    #[error("the service is temporarily unavailable; retry later")]
    ServiceUnavailable { retry_after_s: u32 },

    /// The request was accepted but its result is not ready yet.
    #[error("the result is not ready yet; retry later")]
    ResultPending { retry_after_s: u32 },

    /// A bug or an infrastructure failure. The source is logged, never sent.
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

/// What the client sees of an error besides its detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    pub status: StatusCode,
    /// Stable snake_case code; also the last segment of the problem `type`.
    pub code: &'static str,
    /// Short summary that is the same for every occurrence of the variant.
    pub title: &'static str,
}

/// The RFC 9457 problem body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: String,
}

impl ApiError {
    /// Shorthand for a 400 with the given rule `code`.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            detail: detail.into(),
        }
    }

    /// Shorthand for a 404 with the given `code`.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            detail: detail.into(),
        }
    }

    /// Shorthand for a 409 with the given `code`.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            detail: detail.into(),
        }
    }

    /// Shorthand for a 500 keeping `error` as the logged cause.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// Status, code and title: the one place that decides them.
    pub fn kind(&self) -> ErrorKind {
        use StatusCode as S;
        let (status, code, title) = match self {
            Self::Invalid { code, .. } => (S::BAD_REQUEST, *code, "Invalid request"),
            Self::MalformedJson { .. } => (S::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            Self::UnknownField { .. } => (S::BAD_REQUEST, "unknown_field", "Unknown field"),
            Self::InvalidFieldValue { .. } => (
                S::UNPROCESSABLE_ENTITY,
                "invalid_field_value",
                "Invalid field value",
            ),
            Self::InvalidPath { .. } => (S::BAD_REQUEST, "invalid_path", "Invalid path"),
            Self::MissingContentType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "missing_content_type",
                "Missing content type",
            ),
            Self::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            Self::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, "body_too_large", "Body too large"),
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::InvalidCredentials => (
                S::UNAUTHORIZED,
                "invalid_credentials",
                "Invalid credentials",
            ),
            Self::InvalidToken => (S::UNAUTHORIZED, "invalid_token", "Invalid token"),
            Self::InvalidApiKey => (S::UNAUTHORIZED, "invalid_api_key", "Invalid API key"),
            Self::Forbidden { .. } => (S::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound { code, .. } => (S::NOT_FOUND, *code, "Not found"),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::Conflict { code, .. } => (S::CONFLICT, *code, "Conflict"),
            Self::ServiceUnavailable { .. } => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "Service unavailable",
            ),
            Self::ResultPending { .. } => {
                (S::SERVICE_UNAVAILABLE, "result_pending", "Result pending")
            }
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        };
        ErrorKind {
            status,
            code,
            title,
        }
    }

    /// The stable code, as in [`ApiError::kind`].
    pub fn code(&self) -> &'static str {
        self.kind().code
    }

    /// The HTTP status, as in [`ApiError::kind`].
    pub fn status(&self) -> StatusCode {
        self.kind().status
    }

    /// Seconds the client should wait before retrying, for the `Retry-After` header.
    fn retry_after_s(&self) -> Option<u32> {
        match self {
            Self::ServiceUnavailable { retry_after_s } | Self::ResultPending { retry_after_s } => {
                Some(*retry_after_s)
            }
            _ => None,
        }
    }

    /// Logs the error once: the cause chain of a 500 at error level, the rest at debug.
    fn log(&self, kind: ErrorKind) {
        if let Self::Internal(cause) = self {
            tracing::error!(error = %format!("{cause:#}"), code = kind.code, "request failed");
        } else {
            tracing::debug!(
                status = kind.status.as_u16(),
                code = kind.code,
                "request rejected"
            );
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        self.log(kind);

        let problem = Problem {
            type_uri: format!("{PROBLEM_TYPE_BASE}{}", kind.code),
            title: kind.title,
            status: kind.status.as_u16(),
            code: kind.code,
            detail: self.to_string(),
        };
        let mut response = (kind.status, Json(problem)).into_response();

        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if kind.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
        }
        if let Some(retry_after_s) = self.retry_after_s() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::from_store(ProjectionError::from(error), "database query failed")
    }
}

impl ApiError {
    /// A failure of the database under the read store. One that a retry may get past (a lock
    /// held past the wait, a pool with no free connection) is a 503 the client retries: the
    /// store is busy, not broken. Anything else is a 500.
    pub fn from_store(error: ProjectionError, context: &'static str) -> Self {
        if error.is_transient() {
            let error = anyhow::Error::new(error).context(context);
            tracing::warn!(error = format!("{error:#}"), "store busy; answered 503");
            return Self::ServiceUnavailable {
                retry_after_s: STORE_BUSY_RETRY_AFTER_S,
            };
        }
        Self::Internal(anyhow::Error::new(error).context(context))
    }
}

/// How long a client is told to wait after the store was too busy to answer.
const STORE_BUSY_RETRY_AFTER_S: u32 = 1;

/// Fallback handler for paths no route matches: `Router::fallback(error::not_found)`.
pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no resource lives at this path")
}

/// Handler for a known path with an unsupported method:
/// `Router::method_not_allowed_fallback(error::method_not_allowed)`.
///
/// axum's own 405 carries an `Allow` header; a fallback handler cannot know the allowed
/// methods, so this response omits it.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("problem body is json")
    }

    #[tokio::test]
    async fn a_validation_failure_is_a_400_problem_with_its_code() {
        let response =
            ApiError::invalid("amount_not_positive", "amount must be above zero").into_response();

        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
        let body = body_json(response).await;
        assert_eq!(
            body["type"],
            "https://tally.dev/problems/amount_not_positive"
        );
        assert_eq!(body["title"], "Invalid request");
        assert_eq!(body["status"], 400);
        assert_eq!(body["code"], "amount_not_positive");
        assert_eq!(body["detail"], "amount must be above zero");
    }

    #[tokio::test]
    async fn an_internal_error_says_nothing_about_its_cause() {
        let cause = anyhow::anyhow!("password for db.internal:3306 rejected");
        let response = ApiError::internal(cause.context("loading balance")).into_response();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(response).await;
        assert_eq!(body["code"], "internal");
        assert_eq!(body["detail"], "an internal error occurred");
        assert!(!body.to_string().contains("db.internal"));
    }

    #[tokio::test]
    async fn every_401_carries_a_bearer_challenge() {
        let errors = [
            ApiError::Unauthorized,
            ApiError::InvalidCredentials,
            ApiError::InvalidToken,
            ApiError::InvalidApiKey,
        ];
        for error in errors {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
        }
    }

    #[tokio::test]
    async fn a_pending_result_is_a_503_with_retry_after() {
        let response = ApiError::ResultPending { retry_after_s: 2 }.into_response();

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(body_json(response).await["code"], "result_pending");
    }

    #[tokio::test]
    async fn a_store_too_busy_to_answer_is_a_503_and_a_broken_one_a_500() {
        let busy = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        let broken = ApiError::from(sqlx::Error::RowNotFound).into_response();

        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        assert_eq!(body_json(busy).await["code"], "service_unavailable");
        assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn a_conflict_keeps_its_code() {
        let response = ApiError::conflict("idempotency_key_reused", "key was used").into_response();

        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(body_json(response).await["code"], "idempotency_key_reused");
    }
}
