//! Development tokens: `syncline token` signs an HS256 token with the configured secret, so
//! trying the server with authentication on needs no other tool. The token carries what the
//! verifier requires (`exp`, and `iss` / `aud` when configured).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

use crate::config::AuthConfig;

/// Longest lifetime a development token may have.
const TTL_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a lifetime: a number with an optional unit `s`, `m`, `h` or `d` (`90s`, `30m`, `1h`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("--ttl {text:?}: expected a number with s, m, h or d"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("--ttl {text:?}: expected a number with s, m, h or d"))?;
    let ttl = Duration::from_secs(seconds);
    if ttl.is_zero() || ttl > TTL_MAX {
        return Err(format!("--ttl {text:?}: between 1 s and 366 days"));
    }
    Ok(ttl)
}

/// Signs a token for `subject` with `scopes`, valid for `ttl`, with `auth.hs256_secret`.
pub fn mint_hs256(
    auth: &AuthConfig,
    subject: &str,
    scopes: &[String],
    ttl: Duration,
) -> Result<String, String> {
    let secret = auth
        .hs256_secret
        .as_deref()
        .ok_or("auth.hs256_secret is not configured: only HS256 tokens can be made here")?;
    if subject.is_empty() {
        return Err("--sub must not be empty".into());
    }
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.contains(' ')) {
        return Err(format!(
            "--scope {bad:?}: one scope per --scope, without spaces"
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970")?;
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(subject));
    claims.insert("iat".into(), json!(now.as_secs()));
    claims.insert("exp".into(), json!((now + ttl).as_secs()));
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }
    if let Some(iss) = &auth.issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = &auth.audience {
        claims.insert("aud".into(), json!(aud));
    }
    encode(
        &Header::default(),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("signing the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::config::Config;

    #[test]
    fn lifetimes_parse_with_units() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "h", "0", "1y", "-5m", "999999999999999999999d", "400d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_minted_token_passes_the_servers_own_checks() {
        let config = Config::from_toml(
            "[auth]\nmode = \"jwt\"\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n\
             issuer = \"https://issuer.example\"\naudience = \"syncline\"\n\
             [[collections]]\nname = \"t\"\n",
        )
        .unwrap();
        let auth = config.auth.as_ref().unwrap();
        let scopes = vec!["syncline:service".to_owned(), "team:a".to_owned()];
        let token = mint_hs256(auth, "alice", &scopes, Duration::from_secs(60)).unwrap();
        let Authenticator::Jwt(verifier) = Authenticator::from_config(auth).unwrap() else {
            panic!("jwt mode");
        };
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.subject, "alice");
        assert!(principal.service);
    }

    #[test]
    fn without_a_secret_no_token_is_made() {
        let config =
            Config::from_toml("[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n").unwrap();
        let err = mint_hs256(
            config.auth.as_ref().unwrap(),
            "alice",
            &[],
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(err.contains("hs256_secret"), "{err}");
    }
}
