//! Bearer tokens: the HS256 signing secret, issuing tokens at login and verifying them.
//!
//! Only HS256 is ever accepted: the algorithm is pinned in the validation, so a token whose
//! header says `none` or an asymmetric algorithm is refused before its signature is looked
//! at. Issuer, audience, expiry and subject are required. Every failure is the same 401
//! `invalid_token`; the reason is logged at debug level only.
//!
//! The secret never prints: [`JwtKeys`] has a redacted `Debug`, settings hand it over as a
//! [`SecretString`], and the generated file is readable by its owner only.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::caller::{Caller, CredentialKind, Role};
use crate::error::ApiError;

/// The `iss` claim of every token Tally issues and accepts.
pub const JWT_ISSUER: &str = "tally";

/// The `aud` claim of every token Tally issues and accepts.
pub const JWT_AUDIENCE: &str = "tally-api";

/// Shortest accepted secret: RFC 7518 section 3.2 asks for a key at least as long as the
/// HMAC-SHA256 output, 32 bytes.
pub const JWT_SECRET_BYTES_MIN: usize = 32;

/// Size of a generated secret: the SHA-256 block size, the most HMAC can use.
pub const JWT_SECRET_BYTES_GENERATED: usize = 64;

/// Name of the generated secret's file inside the data directory.
pub const JWT_SECRET_FILE_NAME: &str = "jwt-secret";

/// Longest token looked at; ours are about 400 bytes, so anything past this is garbage sent
/// to make us work.
pub const JWT_BYTES_MAX: usize = 4096;

/// Clock skew tolerated on `exp`, in seconds, between us and servers verifying our tokens.
pub const CLOCK_LEEWAY_S: u64 = 60;

/// Permissions of the generated secret file: read and write for its owner only.
#[cfg(unix)]
const SECRET_FILE_MODE: u32 = 0o600;

/// The claims inside every token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    roles: Vec<Role>,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    jti: Uuid,
}

/// A freshly signed token and its validity window (whole seconds, as in the claims).
#[derive(Debug)]
pub struct IssuedToken {
    pub token: SecretString,
    pub issued_at: DateTime<Utc>,
    pub expires_on: DateTime<Utc>,
}

/// Why the signing secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("jwt secret has {0} bytes; at least {JWT_SECRET_BYTES_MIN} are needed")]
    SecretTooShort(usize),
    #[error("could not read or write the jwt secret file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("jwt secret is not a usable hs256 key")]
    Key(#[source] jsonwebtoken::errors::Error),
}

/// The HS256 keys and the pinned validation rules.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl JwtKeys {
    /// Keys from a configured secret of at least [`JWT_SECRET_BYTES_MIN`] bytes.
    pub fn from_secret(secret: &SecretString) -> Result<Self, JwtKeyError> {
        Self::from_bytes(secret.expose_secret().as_bytes())
    }

    /// Keys from `<data_dir>/jwt-secret`, generating [`JWT_SECRET_BYTES_GENERATED`] random
    /// bytes into it (mode 0600) the first time.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, JwtKeyError> {
        let path = data_dir.join(JWT_SECRET_FILE_NAME);
        let file_error = |source| JwtKeyError::File {
            path: path.clone(),
            source,
        };

        fs::create_dir_all(data_dir).map_err(file_error)?;
        match create_secret_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "jwt secret generated"),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(file_error(error)),
        }

        let secret = SecretSlice::from(fs::read(&path).map_err(file_error)?);
        Self::from_bytes(secret.expose_secret())
    }

    fn from_bytes(secret: &[u8]) -> Result<Self, JwtKeyError> {
        if secret.len() < JWT_SECRET_BYTES_MIN {
            return Err(JwtKeyError::SecretTooShort(secret.len()));
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).map_err(JwtKeyError::Key)?,
            decoding: DecodingKey::from_secret(secret).map_err(JwtKeyError::Key)?,
            validation: pinned_validation(),
        })
    }

    /// Signs a token for `uid` with `roles`, valid for `lifetime_s` from now.
    pub fn issue(
        &self,
        uid: Uuid,
        roles: &[Role],
        lifetime_s: u32,
    ) -> Result<IssuedToken, ApiError> {
        let issued_at_s = Utc::now().timestamp();
        let expires_on_s = issued_at_s + i64::from(lifetime_s);
        let claims = Claims {
            sub: uid,
            roles: roles.to_vec(),
            iss: JWT_ISSUER.to_owned(),
            aud: JWT_AUDIENCE.to_owned(),
            iat: issued_at_s,
            exp: expires_on_s,
            jti: Uuid::new_v4(),
        };

        let header = Header::new(Algorithm::HS256);
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|error| {
            ApiError::internal(anyhow::Error::new(error).context("signing jwt"))
        })?;
        Ok(IssuedToken {
            token: SecretString::from(token),
            issued_at: utc_from_s(issued_at_s)?,
            expires_on: utc_from_s(expires_on_s)?,
        })
    }

    /// The caller a token speaks for, or 401 `invalid_token`.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        if token.len() > JWT_BYTES_MAX {
            tracing::debug!(token_bytes = token.len(), "jwt refused: too long");
            return Err(ApiError::InvalidToken);
        }
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(Caller {
                uid: data.claims.sub,
                roles: data.claims.roles,
                credential: CredentialKind::Token,
            }),
            Err(error) => {
                tracing::debug!(reason = ?error.kind(), "jwt refused");
                Err(ApiError::InvalidToken)
            }
        }
    }
}

/// HS256 only, our issuer and audience, and the claims we rely on present.
fn pinned_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = vec![Algorithm::HS256];
    validation.set_issuer(&[JWT_ISSUER]);
    validation.set_audience(&[JWT_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = CLOCK_LEEWAY_S;
    validation
}

/// Writes a new random secret; fails with `AlreadyExists` if one is there.
fn create_secret_file(path: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, SECRET_FILE_MODE);

    let mut secret = SecretSlice::from(vec![0_u8; JWT_SECRET_BYTES_GENERATED]);
    rand::rng().fill_bytes(secret.expose_secret_mut());

    let mut file = options.open(path)?;
    file.write_all(secret.expose_secret())?;
    file.sync_all()
}

fn utc_from_s(timestamp_s: i64) -> Result<DateTime<Utc>, ApiError> {
    DateTime::from_timestamp(timestamp_s, 0)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("timestamp {timestamp_s} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::from_secret(&SecretString::from(secret.to_owned())).expect("keys")
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_issued_token_verifies_to_its_caller() {
        let keys = keys(SECRET);
        let uid = Uuid::now_v7();
        let issued = keys
            .issue(uid, &[Role::User, Role::Admin], 3600)
            .expect("issued");

        let caller = keys.verify(issued.token.expose_secret()).expect("valid");

        assert_eq!(caller.uid, uid);
        assert_eq!(caller.roles, vec![Role::User, Role::Admin]);
        assert_eq!((issued.expires_on - issued.issued_at).num_seconds(), 3600);
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        let result = JwtKeys::from_secret(&SecretString::from("x".repeat(31)));
        assert!(matches!(result, Err(JwtKeyError::SecretTooShort(31))));
    }

    #[test]
    fn debug_output_does_not_show_the_secret() {
        assert_eq!(
            format!("{:?}", keys(SECRET)),
            r#"JwtKeys { secret: "[REDACTED]" }"#
        );
    }

    #[test]
    fn an_oversized_token_is_refused_unread() {
        let error = keys(SECRET)
            .verify(&"a".repeat(JWT_BYTES_MAX + 1))
            .expect_err("refused");
        assert_eq!(error.kind().code, "invalid_token");
    }

    #[test]
    fn the_secret_file_is_created_once_with_owner_only_access() {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let first = JwtKeys::load_or_create(data_dir.path()).expect("created");
        let written = fs::read(data_dir.path().join(JWT_SECRET_FILE_NAME)).expect("file");
        let second = JwtKeys::load_or_create(data_dir.path()).expect("loaded");

        let issued = first
            .issue(Uuid::now_v7(), &[Role::User], 60)
            .expect("issued");
        assert!(second.verify(issued.token.expose_secret()).is_ok());
        assert_eq!(written.len(), JWT_SECRET_BYTES_GENERATED);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let path = data_dir.path().join(JWT_SECRET_FILE_NAME);
            let mode = fs::metadata(path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, SECRET_FILE_MODE);
        }
    }
}
