//! The auth endpoints: signup, login, who-am-I, API key management and verification.
//!
//! | request                  | body                   | success                               |
//! |--------------------------|------------------------|---------------------------------------|
//! | `POST /signup/username`  | `{username, password}` | 201 `{uid}`                           |
//! | `POST /login`            | `{username, password}` | 200 `{token, tokenIssuedAt, ...}`     |
//! | `GET /me`                | (authenticated)        | 200 `{uid, roles}`                    |
//! | `POST /apikey`           | `{description}`        | 201 `{apiKey, keyId, description}`    |
//! | `DELETE /apikey/{keyId}` | (authenticated)        | 204                                   |
//! | `POST /verify/token`     | `{token}`              | 200 `{uid, roles}`                    |
//! | `POST /verify/apikey`    | `{apiKey}`             | 200 `{uid, roles}`                    |
//!
//! Login answers `{token, tokenIssuedAt, tokenExpiresOn}`, the times in RFC 3339 UTC.
//!
//! JSON is camelCase and unknown fields are refused. The verify endpoints let other systems
//! check a credential a user handed them; they need no credential of their own.

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::caller::{Caller, Role};
use super::password::{self, PASSWORD_BYTES_MAX};
use super::username::Username;
use super::{AuthState, api_key, create_user, store};
use crate::error::{self, ApiError};
use crate::extract::{JsonBody, Path};

/// The auth routes, for any app state that contains an [`AuthState`].
///
/// Merge them at the root (`app.merge(auth::router())`) or under a prefix with `nest`.
pub fn router<S>() -> Router<S>
where
    AuthState: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/signup/username", post(signup))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/apikey", post(create_api_key))
        .route("/apikey/{key_id}", delete(delete_api_key))
        .route("/verify/token", post(verify_token))
        .route("/verify/apikey", post(verify_api_key))
        .method_not_allowed_fallback(error::method_not_allowed)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Credentials {
    username: String,
    password: SecretString,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SignupResponse {
    uid: Uuid,
}

async fn signup(
    State(auth): State<AuthState>,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let Credentials { username, password } = credentials;
    let uid = create_user(&auth.store, &auth.settings, &username, &password, &[]).await?;
    Ok((StatusCode::CREATED, Json(SignupResponse { uid })))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginResponse {
    token: String,
    token_issued_at: DateTime<Utc>,
    token_expires_on: DateTime<Utc>,
}

/// Unknown user, wrong password and inactive user all get the same 401, after the same work.
async fn login(
    State(auth): State<AuthState>,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<Json<LoginResponse>, ApiError> {
    let Credentials { username, password } = credentials;
    if password.expose_secret().len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::InvalidCredentials);
    }
    let user = match Username::parse(&username) {
        Ok(username) => store::find_user(&auth.store, &username).await?,
        Err(_) => None,
    };

    let stored_hash = user.as_ref().map(|user| user.password_hash.clone());
    let matches = password::verify(&password, stored_hash, auth.settings.bcrypt_cost()).await?;
    let Some(user) = user.filter(|user| matches && user.active) else {
        tracing::debug!("login refused");
        return Err(ApiError::InvalidCredentials);
    };

    let lifetime_s = auth.settings.token_lifetime_s();
    let issued = auth.jwt.issue(user.uid, &user.roles, lifetime_s)?;
    tracing::info!(uid = %user.uid, "user logged in");
    Ok(Json(LoginResponse {
        token: issued.token.expose_secret().to_owned(),
        token_issued_at: issued.issued_at,
        token_expires_on: issued.expires_on,
    }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CallerResponse {
    uid: Uuid,
    roles: Vec<Role>,
}

impl From<Caller> for CallerResponse {
    fn from(caller: Caller) -> Self {
        Self {
            uid: caller.uid,
            roles: caller.roles,
        }
    }
}

async fn me(caller: Caller) -> Json<CallerResponse> {
    Json(caller.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateApiKeyRequest {
    description: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateApiKeyResponse {
    api_key: String,
    key_id: String,
    description: String,
}

async fn create_api_key(
    State(auth): State<AuthState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreateApiKeyResponse>), ApiError> {
    caller.require_password_login()?;
    api_key::check_description(&request.description)?;
    let live_keys = store::count_live_api_keys(&auth.store, caller.uid).await?;
    if live_keys >= api_key::API_KEYS_PER_USER_MAX {
        let detail = format!(
            "a user holds at most {} live api keys",
            api_key::API_KEYS_PER_USER_MAX
        );
        return Err(ApiError::conflict("too_many_api_keys", detail));
    }

    let generated = api_key::generate();
    let new_key = store::NewApiKey {
        key_id: &generated.key_id,
        uid: caller.uid,
        description: &request.description,
        key_hash: &generated.key_hash,
    };
    store::insert_api_key(&auth.store, new_key).await?;
    tracing::info!(uid = %caller.uid, key_id = generated.key_id, "api key created");

    let response = CreateApiKeyResponse {
        api_key: generated.key.expose_secret().to_owned(),
        key_id: generated.key_id,
        description: request.description,
    };
    Ok((StatusCode::CREATED, Json(response)))
}

/// Someone else's key is 404, exactly like a key that does not exist.
async fn delete_api_key(
    State(auth): State<AuthState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !api_key::is_key_id(&key_id) {
        return Err(ApiError::invalid(
            "invalid_path",
            "keyId is the 12 letters and digits POST /apikey answered",
        ));
    }
    if !store::revoke_api_key(&auth.store, &key_id, caller.uid).await? {
        return Err(ApiError::not_found(
            "api_key_not_found",
            "you have no api key with this id",
        ));
    }
    tracing::info!(uid = %caller.uid, key_id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VerifyTokenRequest {
    token: SecretString,
}

async fn verify_token(
    State(auth): State<AuthState>,
    JsonBody(request): JsonBody<VerifyTokenRequest>,
) -> Result<Json<CallerResponse>, ApiError> {
    let caller = auth.jwt.verify(request.token.expose_secret())?;
    Ok(Json(caller.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VerifyApiKeyRequest {
    api_key: SecretString,
}

async fn verify_api_key(
    State(auth): State<AuthState>,
    JsonBody(request): JsonBody<VerifyApiKeyRequest>,
) -> Result<Json<CallerResponse>, ApiError> {
    let caller = api_key::authenticate(&auth.store, request.api_key.expose_secret()).await?;
    Ok(Json(caller.into()))
}
