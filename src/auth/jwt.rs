//! JWT verification with jsonwebtoken: an HS256 secret and/or public keys from a JWKS file that
//! is re-read when it changes, so keys rotate without a restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::protocol::Principal;
use crate::protocol::principal::subject_problem;

/// The claims Syncline reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    scope: Option<String>,
    /// Every other claim, for the collections' access rules (`{"$claim": "team"}`).
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Public keys from the JWKS file, with the key id each one was published under.
#[derive(Default)]
struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
    /// (modified time, length) of the file last loaded, to notice changes.
    stamp: Option<(SystemTime, u64)>,
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks_file: Option<PathBuf>,
    jwks: RwLock<KeySet>,
    issuer: Option<String>,
    audience: Option<String>,
    service_scope: String,
    leeway: u64,
    subject_bytes_max: usize,
}

/// Why a token was refused: logged at debug level, never sent (clients get one generic message).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Structurally or cryptographically invalid, expired, wrong issuer or audience.
    #[error("{0}")]
    Invalid(String),
    /// No key can verify it.
    #[error("no key for this token")]
    NoKey,
    /// Expired, and valid in every other way: the client may refresh it quietly.
    #[error("the token expired")]
    Expired,
}

const PUBLIC_KEY_ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl JwtVerifier {
    /// Builds a verifier and loads the JWKS file once (an unreadable file is an error here).
    pub fn new(config: &AuthConfig) -> Result<Arc<JwtVerifier>, String> {
        let verifier = JwtVerifier {
            hs256: config
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks_file: config.jwks_file.clone(),
            jwks: RwLock::default(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            service_scope: config.service_scope.clone(),
            leeway: config.leeway_seconds,
            subject_bytes_max: config.subject_bytes_max,
        };
        if verifier.jwks_file.is_some() {
            verifier.reload_jwks()?;
        }
        Ok(Arc::new(verifier))
    }

    /// Re-reads the JWKS file if it changed. On error the previous keys stay in use.
    fn reload_jwks(&self) -> Result<bool, String> {
        let Some(path) = &self.jwks_file else {
            return Ok(false);
        };
        let meta =
            std::fs::metadata(path).map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
        let stamp = (meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
        if self.jwks.read().unwrap_or_else(|e| e.into_inner()).stamp == Some(stamp) {
            return Ok(false);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                format!(
                    "jwks_file {}: key {:?}: {e}",
                    path.display(),
                    jwk.common.key_id
                )
            })?;
            keys.push((jwk.common.key_id.clone(), key));
        }
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = KeySet {
            keys,
            stamp: Some(stamp),
        };
        Ok(true)
    }

    /// Polls the JWKS file every `interval` until `stop`, reloading it when it changes.
    pub async fn watch_jwks(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        if self.jwks_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.reload_jwks() {
                Ok(true) => tracing::info!("JWKS file reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS file not reloaded; keeping the previous keys")
                }
            }
        }
    }

    /// Verifies a token and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when present: a configured one must also be
        // required, or a token the same key signed for another purpose (no `aud`) gets in.
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let claims = if header.alg == Algorithm::HS256 {
            let key = self.hs256.as_ref().ok_or(TokenError::NoKey)?;
            decode(token, key, &validation, self.subject_bytes_max)?
        } else if PUBLIC_KEY_ALGORITHMS.contains(&header.alg) {
            let keys = self.jwks.read().unwrap_or_else(|e| e.into_inner());
            let mut last = TokenError::NoKey;
            let mut found = None;
            for (kid, key) in &keys.keys {
                if header.kid.is_some() && kid.is_some() && header.kid != *kid {
                    continue;
                }
                match decode(token, key, &validation, self.subject_bytes_max) {
                    Ok(c) => {
                        found = Some(c);
                        break;
                    }
                    // A key that verified the signature has the last word.
                    Err(e) if !matches!(last, TokenError::Expired) => last = e,
                    Err(_) => {}
                }
            }
            found.ok_or(last)?
        } else {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        };
        if let Some(problem) = subject_problem(&claims.sub, self.subject_bytes_max) {
            return Err(TokenError::Invalid(format!("sub: {problem}")));
        }
        // A signed `exp` far in the future (2^63 s and more) does not fit a SystemTime.
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .ok_or_else(|| TokenError::Invalid("exp out of range".into()))?;
        let scopes = scopes(claims.scope.as_deref().unwrap_or_default());
        // The rules see every claim, `sub` and `scope` included (a token is bounded by the
        // metadata size limit, so this copy is too).
        let mut all = claims.other;
        all.insert("sub".into(), claims.sub.clone().into());
        all.insert("exp".into(), claims.exp.into());
        if let Some(scope) = &claims.scope {
            all.insert("scope".into(), scope.clone().into());
        }
        Ok(Principal {
            service: scopes.contains(&self.service_scope),
            subject: claims.sub,
            scopes,
            expires_at: Some(expires_at),
            claims: std::sync::Arc::new(serde_json::Value::Object(all)),
        })
    }
}

/// The scopes of a `scope` claim: separated by the ASCII space only (RFC 6749 section 3.3).
/// Any other whitespace (U+00A0, U+3000, tab, ...) is part of a scope, so
/// `"tenant:x\u{a0}syncline:service"` is one scope and never the service scope.
fn scopes(claim: &str) -> HashSet<String> {
    claim
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Verifies and decodes. An expired token is [`TokenError::Expired`] only when it passes every
/// other check (signature, issuer, audience, subject): nothing else about a refused token is
/// ever revealed.
fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    subject_bytes_max: usize,
) -> Result<Claims, TokenError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| {
            if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) {
                let mut lenient = validation.clone();
                lenient.validate_exp = false;
                let otherwise_valid = jsonwebtoken::decode::<Claims>(token, key, &lenient)
                    .is_ok_and(|d| subject_problem(&d.claims.sub, subject_bytes_max).is_none());
                if otherwise_valid {
                    return TokenError::Expired;
                }
            }
            TokenError::Invalid(e.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_separated_by_ascii_spaces_only() {
        let got = scopes("  a b\u{a0}c\td\u{3000}e  f ");
        let want: HashSet<String> = ["a", "b\u{a0}c\td\u{3000}e", "f"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(got, want);
        assert!(scopes("").is_empty() && scopes("   ").is_empty());
    }
}
