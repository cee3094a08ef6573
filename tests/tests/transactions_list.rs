//! `GET /transactions` end to end: filters, pages under concurrent inserts, who sees what, the
//! CSV form, and a 400 with its own code for every bad filter.

use std::collections::HashSet;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use tally_tests::{
    Backend, TestApp, User, add_money, expect_status, on_both_backends, send_airtime, username,
};

/// Lists with `query` as `user` and returns the JSON page.
async fn list(app: &TestApp, user: &User, query: &str) -> anyhow::Result<Value> {
    let path = format!("/transactions?{query}");
    let response = app.request(Method::GET, &path, Some(&user.token)).send();
    expect_status(response.await?, 200).await
}

/// The page's items.
fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

fn field(items: &[Value], name: &str) -> Vec<String> {
    (items.iter())
        .map(|item| item[name].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Submits each body as `user`, one after the other, and returns each transaction once final.
async fn settled(app: &TestApp, user: &User, bodies: &[Value]) -> anyhow::Result<Vec<Value>> {
    let mut finals = Vec::new();
    for body in bodies {
        let accepted = app.submit(user, body).await?;
        let id = accepted["transactionId"].as_str().context("no id")?;
        finals.push(app.wait_final(user, id).await?);
    }
    Ok(finals)
}

/// Every row the listing shows `user` for `query`, page by page, `limit` a page.
async fn walk(app: &TestApp, user: &User, query: &str, limit: u32) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor
            .map(|cursor| format!("&cursor={cursor}"))
            .unwrap_or_default();
        let page = list(app, user, &format!("{query}&limit={limit}{after}")).await?;
        rows.extend(items(&page));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(rows),
        }
    }
}

async fn the_list_filters_by_status_type_time_and_exact_amounts(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("lister")).await?;
    app.open_account(&user, "USD").await?;
    let finals = settled(
        &app,
        &user,
        &[
            add_money("100.00"),
            add_money("25.50"),
            send_airtime("10.00", "+254712345678"),
            send_airtime("5.00", "+254712340000"),
            send_airtime("1000.00", "+254712345678"),
        ],
    )
    .await?;
    let amounts = |page: &Value| field(&items(page), "amount");

    let all = list(&app, &user, "").await?;
    assert_eq!(
        field(&items(&all), "transactionId"),
        field(&finals, "transactionId")
    );
    assert_eq!(all["nextCursor"], Value::Null);
    let failed = list(&app, &user, "status=FAILED").await?;
    assert_eq!(amounts(&failed), ["5.00", "1000.00"]);
    let reasons = field(&items(&failed), "failureReason");
    assert_eq!(reasons, ["airtime_provider_rejected", "insufficient_funds"]);
    let airtime = list(&app, &user, "type=SEND_AIRTIME").await?;
    assert_eq!(amounts(&airtime), ["10.00", "5.00", "1000.00"]);
    let added = list(&app, &user, "type=ADD_MONEY&status=SUCCESSFUL").await?;
    assert_eq!(amounts(&added), ["100.00", "25.50"]);
    let between = list(&app, &user, "minAmount=10&maxAmount=25.5").await?;
    assert_eq!(amounts(&between), ["25.50", "10.00"]);
    let above = list(&app, &user, "minAmount=10.001").await?;
    assert_eq!(amounts(&above), ["100.00", "25.50", "1000.00"]);

    let created = field(&finals, "createdAt");
    let window = format!("from={}&to={}", created[2], created[4]);
    let window = list(&app, &user, &window).await?;
    assert_eq!(amounts(&window), ["10.00", "5.00"]);
    let empty = format!("from={0}&to={0}", created[2]);
    assert!(items(&list(&app, &user, &empty).await?).is_empty());
    Ok(())
}

async fn the_csv_form_parses_back_to_the_json_rows_with_the_cursor_in_a_header(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("csv")).await?;
    app.open_account(&user, "USD").await?;
    settled(
        &app,
        &user,
        &[
            add_money("100.00"),
            send_airtime("7.25", "+447911123456"),
            send_airtime("1.00", "+254712340000"),
        ],
    )
    .await?;

    for query in ["limit=2", "limit=500", "type=SEND_AIRTIME"] {
        let json = list(&app, &user, query).await?;
        let path = format!("/transactions?{query}");
        let response = app
            .request(Method::GET, &path, Some(&user.token))
            .header("Accept", "text/csv")
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 200);
        let headers = response.headers().clone();
        let content_type = headers["content-type"].to_str()?;
        assert!(content_type.starts_with("text/csv"), "{content_type}");
        let next = headers
            .get("x-next-cursor")
            .map(|value| value.to_str())
            .transpose()?;
        assert_eq!(next, json["nextCursor"].as_str(), "{query}");
        let body = response.text().await?;

        let mut reader = csv::Reader::from_reader(body.as_bytes());
        let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
        let rows: Vec<Vec<String>> = (reader.records())
            .map(|record| Ok(record?.iter().map(str::to_owned).collect()))
            .collect::<anyhow::Result<_>>()?;
        let from_json: Vec<Vec<String>> = (items(&json).iter())
            .map(|item| {
                let text = |name: &String| match &item[name.as_str()] {
                    Value::Null => String::new(),
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                header.iter().map(text).collect()
            })
            .collect();
        assert_eq!(rows, from_json, "{query}");
        assert_eq!(header.len(), 10);
    }
    Ok(())
}

async fn a_user_sees_only_their_own_transactions_and_an_admin_sees_anyones(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let alice = app.signup_and_login(&username("alice")).await?;
    let bob = app.signup_and_login(&username("bob")).await?;
    let admin = app.admin().await?;
    app.open_account(&alice, "USD").await?;
    app.open_account(&bob, "EUR").await?;
    let alices = settled(&app, &alice, &[add_money("1.00"), add_money("2.00")]).await?;
    let bobs = settled(&app, &bob, &[add_money("3.00")]).await?;
    let ids = |rows: &[Value]| field(rows, "transactionId");

    assert_eq!(ids(&walk(&app, &bob, "", 1).await?), ids(&bobs));
    assert_eq!(ids(&walk(&app, &alice, "", 1).await?), ids(&alices));
    let own = format!("accountId={}", alice.uid);
    assert_eq!(ids(&walk(&app, &alice, &own, 5).await?), ids(&alices));
    for query in [
        format!("accountId={}", alice.uid),
        format!("userId={}", alice.uid),
    ] {
        let path = format!("/transactions?{query}");
        let response = app.request(Method::GET, &path, Some(&bob.token)).send();
        let problem = expect_status(response.await?, 404).await?;
        assert_eq!(problem["code"], "account_not_found", "{query}");
    }

    let everyone = walk(&app, &admin, "", 2).await?;
    let everyone: HashSet<String> = ids(&everyone).into_iter().collect();
    let expected: HashSet<String> = ids(&alices).into_iter().chain(ids(&bobs)).collect();
    assert_eq!(everyone, expected);
    let alice_only = walk(&app, &admin, &format!("accountId={}", alice.uid), 5).await?;
    assert_eq!(ids(&alice_only), ids(&alices));
    let bob_only = walk(&app, &admin, &format!("userId={}", bob.uid), 5).await?;
    assert_eq!(ids(&bob_only), ids(&bobs));
    assert_eq!(
        field(&bob_only, "accountId"),
        std::slice::from_ref(&bob.uid)
    );
    Ok(())
}

/// Transactions that exist before a walk over every page; one more is submitted after each
/// page while it walks.
const PAGED_BEFORE: usize = 12;
const PAGED_DURING_MAX: usize = 6;

/// Puts a transaction of `user` into the read store directly, created `created_at_ms`: a row
/// that shows up behind a walk's cursor, as one a lagging partition projects late would.
async fn insert_behind(app: &TestApp, user: &User, created_at_ms: i64) -> anyhow::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let insert = format!(
        "INSERT INTO transactions (transaction_id, account_id, transaction_type, status, amount, \
         currency, created_at_ms, updated_at_ms) VALUES ('{id}', '{}', 'ADD_MONEY', \
         'SUCCESSFUL', '0.50', 'USD', {created_at_ms}, {created_at_ms})",
        user.uid
    );
    app.execute_on_read_store(&insert).await?;
    Ok(id)
}

fn millis(rfc3339: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(rfc3339)?.timestamp_millis())
}

async fn walking_every_page_under_concurrent_inserts_shows_each_row_once_in_order(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("pager")).await?;
    app.open_account(&user, "USD").await?;
    let bodies: Vec<Value> = (1..=PAGED_BEFORE)
        .map(|cents| add_money(&format!("0.{cents:02}")))
        .collect();
    let before = settled(&app, &user, &bodies).await?;

    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = Vec::new();
    let mut behind = Vec::new();
    let first_ms = millis(&field(&before, "createdAt")[0])?;
    loop {
        let after = cursor
            .map(|cursor| format!("&cursor={cursor}"))
            .unwrap_or_default();
        let page = list(&app, &user, &format!("limit=3{after}")).await?;
        seen.extend(items(&page));
        if inserted.len() < PAGED_DURING_MAX {
            let accepted = app.submit(&user, &add_money("9.99")).await?;
            inserted.push(
                accepted["transactionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            // Rows counted from the front would shift under this one and show a row twice.
            let created_at_ms = first_ms - 1_000 + i64::try_from(behind.len())?;
            behind.push(insert_behind(&app, &user, created_at_ms).await?);
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }

    let seen_ids = field(&seen, "transactionId");
    let distinct: HashSet<&String> = seen_ids.iter().collect();
    assert_eq!(
        distinct.len(),
        seen_ids.len(),
        "a row shown twice: {seen_ids:?}"
    );
    for id in field(&before, "transactionId") {
        assert!(
            distinct.contains(&id),
            "{id} existed before the walk and was not shown"
        );
    }
    let order: Vec<(String, String)> = (seen.iter())
        .map(|row| {
            (
                row["createdAt"].to_string(),
                row["transactionId"].to_string(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "rows out of order");

    assert!(
        behind.iter().all(|id| !distinct.contains(id)),
        "a row behind the cursor"
    );

    // Once the inserts are final, a new walk shows every one of them, and nothing else.
    for id in &inserted {
        app.wait_final(&user, id).await?;
    }
    let again = field(&walk(&app, &user, "", 4).await?, "transactionId");
    let before = field(&before, "transactionId");
    let expected: Vec<String> = behind.into_iter().chain(before).chain(inserted).collect();
    assert_eq!(again, expected);
    Ok(())
}

async fn every_bad_filter_is_a_400_with_its_own_code(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = app.signup_and_login(&username("bad")).await?;
    let id = &user.uid;
    let other = "0190f3a2-6c1e-7d4b-9a55-2b6f0e1c9d07";
    let cases = [
        ("from=yesterday".to_owned(), "time_not_rfc3339"),
        ("to=2026-03-01".to_owned(), "time_not_rfc3339"),
        (
            "from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z".to_owned(),
            "time_range_reversed",
        ),
        ("minAmount=ten".to_owned(), "invalid_amount_filter"),
        ("maxAmount=-1".to_owned(), "invalid_amount_filter"),
        (
            "minAmount=5&maxAmount=1".to_owned(),
            "amount_range_reversed",
        ),
        ("status=PENDING".to_owned(), "unknown_transaction_status"),
        ("status=failed".to_owned(), "unknown_transaction_status"),
        ("type=REFUND".to_owned(), "unknown_transaction_type"),
        ("cursor=bm90LWEtY3Vyc29y".to_owned(), "invalid_cursor"),
        ("cursor=%25%25".to_owned(), "invalid_cursor"),
        ("limit=0".to_owned(), "invalid_limit"),
        ("limit=501".to_owned(), "invalid_limit"),
        ("limit=ten".to_owned(), "invalid_limit"),
        ("accountId=me".to_owned(), "invalid_account_id"),
        (
            format!("accountId={id}&userId={other}"),
            "conflicting_account_filters",
        ),
        ("page=2".to_owned(), "invalid_query"),
    ];
    for (query, code) in cases {
        let path = format!("/transactions?{query}");
        let response = app
            .request(Method::GET, &path, Some(&user.token))
            .send()
            .await?;
        let content_type = response.headers()["content-type"].to_str()?.to_owned();
        let problem = expect_status(response, 400).await?;
        assert_eq!(problem["code"], code, "{query}");
        assert_eq!(content_type, "application/problem+json", "{query}");
    }
    let anonymous = app
        .request(Method::GET, "/transactions", None)
        .send()
        .await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    Ok(())
}

on_both_backends!(
    the_list_filters_by_status_type_time_and_exact_amounts,
    the_csv_form_parses_back_to_the_json_rows_with_the_cursor_in_a_header,
    a_user_sees_only_their_own_transactions_and_an_admin_sees_anyones,
    walking_every_page_under_concurrent_inserts_shows_each_row_once_in_order,
    every_bad_filter_is_a_400_with_its_own_code,
);
