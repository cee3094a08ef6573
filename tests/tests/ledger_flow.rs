//! The ledger end to end: a user signs up, opens an account, moves money, and reads it back.

use reqwest::Method;
use serde_json::{Value, json};
use tally_tests::{
    Backend, TestApp, add_money, expect_status, on_both_backends, send_airtime, username,
};

async fn money_added_and_airtime_sent_leave_the_exact_balance_and_an_ordered_history(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("ada")).await?;
    let account = app.open_account(&user, "USD").await?;
    assert_eq!(account["balance"]["accountBalance"], "0.00");

    let added = app.submit(&user, &add_money("100.00")).await?;
    assert_eq!(added["transactionStatus"], "ACCEPTED");
    let added = app
        .wait_final(&user, added["transactionId"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(added["transactionStatus"], "SUCCESSFUL");
    assert_eq!(added["amount"], "100.00");

    let sent = app
        .submit(&user, &send_airtime("30.50", "+254712345678"))
        .await?;
    let sent = app
        .wait_final(&user, sent["transactionId"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(sent["transactionStatus"], "SUCCESSFUL");
    assert_eq!(sent["phoneNumber"], "+254712345678");

    let rejected = app
        .submit(&user, &send_airtime("5.00", "+254712340000"))
        .await?;
    let rejected = app
        .wait_final(
            &user,
            rejected["transactionId"].as_str().unwrap_or_default(),
        )
        .await?;
    assert_eq!(rejected["transactionStatus"], "FAILED");
    assert_eq!(rejected["failureReason"], "airtime_provider_rejected");

    let balance = app.balance(&user).await?;
    assert_eq!(balance["accountBalance"], "69.50");
    assert_eq!(balance["availableBalance"], "69.50");
    assert_eq!(balance["heldBalance"], "0.00");
    assert_eq!(balance["currencyCode"], "USD");

    let path = format!("/account/{}/events", user.uid);
    let events = app
        .request(Method::GET, &path, Some(&user.token))
        .send()
        .await?;
    let events = expect_status(events, 200).await?;
    let types: Vec<&str> = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["eventType"].as_str())
        .collect();
    let expected = [
        "AccountOpened",
        "TransactionStarted",
        "AccountCredited",
        "TransactionSucceeded",
        "TransactionStarted",
        "FundsReserved",
        "ReservationPosted",
        "TransactionSucceeded",
        "TransactionStarted",
        "FundsReserved",
        "ReservationVoided",
        "TransactionFailed",
    ];
    assert_eq!(types, expected);
    let sequences: Vec<i64> = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["sequence"].as_i64())
        .collect();
    assert_eq!(sequences, (1..=12).collect::<Vec<i64>>());
    let credited = &events["events"][2];
    assert_eq!(
        credited["payload"]["amount"], "100.00",
        "amounts keep the currency's scale"
    );
    assert_eq!(credited["payload"]["balanceAfter"], "100.00");
    Ok(())
}

async fn concurrent_airtime_never_overdraws_the_account(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("race")).await?;
    app.open_account(&user, "USD").await?;
    let added = app.submit(&user, &add_money("100.00")).await?;
    app.wait_final(&user, added["transactionId"].as_str().unwrap_or_default())
        .await?;

    let mut submissions = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (app_url, client, token) =
            (app.base_url.clone(), app.client.clone(), user.token.clone());
        submissions.spawn(async move {
            let response = client
                .post(format!("{app_url}/transaction"))
                .bearer_auth(token)
                .json(&send_airtime("1.00", "+254712345678"))
                .send()
                .await?;
            expect_status(response, 202).await
        });
    }
    let mut ids = Vec::new();
    while let Some(accepted) = submissions.join_next().await {
        ids.push(
            accepted??["transactionId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }

    let (mut successful, mut insufficient) = (0, 0);
    for id in &ids {
        let transaction = app.wait_final(&user, id).await?;
        match (
            transaction["transactionStatus"].as_str(),
            transaction["failureReason"].as_str(),
        ) {
            (Some("SUCCESSFUL"), None) => successful += 1,
            (Some("FAILED"), Some("insufficient_funds")) => insufficient += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((successful, insufficient), (100, 100));
    assert_eq!(app.balance(&user).await?["accountBalance"], "0.00");
    Ok(())
}

async fn a_repeated_idempotency_key_returns_the_first_transaction_and_applies_once(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("idem")).await?;
    app.open_account(&user, "USD").await?;

    let post = |body: Value, key: &str| {
        app.request(Method::POST, "/transaction", Some(&user.token))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = expect_status(post(add_money("10.00"), "reload-1").await?, 202).await?;
    let again = expect_status(post(add_money("10.00"), "reload-1").await?, 202).await?;
    assert_eq!(first["transactionId"], again["transactionId"]);

    let reused = post(add_money("11.00"), "reload-1").await?;
    let reused = expect_status(reused, 409).await?;
    assert_eq!(reused["code"], "idempotency_key_reused");

    app.wait_final(&user, first["transactionId"].as_str().unwrap_or_default())
        .await?;
    let third = expect_status(post(add_money("10.00"), "reload-1").await?, 202).await?;
    assert_eq!(third["transactionStatus"], "SUCCESSFUL");
    assert_eq!(app.balance(&user).await?["accountBalance"], "10.00");
    Ok(())
}

async fn another_users_account_and_transactions_answer_404(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let owner = app.signup_and_login(&username("owner")).await?;
    let other = app.signup_and_login(&username("other")).await?;
    app.open_account(&owner, "USD").await?;
    let added = app.submit(&owner, &add_money("5.00")).await?;
    let transaction_id = added["transactionId"].as_str().unwrap_or_default();

    for path in [
        format!("/account/{}", owner.uid),
        format!("/account/balance/{}", owner.uid),
        format!("/account/info/{}", owner.uid),
        format!("/account/{}/events", owner.uid),
        format!("/transaction/{transaction_id}"),
    ] {
        let response = app
            .request(Method::GET, &path, Some(&other.token))
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
    let body = json!({ "accountInfo": { "name": "Mallory", "email": "m@example.com",
                                        "phoneNumber": "+14155550001" } });
    let path = format!("/account/{}", owner.uid);
    let update = app
        .request(Method::PUT, &path, Some(&other.token))
        .json(&body)
        .send()
        .await?;
    assert_eq!(update.status().as_u16(), 404);
    Ok(())
}

async fn an_account_opens_once_and_updates_through_the_log(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("bo")).await?;
    app.open_account(&user, "KWD").await?;

    let again = json!({ "accountInfo": { "name": "Bo", "email": "bo@example.com",
                                         "phoneNumber": "+14155550002" } });
    let path = format!("/account/{}", user.uid);
    let conflict = app
        .request(Method::POST, &path, Some(&user.token))
        .json(&again)
        .send()
        .await?;
    assert_eq!(
        expect_status(conflict, 409).await?["code"],
        "account_already_exists"
    );

    let updated = app
        .request(Method::PUT, &path, Some(&user.token))
        .json(&again)
        .send()
        .await?;
    let updated = expect_status(updated, 200).await?;
    assert_eq!(updated["accountInfo"]["name"], "Bo");
    assert_eq!(updated["balance"]["accountBalance"], "0.000");
    assert_eq!(updated["balance"]["currencyCode"], "KWD");
    Ok(())
}

async fn an_admin_credits_and_debits_through_the_same_log(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let admin = app.admin().await?;
    let user = app.signup_and_login(&username("adj")).await?;
    app.open_account(&user, "USD").await?;

    let credit = format!("/account/credit/{}", user.uid);
    let by_user = app
        .request(Method::POST, &credit, Some(&user.token))
        .json(&json!({"amount": "5"}))
        .send()
        .await?;
    assert_eq!(expect_status(by_user, 403).await?["code"], "forbidden");

    let credited = app
        .request(Method::POST, &credit, Some(&admin.token))
        .json(&json!({"amount": 12.5}))
        .send()
        .await?;
    let credited = expect_status(credited, 202).await?;
    app.wait_final(
        &admin,
        credited["transactionId"].as_str().unwrap_or_default(),
    )
    .await?;

    let debit = format!("/account/debit/{}", user.uid);
    let debited = app
        .request(Method::POST, &debit, Some(&admin.token))
        .json(&json!({"amount": "20"}))
        .send()
        .await?;
    let debited = expect_status(debited, 202).await?;
    let debited = app
        .wait_final(
            &admin,
            debited["transactionId"].as_str().unwrap_or_default(),
        )
        .await?;
    assert_eq!(debited["failureReason"], "insufficient_funds");
    assert_eq!(app.balance(&user).await?["accountBalance"], "12.50");
    Ok(())
}

on_both_backends!(
    a_repeated_idempotency_key_returns_the_first_transaction_and_applies_once,
    money_added_and_airtime_sent_leave_the_exact_balance_and_an_ordered_history,
    concurrent_airtime_never_overdraws_the_account,
    another_users_account_and_transactions_answer_404,
    an_account_opens_once_and_updates_through_the_log,
    an_admin_credits_and_debits_through_the_same_log,
);
