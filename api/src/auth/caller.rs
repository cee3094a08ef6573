//! The authenticated caller of a request, its roles, and the extractor that finds it.
//!
//! A handler that takes a [`Caller`] argument is authenticated: the extractor reads
//! `Authorization: Bearer <jwt>` or, failing that, `X-API-Key: <key>`. With neither it
//! answers 401 `unauthorized`; with a bad one 401 `invalid_token` or `invalid_api_key`.
//! Authorisation (which roles may do what) is the handler's call, through
//! [`Caller::require_role`].

use std::fmt;
use std::str::FromStr;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AuthState, api_key};
use crate::error::ApiError;

/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// What a caller may do. Every user has [`Role::User`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Every account: its own accounts and keys.
    #[serde(rename = "ROLE_USER")]
    User,
    /// Operators: every account, user administration.
    #[serde(rename = "ROLE_ADMIN")]
    Admin,
    /// Other systems calling Tally with an API key.
    #[serde(rename = "ROLE_SERVICE")]
    Service,
}

impl Role {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "ROLE_USER",
            Self::Admin => "ROLE_ADMIN",
            Self::Service => "ROLE_SERVICE",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role `{0}`")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, UnknownRole> {
        match name {
            "ROLE_USER" => Ok(Self::User),
            "ROLE_ADMIN" => Ok(Self::Admin),
            "ROLE_SERVICE" => Ok(Self::Service),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// `roles` plus [`Role::User`], sorted and without repeats.
pub fn with_user_role(roles: &[Role]) -> Vec<Role> {
    let mut all = roles.to_vec();
    all.push(Role::User);
    all.sort_unstable();
    all.dedup();
    all
}

/// Roles as stored: names joined by commas (`user,admin`).
pub fn roles_to_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses the stored comma list; an empty string is no roles.
pub fn roles_from_text(text: &str) -> Result<Vec<Role>, UnknownRole> {
    text.split(',')
        .filter(|name| !name.is_empty())
        .map(Role::from_str)
        .collect()
}

/// Who is making the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: Uuid,
    pub roles: Vec<Role>,
    pub credential: CredentialKind,
}

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A token issued at login with the user's password.
    Token,
    /// An API key.
    ApiKey,
}

impl Caller {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(Role::Admin)
    }

    /// Ok if the caller logged in with a password, else 403 `forbidden`. Keys
    /// are managed only this way, so that a leaked key cannot mint keys that outlive it.
    pub fn require_password_login(&self) -> Result<(), ApiError> {
        if self.credential == CredentialKind::Token {
            return Ok(());
        }
        let detail = "api keys are managed with a token from /login, not with an api key";
        Err(ApiError::Forbidden {
            detail: detail.to_owned(),
        })
    }

    /// Ok if the caller has `role`, else 403 `forbidden`.
    pub fn require_role(&self, role: Role) -> Result<(), ApiError> {
        if self.has_role(role) {
            return Ok(());
        }
        Err(ApiError::Forbidden {
            detail: format!("this needs the {role} role"),
        })
    }
}

impl<S> FromRequestParts<S> for Caller
where
    AuthState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = AuthState::from_ref(state);
        match Credential::from_headers(&parts.headers)? {
            Credential::BearerToken(token) => auth.jwt.verify(token),
            Credential::ApiKey(key) => api_key::authenticate(&auth.store, key).await,
        }
    }
}

/// The credential a request presents, borrowed from its headers.
enum Credential<'a> {
    BearerToken(&'a str),
    ApiKey(&'a str),
}

impl<'a> Credential<'a> {
    /// Exactly one credential header, once: a request that sends both, or either twice, could
    /// act for either of two principals, so it is refused rather than resolved by a
    /// precedence rule.
    fn from_headers(headers: &'a HeaderMap) -> Result<Self, ApiError> {
        let presented = headers.get_all(AUTHORIZATION).iter().count()
            + headers.get_all(API_KEY_HEADER).iter().count();
        if presented > 1 {
            return Err(ApiError::invalid(
                "ambiguous_credentials",
                "send one Authorization bearer token or one X-API-Key, not both or two of either",
            ));
        }
        if let Some(value) = headers.get(AUTHORIZATION) {
            let value = value.to_str().map_err(|_| ApiError::InvalidToken)?;
            return bearer_token(value)
                .map(Self::BearerToken)
                .ok_or(ApiError::InvalidToken);
        }
        if let Some(value) = headers.get(API_KEY_HEADER) {
            let value = value.to_str().map_err(|_| ApiError::InvalidApiKey)?;
            return Ok(Self::ApiKey(value.trim()));
        }
        Err(ApiError::Unauthorized)
    }
}

/// The token of a `Bearer` authorization; the scheme name is case-insensitive (RFC 9110).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_stored_text() {
        let roles = with_user_role(&[Role::Service, Role::Admin, Role::Admin]);
        assert_eq!(roles, vec![Role::User, Role::Admin, Role::Service]);
        assert_eq!(roles_to_text(&roles), "ROLE_USER,ROLE_ADMIN,ROLE_SERVICE");
        assert_eq!(
            roles_from_text("ROLE_USER,ROLE_ADMIN,ROLE_SERVICE"),
            Ok(roles)
        );
        assert_eq!(
            roles_from_text("ROLE_USER,root"),
            Err(UnknownRole("root".to_owned()))
        );
    }

    #[test]
    fn a_caller_without_the_role_is_forbidden() {
        let caller = Caller {
            uid: Uuid::now_v7(),
            roles: vec![Role::User],
            credential: CredentialKind::Token,
        };
        let error = caller.require_role(Role::Admin).expect_err("forbidden");
        assert_eq!(error.kind().code, "forbidden");
        assert_eq!(error.to_string(), "this needs the ROLE_ADMIN role");
        assert!(!caller.is_admin());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_others_are_refused() {
        assert_eq!(bearer_token("bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("Bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic YWxhZGRpbjpvcGVu"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
