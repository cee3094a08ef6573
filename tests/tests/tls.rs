//! Tally over TLS end to end: `tally up` talks to Kafka's TLS listener and to MariaDB over TLS,
//! verifying both certificates against the private CA `deploy/infra.sh` made, and a user's
//! money goes through the log and lands in the read tables.
//!
//! Needs `TALLY_KAFKA_TLS_BROKERS`, `TALLY_TEST_TLS_CA` and `TALLY_TEST_MYSQL_URL`
//! (`deploy/infra.sh up`, then `eval "$(deploy/infra.sh env)"`); without them it fails.

use tally_tests::{TestApp, add_money, send_airtime, username};

#[tokio::test]
async fn money_moves_through_kafka_and_mysql_over_tls() -> anyhow::Result<()> {
    let app = TestApp::spawn_over_tls().await?;
    let user = app.signup_and_login(&username("tls")).await?;
    let account = app.open_account(&user, "USD").await?;
    assert_eq!(account["balance"]["accountBalance"], "0.00");

    let added = app.submit(&user, &add_money("100.00")).await?;
    let added = app
        .wait_final(&user, added["transactionId"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(added["transactionStatus"], "SUCCESSFUL");

    let sent = app
        .submit(&user, &send_airtime("30.50", "+254712345678"))
        .await?;
    let sent = app
        .wait_final(&user, sent["transactionId"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(sent["transactionStatus"], "SUCCESSFUL");

    let balance = app.balance(&user).await?;
    assert_eq!(balance["accountBalance"], "69.50");
    Ok(())
}
