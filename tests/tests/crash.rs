//! A process killed with SIGKILL while transactions are in flight loses none it accepted and
//! applies none twice.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tally_tests::{Backend, TestApp, User, add_money, on_both_backends, send_airtime, username};
use tokio::sync::Semaphore;

const TRANSACTIONS: usize = 1_000;
const CLIENTS: usize = 32;
/// Responses to wait for before pulling the plug, so that the kill lands mid-load.
const KILL_AFTER_RESPONSES: usize = 250;

/// Each request is sent with its own idempotency key, so a request whose answer was lost with
/// the process can be sent again and is still applied exactly once.
fn body_of(index: usize) -> Value {
    if index.is_multiple_of(2) {
        add_money("2.00")
    } else {
        send_airtime("1.00", "+254712345678")
    }
}

async fn submit(
    app_url: &str,
    client: &reqwest::Client,
    user: &User,
    index: usize,
) -> Option<String> {
    let response = client
        .post(format!("{app_url}/transaction"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", format!("crash-{index}"))
        .json(&body_of(index))
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 202 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["transactionId"].as_str().map(str::to_owned)
}

async fn a_killed_process_loses_nothing_accepted_and_applies_nothing_twice(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("crash")).await?;
    app.open_account(&user, "USD").await?;
    let funded = app.submit(&user, &add_money("1000.00")).await?;
    app.wait_final(&user, funded["transactionId"].as_str().unwrap_or_default())
        .await?;

    let answered = Arc::new(Semaphore::new(0));
    let load = {
        let (url, client, user, answered) = (
            app.base_url.clone(),
            app.client.clone(),
            user.clone(),
            answered.clone(),
        );
        tokio::spawn(async move {
            futures::stream::iter(0..TRANSACTIONS)
                .map(|index| {
                    let (url, client, user, answered) =
                        (url.clone(), client.clone(), user.clone(), answered.clone());
                    async move {
                        let accepted = submit(&url, &client, &user, index).await;
                        answered.add_permits(1);
                        (index, accepted)
                    }
                })
                .buffer_unordered(CLIENTS)
                .collect::<Vec<_>>()
                .await
        })
    };
    let _ = answered.acquire_many(KILL_AFTER_RESPONSES as u32).await?;
    app.kill()?;
    let first_round = load.await?;
    app.start().await?;

    // Every request either was accepted before the kill, or is sent again now.
    let mut accepted: HashMap<usize, String> = HashMap::new();
    for (index, transaction_id) in first_round {
        let transaction_id = match transaction_id {
            Some(id) => id,
            None => submit(&app.base_url, &app.client, &user, index)
                .await
                .ok_or_else(|| anyhow::anyhow!("retry of {index} refused"))?,
        };
        if let Some(previous) = accepted.insert(index, transaction_id.clone()) {
            assert_eq!(previous, transaction_id);
        }
    }
    assert_eq!(accepted.len(), TRANSACTIONS);

    for transaction_id in accepted.values() {
        let transaction = app.wait_final(&user, transaction_id).await?;
        assert_eq!(
            transaction["transactionStatus"], "SUCCESSFUL",
            "{transaction}"
        );
    }
    // 1000.00 + 500 × 2.00 − 500 × 1.00
    assert_eq!(app.balance(&user).await?["accountBalance"], "1500.00");

    let path = format!("/account/{}/events?limit=500", user.uid);
    let mut sequences = Vec::new();
    let mut next = Some(0u64);
    while let Some(after) = next {
        let page = app
            .request(
                Method::GET,
                &format!("{path}&after={after}"),
                Some(&user.token),
            )
            .send()
            .await?;
        let page: Value = page.json().await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        sequences.extend(events.iter().filter_map(|event| event["sequence"].as_u64()));
        next = page["nextAfter"].as_u64();
    }
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(
        sequences, expected,
        "the account's stream has no gap and no repeat"
    );
    Ok(())
}

async fn sigterm_drains_and_exits_cleanly_and_a_restart_keeps_everything(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("term")).await?;
    app.open_account(&user, "USD").await?;
    let mut accepted = Vec::new();
    for _ in 0..20 {
        let added = app.submit(&user, &add_money("1.25")).await?;
        accepted.push(
            added["transactionId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }

    let status = app.terminate()?;
    assert!(status.success(), "tally exited with {status} on SIGTERM");
    app.start().await?;

    for transaction_id in &accepted {
        let transaction = app.wait_final(&user, transaction_id).await?;
        assert_eq!(transaction["transactionStatus"], "SUCCESSFUL");
    }
    assert_eq!(app.balance(&user).await?["accountBalance"], "25.00");
    Ok(())
}

on_both_backends!(
    a_killed_process_loses_nothing_accepted_and_applies_nothing_twice,
    sigterm_drains_and_exits_cleanly_and_a_restart_keeps_everything,
);
