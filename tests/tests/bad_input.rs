//! Every bad input gets a 4xx with a stable code: never a 5xx, never a crash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use tally_tests::{Backend, TestApp, User, add_money, expect_status, on_both_backends, username};

async fn user_with_account(app: &TestApp) -> anyhow::Result<User> {
    let user = app.signup_and_login(&username("bad")).await?;
    app.open_account(&user, "USD").await?;
    Ok(user)
}

async fn post_transaction(app: &TestApp, user: &User, body: Value) -> anyhow::Result<(u16, Value)> {
    let response = app
        .request(Method::POST, "/transaction", Some(&user.token))
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn bad_amounts_are_refused_with_their_codes(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = user_with_account(&app).await?;
    let cases: [(Value, &str); 8] = [
        (json!("-1"), "amount_not_positive"),
        (json!("0"), "amount_not_positive"),
        (json!("1.001"), "amount_has_too_many_decimals"),
        (json!("1e3"), "amount_not_a_decimal"),
        (json!("abc"), "amount_not_a_decimal"),
        (Value::Null, "amount_not_a_decimal"),
        (json!(1.001), "amount_has_too_many_decimals"),
        (json!("10000000000000"), "amount_above_maximum"),
    ];
    for (amount, code) in cases {
        let body =
            json!({ "transactionType": "ADD_MONEY", "addMoneyRequest": { "amount": amount } });
        let (status, problem) = post_transaction(&app, &user, body).await?;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "amount {amount}"
        );
    }

    // A number beyond any float, sent as raw JSON text.
    let raw = r#"{"transactionType":"ADD_MONEY","addMoneyRequest":{"amount":1e400}}"#;
    let response = app
        .request(Method::POST, "/transaction", Some(&user.token))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await?;
    assert_eq!(
        expect_status(response, 400).await?["code"],
        "amount_not_a_decimal"
    );
    Ok(())
}

async fn malformed_bodies_unknown_values_and_bad_paths_are_4xx(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = user_with_account(&app).await?;
    let send = |body: String| {
        app.request(Method::POST, "/transaction", Some(&user.token))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let add = |extra: &str| {
        format!(r#"{{"transactionType":"ADD_MONEY","addMoneyRequest":{{"amount":"1"}}{extra}}}"#)
    };
    let airtime_to = |phone: &str| {
        format!(
            r#"{{"transactionType":"SEND_AIRTIME",
                "sendAirtimeRequest":{{"amount":"1","phoneNumber":"{phone}"}}}}"#
        )
    };
    let huge_amount = format!(
        r#"{{"transactionType":"ADD_MONEY","addMoneyRequest":{{"amount":"{}"}}}}"#,
        "1".repeat(100_000)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".to_owned(), 400, "malformed_json"),
        (
            add("").replace("ADD_MONEY", "STEAL_MONEY"),
            400,
            "unknown_transaction_type",
        ),
        (add(r#","x":1"#), 400, "unknown_field"),
        (
            r#"{"transactionType":"ADD_MONEY"}"#.to_owned(),
            400,
            "request_does_not_match_type",
        ),
        (airtime_to("12345"), 400, "invalid_phone_number"),
        (add(r#","currencyCode":"EUR""#), 400, "currency_mismatch"),
        (huge_amount, 413, "body_too_large"),
    ];
    for (body, status, code) in cases {
        let response = send(body.clone()).await?;
        let problem = expect_status(response, status).await;
        let problem =
            problem.map_err(|error| anyhow::anyhow!("{}: {error}", &body[..body.len().min(80)]))?;
        assert_eq!(problem["code"], code, "{}", &body[..body.len().min(80)]);
    }

    let not_uuid = app
        .request(Method::GET, "/transaction/not-a-uuid", Some(&user.token))
        .send()
        .await?;
    assert_eq!(expect_status(not_uuid, 400).await?["code"], "invalid_path");
    let missing = format!("/transaction/{}", uuid::Uuid::new_v4());
    let missing = app
        .request(Method::GET, &missing, Some(&user.token))
        .send()
        .await?;
    assert_eq!(
        expect_status(missing, 404).await?["code"],
        "transaction_not_found"
    );
    let text = app
        .request(Method::POST, "/transaction", Some(&user.token))
        .body("amount=1")
        .send()
        .await?;
    assert_eq!(text.status().as_u16(), 415);
    Ok(())
}

fn token_with(secret: &[u8], claims: &Value) -> anyhow::Result<String> {
    let key = EncodingKey::from_secret(secret)?;
    Ok(jsonwebtoken::encode(&Header::default(), claims, &key)?)
}

async fn expired_forged_and_unsigned_tokens_are_refused(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_on(backend).await?;
    let user = user_with_account(&app).await?;
    let secret = std::fs::read(app.data_dir.path().join("jwt-secret"))?;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, aud: &str| {
        json!({ "sub": user.uid, "roles": ["ROLE_USER"], "iss": "tally", "aud": aud,
                "iat": now - 7200, "exp": exp, "jti": uuid::Uuid::new_v4() })
    };

    let valid = token_with(&secret, &claims(now + 600, "tally-api"))?;
    let expired = token_with(&secret, &claims(now - 3600, "tally-api"))?;
    let wrong_audience = token_with(&secret, &claims(now + 600, "someone-else"))?;
    let forged = token_with(&[7u8; 64], &claims(now + 600, "tally-api"))?;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(now + 600, "tally-api").to_string());
    let unsigned = format!("{header}.{payload}.");

    let me = app.request(Method::GET, "/me", Some(&valid)).send().await?;
    assert_eq!(
        me.status().as_u16(),
        200,
        "a well-formed token signed with the secret works"
    );
    for (name, token) in [
        ("expired", expired),
        ("audience", wrong_audience),
        ("forged", forged),
        ("none", unsigned),
    ] {
        let response = app.request(Method::GET, "/me", Some(&token)).send().await?;
        assert_eq!(
            expect_status(response, 401).await?["code"],
            "invalid_token",
            "{name}"
        );
    }
    let anonymous = app
        .request(Method::POST, "/transaction", None)
        .json(&add_money("1"))
        .send()
        .await?;
    assert_eq!(expect_status(anonymous, 401).await?["code"], "unauthorized");
    Ok(())
}

/// Reads whatever the server sends until it closes the connection, within a generous bound.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let bound = std::time::Duration::from_secs(60);
    tokio::time::timeout(bound, stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn clients_that_stall_mid_request_are_cut_off(backend: Backend) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_on(backend).await?;
    let address = app.base_url.trim_start_matches("http://").to_owned();

    let mut headers_never_end = tokio::net::TcpStream::connect(&address).await?;
    headers_never_end
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await?;
    read_until_closed(&mut headers_never_end).await?;

    let mut body_never_ends = tokio::net::TcpStream::connect(&address).await?;
    let request = "POST /login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
                   content-length: 100\r\n\r\n{}";
    body_never_ends.write_all(request.as_bytes()).await?;
    let answer = read_until_closed(&mut body_never_ends).await?;
    assert!(
        !answer.starts_with("HTTP/1.1 5"),
        "a stalled body is the client's fault: {answer}"
    );
    Ok(())
}

on_both_backends!(
    bad_amounts_are_refused_with_their_codes,
    malformed_bodies_unknown_values_and_bad_paths_are_4xx,
    expired_forged_and_unsigned_tokens_are_refused,
    clients_that_stall_mid_request_are_cut_off,
);
