//! Authentication: turns the `authorization` metadata into a [`Principal`]. Used by one tonic
//! interceptor in front of the replication service; health and reflection need no token.

pub mod jwt;
pub mod mint;

use std::sync::Arc;

use crate::config::{AuthConfig, AuthMode};
use crate::protocol::{Principal, ProtocolError, Reason};
use jwt::JwtVerifier;

/// The one message of every token refusal.
const TOKEN_REFUSED: &str = "missing, invalid or expired bearer token";

/// The configured way of authenticating callers.
#[derive(Clone)]
pub enum Authenticator {
    /// `auth.mode = "none"`: everyone is an anonymous service principal.
    None,
    /// Bearer JWTs.
    Jwt(Arc<JwtVerifier>),
}

impl Authenticator {
    /// Builds the authenticator; `mode = "none"` logs a warning.
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, String> {
        match config.mode {
            AuthMode::None => {
                tracing::warn!(
                    "auth.mode = \"none\": every caller can read and write every document"
                );
                Ok(Authenticator::None)
            }
            AuthMode::Jwt => Ok(Authenticator::Jwt(JwtVerifier::new(config)?)),
        }
    }

    /// Authenticates one call from its `authorization` metadata value. Refusals carry one
    /// generic message: nothing that helps an attacker, and the token is never logged.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ProtocolError> {
        let verifier = match self {
            Authenticator::None => return Ok(Principal::anonymous_service()),
            Authenticator::Jwt(v) => v,
        };
        let refuse = || ProtocolError::unauthenticated(Reason::TokenInvalid, TOKEN_REFUSED);
        let token = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(refuse)?;
        verifier.verify(token).map_err(|e| {
            tracing::debug!(reason = %e, "token refused");
            match e {
                // Only the reason differs, so that clients refresh quietly.
                jwt::TokenError::Expired => {
                    ProtocolError::unauthenticated(Reason::TokenExpired, TOKEN_REFUSED)
                }
                _ => refuse(),
            }
        })
    }
}
