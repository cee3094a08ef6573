//! Who is calling: users, passwords, bearer tokens, API keys and roles.
//!
//! A caller proves who they are with a short-lived HS256 JWT (after logging in with a
//! username and password) or with a long-lived API key. Either way, handlers receive a
//! [`Caller`] and check roles on it; they never look at headers themselves.
//!
//! - [`username`] and [`password`]: the rules for credentials and bcrypt hashing.
//! - [`jwt`]: the signing secret, issuing and verifying tokens.
//! - [`api_key`]: generating, parsing and checking API keys.
//! - [`store`]: the `users` and `api_keys` tables (SQL lives only there).
//! - [`caller`]: [`Role`], [`Caller`] and the extractor that authenticates a request.
//! - [`routes`]: the signup, login, key and verification endpoints.
//!
//! Tokens are stateless: a user deactivated after login keeps a valid token until it expires
//! (at most [`TOKEN_LIFETIME_S_MAX`]). API keys are checked against the database each time.

pub mod api_key;
pub mod caller;
pub mod jwt;
pub mod password;
pub mod routes;
pub mod store;
pub mod username;

use std::sync::Arc;

use secrecy::SecretString;
use tally_projections::ReadStore;
use uuid::Uuid;

pub use caller::{Caller, CredentialKind, Role};
pub use jwt::JwtKeys;
pub use routes::router;

use crate::error::ApiError;
use username::Username;

/// bcrypt work factor used unless settings say otherwise.
///
/// Cost 12 takes about a quarter of a second per hash on a current server core: slow enough
/// to make offline guessing expensive, fast enough that login stays interactive.
pub const BCRYPT_COST_DEFAULT: u32 = 12;

/// Lowest bcrypt cost settings may choose; below 10 a stolen hash falls too quickly.
pub const BCRYPT_COST_MIN: u32 = 10;

/// Highest bcrypt cost settings may choose; cost 16 is about 4 s per hash, near the request
/// timeout, and each step doubles it.
pub const BCRYPT_COST_MAX: u32 = 16;

/// Token lifetime unless settings say otherwise: one working session, short enough that a
/// leaked token is soon useless.
pub const TOKEN_LIFETIME_S_DEFAULT: u32 = 60 * 60;

/// Shortest token lifetime: anything shorter is swallowed by [`jwt::CLOCK_LEEWAY_S`].
pub const TOKEN_LIFETIME_S_MIN: u32 = 60;

/// Longest token lifetime: tokens cannot be revoked, so they must die within a day.
pub const TOKEN_LIFETIME_S_MAX: u32 = 24 * 60 * 60;

/// The tunable parts of authentication, validated when built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSettings {
    bcrypt_cost: u32,
    token_lifetime_s: u32,
}

/// A setting outside its allowed range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthSettingsError {
    #[error("bcrypt cost {0} is outside {BCRYPT_COST_MIN}..={BCRYPT_COST_MAX}")]
    BcryptCostOutOfRange(u32),
    #[error("token lifetime {0} s is outside {TOKEN_LIFETIME_S_MIN}..={TOKEN_LIFETIME_S_MAX}")]
    TokenLifetimeOutOfRange(u32),
}

impl AuthSettings {
    pub fn new(bcrypt_cost: u32, token_lifetime_s: u32) -> Result<Self, AuthSettingsError> {
        if !(BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&bcrypt_cost) {
            return Err(AuthSettingsError::BcryptCostOutOfRange(bcrypt_cost));
        }
        if !(TOKEN_LIFETIME_S_MIN..=TOKEN_LIFETIME_S_MAX).contains(&token_lifetime_s) {
            return Err(AuthSettingsError::TokenLifetimeOutOfRange(token_lifetime_s));
        }
        Ok(Self {
            bcrypt_cost,
            token_lifetime_s,
        })
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    pub fn token_lifetime_s(&self) -> u32 {
        self.token_lifetime_s
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            bcrypt_cost: BCRYPT_COST_DEFAULT,
            token_lifetime_s: TOKEN_LIFETIME_S_DEFAULT,
        }
    }
}

/// Everything the auth endpoints and the [`Caller`] extractor need.
///
/// Mount it in a larger app state and implement `FromRef<AppState> for AuthState`.
#[derive(Debug, Clone)]
pub struct AuthState {
    /// The read store's database, which holds the `users` and `api_keys` tables too.
    pub store: ReadStore,
    pub jwt: Arc<JwtKeys>,
    pub settings: AuthSettings,
}

/// Creates an active user with the given roles ([`Role::User`] is always added).
///
/// Signup uses it with no extra roles; the CLI uses it to bootstrap admin and service
/// accounts. Fails with `invalid_username`, `weak_password`, `password_too_long` (400) or
/// `username_taken` (409).
pub async fn create_user(
    read_store: &ReadStore,
    settings: &AuthSettings,
    username: &str,
    password: &SecretString,
    roles: &[Role],
) -> Result<Uuid, ApiError> {
    let username = Username::parse(username)?;
    password::check_policy(password, &username)?;
    let password_hash = password::hash(password, settings.bcrypt_cost()).await?;

    let uid = Uuid::now_v7();
    let user = store::NewUser {
        uid,
        username: &username,
        password_hash: &password_hash,
        roles,
    };
    store::insert_user(read_store, user).await?;
    tracing::info!(%uid, "user created");
    Ok(uid)
}

/// Milliseconds since the Unix epoch, the unit of every stored timestamp.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bcrypt_cost_below_ten_is_refused() {
        assert_eq!(
            AuthSettings::new(9, 3600),
            Err(AuthSettingsError::BcryptCostOutOfRange(9))
        );
        assert!(AuthSettings::new(10, 3600).is_ok());
    }

    #[test]
    fn a_token_lifetime_beyond_a_day_is_refused() {
        let error = AuthSettings::new(12, TOKEN_LIFETIME_S_MAX + 1).expect_err("refused");
        assert_eq!(
            error,
            AuthSettingsError::TokenLifetimeOutOfRange(TOKEN_LIFETIME_S_MAX + 1)
        );
    }

    #[test]
    fn the_defaults_are_cost_twelve_and_one_hour() {
        let settings = AuthSettings::default();
        assert_eq!(
            (settings.bcrypt_cost(), settings.token_lifetime_s()),
            (12, 3600)
        );
    }
}
