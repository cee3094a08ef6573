//! Email over SMTP, through lettre's pooled async transport.
//!
//! Messages are built with lettre's builder only: the recipient is a [`Mailbox`] with the
//! account holder's name, the subject a subject header, the bodies a `multipart/alternative`
//! of plain text and HTML. lettre encodes every header, so nothing in a name or subject can
//! add a header or a recipient. The `Message-ID` is derived from the notification id, so a
//! notification sent twice (after an ambiguous failure) can be recognised as one.
//!
//! How a send ends is decided in one place, [`delivery_of_error`]:
//!
//! | what happened | [`Delivery`] |
//! |---|---|
//! | the server accepted the message (2xx after `DATA`) | `Sent`, with the server's reply |
//! | a 4xx reply (421 shutting down, 450/451 greylisting, 452 full) | `Transient` |
//! | 530, 534, 535 or 538: our credentials were refused | `Transient`, logged at error level |
//! | any other 5xx reply (550 no such user, 553 bad address, 554) | `Permanent` |
//! | connection refused or reset, TLS failure, timeout, unreadable reply | `Transient` |
//!
//! The reason kept is the server's own reply (`550 5.1.1 <x@example.com>: no such user`), or
//! lettre's description of what failed when there was no reply.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{self, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Semaphore;

use super::render::EmailMessage;
use super::{Delivery, EmailSender, bounded_text};

/// How long opening the TCP connection may take unless the settings say otherwise. lettre's
/// own default is a minute; a relay that takes ten seconds to accept a connection is down as
/// far as a notification is concerned.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// How long a whole send may take unless the settings say otherwise: waiting for a free
/// connection, connecting, the greeting, TLS, logging in, `MAIL`, `RCPT`, `DATA` and the final
/// reply. lettre's async transport bounds only the TCP connect (it sets no read timeout), so
/// this is what stops a server that accepts a connection and then says nothing.
pub const SEND_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// The longest either timeout may be set to.
pub const TIMEOUT_MS_MAX: u64 = 300_000;

/// Connections to the server at once, unless the settings say otherwise. Relays limit
/// concurrent connections per client (often to 10 or fewer); four overlap the latency of a
/// burst of notifications without tripping that limit.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 4;

/// The most connections that may be asked for.
pub const CONNECTIONS_MAX_LIMIT: u32 = 64;

/// How the connection to the server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain text. Only for a relay on the same host or a test server.
    None,
    /// A plain connection upgraded with `STARTTLS`, which the server must offer.
    StartTls,
    /// TLS from the first byte ("implicit TLS", SMTPS).
    Tls,
}

impl SmtpSecurity {
    /// The port that usually goes with the security: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::None => 25,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
        }
    }
}

impl FromStr for SmtpSecurity {
    type Err = SmtpSettingsError;

    /// `none`, `starttls` or `tls`.
    fn from_str(text: &str) -> Result<SmtpSecurity, SmtpSettingsError> {
        match text {
            "none" => Ok(SmtpSecurity::None),
            "starttls" => Ok(SmtpSecurity::StartTls),
            "tls" => Ok(SmtpSecurity::Tls),
            _ => Err(SmtpSettingsError::UnknownSecurity(text.to_owned())),
        }
    }
}

/// The account the sender logs in with. The password never prints.
#[derive(Clone, Debug)]
pub struct SmtpCredentials {
    pub username: String,
    pub password: SecretString,
}

#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// The server's host name; with TLS, the name its certificate must carry.
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// `None` for a server that takes mail without logging in.
    pub credentials: Option<SmtpCredentials>,
    /// The sender, a bare address or one with a name: `Tally <no-reply@tally.example>`.
    pub from: String,
    /// The most opening the TCP connection may take.
    pub connect_timeout_ms: u64,
    /// The most a whole send may take, from waiting for a free connection to the last reply.
    pub send_timeout_ms: u64,
    /// Connections open at once, sending or idle; sends beyond it wait their turn.
    pub connections_max: u32,
}

impl SmtpSettings {
    /// Settings with the security's usual port, no credentials and the default limits.
    pub fn new(host: impl Into<String>, security: SmtpSecurity, from: impl Into<String>) -> Self {
        SmtpSettings {
            host: host.into(),
            port: security.default_port(),
            security,
            credentials: None,
            from: from.into(),
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            send_timeout_ms: SEND_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpSettingsError {
    #[error("smtp security must be none, starttls or tls, not {0:?}")]
    UnknownSecurity(String),

    #[error("smtp host must not be empty")]
    EmptyHost,

    #[error("smtp from must be an address, optionally with a name")]
    InvalidFrom(#[source] lettre::address::AddressError),

    #[error("smtp {name} must be 1 to {TIMEOUT_MS_MAX} ms, not {value}")]
    InvalidTimeout { name: &'static str, value: u64 },

    #[error("smtp connections_max must be 1 to {CONNECTIONS_MAX_LIMIT}, not {0}")]
    InvalidConnectionsMax(u32),

    #[error("smtp TLS could not be set up for the host")]
    Tls(#[source] smtp::Error),
}

/// Sends email through one SMTP server, over a pool of connections.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The part after the `@` of every `Message-ID`: the sender's domain.
    message_id_domain: String,
    /// One permit per connection: lettre's pool bounds the idle connections it keeps, not
    /// those in use, so this bounds them.
    connections: Semaphore,
    send_timeout_ms: u64,
}

impl SmtpSender {
    /// Checks the settings and builds the transport. Connects to nothing yet: the first send
    /// does. Must be called within a Tokio runtime (the pool starts its clean-up task).
    pub fn new(settings: SmtpSettings) -> Result<SmtpSender, SmtpSettingsError> {
        check(&settings)?;
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(SmtpSettingsError::InvalidFrom)?;
        let message_id_domain = from.email.domain().to_owned();

        let builder = match settings.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
            SmtpSecurity::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                    .map_err(SmtpSettingsError::Tls)?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                .map_err(SmtpSettingsError::Tls)?,
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .pool_config(PoolConfig::new().max_size(settings.connections_max));
        if let Some(credentials) = &settings.credentials {
            let password = credentials.password.expose_secret().to_owned();
            builder = builder.credentials(Credentials::new(credentials.username.clone(), password));
        }

        Ok(SmtpSender {
            transport: builder.build(),
            from,
            message_id_domain,
            connections: Semaphore::new(settings.connections_max as usize),
            send_timeout_ms: settings.send_timeout_ms,
        })
    }

    /// The message lettre sends for `email`.
    fn message(&self, email: &EmailMessage) -> Result<Message, lettre::error::Error> {
        let message_id = format!("<{}@{}>", email.notification_id, self.message_id_domain);
        let bodies = MultiPart::alternative_plain_html(email.text.clone(), email.html.clone());
        Message::builder()
            .from(self.from.clone())
            .to(header_safe(&email.to))
            .subject(email.subject.clone())
            .message_id(Some(message_id))
            .multipart(bodies)
    }

    /// Sends over a pooled connection, once one of ours is free.
    async fn send_message(
        &self,
        message: Message,
    ) -> Result<smtp::response::Response, SendFailure> {
        let _connection = self
            .connections
            .acquire()
            .await
            .map_err(|_| SendFailure::Closed)?;
        self.transport
            .send(message)
            .await
            .map_err(SendFailure::Smtp)
    }
}

/// `mailbox` with any control character of its name turned into a space.
///
/// lettre encodes every other character of a display name, but lettre 0.11.23 panics while
/// building the `To` header when the name holds a CR or LF (its plain rendering of the
/// mailbox refuses them, and the builder expects that rendering to succeed). A line break in
/// a name is never meant, so it is shown as a space rather than risk the panic.
fn header_safe(mailbox: &Mailbox) -> Mailbox {
    let name = mailbox.name.as_deref().map(|name| {
        let flattened = name.chars().map(|c| if c.is_control() { ' ' } else { c });
        flattened.collect::<String>()
    });
    Mailbox::new(name, mailbox.email.clone())
}

/// Why [`SmtpSender::send_message`] returned no reply.
enum SendFailure {
    Smtp(smtp::Error),
    /// The semaphore was closed; nothing closes it, but the type allows it.
    Closed,
}

fn check(settings: &SmtpSettings) -> Result<(), SmtpSettingsError> {
    if settings.host.trim().is_empty() {
        return Err(SmtpSettingsError::EmptyHost);
    }
    let timeouts = [
        ("connect_timeout_ms", settings.connect_timeout_ms),
        ("send_timeout_ms", settings.send_timeout_ms),
    ];
    for (name, value) in timeouts {
        if !(1..=TIMEOUT_MS_MAX).contains(&value) {
            return Err(SmtpSettingsError::InvalidTimeout { name, value });
        }
    }
    if !(1..=CONNECTIONS_MAX_LIMIT).contains(&settings.connections_max) {
        return Err(SmtpSettingsError::InvalidConnectionsMax(
            settings.connections_max,
        ));
    }
    Ok(())
}

#[async_trait]
impl EmailSender for SmtpSender {
    #[tracing::instrument(skip_all, fields(notification_id = %email.notification_id))]
    async fn send(&self, email: &EmailMessage) -> Delivery {
        // The builder refuses only a message without a sender or recipient, which this never
        // builds; a message it refused once it would refuse every time.
        let message = match self.message(email) {
            Ok(message) => message,
            Err(error) => {
                return Delivery::Permanent(bounded_text(&format!("unbuildable: {error}")));
            }
        };

        let timeout = Duration::from_millis(self.send_timeout_ms);
        match tokio::time::timeout(timeout, self.send_message(message)).await {
            Ok(Ok(response)) => {
                let reply = response.message().collect::<Vec<_>>().join(" ");
                Delivery::Sent {
                    reference: Some(bounded_text(&format!("{} {reply}", response.code()))),
                }
            }
            Ok(Err(SendFailure::Smtp(error))) => delivery_of_error(&error),
            Ok(Err(SendFailure::Closed)) => {
                Delivery::Transient("the sender is shut down".to_owned())
            }
            Err(_) => Delivery::Transient(format!(
                "the smtp server did not finish within {} ms",
                self.send_timeout_ms
            )),
        }
    }
}

/// SMTP reply codes that refuse our credentials rather than the message: an operator must
/// fix the settings, and the message may go through once they do.
const CREDENTIALS_REFUSED: [u16; 4] = [530, 534, 535, 538];

/// What a failed send means for the notification (see the module doc's table).
pub fn delivery_of_error(error: &smtp::Error) -> Delivery {
    let code = error.status().map(u16::from);
    let reason = reason_of(error);
    match code {
        Some(code) if CREDENTIALS_REFUSED.contains(&code) => {
            tracing::error!(
                code,
                reason,
                "smtp server refused our credentials; fix the settings"
            );
            Delivery::Transient(bounded_text(&format!("credentials refused: {reason}")))
        }
        Some(400..=499) => Delivery::Transient(reason),
        Some(500..=599) => Delivery::Permanent(reason),
        Some(_) | None => Delivery::Transient(reason),
    }
}

/// The server's reply, `550 5.1.1 <x@example.com>: no such user`, when there was one; else
/// lettre's account of what failed.
fn reason_of(error: &smtp::Error) -> String {
    use std::error::Error as _;

    match (error.status(), error.source()) {
        (Some(code), Some(reply)) => bounded_text(&format!("{code} {reply}")),
        _ => bounded_text(&error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(security: SmtpSecurity) -> SmtpSettings {
        SmtpSettings::new(
            "smtp.example.com",
            security,
            "Tally <no-reply@tally.example>",
        )
    }

    #[test]
    fn security_is_spelled_none_starttls_or_tls() {
        assert_eq!(
            "none".parse::<SmtpSecurity>().ok(),
            Some(SmtpSecurity::None)
        );
        assert_eq!(
            "starttls".parse::<SmtpSecurity>().ok(),
            Some(SmtpSecurity::StartTls)
        );
        assert_eq!("tls".parse::<SmtpSecurity>().ok(), Some(SmtpSecurity::Tls));
        assert!("ssl".parse::<SmtpSecurity>().is_err());
    }

    #[tokio::test]
    async fn every_security_builds_a_sender_without_connecting() {
        for security in [
            SmtpSecurity::None,
            SmtpSecurity::StartTls,
            SmtpSecurity::Tls,
        ] {
            let sender = SmtpSender::new(settings(security));
            assert!(sender.is_ok(), "{security:?}");
        }
    }

    #[tokio::test]
    async fn settings_out_of_range_are_refused() {
        let cases = [
            SmtpSettings {
                host: " ".to_owned(),
                ..settings(SmtpSecurity::None)
            },
            SmtpSettings {
                from: "not an address".to_owned(),
                ..settings(SmtpSecurity::None)
            },
            SmtpSettings {
                connect_timeout_ms: 0,
                ..settings(SmtpSecurity::None)
            },
            SmtpSettings {
                send_timeout_ms: TIMEOUT_MS_MAX + 1,
                ..settings(SmtpSecurity::None)
            },
            SmtpSettings {
                connections_max: 0,
                ..settings(SmtpSecurity::None)
            },
        ];
        for case in cases {
            assert!(SmtpSender::new(case.clone()).is_err(), "{case:?}");
        }
    }

    #[test]
    fn line_breaks_in_a_display_name_become_spaces_and_nothing_else_changes() {
        let address: lettre::Address = "ada@example.com".parse().expect("an address");
        let name = "Ada\r\nBcc: eve@example.com, \"Q\"".to_owned();
        let mailbox = header_safe(&Mailbox::new(Some(name), address.clone()));
        let expected = "Ada  Bcc: eve@example.com, \"Q\"";
        assert_eq!(mailbox.name.as_deref(), Some(expected));
        assert_eq!(mailbox.email, address);
    }

    #[test]
    fn credentials_never_print_their_password() {
        let credentials = SmtpCredentials {
            username: "tally".to_owned(),
            password: SecretString::from("hunter2"),
        };
        let printed = format!(
            "{:?}",
            settings(SmtpSecurity::Tls).credentials.insert(credentials)
        );
        assert!(
            printed.contains("tally") && !printed.contains("hunter2"),
            "{printed}"
        );
    }
}
