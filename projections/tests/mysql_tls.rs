//! The read store over TLS against a real MariaDB or MySQL server: with
//! `ssl-mode=verify_identity` and the CA that signed the server's certificate every connection
//! is encrypted and the store works; with a CA that signed nothing of the server's it is refused.
//!
//! Needs the server at `TALLY_TEST_MYSQL_URL` and that CA at `TALLY_TEST_TLS_CA`
//! (`deploy/infra.sh up`, then `eval "$(deploy/infra.sh env)"`); without them every test fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::{Connection, MySqlConnection};
use tally_projections::ReadStore;
use tally_projections::test_support::{TestStore, mysql_server_url};

/// Far more than a refused connection takes (the pool gives up on connecting after 10 s), and
/// far less than forever.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(60);

/// A CA certificate whose key signed nothing the tests meet.
const UNRELATED_CA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unrelated-ca.pem"
);

/// The CA that signed the server's certificate.
fn tls_ca() -> PathBuf {
    let ca = match std::env::var("TALLY_TEST_TLS_CA") {
        Ok(ca) if !ca.trim().is_empty() => PathBuf::from(ca),
        _ => panic!(
            "TALLY_TEST_TLS_CA is not set: the MySQL TLS tests need the CA that signed the \
             server's certificate. Start the server with `deploy/infra.sh up` and export it \
             with `eval \"$(deploy/infra.sh env)\"`"
        ),
    };
    assert!(
        ca.is_file(),
        "TALLY_TEST_TLS_CA={} is not a file: `deploy/infra.sh up` makes it",
        ca.display()
    );
    ca
}

/// `TALLY_TEST_MYSQL_URL` once the server said it accepts TLS, so that a server without it
/// fails the test with advice instead of a TLS error.
async fn server_with_tls() -> String {
    let url = mysql_server_url();
    let mut server = MySqlConnection::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("cannot reach TALLY_TEST_MYSQL_URL: {error}"));
    let have_ssl: String = sqlx::query_scalar("SELECT @@have_ssl")
        .fetch_one(&mut server)
        .await
        .expect("@@have_ssl");
    let _ = server.close().await;
    assert_eq!(
        have_ssl, "YES",
        "the server at TALLY_TEST_MYSQL_URL does not accept TLS; a MariaDB started by an older \
         deploy/infra.sh has no certificate: restart it with `deploy/infra.sh down` then \
         `deploy/infra.sh up`"
    );
    url
}

/// `url` with TLS required, the server's name checked against its certificate, and `ca` the
/// only trusted CA.
fn verify_identity(url: &str, ca: &Path) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let ca = percent_encoded(&ca.display().to_string());
    format!("{url}{separator}ssl-mode=verify_identity&ssl-ca={ca}")
}

/// `text` with every byte outside the URL's unreserved characters and `/` percent-encoded.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_store_opens_and_works_over_tls_verifying_the_servers_identity() {
    let ca = tls_ca();
    let url = verify_identity(&server_with_tls().await, &ca);

    // Creating the database, migrating it, querying it and dropping it all go over TLS.
    let test = TestStore::open_mysql_at(&url).await;
    assert_eq!(test.count("accounts").await, 0);
    test.execute("CREATE TABLE tls_probe (id INT PRIMARY KEY, amount DECIMAL(28,4) NOT NULL)")
        .await;
    test.execute("INSERT INTO tls_probe VALUES (1, 12345678901234567890.1234)")
        .await;
    let amount = test
        .text("SELECT CAST(amount AS CHAR) FROM tls_probe WHERE id = 1")
        .await;
    assert_eq!(amount.as_deref(), Some("12345678901234567890.1234"));

    let version = test
        .text(
            "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'SSL_VERSION'",
        )
        .await
        .unwrap_or_default();
    assert!(
        version.starts_with("TLS"),
        "the session is not encrypted: Ssl_version is {version:?}"
    );
}

#[tokio::test]
async fn a_server_whose_certificate_the_trusted_ca_did_not_sign_is_refused() {
    tls_ca(); // the same preconditions as the other test, so a failure here means the refusal
    let url = verify_identity(&server_with_tls().await, Path::new(UNRELATED_CA));

    let started = Instant::now();
    let opened = tokio::time::timeout(REFUSAL_DEADLINE, ReadStore::open(&url)).await;
    let opened = opened.unwrap_or_else(|_| {
        panic!("opening against an untrusted certificate hung past {REFUSAL_DEADLINE:?}")
    });
    match opened {
        Err(error) => {
            let error = format!("{error:?}");
            eprintln!("refused after {:?}: {error}", started.elapsed());
            assert!(
                error.contains("UnknownIssuer") || error.contains("certificate"),
                "expected a refused certificate, got {error}"
            );
        }
        Ok(_) => panic!("the store opened although no trusted CA signed the server's certificate"),
    }
}
