//! Token claims: the bytes become the payload of a correctly signed HS256 token, so every
//! claim (exp, nbf, iss, aud, sub, scope) reaches the checks behind the signature. A token
//! is refused or yields a principal that keeps the rules: issuer and audience present,
//! subject within its limit and free of control characters, the service scope only when
//! granted as a whole space-separated scope.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use syncline::protocol::Kind;
use syncline_fuzz::{SECRET, SERVICE_SCOPE, world};

fuzz_target!(|data: &[u8]| {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(data));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256");
    let token = format!("Bearer {message}.{signature}");
    let principal = match world().auth.authenticate(Some(&token)) {
        Ok(p) => p,
        Err(e) if e.kind == Kind::Unauthenticated => return,
        Err(other) => panic!("a token is refused as UNAUTHENTICATED, not {other:?}"),
    };
    // Only the claims the rules name: like the server, skip the rest unparsed (serde_json does
    // not check UTF-8 in what it skips).
    #[derive(serde::Deserialize, Debug)]
    struct Claims {
        iss: Option<serde_json::Value>,
        aud: Option<serde_json::Value>,
        scope: Option<serde_json::Value>,
    }
    let claims: Claims = serde_json::from_slice(data).expect("accepted claims parse");
    assert!(claims.iss.is_some() && claims.aud.is_some(), "{claims:?}");
    let max = world()
        .config
        .auth
        .as_ref()
        .expect("auth")
        .subject_bytes_max;
    let subject = &principal.subject;
    assert!(!subject.is_empty() && subject.len() <= max, "{subject:?}");
    assert!(!subject.chars().any(char::is_control), "{subject:?}");
    let scope = claims
        .scope
        .as_ref()
        .and_then(|s| s.as_str())
        .unwrap_or_default();
    assert_eq!(
        principal.service,
        scope.split(' ').any(|s| s == SERVICE_SCOPE),
        "{scope:?}"
    );
    assert!(principal.expires_at.is_some());
});
