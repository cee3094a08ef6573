//! Idempotency keys whose first request never reached the log.
//!
//! A request is recorded under its key before its command is appended, so a crash or a failed
//! append in between leaves a key whose command the log never got. Past the replay window a
//! repeat cannot simply append that command again; once the projector has read the commands
//! partition to its end, the request is known never to have been logged and is renewed under
//! a new transaction id, applied once.

use reqwest::Method;
use serde_json::Value;
use tally_tests::{Backend, TestApp, add_money, on_both_backends, username};

/// Longer ago than the delay after which a request whose command never arrived is renewed.
const STALE_MS: i64 = tally_domain::ledger::RENEWAL_AFTER_MS + 10_000;

async fn a_key_whose_command_never_reached_the_log_is_applied_once_when_repeated(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("renew")).await?;
    app.open_account(&user, "USD").await?;
    let body = add_money("5.00");
    let first = keyed(&app, &user.token, "first", &body).await?;
    app.wait_final(&user, first["transactionId"].as_str().unwrap_or_default())
        .await?;

    // The record a crash right after recording would leave: same request, under another key,
    // with a transaction id no command ever carried, recorded two minutes ago.
    let lost = uuid::Uuid::now_v7();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let copied = app
        .execute_on_read_store(&format!(
            "INSERT INTO transaction_requests (transaction_id, account_id, requested_by, \
             idempotency_key, request_hash, transaction_type, amount, currency, phone_number, \
             created_at_ms) SELECT '{lost}', account_id, requested_by, 'lost', request_hash, \
             transaction_type, amount, currency, phone_number, {} FROM transaction_requests \
             WHERE idempotency_key = 'first'",
            now_ms - STALE_MS
        ))
        .await?;
    assert_eq!(copied, 1);

    // Never accepted, so never shown.
    let shown = app
        .request(
            Method::GET,
            &format!("/transaction/{lost}"),
            Some(&user.token),
        )
        .send()
        .await?;
    assert_eq!(shown.status().as_u16(), 404);

    // The repeat renews it under a new id and applies it once; further repeats answer it.
    let renewed = keyed(&app, &user.token, "lost", &body).await?;
    let renewed_id = renewed["transactionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(renewed_id, lost.to_string());
    assert_ne!(
        renewed_id,
        first["transactionId"].as_str().unwrap_or_default()
    );
    let done = app.wait_final(&user, &renewed_id).await?;
    assert_eq!(done["transactionStatus"], "SUCCESSFUL", "{done}");
    let again = keyed(&app, &user.token, "lost", &body).await?;
    assert_eq!(again["transactionId"], renewed_id.as_str());
    assert_eq!(app.balance(&user).await?["accountBalance"], "10.00");
    Ok(())
}

async fn keyed(app: &TestApp, token: &str, key: &str, body: &Value) -> anyhow::Result<Value> {
    let response = app
        .request(Method::POST, "/transaction", Some(token))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await?;
    anyhow::ensure!(status == 202, "answered {status}: {answer}");
    Ok(answer)
}

on_both_backends!(a_key_whose_command_never_reached_the_log_is_applied_once_when_repeated);
