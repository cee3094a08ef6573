//! An account's history read back: each transaction's own events, and the balance at moments
//! of the past, checked against a model the test keeps.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;
use tally_tests::{
    Backend, TestApp, User, add_money, expect_status, on_both_backends, send_airtime, username,
};

/// A moment of the account's history and the balance the model gives for it, in cents.
struct Moment {
    occurred_at: String,
    offset: u64,
    cents: i64,
}

fn dollars(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

async fn get(app: &TestApp, user: &User, path: &str, expected: u16) -> Result<Value> {
    let response = app
        .request(Method::GET, path, Some(&user.token))
        .send()
        .await?;
    expect_status(response, expected).await
}

/// Submits a transaction, waits for its final status, and returns its id and events.
async fn settle(app: &TestApp, user: &User, body: &Value) -> Result<(String, Vec<Value>)> {
    let accepted = app.submit(user, body).await?;
    let id = accepted["transactionId"]
        .as_str()
        .context("no transaction id")?
        .to_owned();
    app.wait_final(user, &id).await?;
    let page = get(app, user, &format!("/transaction/{id}/events"), 200).await?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert!(
        page["nextAfter"].is_null(),
        "a transaction's events fit one page"
    );
    // Apart by more than a millisecond from the next transaction's events, so that each
    // moment below names one place in the stream.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    Ok((id, events))
}

fn event_types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|event| event["eventType"].as_str())
        .collect()
}

fn moment(events: &[Value], cents: i64) -> Result<Moment> {
    let last = events.last().context("a transaction without events")?;
    Ok(Moment {
        occurred_at: last["occurredAt"]
            .as_str()
            .context("no occurredAt")?
            .to_owned(),
        offset: last["log"]["offset"].as_u64().context("no offset")?,
        cents,
    })
}

async fn each_transaction_shows_its_events_and_past_balances_follow_from_them(
    backend: Backend,
) -> Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("past")).await?;
    app.open_account(&user, "USD").await?;
    let mut moments = Vec::new();

    let (added, events) = settle(&app, &user, &add_money("100.00")).await?;
    assert_eq!(
        event_types(&events),
        [
            "TransactionStarted",
            "AccountCredited",
            "TransactionSucceeded"
        ]
    );
    for event in &events {
        assert_eq!(event["correlationId"], added.as_str());
        assert_eq!(event["accountId"], user.uid.to_string().as_str());
    }
    let sequences: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect();
    assert_eq!(
        sequences,
        [2, 3, 4],
        "the account's stream order, after AccountOpened"
    );
    moments.push(moment(&events, 10_000)?);

    let (_, events) = settle(&app, &user, &send_airtime("30.50", "+254712345678")).await?;
    assert_eq!(
        event_types(&events),
        [
            "TransactionStarted",
            "FundsReserved",
            "ReservationPosted",
            "TransactionSucceeded"
        ]
    );
    moments.push(moment(&events, 6_950)?);

    let (_, events) = settle(&app, &user, &send_airtime("5.00", "+254712340000")).await?;
    assert_eq!(
        event_types(&events),
        [
            "TransactionStarted",
            "FundsReserved",
            "ReservationVoided",
            "TransactionFailed"
        ]
    );
    moments.push(moment(&events, 6_950)?);

    let (_, events) = settle(&app, &user, &add_money("0.25")).await?;
    moments.push(moment(&events, 6_975)?);

    let balance_path = format!("/account/balance/{}", user.uid);
    for moment in &moments {
        let by_time = format!("{balance_path}?asOf={}", moment.occurred_at);
        let by_offset = format!("{balance_path}?asOf=offset:{}", moment.offset);
        for path in [by_time, by_offset] {
            let then = get(&app, &user, &path, 200).await?;
            assert_eq!(
                then["accountBalance"],
                dollars(moment.cents).as_str(),
                "{path}"
            );
            assert_eq!(then["availableBalance"], dollars(moment.cents).as_str());
            assert_eq!(then["heldBalance"], "0.00");
            assert_eq!(then["currencyCode"], "USD");
            assert_eq!(then["lastEvent"]["log"]["offset"], moment.offset);
        }
    }
    let now = get(&app, &user, &balance_path, 200).await?;
    assert_eq!(now["accountBalance"], "69.75");

    let before_opening = format!("{balance_path}?asOf=2000-01-01T00:00:00Z");
    let problem = get(&app, &user, &before_opening, 404).await?;
    assert_eq!(problem["code"], "account_not_found");
    Ok(())
}

async fn history_is_private_and_its_bad_queries_are_refused(backend: Backend) -> Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let owner = app.signup_and_login(&username("owner")).await?;
    let other = app.signup_and_login(&username("other")).await?;
    app.open_account(&owner, "USD").await?;
    app.open_account(&other, "USD").await?;
    let (id, events) = settle(&app, &owner, &add_money("1.00")).await?;

    let events_path = format!("/transaction/{id}/events");
    let problem = get(&app, &other, &events_path, 404).await?;
    assert_eq!(problem["code"], "transaction_not_found");
    let admin = app.admin().await?;
    let seen = get(&app, &admin, &events_path, 200).await?;
    assert_eq!(seen["events"].as_array().map(Vec::len), Some(events.len()));
    let paged = get(&app, &owner, &format!("{events_path}?limit=2"), 200).await?;
    assert_eq!(paged["events"].as_array().map(Vec::len), Some(2));
    let after = paged["nextAfter"].as_u64().context("a next page")?;
    let rest = get(&app, &owner, &format!("{events_path}?after={after}"), 200).await?;
    assert_eq!(
        rest["events"].as_array().map(Vec::len),
        Some(events.len() - 2)
    );
    let unknown = format!("/transaction/{}/events", uuid::Uuid::now_v7());
    let problem = get(&app, &owner, &unknown, 404).await?;
    assert_eq!(problem["code"], "transaction_not_found");

    let balance_path = format!("/account/balance/{}", owner.uid);
    let problem = get(&app, &other, &format!("{balance_path}?asOf=offset:0"), 404).await?;
    assert_eq!(problem["code"], "account_not_found");
    for bad in [
        "yesterday",
        "offset:",
        "offset:-1",
        "offset:+5",
        "2026-12-04T10:00:00",
    ] {
        let problem = get(&app, &owner, &format!("{balance_path}?asOf={bad}"), 400).await?;
        assert_eq!(problem["code"], "invalid_as_of", "{bad}");
    }
    let problem = get(&app, &owner, &format!("{balance_path}?when=now"), 400).await?;
    assert_eq!(problem["code"], "invalid_query");
    let problem = get(&app, &owner, &format!("{events_path}?after=x"), 400).await?;
    assert_eq!(problem["code"], "invalid_query");
    let account_events = format!("/account/{}/events", owner.uid);
    for path in [&events_path, &account_events] {
        for limit in ["0", "501"] {
            let problem = get(&app, &owner, &format!("{path}?limit={limit}"), 400).await?;
            assert_eq!(problem["code"], "invalid_limit", "{path} limit={limit}");
        }
    }
    Ok(())
}

on_both_backends!(
    each_transaction_shows_its_events_and_past_balances_follow_from_them,
    history_is_private_and_its_bad_queries_are_refused,
);
