//! The adapter for a real airtime provider's HTTP API.
//!
//! A top-up is `POST {base_url}/v1/topups` with the API key as a bearer token and the
//! transaction id both as the body's `reference` and as the `Idempotency-Key` header, so a
//! retried call buys once. How a status and body become an answer or a [`ProviderError`] is
//! decided in one place, [`outcome_of`]:
//!
//! | status | meaning |
//! |---|---|
//! | 200, 201 | `DELIVERED` with a `providerReference`, or `REJECTED` with a `code` |
//! | 400, 422 | rejected, with a `code` |
//! | 401, 403 | [`ProviderError::Unauthorized`] |
//! | 408, 429, 5xx | [`ProviderError::Unavailable`] |
//! | anything else, or a body off the contract | [`ProviderError::UnexpectedAnswer`] |
//!
//! Timeouts and transport failures are [`ProviderError::Timeout`] and
//! [`ProviderError::Unreachable`].

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Url, redirect};
use secrecy::{ExposeSecret as _, SecretString};
use tally_domain::AirtimeOutcome;
use tally_domain::money::format_at_scale;

use super::wire::{
    BODY_BYTES_MAX, IDEMPOTENCY_KEY, PROVIDER_TEXT_CHARS_MAX, RejectionBody, STATUS_DELIVERED,
    STATUS_REJECTED, TOPUPS_PATH, TopupAnswer, TopupBody,
};
use super::{AirtimeProvider, AirtimeRequest, ProviderError};

/// How long a call may take unless the settings say otherwise. Providers answer in well under
/// a second; five leaves room for a slow network without holding a batch long.
pub const TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// The longest timeout accepted. A call blocks one of a batch's in-flight slots while it
/// waits; a provider that takes over a minute is down as far as the ledger is concerned.
pub const TIMEOUT_MS_MAX: u64 = 60_000;

#[derive(Clone, Debug)]
pub struct HttpProviderSettings {
    /// The provider's API root, such as `https://airtime.example.com`; paths are appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <api_key>`.
    pub api_key: SecretString,
    /// The most one call may take, connecting and reading the answer included.
    pub timeout_ms: u64,
}

impl HttpProviderSettings {
    /// Settings with the default timeout.
    pub fn new(base_url: impl Into<String>, api_key: SecretString) -> Self {
        HttpProviderSettings {
            base_url: base_url.into(),
            api_key,
            timeout_ms: TIMEOUT_MS_DEFAULT,
        }
    }
}

/// Why an [`HttpProvider`] could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum HttpProviderError {
    #[error("the airtime provider's base url is not an absolute http or https url")]
    InvalidBaseUrl,
    #[error("the airtime provider's timeout must be 1 to {TIMEOUT_MS_MAX} ms, not {0}")]
    InvalidTimeout(u64),
    #[error("the http client for the airtime provider could not be built")]
    Client(#[source] reqwest::Error),
}

/// An airtime provider reached over HTTP.
#[derive(Debug)]
pub struct HttpProvider {
    client: reqwest::Client,
    topups_url: Url,
    api_key: SecretString,
    timeout_ms: u64,
}

impl HttpProvider {
    pub fn new(settings: HttpProviderSettings) -> Result<HttpProvider, HttpProviderError> {
        let topups_url = topups_url(&settings.base_url)?;
        if !(1..=TIMEOUT_MS_MAX).contains(&settings.timeout_ms) {
            return Err(HttpProviderError::InvalidTimeout(settings.timeout_ms));
        }

        // A redirect would resend the credentials elsewhere; the contract has none.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(redirect::Policy::none())
            .build()
            .map_err(HttpProviderError::Client)?;
        Ok(HttpProvider {
            client,
            topups_url,
            api_key: settings.api_key,
            timeout_ms: settings.timeout_ms,
        })
    }

    /// Reads the answer's body, refusing one longer than the contract allows.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(e))? {
            if body.len() + chunk.len() > BODY_BYTES_MAX {
                let detail = format!("the body is longer than {BODY_BYTES_MAX} bytes");
                return Err(ProviderError::UnexpectedAnswer { status, detail });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn failure(&self, error: reqwest::Error) -> ProviderError {
        if error.is_timeout() {
            return ProviderError::Timeout {
                timeout_ms: self.timeout_ms,
            };
        }
        ProviderError::Unreachable(Box::new(error))
    }
}

#[async_trait]
impl AirtimeProvider for HttpProvider {
    async fn send(&self, request: &AirtimeRequest) -> Result<AirtimeOutcome, ProviderError> {
        let reference = request.transaction_id.to_string();
        let body = TopupBody {
            reference: reference.clone(),
            phone_number: request.phone_number.to_string(),
            amount: format_at_scale(request.amount.value(), request.currency),
            currency: request.currency.code().to_owned(),
        };

        let response = self
            .client
            .post(self.topups_url.clone())
            .bearer_auth(self.api_key.expose_secret())
            .header(IDEMPOTENCY_KEY, reference)
            .json(&body)
            .send()
            .await
            .map_err(|error| self.failure(error))?;
        let status = response.status().as_u16();
        let body = self.read_body(response).await?;
        outcome_of(status, &body)
    }
}

/// `{base_url}/v1/topups`, whether or not the base URL ends with a slash.
fn topups_url(base_url: &str) -> Result<Url, HttpProviderError> {
    let mut base = Url::parse(base_url).map_err(|_| HttpProviderError::InvalidBaseUrl)?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(HttpProviderError::InvalidBaseUrl);
    }
    // Joining a relative path replaces the base's last segment unless it ends with a slash.
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(TOPUPS_PATH)
        .map_err(|_| HttpProviderError::InvalidBaseUrl)
}

/// The provider's answer, from the status and body it sent.
pub fn outcome_of(status: u16, body: &[u8]) -> Result<AirtimeOutcome, ProviderError> {
    match status {
        200 | 201 => answer_of(status, body),
        400 | 422 => rejection_of(status, body),
        401 | 403 => Err(ProviderError::Unauthorized { status }),
        408 | 429 | 500..=599 => Err(ProviderError::Unavailable { status }),
        _ => Err(unexpected(status, "the status is outside the contract")),
    }
}

fn answer_of(status: u16, body: &[u8]) -> Result<AirtimeOutcome, ProviderError> {
    let answer: TopupAnswer = serde_json::from_slice(body)
        .map_err(|_| unexpected(status, "the body is not a top-up answer"))?;
    match (
        answer.status.as_str(),
        answer.provider_reference,
        answer.code,
    ) {
        (STATUS_DELIVERED, Some(reference), _) => Ok(AirtimeOutcome::Delivered {
            provider_reference: checked_text(status, reference)?,
        }),
        (STATUS_REJECTED, _, Some(code)) => Ok(AirtimeOutcome::Rejected {
            provider_code: checked_text(status, code)?,
        }),
        _ => Err(unexpected(
            status,
            "the answer has no known status with its field",
        )),
    }
}

fn rejection_of(status: u16, body: &[u8]) -> Result<AirtimeOutcome, ProviderError> {
    let rejection: RejectionBody = serde_json::from_slice(body)
        .map_err(|_| unexpected(status, "the rejection names no code"))?;
    Ok(AirtimeOutcome::Rejected {
        provider_code: checked_text(status, rejection.code)?,
    })
}

/// Refuses provider text that is empty, too long or carries control characters: it ends up
/// in the log and in messages to account holders.
fn checked_text(status: u16, text: String) -> Result<String, ProviderError> {
    let length = text.chars().count();
    let clean = !text.chars().any(char::is_control);
    if length == 0 || length > PROVIDER_TEXT_CHARS_MAX || !clean {
        return Err(unexpected(
            status,
            "a reference or code is empty, too long or unprintable",
        ));
    }
    Ok(text)
}

fn unexpected(status: u16, detail: &str) -> ProviderError {
    ProviderError::UnexpectedAnswer {
        status,
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(reference: &str) -> AirtimeOutcome {
        AirtimeOutcome::Delivered {
            provider_reference: reference.to_owned(),
        }
    }

    fn rejected(code: &str) -> AirtimeOutcome {
        AirtimeOutcome::Rejected {
            provider_code: code.to_owned(),
        }
    }

    #[test]
    fn successful_statuses_carry_a_delivery_or_a_rejection() {
        let body = br#"{"status":"DELIVERED","providerReference":"p-1"}"#;
        assert_eq!(outcome_of(201, body).ok(), Some(delivered("p-1")));
        assert_eq!(outcome_of(200, body).ok(), Some(delivered("p-1")));
        let body = br#"{"status":"REJECTED","code":"number_barred"}"#;
        assert_eq!(outcome_of(200, body).ok(), Some(rejected("number_barred")));
    }

    #[test]
    fn client_errors_with_a_code_are_rejections() {
        let body = br#"{"code":"invalid_phone_number"}"#;
        assert_eq!(
            outcome_of(400, body).ok(),
            Some(rejected("invalid_phone_number"))
        );
        assert_eq!(
            outcome_of(422, body).ok(),
            Some(rejected("invalid_phone_number"))
        );
    }

    #[test]
    fn overload_and_server_errors_are_transient() {
        for status in [408, 429, 500, 502, 503, 504] {
            let error = outcome_of(status, b"").expect_err("no answer");
            assert!(
                matches!(error, ProviderError::Unavailable { .. }),
                "{status}"
            );
            assert!(!error.needs_operator(), "{status}");
        }
    }

    #[test]
    fn refused_credentials_are_retried_but_need_an_operator() {
        for status in [401, 403] {
            let error = outcome_of(status, br#"{"code":"bad_key"}"#).expect_err("no answer");
            assert!(
                matches!(error, ProviderError::Unauthorized { .. }),
                "{status}"
            );
            assert!(error.needs_operator(), "{status}");
        }
    }

    #[test]
    fn answers_off_the_contract_are_never_taken_for_a_rejection() {
        let cases: [(u16, &[u8]); 7] = [
            (200, b"not json"),
            (201, br#"{"status":"PENDING"}"#),
            (201, br#"{"status":"DELIVERED"}"#),
            (200, br#"{"status":"REJECTED"}"#),
            (400, b"bad request"),
            (200, br#"{"status":"DELIVERED","providerReference":""}"#),
            (404, b""),
        ];
        for (status, body) in cases {
            let error = outcome_of(status, body).expect_err("no answer");
            assert!(
                matches!(error, ProviderError::UnexpectedAnswer { .. }),
                "{status} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn provider_text_longer_than_the_limit_is_refused() {
        let reference = "r".repeat(PROVIDER_TEXT_CHARS_MAX + 1);
        let body = format!(r#"{{"status":"DELIVERED","providerReference":"{reference}"}}"#);
        assert!(outcome_of(201, body.as_bytes()).is_err());
    }

    #[test]
    fn the_topups_path_is_appended_to_the_base_url() {
        for base in ["http://127.0.0.1:9/api", "http://127.0.0.1:9/api/"] {
            let url = topups_url(base).expect("a valid base url");
            assert_eq!(url.as_str(), "http://127.0.0.1:9/api/v1/topups");
        }
        let url = topups_url("https://airtime.example.com").expect("a valid base url");
        assert_eq!(url.as_str(), "https://airtime.example.com/v1/topups");
    }

    #[test]
    fn base_urls_that_are_not_http_are_refused() {
        for base in [
            "ftp://example.com",
            "example.com",
            "mailto:a@example.com",
            "",
        ] {
            assert!(topups_url(base).is_err(), "{base}");
        }
    }
}
