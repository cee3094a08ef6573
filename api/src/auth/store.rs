//! The `users` and `api_keys` tables: every SQL statement of the auth module lives here.
//!
//! The schema is `0002_auth.sql` (`migrations/sqlite/` and its twin in `migrations/mysql/`).
//! Each statement is written once, generic over the read store's [`Backend`], and runs on
//! SQLite or MySQL. Ids travel as UUID strings and times as milliseconds since the Unix
//! epoch. Rows are turned into typed values here; a row that does not parse is an internal
//! error, never a silent default.

use anyhow::Context as _;
use sqlx::Pool;
use tally_projections::{Backend, Get, ReadStore, Sql, with_pool};
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

/// A `users` row as stored.
struct UserRow {
    uid: String,
    password_hash: String,
    roles: String,
    active: i64,
}

/// An `api_keys` row joined with its owner's roles and standing, as stored.
struct ApiKeyRow {
    uid: String,
    key_hash: String,
    revoked_at_ms: Option<i64>,
    roles: String,
    active: i64,
}

/// Inserts an active user; a name taken in any case is 409 `username_taken`.
pub async fn insert_user(store: &ReadStore, user: NewUser<'_>) -> Result<(), ApiError> {
    let result = with_pool!(store, pool => insert_user_on(pool, user).await);
    match result {
        Ok(()) => Ok(()),
        Err(error) if is_unique_violation(&error) => Err(ApiError::conflict(
            "username_taken",
            "this username is already taken",
        )),
        Err(error) => Err(query_failed("inserting user", error)),
    }
}

async fn insert_user_on<DB: Backend>(
    pool: &Pool<DB>,
    user: NewUser<'_>,
) -> Result<(), sqlx::Error> {
    Sql::<DB>::new(
        "INSERT INTO users \
         (uid, username, username_lower, password_hash, roles, active, created_at_ms) \
         VALUES (?, ?, ?, ?, ?, 1, ?)",
    )
    .bind(user.uid.to_string())
    .bind(user.username.as_str().to_owned())
    .bind(user.username.key())
    .bind(user.password_hash.to_owned())
    .bind(roles_to_text(&with_user_role(user.roles)))
    .bind(now_ms())
    .execute(&mut *pool.acquire().await?)
    .await?;
    Ok(())
}

/// The user with this name in any case, if there is one.
pub async fn find_user(
    store: &ReadStore,
    username: &Username,
) -> Result<Option<StoredUser>, ApiError> {
    let row = with_pool!(store, pool => find_user_on(pool, username.key()).await)
        .map_err(|error| query_failed("finding user", error))?;
    row.map(UserRow::into_stored)
        .transpose()
        .map_err(ApiError::Internal)
}

async fn find_user_on<DB: Backend>(
    pool: &Pool<DB>,
    username_key: String,
) -> Result<Option<UserRow>, sqlx::Error> {
    let row = Sql::<DB>::new(
        "SELECT uid, password_hash, roles, active FROM users WHERE username_lower = ?",
    )
    .bind(username_key)
    .fetch_optional(&mut *pool.acquire().await?)
    .await?;
    row.map(|row| UserRow::read::<DB>(&row)).transpose()
}

impl UserRow {
    fn read<DB: Backend>(row: &DB::Row) -> Result<UserRow, sqlx::Error> {
        Ok(UserRow {
            uid: row.value("uid")?,
            password_hash: row.value("password_hash")?,
            roles: row.value("roles")?,
            active: row.value("active")?,
        })
    }

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
pub async fn insert_api_key(store: &ReadStore, key: NewApiKey<'_>) -> Result<(), ApiError> {
    with_pool!(store, pool => insert_api_key_on(pool, key).await)
        .map_err(|error| query_failed("inserting api key", error))
}

async fn insert_api_key_on<DB: Backend>(
    pool: &Pool<DB>,
    key: NewApiKey<'_>,
) -> Result<(), sqlx::Error> {
    Sql::<DB>::new(
        "INSERT INTO api_keys (key_id, uid, description, key_hash, created_at_ms) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(key.key_id.to_owned())
    .bind(key.uid.to_string())
    .bind(key.description.to_owned())
    .bind(key.key_hash.to_owned())
    .bind(now_ms())
    .execute(&mut *pool.acquire().await?)
    .await?;
    Ok(())
}

/// The key with this id and its owner's roles and standing, if there is one.
pub async fn find_api_key(
    store: &ReadStore,
    key_id: &str,
) -> Result<Option<StoredApiKey>, ApiError> {
    let row = with_pool!(store, pool => find_api_key_on(pool, key_id).await)
        .map_err(|error| query_failed("finding api key", error))?;
    row.map(ApiKeyRow::into_stored)
        .transpose()
        .map_err(ApiError::Internal)
}

async fn find_api_key_on<DB: Backend>(
    pool: &Pool<DB>,
    key_id: &str,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    let row = Sql::<DB>::new(
        "SELECT k.uid, k.key_hash, k.revoked_at_ms, u.roles, u.active \
         FROM api_keys k JOIN users u ON u.uid = k.uid \
         WHERE k.key_id = ?",
    )
    .bind(key_id.to_owned())
    .fetch_optional(&mut *pool.acquire().await?)
    .await?;
    row.map(|row| ApiKeyRow::read::<DB>(&row)).transpose()
}

impl ApiKeyRow {
    fn read<DB: Backend>(row: &DB::Row) -> Result<ApiKeyRow, sqlx::Error> {
        Ok(ApiKeyRow {
            uid: row.value("uid")?,
            key_hash: row.value("key_hash")?,
            revoked_at_ms: row.value("revoked_at_ms")?,
            roles: row.value("roles")?,
            active: row.value("active")?,
        })
    }

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
pub async fn count_live_api_keys(store: &ReadStore, uid: Uuid) -> Result<i64, ApiError> {
    with_pool!(store, pool => count_live_api_keys_on(pool, uid).await)
        .map_err(|error| query_failed("counting api keys", error))
}

async fn count_live_api_keys_on<DB: Backend>(
    pool: &Pool<DB>,
    uid: Uuid,
) -> Result<i64, sqlx::Error> {
    let row = Sql::<DB>::new(
        "SELECT COUNT(*) AS live FROM api_keys WHERE uid = ? AND revoked_at_ms IS NULL",
    )
    .bind(uid.to_string())
    .fetch_one(&mut *pool.acquire().await?)
    .await?;
    row.value("live")
}

/// Revokes `owner`'s key `key_id`; `false` if `owner` has no such key.
///
/// Revoking twice keeps the first revocation time and still answers `true`. That rests on
/// the affected-row count counting rows matched, not rows changed: SQLite always does, and
/// MySQL does with sqlx's default `CLIENT_FOUND_ROWS`.
pub async fn revoke_api_key(
    store: &ReadStore,
    key_id: &str,
    owner: Uuid,
) -> Result<bool, ApiError> {
    with_pool!(store, pool => revoke_api_key_on(pool, key_id, owner).await)
        .map_err(|error| query_failed("revoking api key", error))
}

async fn revoke_api_key_on<DB: Backend>(
    pool: &Pool<DB>,
    key_id: &str,
    owner: Uuid,
) -> Result<bool, sqlx::Error> {
    let result = Sql::<DB>::new(
        "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, ?) \
         WHERE key_id = ? AND uid = ?",
    )
    .bind(now_ms())
    .bind(key_id.to_owned())
    .bind(owner.to_string())
    .execute(&mut *pool.acquire().await?)
    .await?;
    Ok(DB::rows_affected(&result) == 1)
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
    ApiError::from_store(error.into(), action)
}

#[cfg(test)]
mod tests {
    use tally_projections::backend_tests;
    use tally_projections::test_support::{TestBackend, TestStore};

    use super::*;

    /// Not a real bcrypt hash: these tests never check a password.
    const HASH: &str = "$2b$10$notarealhashnotarealhashnotarealhashnotarealhashnota";

    async fn user(store: &ReadStore, name: &str, roles: &[Role]) -> Result<Uuid, ApiError> {
        let uid = Uuid::now_v7();
        let username = Username::parse(name)?;
        let new_user = NewUser {
            uid,
            username: &username,
            password_hash: HASH,
            roles,
        };
        insert_user(store, new_user).await.map(|()| uid)
    }

    async fn key(store: &ReadStore, key_id: &str, uid: Uuid) {
        let key_hash = "ab".repeat(32);
        let new_key = NewApiKey {
            key_id,
            uid,
            description: "ci deploys",
            key_hash: &key_hash,
        };
        insert_api_key(store, new_key).await.expect("key inserted");
    }

    backend_tests!(
        a_user_reads_back_with_its_roles_and_a_name_taken_in_another_case_is_refused,
        a_key_reads_back_with_its_owner_and_revoking_it_twice_keeps_it_revoked,
    );

    async fn a_user_reads_back_with_its_roles_and_a_name_taken_in_another_case_is_refused(
        backend: TestBackend,
    ) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let uid = user(store, "Ada.Lovelace", &[Role::Admin]).await.unwrap();

        let again = user(store, "ada.LOVELACE", &[]).await;
        let found = find_user(store, &Username::parse("ADA.lovelace").unwrap()).await;

        assert_eq!(again.unwrap_err().code(), "username_taken");
        let found = found.unwrap().expect("found in any case");
        assert_eq!(found.uid, uid);
        assert_eq!(found.roles, vec![Role::User, Role::Admin]);
        assert_eq!((found.password_hash.as_str(), found.active), (HASH, true));
        let nobody = find_user(store, &Username::parse("grace").unwrap()).await;
        assert!(nobody.unwrap().is_none());
    }

    async fn a_key_reads_back_with_its_owner_and_revoking_it_twice_keeps_it_revoked(
        backend: TestBackend,
    ) {
        let test = TestStore::open(backend).await;
        let store = test.store();
        let owner = user(store, "grace", &[Role::Service]).await.unwrap();
        let other = user(store, "linus", &[]).await.unwrap();
        key(store, "AbCdEfGh1234", owner).await;
        key(store, "abcdefgh1234", owner).await;

        let found = find_api_key(store, "AbCdEfGh1234").await.unwrap().unwrap();
        assert_eq!(found.uid, owner);
        assert_eq!(found.owner_roles, vec![Role::User, Role::Service]);
        assert!(found.owner_active && !found.revoked);
        assert_eq!(count_live_api_keys(store, owner).await.unwrap(), 2);

        assert!(!revoke_api_key(store, "AbCdEfGh1234", other).await.unwrap());
        assert!(revoke_api_key(store, "AbCdEfGh1234", owner).await.unwrap());
        assert!(revoke_api_key(store, "AbCdEfGh1234", owner).await.unwrap());

        let revoked = find_api_key(store, "AbCdEfGh1234").await.unwrap().unwrap();
        assert!(revoked.revoked);
        let other_case = find_api_key(store, "abcdefgh1234").await.unwrap().unwrap();
        assert!(
            !other_case.revoked,
            "key ids differing only in case are different keys"
        );
        assert_eq!(count_live_api_keys(store, owner).await.unwrap(), 1);
        assert!(find_api_key(store, "zzzzzzzzzzzz").await.unwrap().is_none());
    }
}
