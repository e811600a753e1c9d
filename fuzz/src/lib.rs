//! What the fuzz targets share: one server configuration (collections, limits, JWT settings)
//! built once through the same code paths as the server, so new configuration keys and limits
//! reach the targets without edits here.

use std::sync::{Arc, OnceLock};

use syncline::auth::Authenticator;
use syncline::config::Config;
use syncline::protocol::collections::{Collection, Collections, Limits};

/// The HS256 secret the JWT targets sign and verify with.
pub const SECRET: &str = "a-fuzz-secret-that-is-long-enough-0123456789";
/// The configured `iss`.
pub const ISSUER: &str = "https://issuer.test";
/// The configured `aud`.
pub const AUDIENCE: &str = "syncline";
/// The configured service scope.
pub const SERVICE_SCOPE: &str = "syncline:service";

/// The fixed world of every target.
pub struct World {
    /// The configuration everything below was built from.
    pub config: Config,
    /// Request limits (small ones, so the fuzzer reaches them).
    pub limits: Limits,
    /// `plain`: no schema (the non-allocating fast check decides most bodies).
    pub plain: Arc<Collection>,
    /// `any`: the schema `{}`, which accepts every object but forces the full check, so it
    /// must agree with `plain` on every body.
    pub any: Arc<Collection>,
    /// `typed`: a realistic RxDB-style schema.
    pub typed: Arc<Collection>,
    /// JWT authentication with issuer and audience required.
    pub auth: Authenticator,
}

/// The world, built on first use.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(build)
}

fn build() -> World {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = format!(
        r#"
        push_rows_max = 8
        document_bytes_max = 4096
        json_depth_max = 8
        id_bytes_max = 64
        [auth]
        mode = "jwt"
        hs256_secret = "{SECRET}"
        issuer = "{ISSUER}"
        audience = "{AUDIENCE}"
        service_scope = "{SERVICE_SCOPE}"
        leeway_seconds = 0
        [[collections]]
        name = "plain"
        [[collections]]
        name = "any"
        schema = "{dir}/schemas/any.json"
        [[collections]]
        name = "typed"
        schema = "{dir}/schemas/task.json"
        "#
    );
    let config = Config::from_toml(&text).expect("the fuzz configuration is valid");
    let collections = Collections::from_config(&config).expect("the fuzz schemas compile");
    let get = |name| collections.get(name).expect("declared above");
    World {
        limits: Limits::from_config(&config),
        plain: get("plain"),
        any: get("any"),
        typed: get("typed"),
        auth: Authenticator::from_config(config.auth.as_ref().expect("[auth] above"))
            .expect("the fuzz auth configuration is valid"),
        config,
    }
}
