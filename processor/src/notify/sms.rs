//! SMS through an HTTP API shaped like Twilio's Messages API.
//!
//! A text is `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded
//! with `To`, `Body` and either `MessagingServiceSid` or `From`, authenticated with HTTP basic
//! auth (the account SID and the auth token). How a status and body become a [`Delivery`] is
//! decided in one place, [`delivery_of`]:
//!
//! | status | [`Delivery`] |
//! |---|---|
//! | 200, 201 | `Sent`, with the message's `sid` |
//! | 408, 429, 5xx | `Transient` |
//! | 401, 403: our credentials were refused | `Transient`, logged at error level |
//! | any other 4xx (an invalid or unreachable number) | `Permanent`, with `code` and `message` |
//! | anything else | `Transient` |
//!
//! Timeouts and transport failures (refused, reset, DNS, TLS) are `Transient`. A timeout can
//! come after the provider queued the text, so a retry may send it twice; for a notification
//! that is better than never sending it.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Url, redirect};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tally_domain::PhoneNumber;

use super::render::SmsMessage;
use super::{Delivery, SmsSender, bounded_text};

/// Twilio's API root.
pub const TWILIO_BASE_URL: &str = "https://api.twilio.com";

/// How long a call may take unless the settings say otherwise. The Messages API queues a text
/// and answers in well under a second; ten leaves room for a slow network.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// The longest timeout accepted.
pub const TIMEOUT_MS_MAX: u64 = 60_000;

/// The most of an answer's body read. A message resource is about 1 KiB; what lies past this
/// is not read, and an answer cut short is classified by its status alone.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// The longest account or messaging service SID accepted. Twilio's are 34 characters.
pub const SID_CHARS_MAX: usize = 64;

/// Who the text is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmsFrom {
    /// A messaging service, which picks the sending number itself: `MessagingServiceSid`.
    MessagingService(String),
    /// One of the account's numbers: `From`.
    Number(PhoneNumber),
}

#[derive(Clone, Debug)]
pub struct SmsSettings {
    /// The API root, such as [`TWILIO_BASE_URL`]; the messages path is appended.
    pub base_url: String,
    /// The basic auth user, also part of the path.
    pub account_sid: String,
    /// The basic auth password.
    pub auth_token: SecretString,
    pub from: SmsFrom,
    /// The most one call may take, connecting and reading the answer included.
    pub timeout_ms: u64,
}

impl SmsSettings {
    /// Settings for Twilio itself, with the default timeout.
    pub fn twilio(account_sid: impl Into<String>, auth_token: SecretString, from: SmsFrom) -> Self {
        SmsSettings {
            base_url: TWILIO_BASE_URL.to_owned(),
            account_sid: account_sid.into(),
            auth_token,
            from,
            timeout_ms: TIMEOUT_MS_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmsSettingsError {
    #[error("sms base_url must be an http or https URL")]
    InvalidBaseUrl,

    #[error("sms account_sid must be 1 to {SID_CHARS_MAX} letters and digits")]
    InvalidAccountSid,

    #[error("sms messaging service sid must be 1 to {SID_CHARS_MAX} letters and digits")]
    InvalidMessagingServiceSid,

    #[error("sms timeout_ms must be 1 to {TIMEOUT_MS_MAX}, not {0}")]
    InvalidTimeout(u64),

    #[error("the sms http client could not be built")]
    Client(#[source] reqwest::Error),
}

/// Sends text messages through the Messages API.
pub struct TwilioSmsSender {
    client: reqwest::Client,
    messages_url: Url,
    account_sid: String,
    auth_token: SecretString,
    from: SmsFrom,
    timeout_ms: u64,
}

impl TwilioSmsSender {
    pub fn new(settings: SmsSettings) -> Result<TwilioSmsSender, SmsSettingsError> {
        if !is_sid(&settings.account_sid) {
            return Err(SmsSettingsError::InvalidAccountSid);
        }
        if let SmsFrom::MessagingService(sid) = &settings.from
            && !is_sid(sid)
        {
            return Err(SmsSettingsError::InvalidMessagingServiceSid);
        }
        if !(1..=TIMEOUT_MS_MAX).contains(&settings.timeout_ms) {
            return Err(SmsSettingsError::InvalidTimeout(settings.timeout_ms));
        }
        let messages_url = messages_url(&settings.base_url, &settings.account_sid)?;

        // A redirect would resend the credentials elsewhere; the API has none.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(redirect::Policy::none())
            .build()
            .map_err(SmsSettingsError::Client)?;
        Ok(TwilioSmsSender {
            client,
            messages_url,
            account_sid: settings.account_sid,
            auth_token: settings.auth_token,
            from: settings.from,
            timeout_ms: settings.timeout_ms,
        })
    }

    fn form<'a>(&'a self, sms: &'a SmsMessage) -> [(&'static str, &'a str); 3] {
        let from = match &self.from {
            SmsFrom::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
            SmsFrom::Number(number) => ("From", number.as_str()),
        };
        [("To", sms.to.as_str()), ("Body", sms.text.as_str()), from]
    }

    /// The answer's body, or its first [`BODY_BYTES_MAX`] bytes.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, Delivery> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(&e))? {
            let room = BODY_BYTES_MAX - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == BODY_BYTES_MAX {
                break;
            }
        }
        Ok(body)
    }

    fn failure(&self, error: &reqwest::Error) -> Delivery {
        if error.is_timeout() {
            let timeout_ms = self.timeout_ms;
            return Delivery::Transient(format!(
                "the sms provider did not answer within {timeout_ms} ms"
            ));
        }
        let chain = crate::retry::chain(error);
        Delivery::Transient(bounded_text(&format!(
            "the sms provider could not be reached: {chain}"
        )))
    }
}

#[async_trait]
impl SmsSender for TwilioSmsSender {
    #[tracing::instrument(skip_all, fields(notification_id = %sms.notification_id))]
    async fn send(&self, sms: &SmsMessage) -> Delivery {
        let sent = self
            .client
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&self.form(sms))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return self.failure(&error),
        };
        let status = response.status().as_u16();
        match self.read_body(response).await {
            Ok(body) => delivery_of(status, &body),
            Err(failure) => failure,
        }
    }
}

/// `{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, whether or not the base URL
/// ends with a slash.
fn messages_url(base_url: &str, account_sid: &str) -> Result<Url, SmsSettingsError> {
    let mut base = Url::parse(base_url).map_err(|_| SmsSettingsError::InvalidBaseUrl)?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(SmsSettingsError::InvalidBaseUrl);
    }
    // Joining a relative path replaces the base's last segment unless it ends with a slash.
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    // The SID is letters and digits only (checked), so it cannot change the path's shape.
    base.join(&format!("2010-04-01/Accounts/{account_sid}/Messages.json"))
        .map_err(|_| SmsSettingsError::InvalidBaseUrl)
}

fn is_sid(text: &str) -> bool {
    let length = text.chars().count();
    (1..=SID_CHARS_MAX).contains(&length) && text.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A created message: only its sid matters here.
#[derive(Deserialize)]
struct MessageResource {
    sid: String,
}

/// A Twilio error body: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// What the provider's answer means for the notification (see the module doc's table).
pub fn delivery_of(status: u16, body: &[u8]) -> Delivery {
    match status {
        200 | 201 => sent(body),
        401 | 403 => {
            let reason = error_reason(status, body);
            tracing::error!(
                status,
                reason,
                "sms provider refused our credentials; fix the settings"
            );
            Delivery::Transient(reason)
        }
        408 | 429 | 500..=599 => Delivery::Transient(error_reason(status, body)),
        400..=499 => Delivery::Permanent(error_reason(status, body)),
        _ => Delivery::Transient(bounded_text(&format!(
            "status {status} is outside the contract"
        ))),
    }
}

/// A text the provider accepted. An answer without a readable sid still means it was queued:
/// sending again would send it twice, so it counts as sent, without a reference.
fn sent(body: &[u8]) -> Delivery {
    let sid = serde_json::from_slice::<MessageResource>(body)
        .ok()
        .map(|resource| bounded_text(&resource.sid))
        .filter(|sid| !sid.is_empty());
    if sid.is_none() {
        tracing::warn!("sms provider accepted a text without naming its sid");
    }
    Delivery::Sent { reference: sid }
}

/// `status 400: code 21211: The 'To' number is not valid`, with what the body gives of it.
fn error_reason(status: u16, body: &[u8]) -> String {
    let error = serde_json::from_slice::<ErrorBody>(body).ok();
    let mut reason = format!("status {status}");
    if let Some(code) = error.as_ref().and_then(|e| e.code.as_ref()) {
        match code {
            serde_json::Value::String(text) => reason.push_str(&format!(": code {text}")),
            other => reason.push_str(&format!(": code {other}")),
        }
    }
    if let Some(message) = error.and_then(|e| e.message) {
        reason.push_str(": ");
        reason.push_str(&message);
    }
    bounded_text(&reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(delivery: &Delivery) -> &str {
        match delivery {
            Delivery::Transient(reason) | Delivery::Permanent(reason) => reason,
            Delivery::Sent { .. } => panic!("not a failure: {delivery:?}"),
        }
    }

    #[test]
    fn created_and_ok_answers_are_sent_with_their_sid() {
        let body = br#"{"sid":"SM0123456789abcdef0123456789abcdef","status":"queued"}"#;
        let reference = Some("SM0123456789abcdef0123456789abcdef".to_owned());
        assert_eq!(
            delivery_of(201, body),
            Delivery::Sent {
                reference: reference.clone()
            }
        );
        assert_eq!(delivery_of(200, body), Delivery::Sent { reference });
    }

    #[test]
    fn an_accepted_text_without_a_sid_is_still_sent() {
        for body in [&b"not json"[..], br#"{"sid":""}"#, b""] {
            assert_eq!(delivery_of(201, body), Delivery::Sent { reference: None });
        }
    }

    #[test]
    fn overload_server_errors_and_refused_credentials_are_transient() {
        for status in [401, 403, 408, 429, 500, 502, 503, 504] {
            let delivery = delivery_of(status, br#"{"code":20429,"message":"Too Many Requests"}"#);
            assert!(
                matches!(delivery, Delivery::Transient(_)),
                "{status}: {delivery:?}"
            );
        }
    }

    #[test]
    fn other_client_errors_are_permanent_with_the_providers_code_and_message() {
        let body = serde_json::json!({
            "code": 21211,
            "message": "The 'To' number +1555 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        });
        let body = serde_json::to_vec(&body).expect("a JSON body");
        let body = body.as_slice();
        let delivery = delivery_of(400, body);
        assert!(matches!(delivery, Delivery::Permanent(_)), "{delivery:?}");
        assert_eq!(
            reason(&delivery),
            "status 400: code 21211: The 'To' number +1555 is not a valid phone number."
        );
        assert_eq!(reason(&delivery_of(404, b"")), "status 404");
    }

    #[test]
    fn statuses_outside_the_contract_are_transient() {
        for status in [100, 204, 302, 600] {
            assert!(
                matches!(delivery_of(status, b""), Delivery::Transient(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn the_messages_path_is_appended_to_the_base_url() {
        for base in ["http://127.0.0.1:9/twilio", "http://127.0.0.1:9/twilio/"] {
            let url = messages_url(base, "AC123").expect("a valid base url");
            let expected = "http://127.0.0.1:9/twilio/2010-04-01/Accounts/AC123/Messages.json";
            assert_eq!(url.as_str(), expected);
        }
        let url = messages_url(TWILIO_BASE_URL, "AC1").expect("a valid base url");
        assert_eq!(
            url.as_str(),
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
        );
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let from = SmsFrom::MessagingService("MG1".to_owned());
        let valid = SmsSettings::twilio("AC1", SecretString::from("token"), from);
        let cases = [
            SmsSettings {
                account_sid: "AC1/../x".to_owned(),
                ..valid.clone()
            },
            SmsSettings {
                account_sid: String::new(),
                ..valid.clone()
            },
            SmsSettings {
                from: SmsFrom::MessagingService("MG 1".to_owned()),
                ..valid.clone()
            },
            SmsSettings {
                timeout_ms: 0,
                ..valid.clone()
            },
            SmsSettings {
                base_url: "ftp://example.com".to_owned(),
                ..valid.clone()
            },
        ];
        for case in cases {
            assert!(TwilioSmsSender::new(case.clone()).is_err(), "{case:?}");
        }
        assert!(TwilioSmsSender::new(valid).is_ok());
    }

    #[test]
    fn settings_never_print_the_auth_token() {
        let from = SmsFrom::MessagingService("MG1".to_owned());
        let settings = SmsSettings::twilio("AC1", SecretString::from("s3cr3t-token"), from);
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cr3t-token"), "{printed}");
    }
}
