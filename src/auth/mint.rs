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

/// Claims the token may not set through `--claim`: the ones Syncline itself writes and checks.
const RESERVED_CLAIMS: [&str; 6] = ["sub", "scope", "exp", "iat", "iss", "aud"];

/// Parses `--claim name=value` arguments: the value as JSON when it is JSON, else as a string.
pub fn parse_claims(args: &[String]) -> Result<Vec<(String, Value)>, String> {
    args.iter()
        .map(|arg| {
            let (name, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("--claim {arg:?}: expected name=value"))?;
            if name.is_empty() || RESERVED_CLAIMS.contains(&name) {
                return Err(format!(
                    "--claim {arg:?}: the name must be non-empty and not one of {RESERVED_CLAIMS:?}"
                ));
            }
            let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// Signs a token for `subject` with `scopes` and extra `claims`, valid for `ttl`, with
/// `auth.hs256_secret`.
pub fn mint_hs256(
    auth: &AuthConfig,
    subject: &str,
    scopes: &[String],
    claims_extra: &[(String, Value)],
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
    let mut claims: Map<String, Value> = claims_extra.iter().cloned().collect();
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
        let claims = parse_claims(&["team=blue".into(), r#"teams=["a","b"]"#.into()]).unwrap();
        let token = mint_hs256(auth, "alice", &scopes, &claims, Duration::from_secs(60)).unwrap();
        let Authenticator::Jwt(verifier) = Authenticator::from_config(auth).unwrap() else {
            panic!("jwt mode");
        };
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.subject, "alice");
        assert!(principal.service);
        // The access rules see every claim.
        assert_eq!(principal.claims["team"], json!("blue"));
        assert_eq!(principal.claims["teams"], json!(["a", "b"]));
        assert_eq!(principal.claims["sub"], json!("alice"));
        for bad in ["team", "=x", "sub=bob", "exp=1"] {
            assert!(parse_claims(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_secret_no_token_is_made() {
        let config =
            Config::from_toml("[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n").unwrap();
        let err = mint_hs256(
            config.auth.as_ref().unwrap(),
            "alice",
            &[],
            &[],
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(err.contains("hs256_secret"), "{err}");
    }
}
