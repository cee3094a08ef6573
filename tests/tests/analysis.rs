//! The analysis tables end to end: after transactions that succeed and fail in two currencies,
//! `daily_transaction_volumes` and `daily_airtime_destinations` hold exactly the rows a model
//! built from the transactions' final states says, and nothing for the statuses they left.

use std::collections::BTreeMap;

use anyhow::Context;
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_tests::{
    Backend, TestApp, User, add_money, expect_status, on_both_backends, send_airtime, username,
};

/// The destinations of these tests and their E.164 country calling codes.
const CALLING_CODES: [(&str, &str); 3] = [("+254", "254"), ("+1", "1"), ("+44", "44")];

/// An analysis row: its key, its count and its total.
type Row = (Vec<String>, i64, Decimal);

async fn final_state(app: &TestApp, user: &User, accepted: &Value) -> anyhow::Result<Value> {
    let id = accepted["transactionId"].as_str().context("no id")?;
    app.wait_final(user, id).await
}

async fn submit_all(app: &TestApp, user: &User, bodies: &[Value]) -> anyhow::Result<Vec<Value>> {
    let mut finals = Vec::new();
    for body in bodies {
        let accepted = app.submit(user, body).await?;
        finals.push(final_state(app, user, &accepted).await?);
    }
    Ok(finals)
}

/// An administrator's credit or debit of `user`'s account, once final.
async fn adjust(
    app: &TestApp,
    admin: &User,
    user: &User,
    kind: &str,
    amount: &str,
) -> anyhow::Result<Value> {
    let path = format!("/account/{kind}/{}", user.uid);
    let response = app.request(Method::POST, &path, Some(&admin.token));
    let response = response.json(&json!({ "amount": amount })).send().await?;
    let accepted = expect_status(response, 202).await?;
    final_state(app, admin, &accepted).await
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

fn decimal(text: &str) -> anyhow::Result<Decimal> {
    let parsed = Decimal::from_str_exact(text).with_context(|| format!("{text:?}"))?;
    Ok(parsed.normalize())
}

/// The rows the model expects: every transaction counted once under the UTC day it was created,
/// `second` of it (its type, or its destination's calling code), its currency and its status.
fn model(
    transactions: &[Value],
    second: impl Fn(&Value) -> Option<String>,
) -> anyhow::Result<Vec<Row>> {
    let mut rows: BTreeMap<Vec<String>, (i64, Decimal)> = BTreeMap::new();
    for transaction in transactions {
        let Some(second) = second(transaction) else {
            continue;
        };
        let day = text(&transaction["createdAt"]).chars().take(10).collect();
        let key = vec![
            day,
            second,
            text(&transaction["currencyCode"]),
            text(&transaction["transactionStatus"]),
        ];
        let row = rows.entry(key).or_default();
        row.0 += 1;
        row.1 += decimal(&text(&transaction["amount"]))?;
    }
    let rows = rows.into_iter();
    Ok(rows
        .map(|(key, (count, total))| (key, count, total.normalize()))
        .collect())
}

fn calling_code(transaction: &Value) -> Option<String> {
    if transaction["transactionType"] != "SEND_AIRTIME" {
        return None;
    }
    let phone = text(&transaction["phoneNumber"]);
    let found = CALLING_CODES
        .iter()
        .find(|(prefix, _)| phone.starts_with(prefix));
    found.map(|(_, code)| (*code).to_owned())
}

async fn stored(app: &TestApp, table: &str, second: &str) -> anyhow::Result<Vec<Row>> {
    let select = format!(
        "SELECT day, {second}, currency, status, CAST(transaction_count AS CHAR), \
         CAST(amount_total AS CHAR) FROM {table} ORDER BY 1, 2, 3, 4"
    );
    let mut rows = Vec::new();
    for row in app.read_store_rows(&select).await? {
        let cells: Vec<String> = row.into_iter().map(Option::unwrap_or_default).collect();
        let count = cells[4].parse()?;
        rows.push((cells[..4].to_vec(), count, decimal(&cells[5])?));
    }
    Ok(rows)
}

async fn the_daily_tables_equal_a_model_of_the_final_transactions(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let admin = app.admin().await?;
    let ada = app.signup_and_login(&username("ada")).await?;
    let bo = app.signup_and_login(&username("bo")).await?;
    app.open_account(&ada, "USD").await?;
    app.open_account(&bo, "EUR").await?;

    let mut transactions = submit_all(
        &app,
        &ada,
        &[
            add_money("100.00"),
            add_money("0.05"),
            send_airtime("10.00", "+254712345678"),
            // The simulator rejects numbers ending in 0000.
            send_airtime("5.00", "+254712340000"),
            send_airtime("2.50", "+14155552671"),
            // More than the balance: insufficient_funds.
            send_airtime("1000.00", "+447911123456"),
        ],
    )
    .await?;
    let bos = [add_money("50.00"), send_airtime("7.25", "+447911123456")];
    transactions.extend(submit_all(&app, &bo, &bos).await?);
    transactions.push(adjust(&app, &admin, &ada, "credit", "3.00").await?);
    transactions.push(adjust(&app, &admin, &bo, "debit", "1.00").await?);
    let failed = (transactions.iter()).filter(|t| t["transactionStatus"] == "FAILED");
    assert_eq!(failed.count(), 2, "{transactions:?}");

    let volumes = stored(&app, "daily_transaction_volumes", "transaction_type").await?;
    let expected = model(&transactions, |t| Some(text(&t["transactionType"])))?;
    assert_eq!(volumes, expected);
    let destinations = stored(&app, "daily_airtime_destinations", "calling_code").await?;
    assert_eq!(destinations, model(&transactions, calling_code)?);
    let codes: Vec<&str> = destinations
        .iter()
        .map(|(key, _, _)| key[1].as_str())
        .collect();
    assert!(codes.contains(&"1") && codes.contains(&"44") && codes.contains(&"254"));
    let left: Vec<&Row> = (volumes.iter())
        .filter(|(key, _, _)| key[3] == "ACCEPTED" || key[3] == "PROCESSING")
        .collect();
    assert!(
        left.is_empty(),
        "rows for statuses every transaction left: {left:?}"
    );
    Ok(())
}

on_both_backends!(the_daily_tables_equal_a_model_of_the_final_transactions);
