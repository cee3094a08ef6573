//! Request extractors whose every rejection is an [`ApiError`] with a stable code.
//!
//! axum's own `Json` and `Path` reject with plain-text bodies; [`JsonBody`] and [`Path`] wrap
//! them and translate each rejection, so a client always gets a problem+json body. The body
//! size limit itself is applied by the router (`DefaultBodyLimit`), which this module only
//! names with [`REQUEST_BODY_BYTES_MAX`].

use axum::extract::path::ErrorKind as PathErrorKind;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body the API reads, in bytes.
///
/// Every request is a single command or query of a few hundred bytes; 64 KiB leaves room for
/// long descriptions and metadata while bounding the memory one request can pin. The router
/// applies it with `axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX)`.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// Serde's message prefix for a field that `deny_unknown_fields` refused.
const SERDE_UNKNOWN_FIELD: &str = "unknown field `";

/// A JSON request body deserialized into `T`, rejecting with an [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type_missing = !request.headers().contains_key(CONTENT_TYPE);
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection_to_error(rejection, content_type_missing)),
        }
    }
}

/// Maps each way axum's `Json` can fail to its problem code.
fn json_rejection_to_error(rejection: JsonRejection, content_type_missing: bool) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) if content_type_missing => {
            ApiError::MissingContentType
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonSyntaxError(error) => ApiError::MalformedJson {
            detail: serde_message(&error),
        },
        JsonRejection::JsonDataError(error) => data_error_to_api_error(serde_message(&error)),
        JsonRejection::BytesRejection(error) => bytes_rejection_to_error(error),
        other => ApiError::internal(anyhow::anyhow!("unexpected json rejection: {other}")),
    }
}

/// Tells an unknown field apart from every other data error, by serde's stable wording.
fn data_error_to_api_error(detail: String) -> ApiError {
    if detail.contains(SERDE_UNKNOWN_FIELD) {
        ApiError::UnknownField { detail }
    } else {
        ApiError::InvalidFieldValue { detail }
    }
}

/// Failures to read the body: over the limit, or the connection broke off.
fn bytes_rejection_to_error(rejection: BytesRejection) -> ApiError {
    match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::BodyTooLarge
        }
        other => ApiError::invalid(
            "unreadable_body",
            format!("could not read the body: {other}"),
        ),
    }
}

/// The serde message with its JSON path (`amount: invalid type ...`), without axum's preamble.
///
/// The rejection's source is the `serde_path_to_error` error; the client wrote the JSON the
/// message quotes, so echoing it back reveals nothing.
fn serde_message(rejection: &dyn std::error::Error) -> String {
    match rejection.source() {
        Some(source) => source.to_string(),
        None => rejection.to_string(),
    }
}

/// Path parameters deserialized into `T`, rejecting with `400 invalid_path`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection_to_error(rejection)),
        }
    }
}

/// A segment that does not parse is the client's fault; a route/extractor mismatch is ours.
fn path_rejection_to_error(rejection: PathRejection) -> ApiError {
    match rejection {
        PathRejection::FailedToDeserializePathParams(error) if error.status().is_client_error() => {
            ApiError::InvalidPath {
                detail: path_error_detail(error.kind()),
            }
        }
        other => ApiError::internal(anyhow::anyhow!("path extraction failed: {other}")),
    }
}

/// A lowercase detail naming the segment that failed, when axum knows it.
fn path_error_detail(kind: &PathErrorKind) -> String {
    match kind {
        PathErrorKind::ParseErrorAtKey { key, value, .. }
        | PathErrorKind::DeserializeError { key, value, .. } => {
            format!("`{value}` is not a valid {key}")
        }
        PathErrorKind::ParseError { value, .. }
        | PathErrorKind::ParseErrorAtIndex { value, .. } => {
            format!("`{value}` is not a valid path segment")
        }
        _ => "a path segment is invalid".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Transfer {
        amount: u64,
        kind: Kind,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Payment,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<Transfer, ApiError> {
        let mut request = Request::builder().method("POST").uri("/");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body.to_owned())).expect("request");
        JsonBody::<Transfer>::from_request(request, &())
            .await
            .map(|JsonBody(value)| value)
    }

    fn code_of(result: Result<Transfer, ApiError>) -> &'static str {
        result.expect_err("rejected").kind().code
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn a_valid_body_deserializes() {
        let transfer = extract(JSON, r#"{"amount": 5, "kind": "payment"}"#)
            .await
            .expect("ok");
        assert_eq!(transfer.amount, 5);
    }

    #[tokio::test]
    async fn broken_json_is_malformed_json() {
        assert_eq!(
            code_of(extract(JSON, r#"{"amount": "#).await),
            "malformed_json"
        );
    }

    #[tokio::test]
    async fn an_unexpected_field_is_unknown_field() {
        let body = r#"{"amount": 5, "kind": "payment", "memo": "x"}"#;
        assert_eq!(code_of(extract(JSON, body).await), "unknown_field");
    }

    #[tokio::test]
    async fn an_unknown_enum_value_is_invalid_field_value() {
        let body = r#"{"amount": 5, "kind": "refund"}"#;
        let error = extract(JSON, body).await.expect_err("rejected");
        assert_eq!(error.kind().code, "invalid_field_value");
        assert_eq!(error.kind().status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            error.to_string().starts_with("kind: unknown variant"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_wrong_type_is_invalid_field_value() {
        let body = r#"{"amount": "five", "kind": "payment"}"#;
        assert_eq!(code_of(extract(JSON, body).await), "invalid_field_value");
    }

    #[tokio::test]
    async fn no_content_type_is_missing_content_type() {
        assert_eq!(code_of(extract(None, "{}").await), "missing_content_type");
    }

    #[tokio::test]
    async fn a_text_content_type_is_unsupported_media_type() {
        let error = extract(Some("text/plain"), "{}")
            .await
            .expect_err("rejected");
        assert_eq!(error.kind().code, "unsupported_media_type");
        assert_eq!(error.kind().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn a_path_uid_that_is_not_a_uuid_is_invalid_path() {
        use axum::response::IntoResponse;
        use tower::ServiceExt;

        async fn show(Path(uid): Path<uuid::Uuid>) -> String {
            uid.to_string()
        }
        let app = axum::Router::new().route("/accounts/{uid}", axum::routing::get(show));
        let request = Request::get("/accounts/not-a-uuid")
            .body(Body::empty())
            .expect("request");

        let response = app
            .oneshot(request)
            .await
            .expect("infallible")
            .into_response();

        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes.to_bytes()).expect("json");
        assert_eq!(body["code"], "invalid_path");
        assert_eq!(body["detail"], "`not-a-uuid` is not a valid uid");
    }
}
