//! The notifier over the real embedded log and a real read store, delivering to a real SMTP
//! server process (aiosmtpd) and to the SMS stub over HTTP: outages, refusals, retries, dead
//! letters and header injection, read back from what the servers received.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use secrecy::SecretString;
use tally_commands::log::sqlite::{SqliteLog, SqliteLogSettings};
use tally_commands::log::{EventLog, NewRecord, Topic, TopicPartition};
use tally_domain::notification::{Channel, NotificationRequested, Outcome, Template};
use tally_domain::{AccountId, NotificationId};
use tally_processor::notifier::deliveries::{self, DeliveryRow, DeliveryStatus};
use tally_processor::notifier::{DeadLetter, NotifierError, NotifierSettings, run};
use tally_processor::notify::{
    DryRunEmailSender, DryRunSmsSender, EmailSender, Notifier, SmsFrom, SmsSender, SmsSettings,
    SmtpSecurity, SmtpSender, SmtpSettings, Templates, TwilioSmsSender, sms_stub_router,
};
use tally_projections::ReadStore;
use tally_projections::backend_tests;
use tally_projections::test_support::{TestBackend, TestStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use support::{SmtpServer, SmtpServerOptions, serve};

const FROM: &str = "Tally <no-reply@tally.example>";
const PARTITION_COUNT: u32 = 4;
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";

/// How long a test waits for deliveries to settle before it fails.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

async fn open_log(data_dir: &Path) -> Arc<dyn EventLog> {
    let settings = SqliteLogSettings::new(data_dir, PARTITION_COUNT);
    SqliteLog::open(settings).await.expect("the log opens")
}

/// Settings that poll and retry fast, so tests take seconds.
fn fast_settings() -> NotifierSettings {
    NotifierSettings {
        poll_wait_ms: 20,
        idle_wait_ms: 20,
        retry_delay_ms_min: 50,
        retry_delay_ms_max: 500,
        lease_ms: 5_000,
        ..NotifierSettings::default()
    }
}

fn smtp_to(port: u16) -> Box<dyn EmailSender> {
    let settings = SmtpSettings {
        port,
        connect_timeout_ms: 1_000,
        send_timeout_ms: 3_000,
        ..SmtpSettings::new("127.0.0.1", SmtpSecurity::None, FROM)
    };
    Box::new(SmtpSender::new(settings).expect("valid smtp settings"))
}

fn sms_to(base_url: String) -> Box<dyn SmsSender> {
    let from = SmsFrom::MessagingService("MG0123456789abcdef0123456789abcdef".to_owned());
    let settings = SmsSettings {
        base_url,
        timeout_ms: 2_000,
        ..SmsSettings::twilio(ACCOUNT_SID, SecretString::from("token"), from)
    };
    Box::new(TwilioSmsSender::new(settings).expect("valid sms settings"))
}

fn notifier(email: Box<dyn EmailSender>, sms: Box<dyn SmsSender>) -> Arc<Notifier> {
    let templates = Templates::embedded().expect("the shipped templates load");
    Arc::new(Notifier::new(templates, email, sms))
}

/// A notifier running in its own task.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), NotifierError>>,
}

fn start(
    log: &Arc<dyn EventLog>,
    store: &ReadStore,
    notifier: Arc<Notifier>,
    settings: NotifierSettings,
) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run(
        Arc::clone(log),
        store.clone(),
        notifier,
        settings,
        shutdown,
    ));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let stopped = self.task.await.expect("the notifier does not panic");
        stopped.expect("the notifier stops cleanly");
    }
}

fn custom_email(recipient: &str, name: &str, subject: &str) -> NotificationRequested {
    let values = [
        ("name", name),
        ("subject", subject),
        ("message", "Your card is ready."),
    ];
    request(Channel::Email, recipient, &values)
}

fn custom_sms(recipient: &str) -> NotificationRequested {
    request(
        Channel::Sms,
        recipient,
        &[("message", "Your card is ready.")],
    )
}

fn request(channel: Channel, recipient: &str, values: &[(&str, &str)]) -> NotificationRequested {
    NotificationRequested {
        notification_id: NotificationId(Uuid::new_v4()),
        account_id: Some(AccountId(Uuid::new_v4())),
        channel,
        recipient: recipient.to_owned(),
        template: Template::Custom,
        outcome: Outcome::Success,
        values: values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        occurred_at: Utc::now(),
        correlation_id: Uuid::new_v4(),
        causation_id: Uuid::new_v4(),
    }
}

async fn produce(log: &Arc<dyn EventLog>, requests: &[NotificationRequested]) {
    let records = requests
        .iter()
        .map(|request| NewRecord {
            topic: Topic::Notifications,
            key: request
                .account_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            payload: request.to_json(),
        })
        .collect();
    log.append(records)
        .await
        .expect("the notifications are appended");
}

async fn delivery(store: &ReadStore, request: &NotificationRequested) -> Option<DeliveryRow> {
    let found = deliveries::find(store, request.notification_id).await;
    found.expect("the delivery log reads")
}

/// Waits until every request has settled (is no longer `PENDING`), and returns the rows.
async fn wait_settled(store: &ReadStore, requests: &[NotificationRequested]) -> Vec<DeliveryRow> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let mut rows = Vec::with_capacity(requests.len());
        for request in requests {
            match delivery(store, request).await {
                Some(row) if row.status != DeliveryStatus::Pending => rows.push(row),
                _ => break,
            }
        }
        if rows.len() == requests.len() {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} settled after {SETTLE_WAIT:?}",
            rows.len(),
            requests.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message_id(request: &NotificationRequested) -> String {
    format!("<{}@tally.example>", request.notification_id)
}

/// How many times each Message-ID arrived.
fn arrivals(server: &SmtpServer) -> HashMap<String, usize> {
    let mut arrivals = HashMap::new();
    for message in server.messages() {
        for id in message.header("Message-ID") {
            *arrivals.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    arrivals
}

#[tokio::test]
async fn five_hundred_emails_produced_while_the_server_is_down_for_30_s_arrive_exactly_once() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(TestBackend::Sqlite).await;
    let mut server = SmtpServer::start(SmtpServerOptions::default());
    server.stop();
    let settings = NotifierSettings {
        attempts_max: 1_000,
        retry_delay_ms_max: 2_000,
        ..fast_settings()
    };
    let sender = notifier(smtp_to(server.port), Box::new(DryRunSmsSender));
    let running = start(&log, store.store(), sender, settings);

    // Ten batches of fifty over the thirty seconds the server is down.
    let requests: Vec<NotificationRequested> = (0..500)
        .map(|index| custom_email(&format!("user{index}@example.com"), "Ada", "Card"))
        .collect();
    let outage_started = Instant::now();
    for batch in requests.chunks(50) {
        produce(&log, batch).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let remaining = Duration::from_secs(30).saturating_sub(outage_started.elapsed());
    tokio::time::sleep(remaining).await;
    assert!(server.messages().is_empty());
    let sent = deliveries::count_by_status(store.store(), DeliveryStatus::Sent).await;
    assert_eq!(
        sent.expect("counted"),
        0,
        "nothing is sent while the server is down"
    );

    server.start_again();
    let rows = wait_settled(store.store(), &requests).await;
    running.stop().await;

    assert!(rows.iter().all(|row| row.status == DeliveryStatus::Sent));
    assert!(rows.iter().all(|row| row.attempts > 1), "each was retried");
    let arrivals = arrivals(&server);
    assert_eq!(arrivals.len(), 500);
    for request in &requests {
        assert_eq!(arrivals.get(&message_id(request)), Some(&1), "{request:?}");
    }
    let first = &server.messages()[0];
    assert_eq!(first.mail_from, "no-reply@tally.example");
    assert_eq!(first.rcpt_tos.len(), 1);
    assert_eq!(first.subject.as_deref(), Some("Card"));
    let text = first.text.as_deref().unwrap_or_default();
    let html = first.html.as_deref().unwrap_or_default();
    assert!(
        text.contains("Hello Ada,") && text.contains("Your card is ready."),
        "{text}"
    );
    assert!(html.contains("<p>Hello Ada,</p>") && html.contains("Your card is ready."));
}

backend_tests!(a_recipient_the_server_refuses_ends_failed_with_its_reason_and_is_not_retried);

async fn a_recipient_the_server_refuses_ends_failed_with_its_reason_and_is_not_retried(
    backend: TestBackend,
) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(backend).await;
    let server = SmtpServer::start(SmtpServerOptions {
        reject: vec!["nobody@example.com".to_owned()],
        ..SmtpServerOptions::default()
    });
    let sender = notifier(smtp_to(server.port), Box::new(DryRunSmsSender));
    let running = start(&log, store.store(), sender, fast_settings());

    let requests = [
        custom_email("ada@example.com", "Ada", "One"),
        custom_email("nobody@example.com", "Nobody", "Two"),
        custom_email("grace@example.com", "Grace", "Three"),
    ];
    produce(&log, &requests).await;
    let rows = wait_settled(store.store(), &requests).await;
    // Long enough for several retries, had there been any.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = delivery(store.store(), &requests[1]).await.expect("a row");
    running.stop().await;

    assert_eq!(rows[0].status, DeliveryStatus::Sent);
    assert_eq!(rows[2].status, DeliveryStatus::Sent);
    assert_eq!(refused.status, DeliveryStatus::Failed);
    assert_eq!(refused.attempts, 1, "a permanent refusal is not retried");
    let reason = refused.last_error.unwrap_or_default();
    assert!(reason.starts_with("550"), "{reason}");
    assert!(reason.contains("User unknown"), "{reason}");
    let received: Vec<Vec<String>> = server.messages().into_iter().map(|m| m.rcpt_tos).collect();
    assert_eq!(received.len(), 2);
    assert!(received.contains(&vec!["ada@example.com".to_owned()]));
    assert!(received.contains(&vec!["grace@example.com".to_owned()]));
}

/// The SMS stub behind a layer that answers the first `failures` requests with a 500, as an
/// overloaded provider does, and counts every request.
async fn flaky_sms_stub(failures: u32) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let router: Router =
        sms_stub_router().layer(middleware::from_fn(move |request: Request, next: Next| {
            let calls = Arc::clone(&counted);
            async move {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if call <= failures {
                    return overloaded();
                }
                next.run(request).await
            }
        }));
    let address = serve(router).await;
    (format!("http://{address}"), calls)
}

fn overloaded() -> Response {
    let body = serde_json::json!({
        "code": 20500,
        "message": "Internal Server Error",
        "status": 500,
    });
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

#[tokio::test]
async fn an_sms_answered_500_twice_then_201_is_sent_once_after_two_retries() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(TestBackend::Sqlite).await;
    let (base_url, calls) = flaky_sms_stub(2).await;
    let sender = notifier(Box::new(DryRunEmailSender), sms_to(base_url));
    let running = start(&log, store.store(), sender, fast_settings());

    let requests = [custom_sms("+254712345678")];
    produce(&log, &requests).await;
    let rows = wait_settled(store.store(), &requests).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;

    let row = &rows[0];
    assert_eq!(row.status, DeliveryStatus::Sent);
    assert_eq!(row.attempts, 3);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two failures and one success, no more"
    );
    let reference = row.provider_reference.as_deref().unwrap_or_default();
    assert!(reference.starts_with("SM"), "the stub's sid: {reference}");
    let reason = row.last_error.as_deref().unwrap_or_default();
    assert!(reason.starts_with("status 500"), "{reason}");
}

#[tokio::test]
async fn an_sms_that_always_fails_ends_dead_and_is_published_as_a_dead_letter() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(TestBackend::Sqlite).await;
    let (base_url, calls) = flaky_sms_stub(u32::MAX).await;
    let sender = notifier(Box::new(DryRunEmailSender), sms_to(base_url));
    let settings = NotifierSettings {
        attempts_max: 3,
        ..fast_settings()
    };
    let running = start(&log, store.store(), sender, settings);

    let requests = [custom_sms("+254712345678")];
    produce(&log, &requests).await;
    let rows = wait_settled(store.store(), &requests).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;

    assert_eq!(rows[0].status, DeliveryStatus::Dead);
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let letters = dead_letters(&log).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.notification_id,
        requests[0].notification_id.to_string()
    );
    assert_eq!(letter.attempts, 3);
    assert!(
        letter.last_error.starts_with("status 500"),
        "{}",
        letter.last_error
    );
    assert_eq!(letter.request.as_ref(), Some(&requests[0]));
}

async fn dead_letters(log: &Arc<dyn EventLog>) -> Vec<DeadLetter> {
    let mut letters = Vec::new();
    for partition in 0..PARTITION_COUNT {
        let partition = TopicPartition {
            topic: Topic::DeadLetters,
            partition,
        };
        let records = log.read(partition, 0, 1_000).await.expect("the log reads");
        for record in records {
            letters.push(DeadLetter::from_json(&record.payload).expect("a dead letter"));
        }
    }
    letters
}

#[tokio::test]
async fn a_name_and_subject_with_line_breaks_add_no_header_and_no_recipient() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(TestBackend::Sqlite).await;
    let server = SmtpServer::start(SmtpServerOptions::default());
    let sender = notifier(smtp_to(server.port), Box::new(DryRunSmsSender));
    let running = start(&log, store.store(), sender, fast_settings());

    let name = "Eve \"the, admin\"\r\nBcc: someone@example.com";
    let subject = "Hello\r\nBcc: someone@example.com\r\nX-Injected: yes, \"quoted\"";
    let requests = [custom_email("ada@example.com", name, subject)];
    produce(&log, &requests).await;
    let rows = wait_settled(store.store(), &requests).await;
    running.stop().await;

    assert_eq!(rows[0].status, DeliveryStatus::Sent);
    let messages = server.wait_for_messages(1);
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.rcpt_tos, vec!["ada@example.com"]);
    assert_eq!(message.header_addresses, vec!["ada@example.com"]);
    assert!(message.header("Bcc").is_empty(), "{:?}", message.headers);
    assert!(
        message.header("X-Injected").is_empty(),
        "{:?}",
        message.headers
    );
    assert_eq!(message.header("Subject").len(), 1);
    assert_eq!(message.header("To").len(), 1);
    let shown_subject = message.subject.as_deref().unwrap_or_default();
    assert!(
        shown_subject.contains("Bcc: someone@example.com"),
        "{shown_subject}"
    );
    let to = message.to.as_deref().unwrap_or_default();
    assert!(
        to.contains("ada@example.com") && to.contains("the, admin"),
        "{to}"
    );
}

#[tokio::test]
async fn a_redelivered_notification_is_sent_once() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(TestBackend::Sqlite).await;
    let server = SmtpServer::start(SmtpServerOptions::default());
    let sender = notifier(smtp_to(server.port), Box::new(DryRunSmsSender));
    let running = start(&log, store.store(), sender, fast_settings());

    let requests = [custom_email("ada@example.com", "Ada", "Once")];
    produce(&log, &requests).await;
    wait_settled(store.store(), &requests).await;
    // The same notification again, as a processor that crashed before its commit would
    // append it, after the first was sent.
    produce(&log, &requests).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.stop().await;

    let row = delivery(store.store(), &requests[0]).await.expect("a row");
    assert_eq!(row.status, DeliveryStatus::Sent);
    assert_eq!(row.attempts, 1);
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn two_notifiers_on_one_log_send_each_notification_once() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = open_log(dir.path()).await;
    let store = TestStore::open(TestBackend::Sqlite).await;
    let server = SmtpServer::start(SmtpServerOptions::default());
    let first = start(
        &log,
        store.store(),
        notifier(smtp_to(server.port), Box::new(DryRunSmsSender)),
        fast_settings(),
    );
    let second = start(
        &log,
        store.store(),
        notifier(smtp_to(server.port), Box::new(DryRunSmsSender)),
        fast_settings(),
    );

    let requests: Vec<NotificationRequested> = (0..100)
        .map(|index| custom_email(&format!("user{index}@example.com"), "Ada", "Both"))
        .collect();
    produce(&log, &requests).await;
    wait_settled(store.store(), &requests).await;
    first.stop().await;
    second.stop().await;

    let arrivals = arrivals(&server);
    assert_eq!(arrivals.len(), 100);
    assert!(arrivals.values().all(|count| *count == 1), "{arrivals:?}");
}
