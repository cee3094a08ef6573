//! Passwords: the policy a new password must meet, and bcrypt hashing and verifying.
//!
//! The policy is deliberately short and checkable by a person: at least
//! [`PASSWORD_CHARS_MIN`] characters, at least [`PASSWORD_DISTINCT_CHARS_MIN`] different
//! characters, not the username, and at most [`PASSWORD_BYTES_MAX`] bytes. Failing the first
//! three is 400 `weak_password`; the last is 400 `password_too_long`.
//!
//! bcrypt is CPU-heavy, so it runs on tokio's blocking pool, at most
//! [`BCRYPT_CONCURRENT_MAX`] at a time; a request that cannot get a turn within
//! [`BCRYPT_TURN_WAIT_MS_MAX`] gets 503 instead of queueing without bound.

use std::collections::HashSet;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use super::username::Username;
use crate::error::ApiError;

/// Shortest password, in characters: length is what makes guessing expensive.
pub const PASSWORD_CHARS_MIN: usize = 12;

/// Fewest different characters, to refuse `aaaaaaaaaaaa` and `abababababab`.
pub const PASSWORD_DISTINCT_CHARS_MIN: usize = 4;

/// Longest password, in UTF-8 bytes: bcrypt ignores everything past byte 72, so a longer
/// password would silently be only partly checked. It is refused instead.
pub const PASSWORD_BYTES_MAX: usize = 72;

/// bcrypt hashes running at once; each holds a core for the whole hash.
///
/// Four keeps a login flood from starving the command and projection work on a small server.
pub const BCRYPT_CONCURRENT_MAX: usize = 4;

/// How long a request waits for a bcrypt turn before answering 503: a few hashes' worth.
pub const BCRYPT_TURN_WAIT_MS_MAX: u64 = 2_000;

/// Retry-After sent when no bcrypt turn was free.
const BCRYPT_BUSY_RETRY_AFTER_S: u32 = 1;

/// A well-formed bcrypt salt and digest that no password is known to match (the hash of
/// random bytes that were thrown away).
///
/// Logging in as an unknown user verifies against this, with the configured cost spliced
/// in, so the answer takes as long as a wrong password for a real user.
const DUMMY_SALT_AND_DIGEST: &str = "2bTL/Mz69whlbrCiWyiTCu/IIWkewpmRhdS08/.XGZAmE1YZiK8c.";

static BCRYPT_TURNS: Semaphore = Semaphore::const_new(BCRYPT_CONCURRENT_MAX);

/// Checks a new password against the policy.
pub fn check_policy(password: &SecretString, username: &Username) -> Result<(), ApiError> {
    let password = password.expose_secret();
    if password.len() > PASSWORD_BYTES_MAX {
        let detail = format!("a password has at most {PASSWORD_BYTES_MAX} bytes");
        return Err(ApiError::invalid("password_too_long", detail));
    }

    let chars_count = password.chars().count();
    let distinct_count = password.chars().collect::<HashSet<_>>().len();
    let is_username = password.eq_ignore_ascii_case(username.as_str());
    if chars_count < PASSWORD_CHARS_MIN
        || distinct_count < PASSWORD_DISTINCT_CHARS_MIN
        || is_username
    {
        return Err(ApiError::invalid("weak_password", weak_password_detail()));
    }
    Ok(())
}

fn weak_password_detail() -> String {
    format!(
        "a password has at least {PASSWORD_CHARS_MIN} characters, at least \
         {PASSWORD_DISTINCT_CHARS_MIN} different ones, and is not the username"
    )
}

/// Hashes a password with a fresh salt at `cost`.
pub async fn hash(password: &SecretString, cost: u32) -> Result<String, ApiError> {
    let password = password.clone();
    run_bcrypt(move || bcrypt::hash(password.expose_secret(), cost)).await
}

/// Whether `password` matches `stored_hash`.
///
/// With no stored hash (unknown user) it verifies against a dummy hash at `cost` and
/// answers `false`, taking as long as a real check.
pub async fn verify(
    password: &SecretString,
    stored_hash: Option<String>,
    cost: u32,
) -> Result<bool, ApiError> {
    let password = password.clone();
    let user_known = stored_hash.is_some();
    let hash = stored_hash.unwrap_or_else(|| format!("$2b${cost:02}${DUMMY_SALT_AND_DIGEST}"));

    let matches = run_bcrypt(move || bcrypt::verify(password.expose_secret(), &hash)).await?;
    Ok(matches && user_known)
}

/// Runs one bcrypt operation on the blocking pool once a turn is free.
async fn run_bcrypt<T, F>(operation: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
{
    let wait = Duration::from_millis(BCRYPT_TURN_WAIT_MS_MAX);
    let Ok(Ok(_turn)) = tokio::time::timeout(wait, BCRYPT_TURNS.acquire()).await else {
        tracing::warn!("no bcrypt turn free");
        return Err(ApiError::ServiceUnavailable {
            retry_after_s: BCRYPT_BUSY_RETRY_AFTER_S,
        });
    };

    let outcome = tokio::task::spawn_blocking(operation)
        .await
        .map_err(ApiError::internal)?;
    outcome.map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    fn ada() -> Username {
        Username::parse("ada").expect("valid")
    }

    fn code_of(password: &str) -> Option<&'static str> {
        check_policy(&secret(password), &ada())
            .err()
            .map(|error| error.kind().code)
    }

    #[test]
    fn a_long_varied_password_meets_the_policy() {
        assert_eq!(code_of("correct horse battery"), None);
    }

    #[test]
    fn short_repetitive_or_username_passwords_are_weak() {
        assert_eq!(code_of("short1!"), Some("weak_password"));
        assert_eq!(code_of("abababababababab"), Some("weak_password"));
        let username = Username::parse("ada.lovelace.1815").expect("valid");
        let error = check_policy(&secret("Ada.Lovelace.1815"), &username).expect_err("weak");
        assert_eq!(error.kind().code, "weak_password");
    }

    #[test]
    fn a_password_bcrypt_would_truncate_is_too_long() {
        assert_eq!(code_of(&"0123456789".repeat(7)), None);
        assert_eq!(code_of(&"0123456789".repeat(8)), Some("password_too_long"));
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash(&secret("correct horse battery"), 10)
            .await
            .expect("hash");

        let right = verify(&secret("correct horse battery"), Some(hash.clone()), 10).await;
        let wrong = verify(&secret("correct horse battery!"), Some(hash), 10).await;

        assert!(right.expect("verify"));
        assert!(!wrong.expect("verify"));
    }

    #[tokio::test]
    async fn an_unknown_user_is_checked_against_a_well_formed_dummy_hash() {
        let matches = verify(&secret("anything at all"), None, 10).await;
        assert!(!matches.expect("dummy hash parses"));
    }
}
