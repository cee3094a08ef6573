//! API keys: their format, generation, hashing and the check a presented key must pass.
//!
//! A key reads `tally_<keyId>_<secret>`: the prefix lets secret scanners spot leaked keys,
//! the 12-character alphanumeric key id finds the row, and the secret is 32 random bytes in
//! unpadded base64url. Only the SHA-256 of the whole key is stored (a fast hash suffices:
//! the secret has 256 bits of entropy, nothing to guess). Hashes are compared in constant
//! time. A revoked key, or one whose owner is inactive, is 401 `invalid_api_key`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rand::distr::{Alphanumeric, SampleString as _};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tally_projections::ReadStore;

use super::caller::{Caller, CredentialKind};
use super::store;
use crate::error::ApiError;

/// Prefix of every key, so leaked keys are recognisable.
pub const API_KEY_PREFIX: &str = "tally_";

/// Length of a key id: 62^12 (about 2^71) ids make collisions practically impossible.
pub const KEY_ID_CHARS: usize = 12;

/// Random bytes in a key's secret: 256 bits, beyond guessing.
pub const KEY_SECRET_BYTES: usize = 32;

/// Length of the secret once base64url-encoded without padding: six bits per character.
const KEY_SECRET_CHARS: usize = (KEY_SECRET_BYTES * 8).div_ceil(6);

/// Longest key description, in characters: a sentence saying where the key is used.
pub const DESCRIPTION_CHARS_MAX: usize = 200;

/// Live (unrevoked) keys one user may hold; more means keys are being leaked or lost.
pub const API_KEYS_PER_USER_MAX: i64 = 100;

/// A newly generated key. `key` is shown to its owner once and never stored.
pub struct GeneratedKey {
    pub key_id: String,
    pub key: SecretString,
    pub key_hash: String,
}

/// Makes a new random key.
pub fn generate() -> GeneratedKey {
    let mut rng = rand::rng();
    let key_id = Alphanumeric.sample_string(&mut rng, KEY_ID_CHARS);
    let mut secret = [0_u8; KEY_SECRET_BYTES];
    rng.fill_bytes(&mut secret);

    let key = format!(
        "{API_KEY_PREFIX}{key_id}_{}",
        URL_SAFE_NO_PAD.encode(secret)
    );
    let key_hash = hash(&key);
    GeneratedKey {
        key_id,
        key: SecretString::from(key),
        key_hash,
    }
}

/// The hex SHA-256 of a whole key, as stored.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key id of a well-formed key, or `None`.
pub fn key_id_of(key: &str) -> Option<&str> {
    let (key_id, secret) = key.strip_prefix(API_KEY_PREFIX)?.split_once('_')?;
    let secret_ok = secret.len() == KEY_SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (is_key_id(key_id) && secret_ok).then_some(key_id)
}

/// Whether `text` has the shape of a key id.
pub fn is_key_id(text: &str) -> bool {
    text.len() == KEY_ID_CHARS && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks a description: 1 to [`DESCRIPTION_CHARS_MAX`] characters, not only blanks.
pub fn check_description(description: &str) -> Result<(), ApiError> {
    let chars_count = description.chars().count();
    let has_control = description.chars().any(char::is_control);
    if description.trim().is_empty() || chars_count > DESCRIPTION_CHARS_MAX || has_control {
        let detail = format!(
            "a description has 1 to {DESCRIPTION_CHARS_MAX} characters and no control characters"
        );
        return Err(ApiError::invalid("invalid_description", detail));
    }
    Ok(())
}

/// The caller a presented key belongs to, or 401 `invalid_api_key`.
pub async fn authenticate(read_store: &ReadStore, key: &str) -> Result<Caller, ApiError> {
    let Some(key_id) = key_id_of(key) else {
        tracing::debug!("api key refused: malformed");
        return Err(ApiError::InvalidApiKey);
    };
    let Some(stored) = store::find_api_key(read_store, key_id).await? else {
        tracing::debug!(key_id, "api key refused: unknown id");
        return Err(ApiError::InvalidApiKey);
    };

    let hash_matches: bool = hash(key)
        .as_bytes()
        .ct_eq(stored.key_hash.as_bytes())
        .into();
    if !hash_matches || stored.revoked || !stored.owner_active {
        tracing::debug!(
            key_id,
            stored.revoked,
            stored.owner_active,
            "api key refused"
        );
        return Err(ApiError::InvalidApiKey);
    }
    Ok(Caller {
        uid: stored.uid,
        roles: stored.owner_roles,
        credential: CredentialKind::ApiKey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn a_generated_key_has_the_documented_shape() {
        let generated = generate();
        let key = generated.key.expose_secret();

        assert_eq!(key.len(), API_KEY_PREFIX.len() + KEY_ID_CHARS + 1 + 43);
        assert_eq!(key_id_of(key), Some(generated.key_id.as_str()));
        assert_eq!(generated.key_hash, hash(key));
        assert_eq!(generated.key_hash.len(), 64);
    }

    #[test]
    fn keys_with_a_wrong_prefix_id_or_secret_are_malformed() {
        let key = generate().key.expose_secret().to_owned();
        assert_eq!(key_id_of(&key.replacen("tally_", "tal1y_", 1)), None);
        assert_eq!(key_id_of(&format!("{key}A")), None);
        assert_eq!(key_id_of(&key[..key.len() - 1]), None);
        assert_eq!(key_id_of("tally_short_secret"), None);
    }

    #[test]
    fn a_description_is_one_to_two_hundred_characters() {
        assert!(check_description("ci deploys").is_ok());
        assert!(check_description(&"é".repeat(200)).is_ok());
        assert!(check_description(&"é".repeat(201)).is_err());
        assert!(check_description("   ").is_err());
    }
}
