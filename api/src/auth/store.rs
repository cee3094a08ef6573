//! The `users` and `api_keys` tables: every SQL statement of the auth module lives here.
//!
//! The schema is `migrations/sqlite/0002_auth.sql`. Statements stay plain SQL with `?`
//! placeholders so the MySQL port only swaps the pool type. Ids travel as UUID strings and
//! times as milliseconds since the Unix epoch. Rows are turned into typed values here; a
//! row that does not parse is an internal error, never a silent default.

use anyhow::Context as _;
use sqlx::SqlitePool;
use uuid::Uuid;

use super::caller::{Role, roles_from_text, roles_to_text, with_user_role};
use super::now_ms;
use super::username::Username;
use crate::error::ApiError;

/// A user about to be inserted.
pub struct NewUser<'a> {
    pub uid: Uuid,
    pub username: &'a Username,
    pub password_hash: &'a str,
    /// Stored with [`Role::User`] added.
    pub roles: &'a [Role],
}

/// A user as login needs it.
#[derive(Debug)]
pub struct StoredUser {
    pub uid: Uuid,
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub active: bool,
}

/// An API key as authentication needs it, with its owner's standing.
#[derive(Debug)]
pub struct StoredApiKey {
    pub uid: Uuid,
    pub key_hash: String,
    pub revoked: bool,
    pub owner_roles: Vec<Role>,
    pub owner_active: bool,
}

/// An API key about to be inserted.
pub struct NewApiKey<'a> {
    pub key_id: &'a str,
    pub uid: Uuid,
    pub description: &'a str,
    pub key_hash: &'a str,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    uid: String,
    password_hash: String,
    roles: String,
    active: i64,
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    uid: String,
    key_hash: String,
    revoked_at_ms: Option<i64>,
    roles: String,
    active: i64,
}

/// Inserts an active user; a name taken in any case is 409 `username_taken`.
pub async fn insert_user(pool: &SqlitePool, user: NewUser<'_>) -> Result<(), ApiError> {
    let result = sqlx::query(
        "INSERT INTO users \
         (uid, username, username_lower, password_hash, roles, active, created_at_ms) \
         VALUES (?, ?, ?, ?, ?, 1, ?)",
    )
    .bind(user.uid.to_string())
    .bind(user.username.as_str())
    .bind(user.username.key())
    .bind(user.password_hash)
    .bind(roles_to_text(&with_user_role(user.roles)))
    .bind(now_ms())
    .execute(pool)
    .await;

    match result {
        Ok(_) => Ok(()),
        Err(error) if is_unique_violation(&error) => Err(ApiError::conflict(
            "username_taken",
            "this username is already taken",
        )),
        Err(error) => Err(query_failed("inserting user", error)),
    }
}

/// The user with this name in any case, if there is one.
pub async fn find_user(
    pool: &SqlitePool,
    username: &Username,
) -> Result<Option<StoredUser>, ApiError> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT uid, password_hash, roles, active FROM users WHERE username_lower = ?",
    )
    .bind(username.key())
    .fetch_optional(pool)
    .await
    .map_err(|error| query_failed("finding user", error))?;

    row.map(UserRow::into_stored)
        .transpose()
        .map_err(ApiError::Internal)
}

impl UserRow {
    fn into_stored(self) -> anyhow::Result<StoredUser> {
        Ok(StoredUser {
            uid: parse_uid(&self.uid)?,
            password_hash: self.password_hash,
            roles: roles_from_text(&self.roles).context("users.roles")?,
            active: self.active != 0,
        })
    }
}

/// Inserts a live API key.
pub async fn insert_api_key(pool: &SqlitePool, key: NewApiKey<'_>) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO api_keys (key_id, uid, description, key_hash, created_at_ms) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(key.key_id)
    .bind(key.uid.to_string())
    .bind(key.description)
    .bind(key.key_hash)
    .bind(now_ms())
    .execute(pool)
    .await
    .map_err(|error| query_failed("inserting api key", error))?;
    Ok(())
}

/// The key with this id and its owner's roles and standing, if there is one.
pub async fn find_api_key(
    pool: &SqlitePool,
    key_id: &str,
) -> Result<Option<StoredApiKey>, ApiError> {
    let row: Option<ApiKeyRow> = sqlx::query_as(
        "SELECT k.uid, k.key_hash, k.revoked_at_ms, u.roles, u.active \
         FROM api_keys k JOIN users u ON u.uid = k.uid \
         WHERE k.key_id = ?",
    )
    .bind(key_id)
    .fetch_optional(pool)
    .await
    .map_err(|error| query_failed("finding api key", error))?;

    row.map(ApiKeyRow::into_stored)
        .transpose()
        .map_err(ApiError::Internal)
}

impl ApiKeyRow {
    fn into_stored(self) -> anyhow::Result<StoredApiKey> {
        Ok(StoredApiKey {
            uid: parse_uid(&self.uid)?,
            key_hash: self.key_hash,
            revoked: self.revoked_at_ms.is_some(),
            owner_roles: roles_from_text(&self.roles).context("users.roles")?,
            owner_active: self.active != 0,
        })
    }
}

/// How many unrevoked keys `uid` holds.
pub async fn count_live_api_keys(pool: &SqlitePool, uid: Uuid) -> Result<i64, ApiError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE uid = ? AND revoked_at_ms IS NULL")
        .bind(uid.to_string())
        .fetch_one(pool)
        .await
        .map_err(|error| query_failed("counting api keys", error))
}

/// Revokes `owner`'s key `key_id`; `false` if `owner` has no such key.
///
/// Revoking twice keeps the first revocation time and still answers `true` (on MySQL that
/// needs sqlx's default `found_rows`, which counts matched rather than changed rows).
pub async fn revoke_api_key(
    pool: &SqlitePool,
    key_id: &str,
    owner: Uuid,
) -> Result<bool, ApiError> {
    let result = sqlx::query(
        "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, ?) \
         WHERE key_id = ? AND uid = ?",
    )
    .bind(now_ms())
    .bind(key_id)
    .bind(owner.to_string())
    .execute(pool)
    .await
    .map_err(|error| query_failed("revoking api key", error))?;
    Ok(result.rows_affected() == 1)
}

fn parse_uid(text: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(text).with_context(|| format!("stored uid `{text}` is not a uuid"))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database| database.is_unique_violation())
}

fn query_failed(action: &'static str, error: sqlx::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(error).context(action))
}
