//! The auth endpoints over HTTP: each test builds the auth router on a fresh read store and
//! drives it with `oneshot`. Tests that reach the users and api_keys tables run once on SQLite
//! and once on MySQL (`name::sqlite`, `name::mysql`); the others only check requests and
//! tokens, and run on SQLite.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::{Value, json};
use tally_api::auth::{self, AuthSettings, AuthState, JwtKeys, Role};
use tally_api::extract::REQUEST_BODY_BYTES_MAX;
use tally_projections::backend_tests;
use tally_projections::test_support::{TestBackend, TestStore};
use tower::ServiceExt as _;

/// The signing secret of every test app, so tests can forge tokens with it.
const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The lowest cost settings allow, to keep the tests quick.
const BCRYPT_COST_TEST: u32 = 10;

const PASSWORD: &str = "correct horse battery staple";

struct TestApp {
    router: Router,
    test: TestStore,
}

/// What came back: status, headers and the body parsed as JSON (`Null` when empty).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// The app on a fresh SQLite store, for tests that do not reach the database's tables.
async fn spawn_app() -> TestApp {
    spawn_app_on(TestBackend::Sqlite).await
}

async fn spawn_app_on(backend: TestBackend) -> TestApp {
    let test = TestStore::open(backend).await;
    let jwt = JwtKeys::from_secret(&SecretString::from(JWT_SECRET)).expect("jwt keys");
    let settings = AuthSettings::new(BCRYPT_COST_TEST, 3600).expect("settings");
    let state = AuthState {
        store: test.store().clone(),
        jwt: Arc::new(jwt),
        settings,
    };
    let router = auth::router()
        .with_state(state)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX));
    TestApp { router, test }
}

impl TestApp {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("body is json")
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.send(json_request(Method::POST, uri, &body, &[])).await
    }

    async fn post_as(&self, uri: &str, body: Value, header: (&str, &str)) -> Reply {
        self.send(json_request(Method::POST, uri, &body, &[header]))
            .await
    }

    async fn get_as(&self, uri: &str, header: (&str, &str)) -> Reply {
        let request = Request::get(uri)
            .header(header.0, header.1)
            .body(Body::empty());
        self.send(request.expect("request")).await
    }

    async fn delete_as(&self, uri: &str, header: (&str, &str)) -> Reply {
        let request = Request::delete(uri)
            .header(header.0, header.1)
            .body(Body::empty());
        self.send(request.expect("request")).await
    }

    async fn signup(&self, username: &str) -> String {
        let reply = self
            .post("/signup/username", credentials(username, PASSWORD))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["uid"].as_str().expect("uid").to_owned()
    }

    async fn login(&self, username: &str) -> String {
        let reply = self.post("/login", credentials(username, PASSWORD)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["token"].as_str().expect("token").to_owned()
    }

    async fn create_api_key(&self, token: &str) -> Value {
        let bearer = format!("Bearer {token}");
        let body = json!({"description": "ci deploys"});
        let reply = self
            .post_as("/apikey", body, (AUTHORIZATION.as_str(), &bearer))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }
}

fn json_request(
    method: Method,
    uri: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_string())).expect("request")
}

fn credentials(username: &str, password: &str) -> Value {
    json!({"username": username, "password": password})
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// Asserts a problem+json reply with this status and code.
fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.headers[CONTENT_TYPE], "application/problem+json");
    assert_eq!(reply.body["code"], code, "{}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    assert_eq!(
        reply.body["type"],
        format!("https://tally.dev/problems/{code}")
    );
}

/// A token signed with `secret` carrying `claims`, as an attacker or a foreign issuer would.
fn forge_token(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("encode")
}

fn claims(uid: &str, expires_in_s: i64, audience: &str) -> Value {
    let now_s = chrono::Utc::now().timestamp();
    json!({
        "sub": uid, "roles": ["ROLE_USER", "ROLE_ADMIN"], "iss": "tally", "aud": audience,
        "iat": now_s, "exp": now_s + expires_in_s, "jti": uuid::Uuid::new_v4(),
    })
}

async fn assert_token_refused(app: &TestApp, token: &str) {
    let (name, value) = bearer(token);
    let reply = app.get_as("/me", (name, &value)).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(reply.headers[WWW_AUTHENTICATE], "Bearer");
}

backend_tests!(
    signup_then_login_then_me_works_with_the_bearer_token,
    an_api_key_authenticates_me_and_verifies,
    an_api_key_cannot_mint_api_keys,
    verify_token_answers_who_a_token_speaks_for,
    a_username_differing_only_in_case_is_taken,
    a_wrong_password_and_an_unknown_user_get_the_same_401,
    an_inactive_user_cannot_log_in,
    a_revoked_api_key_is_refused,
    revoking_a_key_twice_answers_no_content_both_times,
    deleting_someone_elses_key_is_not_found_and_leaves_it_working,
    a_bootstrapped_admin_gets_the_admin_role_in_its_token,
);

async fn signup_then_login_then_me_works_with_the_bearer_token(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    let uid = app.signup("Ada.Lovelace").await;

    let reply = app
        .post("/login", credentials("ada.lovelace", PASSWORD))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let issued_at = reply.body["tokenIssuedAt"].as_str().expect("issued at");
    let expires_on = reply.body["tokenExpiresOn"].as_str().expect("expires on");
    let issued_at = chrono::DateTime::parse_from_rfc3339(issued_at).expect("rfc 3339");
    let expires_on = chrono::DateTime::parse_from_rfc3339(expires_on).expect("rfc 3339");
    assert_eq!((expires_on - issued_at).num_seconds(), 3600);

    let token = reply.body["token"].as_str().expect("token");
    let (name, value) = bearer(token);
    let me = app.get_as("/me", (name, &value)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body, json!({"uid": uid, "roles": ["ROLE_USER"]}));
}

async fn an_api_key_authenticates_me_and_verifies(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    let uid = app.signup("grace").await;
    let token = app.login("grace").await;

    let created = app.create_api_key(&token).await;
    let api_key = created["apiKey"].as_str().expect("api key");
    assert!(api_key.starts_with(&format!(
        "tally_{}_",
        created["keyId"].as_str().expect("id")
    )));
    assert_eq!(created["description"], "ci deploys");

    let me = app.get_as("/me", ("x-api-key", api_key)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body, json!({"uid": uid, "roles": ["ROLE_USER"]}));
    let verified = app.post("/verify/apikey", json!({"apiKey": api_key})).await;
    assert_eq!(verified.body, json!({"uid": uid, "roles": ["ROLE_USER"]}));
}

async fn an_api_key_cannot_mint_api_keys(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("hedy").await;
    let token = app.login("hedy").await;
    let created = app.create_api_key(&token).await;
    let api_key = created["apiKey"].as_str().expect("api key");

    let body = json!({"description": "a key made by a key"});
    let reply = app.post_as("/apikey", body, ("x-api-key", api_key)).await;
    assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_description_with_control_characters_is_refused() {
    let app = spawn_app().await;
    app.signup("ida").await;
    let token = app.login("ida").await;
    let (name, value) = bearer(&token);
    let reply = app
        .post_as("/apikey", json!({"description": "a\r\nb"}), (name, &value))
        .await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_description");
}

async fn verify_token_answers_who_a_token_speaks_for(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    let uid = app.signup("linus").await;
    let token = app.login("linus").await;

    let verified = app.post("/verify/token", json!({"token": token})).await;
    assert_eq!(verified.status, StatusCode::OK);
    assert_eq!(verified.body, json!({"uid": uid, "roles": ["ROLE_USER"]}));

    let refused = app
        .post("/verify/token", json!({"token": "not.a.token"}))
        .await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "invalid_token");
}

async fn a_username_differing_only_in_case_is_taken(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("Margaret").await;

    let reply = app
        .post("/signup/username", credentials("mARGARET", PASSWORD))
        .await;

    assert_problem(&reply, StatusCode::CONFLICT, "username_taken");
}

#[tokio::test]
async fn a_weak_password_is_refused_with_weak_password() {
    let app = spawn_app().await;

    let reply = app
        .post("/signup/username", credentials("barbara", "short"))
        .await;

    assert_problem(&reply, StatusCode::BAD_REQUEST, "weak_password");
}

#[tokio::test]
async fn an_invalid_username_is_refused_with_invalid_username() {
    let app = spawn_app().await;

    let reply = app
        .post(
            "/signup/username",
            credentials("no spaces please", PASSWORD),
        )
        .await;

    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_username");
}

async fn a_wrong_password_and_an_unknown_user_get_the_same_401(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("edsger").await;

    let wrong_password = app
        .post("/login", credentials("edsger", "not the password at all"))
        .await;
    let unknown_user = app.post("/login", credentials("nobody", PASSWORD)).await;

    assert_problem(
        &wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    assert_eq!(wrong_password.body, unknown_user.body);
    assert_eq!(wrong_password.status, unknown_user.status);
}

async fn an_inactive_user_cannot_log_in(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("ken").await;
    app.test.execute("UPDATE users SET active = 0").await;

    let reply = app.post("/login", credentials("ken", PASSWORD)).await;

    assert_problem(&reply, StatusCode::UNAUTHORIZED, "invalid_credentials");
}

#[tokio::test]
async fn a_hand_made_token_with_our_secret_and_claims_is_accepted() {
    let app = spawn_app().await;
    let uid = uuid::Uuid::now_v7().to_string();
    let token = forge_token(JWT_SECRET, &claims(&uid, 600, "tally-api"));

    let verified = app.post("/verify/token", json!({"token": token})).await;

    assert_eq!(
        verified.body,
        json!({"uid": uid, "roles": ["ROLE_USER", "ROLE_ADMIN"]})
    );
}

#[tokio::test]
async fn an_expired_token_is_invalid_token() {
    let app = spawn_app().await;
    let uid = uuid::Uuid::now_v7().to_string();

    assert_token_refused(
        &app,
        &forge_token(JWT_SECRET, &claims(&uid, -3600, "tally-api")),
    )
    .await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_invalid_token() {
    let app = spawn_app().await;
    let uid = uuid::Uuid::now_v7().to_string();
    let other_secret = "another-secret-another-secret-another";

    assert_token_refused(
        &app,
        &forge_token(other_secret, &claims(&uid, 600, "tally-api")),
    )
    .await;
}

#[tokio::test]
async fn an_alg_none_token_is_invalid_token() {
    let app = spawn_app().await;
    let uid = uuid::Uuid::now_v7().to_string();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(&uid, 600, "tally-api").to_string());

    assert_token_refused(&app, &format!("{header}.{payload}.")).await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_invalid_token() {
    let app = spawn_app().await;
    let uid = uuid::Uuid::now_v7().to_string();

    assert_token_refused(
        &app,
        &forge_token(JWT_SECRET, &claims(&uid, 600, "not-tally")),
    )
    .await;
}

#[tokio::test]
async fn no_credentials_is_unauthorized_with_a_bearer_challenge() {
    let app = spawn_app().await;

    let reply = app
        .send(Request::get("/me").body(Body::empty()).expect("request"))
        .await;

    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(reply.headers[WWW_AUTHENTICATE], "Bearer");
}

async fn a_revoked_api_key_is_refused(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("barbara").await;
    let token = app.login("barbara").await;
    let created = app.create_api_key(&token).await;
    let (api_key, key_id) = (created["apiKey"].as_str().expect("key"), &created["keyId"]);

    let (name, value) = bearer(&token);
    let deleted = app
        .delete_as(
            &format!("/apikey/{}", key_id.as_str().expect("id")),
            (name, &value),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    let reply = app.get_as("/me", ("x-api-key", api_key)).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "invalid_api_key");
}

async fn revoking_a_key_twice_answers_no_content_both_times(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("frances").await;
    let token = app.login("frances").await;
    let created = app.create_api_key(&token).await;
    let uri = format!("/apikey/{}", created["keyId"].as_str().expect("id"));

    let (name, value) = bearer(&token);
    let first = app.delete_as(&uri, (name, &value)).await;
    let second = app.delete_as(&uri, (name, &value)).await;

    assert_eq!(first.status, StatusCode::NO_CONTENT);
    assert_eq!(second.status, StatusCode::NO_CONTENT, "{}", second.body);
}

async fn deleting_someone_elses_key_is_not_found_and_leaves_it_working(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    app.signup("owner").await;
    app.signup("intruder").await;
    let owner_token = app.login("owner").await;
    let intruder_token = app.login("intruder").await;
    let created = app.create_api_key(&owner_token).await;

    let uri = format!("/apikey/{}", created["keyId"].as_str().expect("id"));
    let (name, value) = bearer(&intruder_token);
    let reply = app.delete_as(&uri, (name, &value)).await;

    assert_problem(&reply, StatusCode::NOT_FOUND, "api_key_not_found");
    let me = app
        .get_as(
            "/me",
            ("x-api-key", created["apiKey"].as_str().expect("key")),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);
}

async fn a_bootstrapped_admin_gets_the_admin_role_in_its_token(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    let settings = AuthSettings::new(BCRYPT_COST_TEST, 3600).expect("settings");
    let password = SecretString::from(PASSWORD);
    let roles = [Role::Admin];
    auth::create_user(app.test.store(), &settings, "root", &password, &roles)
        .await
        .expect("created");

    let token = app.login("root").await;
    let (name, value) = bearer(&token);
    let me = app.get_as("/me", (name, &value)).await;

    assert_eq!(me.body["roles"], json!(["ROLE_USER", "ROLE_ADMIN"]));
}

#[tokio::test]
async fn malformed_json_is_malformed_json() {
    let app = spawn_app().await;
    let request = Request::post("/login")
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"username": "ada", "#));

    let reply = app.send(request.expect("request")).await;

    assert_problem(&reply, StatusCode::BAD_REQUEST, "malformed_json");
}

#[tokio::test]
async fn an_unknown_field_is_unknown_field() {
    let app = spawn_app().await;
    let body = json!({"username": "ada", "password": PASSWORD, "admin": true});

    let reply = app.post("/signup/username", body).await;

    assert_problem(&reply, StatusCode::BAD_REQUEST, "unknown_field");
}

#[tokio::test]
async fn a_wrong_content_type_is_unsupported_media_type() {
    let app = spawn_app().await;
    let request = Request::post("/login")
        .header(CONTENT_TYPE, "text/plain")
        .body(Body::from(credentials("ada", PASSWORD).to_string()));

    let reply = app.send(request.expect("request")).await;

    assert_problem(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

#[tokio::test]
async fn an_oversized_body_is_body_too_large() {
    let app = spawn_app().await;
    let padding = "x".repeat(REQUEST_BODY_BYTES_MAX);
    let body = json!({"username": "ada", "password": padding});

    let reply = app.post("/login", body).await;

    assert_problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
}

#[tokio::test]
async fn a_wrong_method_is_method_not_allowed_as_a_problem() {
    let app = spawn_app().await;

    let reply = app
        .send(Request::get("/login").body(Body::empty()).expect("request"))
        .await;

    assert_problem(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn a_bearer_token_and_an_api_key_together_are_refused() {
    let app = spawn_app().await;
    app.signup("grace").await;
    let token = app.login("grace").await;
    let created = app.create_api_key(&token).await;
    let request = Request::get("/me")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header("x-api-key", created["apiKey"].as_str().expect("key"))
        .body(Body::empty())
        .expect("request");

    let reply = app.send(request).await;

    assert_problem(&reply, StatusCode::BAD_REQUEST, "ambiguous_credentials");
}

#[tokio::test]
async fn two_authorization_headers_or_two_api_keys_are_refused() {
    let app = spawn_app().await;
    app.signup("hedy").await;
    let token = app.login("hedy").await;
    let created = app.create_api_key(&token).await;
    let key = created["apiKey"].as_str().expect("key");
    let two_tokens = Request::get("/me")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(AUTHORIZATION, "Bearer someone-else")
        .body(Body::empty())
        .expect("request");
    let two_keys = Request::get("/me")
        .header("x-api-key", key)
        .header("x-api-key", "another-key")
        .body(Body::empty())
        .expect("request");

    let tokens_reply = app.send(two_tokens).await;
    let keys_reply = app.send(two_keys).await;

    assert_problem(
        &tokens_reply,
        StatusCode::BAD_REQUEST,
        "ambiguous_credentials",
    );
    assert_problem(
        &keys_reply,
        StatusCode::BAD_REQUEST,
        "ambiguous_credentials",
    );
}

#[tokio::test]
async fn revoking_a_key_id_of_the_wrong_shape_is_invalid_path() {
    let app = spawn_app().await;
    app.signup("hedy").await;
    let token = app.login("hedy").await;
    let (name, value) = bearer(&token);

    let reply = app.delete_as("/apikey/xyz", (name, &value)).await;

    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_path");
}
