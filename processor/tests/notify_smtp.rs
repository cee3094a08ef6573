//! The SMTP sender against a real SMTP server (aiosmtpd) on 127.0.0.1, started per test by
//! `support::SmtpServer`: what arrives, and how refusals and outages are classified.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tally_domain::NotificationId;
use tally_domain::notification::{Channel, NotificationRequested, Outcome, Template};
use tally_processor::notify::{
    Delivery, DryRunSmsSender, EmailMessage, EmailSender as _, Notifier, Rendered, SmtpSecurity,
    SmtpSender, SmtpSettings, Templates,
};
use tokio::net::TcpListener;
use uuid::Uuid;

use support::{SmtpServer, SmtpServerOptions, unused_port};

const FROM: &str = "Tally <no-reply@tally.example>";

fn sender_to(port: u16) -> SmtpSender {
    let settings = SmtpSettings {
        port,
        ..SmtpSettings::new("127.0.0.1", SmtpSecurity::None, FROM)
    };
    SmtpSender::new(settings).expect("valid smtp settings")
}

fn request(template: Template, recipient: &str, values: &[(&str, &str)]) -> NotificationRequested {
    NotificationRequested {
        notification_id: NotificationId(Uuid::new_v4()),
        account_id: None,
        channel: Channel::Email,
        recipient: recipient.to_owned(),
        template,
        outcome: Outcome::Success,
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        occurred_at: Utc::now(),
        correlation_id: Uuid::new_v4(),
        causation_id: Uuid::new_v4(),
    }
}

fn money_added_to(recipient: &str) -> NotificationRequested {
    let values = [
        ("name", "Ada Lovelace"),
        ("amount", "30.50"),
        ("currency", "USD"),
        ("transactionId", "0190f0c2-7d1e-7c3a-9b7a-2f5e4c1d0a11"),
    ];
    request(Template::MoneyAdded, recipient, &values)
}

fn email_for(request: &NotificationRequested) -> EmailMessage {
    let templates = Templates::embedded().expect("the shipped templates load");
    match templates.render(request).expect("a rendered email") {
        Rendered::Email(email) => email,
        Rendered::Sms(_) => panic!("an email was asked for"),
    }
}

#[tokio::test]
async fn an_email_arrives_with_its_sender_recipient_subject_and_both_bodies() {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let email = email_for(&money_added_to("ada@example.com"));

    let delivery = sender_to(server.port).send(&email).await;

    let reference = Some("250 2.0.0 OK: queued as test".to_owned());
    assert_eq!(delivery, Delivery::Sent { reference });
    let messages = server.wait_for_messages(1);
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.mail_from, "no-reply@tally.example");
    assert_eq!(message.rcpt_tos, vec!["ada@example.com"]);
    assert_eq!(message.header("From"), vec![FROM]);
    assert_eq!(
        message.to.as_deref(),
        Some("Ada Lovelace <ada@example.com>")
    );
    let subject = "30.50 USD added to your Tally account";
    assert_eq!(message.subject.as_deref(), Some(subject));
    assert_eq!(message.content_type, "multipart/alternative");
    let text = message.text.as_deref().expect("a plain-text body");
    assert!(text.starts_with("Hello Ada Lovelace,"), "{text}");
    assert!(
        text.contains("We added 30.50 USD to your Tally account."),
        "{text}"
    );
    let html = message.html.as_deref().expect("an HTML body");
    assert!(
        html.contains("<p>We added 30.50 USD to your Tally account.</p>"),
        "{html}"
    );
}

#[tokio::test]
async fn the_message_id_is_derived_from_the_notification_id() {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let email = email_for(&money_added_to("ada@example.com"));

    sender_to(server.port).send(&email).await;

    let messages = server.wait_for_messages(1);
    let expected = format!("<{}@tally.example>", email.notification_id);
    assert_eq!(messages[0].header("Message-ID"), vec![expected.as_str()]);
}

#[tokio::test]
async fn a_bcc_header_smuggled_into_a_name_or_subject_adds_no_header_and_no_recipient() {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let injected = "Ada\r\nBcc: someone@example.com";
    let values = [
        ("name", injected),
        (
            "subject",
            "Hello\r\nBcc: someone@example.com\r\nX-Injected: yes",
        ),
        ("message", "Nothing to see."),
    ];
    let email = email_for(&request(Template::Custom, "ada@example.com", &values));

    let delivery = sender_to(server.port).send(&email).await;

    assert!(matches!(delivery, Delivery::Sent { .. }), "{delivery:?}");
    let message = &server.wait_for_messages(1)[0];
    assert_eq!(message.rcpt_tos, vec!["ada@example.com"]);
    assert_eq!(message.header_addresses, vec!["ada@example.com"]);
    assert!(message.header("Bcc").is_empty(), "{:?}", message.headers);
    assert!(
        message.header("X-Injected").is_empty(),
        "{:?}",
        message.headers
    );
    // The plain-text body holds the name as typed, line break and all; only headers matter.
    let (headers, _body) = message
        .data
        .split_once("\r\n\r\n")
        .expect("headers and a body");
    for line in headers.lines() {
        let line = line.to_ascii_lowercase();
        assert!(
            !line.starts_with("bcc:") && !line.starts_with("x-injected:"),
            "{line}"
        );
    }
    // The text is shown, not read: the decoded header still holds what the user typed.
    let to = message.to.as_deref().expect("a To header");
    assert!(
        to.contains("Bcc: someone@example.com") && to.ends_with("<ada@example.com>"),
        "{to}"
    );
    let subject = message.subject.as_deref().expect("a subject");
    assert!(subject.contains("X-Injected: yes"), "{subject}");
}

#[tokio::test]
async fn commas_and_quotes_in_a_name_stay_one_recipient() {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let name = r#"Lovelace, Ada "Countess" <eve@example.com>"#;
    let email = email_for(&request(
        Template::AccountOpened,
        "ada@example.com",
        &[("name", name)],
    ));

    sender_to(server.port).send(&email).await;

    let message = &server.wait_for_messages(1)[0];
    assert_eq!(message.rcpt_tos, vec!["ada@example.com"]);
    assert_eq!(message.header_addresses, vec!["ada@example.com"]);
    let text = message.text.as_deref().expect("a plain-text body");
    assert!(text.contains(name), "{text}");
}

#[tokio::test]
async fn a_recipient_the_server_refuses_for_good_is_permanent_with_the_servers_reason() {
    let reject = vec!["gone@example.com".to_owned()];
    let server = SmtpServer::start(SmtpServerOptions {
        reject,
        ..Default::default()
    });
    let email = email_for(&money_added_to("gone@example.com"));

    let delivery = sender_to(server.port).send(&email).await;

    let reason = "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown";
    assert_eq!(delivery, Delivery::Permanent(reason.to_owned()));
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_greylisted_recipient_is_transient_with_the_servers_reason() {
    let greylist = vec!["new@example.com".to_owned()];
    let server = SmtpServer::start(SmtpServerOptions {
        greylist,
        ..Default::default()
    });
    let email = email_for(&money_added_to("new@example.com"));

    let delivery = sender_to(server.port).send(&email).await;

    let reason = "451 4.7.1 <new@example.com>: Recipient address rejected: Greylisted, try again \
                  later";
    assert_eq!(delivery, Delivery::Transient(reason.to_owned()));
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_refusal_does_not_spoil_the_pooled_connection_for_the_next_email() {
    let reject = vec!["gone@example.com".to_owned()];
    let server = SmtpServer::start(SmtpServerOptions {
        reject,
        ..Default::default()
    });
    let sender = sender_to(server.port);

    let refused = sender
        .send(&email_for(&money_added_to("gone@example.com")))
        .await;
    let sent = sender
        .send(&email_for(&money_added_to("ada@example.com")))
        .await;

    assert!(matches!(refused, Delivery::Permanent(_)), "{refused:?}");
    assert!(matches!(sent, Delivery::Sent { .. }), "{sent:?}");
    assert_eq!(server.wait_for_messages(1).len(), 1);
}

#[tokio::test]
async fn a_server_nothing_listens_for_is_transient() {
    let email = email_for(&money_added_to("ada@example.com"));

    let delivery = sender_to(unused_port()).send(&email).await;

    let Delivery::Transient(reason) = delivery else {
        panic!("not transient: {delivery:?}");
    };
    assert!(reason.contains("refused"), "{reason}");
}

#[tokio::test]
async fn a_server_that_never_greets_is_transient_within_the_send_timeout() {
    // Accepts connections and says nothing, like a stalled relay.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let settings = SmtpSettings {
        port,
        connect_timeout_ms: 300,
        send_timeout_ms: 2_000,
        ..SmtpSettings::new("127.0.0.1", SmtpSecurity::None, FROM)
    };
    let sender = SmtpSender::new(settings).expect("valid smtp settings");
    let email = email_for(&money_added_to("ada@example.com"));

    let started = std::time::Instant::now();
    let delivery = sender.send(&email).await;

    let reason = "the smtp server did not finish within 2000 ms".to_owned();
    assert_eq!(delivery, Delivery::Transient(reason));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn emails_sent_at_once_all_arrive_through_a_small_pool() {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let settings = SmtpSettings {
        port: server.port,
        connections_max: 2,
        ..SmtpSettings::new("127.0.0.1", SmtpSecurity::None, FROM)
    };
    let sender = SmtpSender::new(settings).expect("valid smtp settings");
    let emails: Vec<EmailMessage> = (0..6)
        .map(|n| email_for(&money_added_to(&format!("holder{n}@example.com"))))
        .collect();

    let deliveries = futures::future::join_all(emails.iter().map(|email| sender.send(email))).await;

    for delivery in &deliveries {
        assert!(matches!(delivery, Delivery::Sent { .. }), "{delivery:?}");
    }
    let mut recipients: Vec<String> = server
        .wait_for_messages(6)
        .into_iter()
        .flat_map(|message| message.rcpt_tos)
        .collect();
    recipients.sort();
    let expected: Vec<String> = (0..6).map(|n| format!("holder{n}@example.com")).collect();
    assert_eq!(recipients, expected);
}

#[tokio::test]
async fn the_notifier_renders_and_sends_or_refuses_for_good_what_cannot_be_rendered() {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let templates = Templates::embedded().expect("the shipped templates load");
    let notifier = Notifier::new(
        templates,
        Box::new(sender_to(server.port)),
        Box::new(DryRunSmsSender),
    );

    let sent = notifier.deliver(&money_added_to("ada@example.com")).await;
    let refused = notifier.deliver(&money_added_to("not an address")).await;

    assert!(matches!(sent, Delivery::Sent { .. }), "{sent:?}");
    let reason = "the email recipient is not a valid address".to_owned();
    assert_eq!(refused, Delivery::Permanent(reason));
    assert_eq!(server.wait_for_messages(1).len(), 1);
}
