//! Notifications end to end: the real `tally` binary sending email to a real SMTP server
//! process (aiosmtpd) on 127.0.0.1, driven over HTTP through the notification routes, and
//! killed with SIGKILL while it sends.

#[path = "../../processor/tests/support/smtp.rs"]
mod smtp;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use reqwest::Client;
use reqwest::Method;
use serde_json::{Value, json};
use tally_tests::{
    ADMIN_PASSWORD, Backend, Deployment, Role, TestApp, User, add_money, expect_status,
    on_both_backends, username,
};

use smtp::{SmtpServer, SmtpServerOptions};

/// The domain of every Message-ID, from the sender's address.
const FROM: &str = "Tally <no-reply@tally.example>";

/// How long a notification may take to reach its final status in a test.
const SENT_WAIT: Duration = Duration::from_secs(60);

/// Sends under way at once in the notifier: a kill can catch at most this many between the
/// server accepting a message and the notifier recording it as sent.
const SENDS_IN_FLIGHT_MAX: usize = 4;

/// Flags that send email to `server` for real, and text messages in a dry run.
fn smtp_args(server: &SmtpServer) -> Vec<String> {
    [
        "--email-dry-run",
        "false",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &server.port.to_string(),
        "--smtp-security",
        "none",
        "--smtp-from",
        FROM,
        "--smtp-send-timeout-ms",
        "3000",
        "--sms-timeout-ms",
        "2000",
        "--notify-lease-ms",
        "5000",
        "--notify-retry-delay-ms-min",
        "100",
        "--notify-retry-delay-ms-max",
        "1000",
        "--notify-sends-in-flight-max",
        &SENDS_IN_FLIGHT_MAX.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Where requests go and whose token they carry: a [`TestApp`] or one API process of a
/// [`Deployment`].
#[derive(Clone)]
struct Api {
    client: Client,
    base_url: String,
    token: String,
}

impl Api {
    fn of(app: &TestApp, user: &User) -> Api {
        Api {
            client: app.client.clone(),
            base_url: app.base_url.clone(),
            token: user.token.clone(),
        }
    }

    /// The administrator of a deployment, logged in at its first API process.
    async fn admin_of(deployment: &Deployment) -> Result<Api> {
        let base_url = deployment.api_url(0)?;
        let body = json!({ "username": "admin", "password": ADMIN_PASSWORD });
        let login = deployment
            .client
            .post(format!("{base_url}/login"))
            .json(&body);
        let login = expect_status(login.send().await?, 200).await?;
        Ok(Api {
            client: deployment.client.clone(),
            base_url,
            token: login["token"].as_str().context("no token")?.to_owned(),
        })
    }
}

async fn post(api: &Api, path: &str, body: &Value) -> Result<reqwest::Response> {
    let url = format!("{}{path}", api.base_url);
    let request = api.client.post(url).bearer_auth(&api.token).json(body);
    Ok(request.send().await?)
}

async fn delivery(api: &Api, notification_id: &str) -> Result<Value> {
    let url = format!("{}/notification/{notification_id}", api.base_url);
    let response = api.client.get(url).bearer_auth(&api.token).send().await?;
    expect_status(response, 200).await
}

/// Polls a notification until its status is final.
async fn wait_final(api: &Api, notification_id: &str) -> Result<Value> {
    let started = Instant::now();
    loop {
        let delivery = delivery(api, notification_id).await?;
        let status = delivery["status"].as_str().unwrap_or_default();
        if ["SENT", "FAILED", "DEAD"].contains(&status) {
            return Ok(delivery);
        }
        if started.elapsed() > SENT_WAIT {
            bail!("notification {notification_id} still {status} after {SENT_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(
    an_admin_email_is_accepted_shown_at_once_and_sent,
    a_user_may_neither_send_nor_read_notifications,
    bad_notification_requests_are_refused_with_stable_codes,
    a_killed_notifier_loses_no_email_and_resends_only_what_was_in_flight,
    a_mail_outage_holds_back_no_transaction,
);

async fn an_admin_email_is_accepted_shown_at_once_and_sent(backend: Backend) -> Result<()> {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let app = TestApp::spawn_with(backend, &smtp_args(&server)).await?;
    let admin = Api::of(&app, &app.admin().await?);

    let body = json!({
        "email": "ada@example.com",
        "subject": "Your card",
        "body": "Your card is ready.",
        "name": "Ada Lovelace",
    });
    let accepted = expect_status(post(&admin, "/notification/email", &body).await?, 202);
    let accepted = accepted.await?;
    assert_eq!(accepted["status"], "QUEUED");
    let id = accepted["notificationId"]
        .as_str()
        .context("no id")?
        .to_owned();

    // Right after the 202 the notification is known, whatever the notifier has done yet.
    let first = delivery(&admin, &id).await?;
    let status = first["status"].as_str().unwrap_or_default();
    assert!(["QUEUED", "PENDING", "SENT"].contains(&status), "{first}");
    assert_eq!(first["channel"], "EMAIL");
    assert_eq!(first["recipient"], "ada@example.com");

    let sent = wait_final(&admin, &id).await?;
    assert_eq!(sent["status"], "SENT", "{sent}");
    assert_eq!(sent["attempts"], 1);
    let messages = server.wait_for_messages(1);
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.mail_from, "no-reply@tally.example");
    assert_eq!(message.rcpt_tos, vec!["ada@example.com"]);
    assert_eq!(message.subject.as_deref(), Some("Your card"));
    let expected_id = format!("<{id}@tally.example>");
    assert_eq!(message.header("Message-ID"), vec![expected_id.as_str()]);
    let text = message.text.as_deref().unwrap_or_default();
    assert!(text.contains("Hello Ada Lovelace,"), "{text}");
    assert!(text.contains("Your card is ready."), "{text}");
    let html = message.html.as_deref().unwrap_or_default();
    assert!(html.contains("Your card is ready."), "{html}");

    // Text messages are a dry run here: logged, not sent, and recorded as sent.
    let body = json!({ "phoneNumber": "+254712345678", "message": "Your card is ready." });
    let accepted = expect_status(post(&admin, "/notification/sms", &body).await?, 202);
    let id = accepted.await?["notificationId"]
        .as_str()
        .context("no id")?
        .to_owned();
    let sent = wait_final(&admin, &id).await?;
    assert_eq!(sent["status"], "SENT", "{sent}");
    assert_eq!(sent["channel"], "SMS");
    Ok(())
}

async fn a_user_may_neither_send_nor_read_notifications(backend: Backend) -> Result<()> {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let app = TestApp::spawn_with(backend, &smtp_args(&server)).await?;
    let admin = Api::of(&app, &app.admin().await?);
    let user = app.signup_and_login(&username("notify")).await?;

    let email = json!({ "email": "ada@example.com", "subject": "Hi", "body": "Hello" });
    let sms = json!({ "phoneNumber": "+254712345678", "message": "Hello" });
    for (path, body) in [("/notification/email", &email), ("/notification/sms", &sms)] {
        let refused = expect_status(post(&Api::of(&app, &user), path, body).await?, 403).await?;
        assert_eq!(refused["code"], "forbidden", "{path}");
    }
    let accepted = expect_status(post(&admin, "/notification/email", &email).await?, 202);
    let id = accepted.await?["notificationId"]
        .as_str()
        .context("no id")?
        .to_owned();
    let path = format!("/notification/{id}");
    let response = app
        .request(Method::GET, &path, Some(&user.token))
        .send()
        .await?;
    assert_eq!(expect_status(response, 403).await?["code"], "forbidden");
    let anonymous = app.request(Method::GET, &path, None).send().await?;
    assert_eq!(expect_status(anonymous, 401).await?["code"], "unauthorized");
    Ok(())
}

async fn bad_notification_requests_are_refused_with_stable_codes(backend: Backend) -> Result<()> {
    let server = SmtpServer::start(SmtpServerOptions::default());
    let app = TestApp::spawn_with(backend, &smtp_args(&server)).await?;
    let admin = Api::of(&app, &app.admin().await?);

    let long_body = "x".repeat(2_001);
    let long_sms = "x".repeat(321);
    let cases = [
        (
            "/notification/email",
            json!({ "email": "not-an-address", "subject": "Hi", "body": "Hello" }),
            "invalid_email",
        ),
        (
            "/notification/email",
            json!({ "email": "ada@example.com", "subject": " ", "body": "Hello" }),
            "invalid_subject",
        ),
        (
            "/notification/email",
            json!({ "email": "ada@example.com", "subject": "Hi\r\nBcc: x@example.com",
                    "body": "Hello" }),
            "invalid_subject",
        ),
        (
            "/notification/email",
            json!({ "email": "ada@example.com", "subject": "Hi", "body": "" }),
            "invalid_body",
        ),
        (
            "/notification/email",
            json!({ "email": "ada@example.com", "subject": "Hi", "body": long_body }),
            "invalid_body",
        ),
        (
            "/notification/email",
            json!({ "email": "ada@example.com", "subject": "Hi", "body": "Hello",
                    "name": "Eve\nBcc: x@example.com" }),
            "invalid_name",
        ),
        (
            "/notification/email",
            json!({ "email": "ada@example.com", "subject": "Hi", "body": "Hello", "cc": "x" }),
            "unknown_field",
        ),
        (
            "/notification/sms",
            json!({ "phoneNumber": "0712345678", "message": "Hello" }),
            "invalid_phone_number",
        ),
        (
            "/notification/sms",
            json!({ "phoneNumber": "+254712345678", "message": "  " }),
            "invalid_message",
        ),
        (
            "/notification/sms",
            json!({ "phoneNumber": "+254712345678", "message": long_sms }),
            "invalid_message",
        ),
    ];
    for (path, body, code) in cases {
        let refused = expect_status(post(&admin, path, &body).await?, 400).await;
        let refused = refused.with_context(|| format!("{path} {body}"))?;
        assert_eq!(refused["code"], code, "{path} {body}");
    }

    let response = app
        .request(Method::GET, "/notification/not-a-uuid", Some(&admin.token))
        .send()
        .await?;
    assert_eq!(expect_status(response, 400).await?["code"], "invalid_path");
    let unknown = format!("/notification/{}", uuid::Uuid::new_v4());
    let response = app
        .request(Method::GET, &unknown, Some(&admin.token))
        .send()
        .await?;
    let missing = expect_status(response, 404).await?;
    assert_eq!(missing["code"], "notification_not_found");
    assert!(server.messages().is_empty(), "nothing refused was sent");
    Ok(())
}

async fn a_mail_outage_holds_back_no_transaction(backend: Backend) -> Result<()> {
    let mut server = SmtpServer::start(SmtpServerOptions::default());
    let app = TestApp::spawn_with(backend, &smtp_args(&server)).await?;
    server.stop();
    let user = app.signup_and_login(&username("outage")).await?;

    // Opening the account and adding money each ask for an email, which cannot be sent.
    app.open_account(&user, "USD").await?;
    let started = Instant::now();
    let accepted = app.submit(&user, &add_money("10.00")).await?;
    let id = accepted["transactionId"].as_str().context("no id")?;
    let done = app.wait_final(&user, id).await?;
    assert_eq!(done["transactionStatus"], "SUCCESSFUL", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.balance(&user).await?["accountBalance"], "10.00");
    assert!(server.messages().is_empty());

    // The emails wait for the server, and arrive once it is back.
    server.start_again();
    let messages = server.wait_for_messages_within(2, SENT_WAIT);
    let subjects: Vec<_> = messages.iter().filter_map(|m| m.subject.clone()).collect();
    assert_eq!(messages.len(), 2, "{subjects:?}");
    assert!(
        messages
            .iter()
            .all(|m| m.rcpt_tos == vec!["ada@example.com"])
    );
    Ok(())
}

/// How many notifications the kill test sends, and how many must have arrived before the
/// kill, so that it lands while the notifier is sending.
const KILL_TEST_NOTIFICATIONS: usize = 500;
const KILL_AFTER_ARRIVALS: usize = 100;

async fn a_killed_notifier_loses_no_email_and_resends_only_what_was_in_flight(
    backend: Backend,
) -> Result<()> {
    let mut server = SmtpServer::start(SmtpServerOptions::default());
    let mut args = smtp_args(&server);
    // One connection, so that sending takes a while and the kill lands in the middle of it.
    args.extend(["--smtp-connections-max".to_owned(), "1".to_owned()]);
    let mut app = TestApp::spawn_with(backend, &args).await?;
    let admin = Api::of(&app, &app.admin().await?);

    let ids = queue_while_down(&mut server, &admin).await?;
    wait_for_arrivals(&server, KILL_AFTER_ARRIVALS).await?;
    app.kill()?;
    let at_kill = server.messages().len();
    assert!(at_kill < ids.len(), "the kill came after the last send");

    app.start().await?;
    check_every_one_arrived(&server, &admin, &ids, SENDS_IN_FLIGHT_MAX).await
}

/// On Kafka and MariaDB with every role in a process of its own: one of two `tally notify`
/// processes is killed while both send, the other carries on (taking the killed one's
/// partitions after the session timeout and its notifications after their leases), and the
/// killed one comes back.
#[tokio::test]
async fn a_killed_notify_process_among_two_loses_no_email() -> Result<()> {
    let mut server = SmtpServer::start(SmtpServerOptions::default());
    let mut args = smtp_args(&server);
    args.extend(["--smtp-connections-max".to_owned(), "1".to_owned()]);
    let roles = [Role::Api, Role::Notify, Role::Notify];
    let mut deployment = Deployment::spawn_with(&roles, &args).await?;
    let admin = Api::admin_of(&deployment).await?;

    let ids = queue_while_down(&mut server, &admin).await?;
    wait_for_arrivals(&server, KILL_AFTER_ARRIVALS).await?;
    deployment.kill(Role::Notify, 0)?;
    let at_kill = server.messages().len();
    assert!(at_kill < ids.len(), "the kill came after the last send");
    wait_for_arrivals(&server, at_kill + KILL_AFTER_ARRIVALS).await?;
    deployment.start(Role::Notify, 0).await?;

    let checked = check_every_one_arrived(&server, &admin, &ids, SENDS_IN_FLIGHT_MAX).await;
    let exited = deployment.exited()?;
    assert!(exited.is_empty(), "{exited:?}\n{}", deployment.log_tails());
    checked.with_context(|| deployment.log_tails())
}

/// Queues every notification of a kill test while the server is down, then brings the server
/// back, so that the notifiers work through a backlog. Returns the notifications' ids.
async fn queue_while_down(server: &mut SmtpServer, admin: &Api) -> Result<Vec<String>> {
    server.stop();
    let ids = send_many(admin).await?;
    server.start_again();
    Ok(ids)
}

async fn wait_for_arrivals(server: &SmtpServer, count: usize) -> Result<()> {
    let started = Instant::now();
    while server.messages().len() < count {
        if started.elapsed() > SENT_WAIT {
            bail!("only {} of {count} emails arrived", server.messages().len());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Every notification ends `SENT` and arrived; only those a kill caught between the server
/// accepting them and their being marked sent (at most `resent_max`) arrived twice.
async fn check_every_one_arrived(
    server: &SmtpServer,
    admin: &Api,
    ids: &[String],
    resent_max: usize,
) -> Result<()> {
    for id in ids {
        let sent = wait_final(admin, id).await?;
        assert_eq!(sent["status"], "SENT", "{sent}");
    }
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    for message in server.messages() {
        for message_id in message.header("Message-ID") {
            *arrivals.entry(message_id.to_owned()).or_insert(0) += 1;
        }
    }
    for id in ids {
        let arrived = arrivals.get(&format!("<{id}@tally.example>")).copied();
        assert!(arrived.is_some(), "{id} was lost");
    }
    // The one window no email sender can close: a message the server accepted just before
    // the kill, whose row was not yet marked sent, is sent again, with the same Message-ID.
    let twice: Vec<_> = arrivals.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.len() <= resent_max && twice.iter().all(|(_, count)| **count == 2),
        "sent more than once beyond the sends in flight at the kill: {twice:?}"
    );
    assert_eq!(arrivals.len(), ids.len());
    Ok(())
}

/// Sends the kill test's notifications from a few concurrent clients and returns their ids.
async fn send_many(admin: &Api) -> Result<Vec<String>> {
    let results: Vec<Result<String>> = futures::stream::iter(0..KILL_TEST_NOTIFICATIONS)
        .map(|index| {
            let admin = admin.clone();
            async move {
                let body = json!({
                    "email": format!("user{index}@example.com"),
                    "subject": format!("Notice {index}"),
                    "body": "Your card is ready.",
                });
                let response = post(&admin, "/notification/email", &body).await?;
                let accepted = expect_status(response, 202).await?;
                let id = accepted["notificationId"].as_str().context("no id")?;
                Ok(id.to_owned())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}
