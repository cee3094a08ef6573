//! The Kafka event log over TLS against a real broker's SSL listener: records, a consumer
//! group and a transactional commit travel encrypted, and a broker whose certificate the
//! configured CA did not sign is refused.
//!
//! Needs the broker's TLS address at `TALLY_KAFKA_TLS_BROKERS` and the CA that signed its
//! certificate at `TALLY_TEST_TLS_CA` (`deploy/infra.sh up`, then
//! `eval "$(deploy/infra.sh env)"`); without them every test fails.

// Only part of the conformance suite runs over TLS; the rest runs in `kafka_log`.
#[allow(dead_code)]
mod log_conformance;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log_conformance::LogFactory;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use tally_commands::log::kafka::{KafkaLog, KafkaLogSettings};
use tally_commands::log::{EventLog, LogError, Topic};

const PARTITION_COUNT: u32 = 2;

/// How long one raw client call of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The adapter's request timeout in the refusal test: every try of opening gives up after it.
const REFUSAL_REQUEST_TIMEOUT_MS: u64 = 2_000;

/// Far more than opening takes to give up with `REFUSAL_REQUEST_TIMEOUT_MS` (five tries and
/// their pauses), and far less than forever.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(90);

/// A CA certificate whose key signed nothing the tests meet.
const UNRELATED_CA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unrelated-ca.pem"
);

const RESTART_HINT: &str = "a broker started by an older deploy/infra.sh has no TLS listener: \
                            restart it with `deploy/infra.sh down` then `deploy/infra.sh up`";

fn required_variable(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: the Kafka TLS tests need a broker's TLS listener and the CA \
             that signed its certificate. Start one with `deploy/infra.sh up` and export \
             them with `eval \"$(deploy/infra.sh env)\"`"
        ),
    }
}

/// The TLS listener's address, checked to accept connections, so that a broker without one
/// fails the test with advice instead of a retry loop's timeout.
fn tls_brokers() -> String {
    let brokers = required_variable("TALLY_KAFKA_TLS_BROKERS");
    let first = brokers.split(',').next().unwrap_or_default().trim();
    let address = first
        .to_socket_addrs()
        .unwrap_or_else(|error| panic!("TALLY_KAFKA_TLS_BROKERS={brokers} is no address: {error}"))
        .next()
        .unwrap_or_else(|| panic!("TALLY_KAFKA_TLS_BROKERS={brokers} resolves to nothing"));
    if let Err(error) = TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
        panic!(
            "nothing accepts connections at TALLY_KAFKA_TLS_BROKERS={brokers} ({error}); \
             {RESTART_HINT}"
        );
    }
    brokers
}

/// The CA that signed the broker's certificate.
fn tls_ca() -> PathBuf {
    let ca = PathBuf::from(required_variable("TALLY_TEST_TLS_CA"));
    assert!(
        ca.is_file(),
        "TALLY_TEST_TLS_CA={} is not a file: `deploy/infra.sh up` makes it",
        ca.display()
    );
    ca
}

/// The pass-through properties of a TLS client trusting `ca` only. librdkafka checks the
/// broker's name against the certificate by default (`ssl.endpoint.identification.algorithm`
/// is `https`).
fn tls_properties(ca: &Path) -> Vec<(String, String)> {
    vec![
        ("security.protocol".into(), "SSL".into()),
        ("ssl.ca.location".into(), ca.display().to_string()),
    ]
}

/// A topic prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "test-tls-{test}-{millis}-{}-{sequence}.",
        std::process::id()
    )
}

fn settings(test: &str, ca: &Path) -> KafkaLogSettings {
    let mut settings = KafkaLogSettings::new(tls_brokers(), PARTITION_COUNT);
    settings.topic_prefix = unique_prefix(test);
    settings.client_id = format!("tally-test-tls-{test}");
    settings.properties = tls_properties(ca);
    settings.timeouts.session_timeout_ms = 6_000;
    settings.timeouts.heartbeat_interval_ms = 500;
    settings.timeouts.max_poll_interval_ms = 6_000;
    settings.timeouts.group_join_timeout_ms = 30_000;
    settings
}

struct TlsFactory {
    settings: KafkaLogSettings,
}

impl TlsFactory {
    fn new(test: &str) -> Self {
        Self {
            settings: settings(test, &tls_ca()),
        }
    }
}

#[async_trait::async_trait(?Send)]
impl LogFactory for TlsFactory {
    async fn open(&self) -> Arc<dyn EventLog> {
        KafkaLog::open(self.settings.clone())
            .await
            .expect("kafka log opens over TLS")
    }
}

/// Deletes the test's topics, over TLS too, once it passed.
impl Drop for TlsFactory {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let names: Vec<String> = Topic::ALL
            .map(|topic| format!("{}{}", self.settings.topic_prefix, topic.name()))
            .to_vec();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.settings.brokers);
        for (key, value) in &self.settings.properties {
            config.set(key, value);
        }
        let deleting = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let admin: AdminClient<DefaultClientContext> = config.create().expect("admin");
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT));
            let _ = runtime.block_on(admin.delete_topics(&names, &options));
        });
        let _ = deleting.join();
    }
}

#[tokio::test]
async fn records_appended_over_tls_read_back_in_order() {
    let factory = TlsFactory::new("append-read");
    log_conformance::append_then_read_returns_records_in_order_with_increasing_offsets(&factory)
        .await;
}

#[tokio::test]
async fn a_member_consumes_and_commits_a_transaction_over_tls() {
    let factory = TlsFactory::new("commit");
    log_conformance::a_commit_makes_its_produced_records_and_its_offsets_visible_together(&factory)
        .await;
}

#[tokio::test]
async fn a_broker_whose_certificate_the_trusted_ca_did_not_sign_is_refused() {
    tls_ca(); // the same preconditions as the other tests, so a failure here means the refusal
    let mut settings = settings("wrong-ca", Path::new(UNRELATED_CA));
    settings.timeouts.request_timeout_ms = REFUSAL_REQUEST_TIMEOUT_MS;

    let started = Instant::now();
    let opened = tokio::time::timeout(REFUSAL_DEADLINE, KafkaLog::open(settings)).await;
    let opened = opened.unwrap_or_else(|_| {
        panic!("opening against an untrusted certificate hung past {REFUSAL_DEADLINE:?}")
    });
    match opened {
        Err(LogError::Storage(error)) => {
            eprintln!("refused after {:?}: {error}", started.elapsed());
        }
        Err(other) => panic!("expected the cluster to be unreachable, got {other:?}"),
        Ok(_) => panic!("the log opened although no trusted CA signed the broker's certificate"),
    }
}
