//! Configuration: a TOML file, overridden by `DATABASE_URL` and `SYNCLINE_...` environment
//! variables (nested keys with `__`, e.g. `SYNCLINE_AUTH__MODE`). Unknown keys are an error so
//! that typos never pass silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable holds an unknown key or a value of the wrong type.
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// The values parse but do not make sense together.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole server configuration. Key names are part of the public contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` HTTP listen address.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Serve Prometheus metrics at all.
    #[serde(default = "default_true")]
    pub metrics_enabled: bool,
    /// `pretty` or `json` log lines.
    #[serde(default)]
    pub log_format: crate::telemetry::LogFormat,
    /// OTLP/gRPC endpoint for traces (e.g. `http://otel-collector:4317`); unset: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, and with neither no traces are exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// PostgreSQL URL for queries (may point at a transaction-mode pooler). Also `DATABASE_URL`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Direct PostgreSQL URL for the LISTEN connection; defaults to `database_url`.
    #[serde(default)]
    pub listen_database_url: Option<String>,
    /// Prepared statements cached per connection; 0 turns the cache off, which a
    /// transaction-mode pooler (PgBouncer) in front of `database_url` needs.
    #[serde(default = "default_statement_cache_capacity")]
    pub statement_cache_capacity: usize,
    /// After a full Pull or stream page, read the next page in the background; at most this
    /// many prepared pages per process (each up to `pull_limit_max` documents); 0 turns it off.
    #[serde(default = "default_read_ahead_pages")]
    pub read_ahead_pages: usize,
    /// Apply migrations when `serve` starts. Turn off when a separate job runs `syncline
    /// migrate` (e.g. through a direct connection while serving goes through a pooler); health
    /// then stays NOT_SERVING until the migrations are applied.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Maximum connections in the query pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Seconds to wait for a pooled connection (and to connect) before answering UNAVAILABLE.
    #[serde(default = "default_acquire_timeout_seconds")]
    pub acquire_timeout_seconds: u64,
    /// A stream idle for this many seconds gets a Heartbeat.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// How long a Pull may wait for older transactions to finish when a write it has heard of
    /// is committed but not yet readable in order; bounds read-your-writes latency.
    #[serde(default = "default_visibility_wait_ms")]
    pub visibility_wait_ms: u64,
    /// Documents per Pull when the request says 0.
    #[serde(default = "default_pull_limit_default")]
    pub pull_limit_default: u32,
    /// Upper bound on documents per Pull (larger requests are clamped) and per stream batch.
    #[serde(default = "default_pull_limit_max")]
    pub pull_limit_max: u32,
    /// Most rows in one Push.
    #[serde(default = "default_push_rows_max")]
    pub push_rows_max: usize,
    /// Most bytes in one document body.
    #[serde(default = "default_document_bytes_max")]
    pub document_bytes_max: usize,
    /// Deepest JSON nesting accepted in a body.
    #[serde(default = "default_json_depth_max")]
    pub json_depth_max: usize,
    /// Longest document id, in bytes.
    #[serde(default = "default_id_bytes_max")]
    pub id_bytes_max: usize,
    /// Most open Subscribe streams in this process.
    #[serde(default = "default_streams_max")]
    pub streams_max: usize,
    /// Largest gRPC message accepted, in bytes.
    #[serde(default = "default_message_bytes_max")]
    pub message_bytes_max: usize,
    /// Connections older than this are asked to reconnect (GOAWAY), so long-lived HTTP/2
    /// connections rebalance across replicas. 0 = never.
    #[serde(default)]
    pub max_connection_age_seconds: u64,
    /// HTTP/2 keepalive ping interval; 0 = off.
    #[serde(default = "default_keepalive_seconds")]
    pub keepalive_seconds: u64,
    /// Seconds between database health probes.
    #[serde(default = "default_health_check_seconds")]
    pub health_check_seconds: u64,
    /// On SIGTERM: seconds to keep serving while health reports NOT_SERVING (so load balancers
    /// stop routing here) before streams are ended and in-flight calls drained.
    #[serde(default)]
    pub drain_seconds: u64,
    /// Accept gRPC-Web (HTTP/1.1 and HTTP/2) besides native gRPC, for browsers.
    #[serde(default)]
    pub grpc_web: bool,
    /// Origins allowed to call through gRPC-Web (CORS), e.g. `["https://app.example"]`;
    /// `["*"]` allows any origin. Empty: no cross-origin browser calls.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
    /// Recent changes kept in memory per collection and served to every caught-up stream, so
    /// that a write is read once, not once per stream.
    #[serde(default = "default_stream_buffer_documents")]
    pub stream_buffer_documents: usize,
    /// Most open Subscribe streams per principal.
    #[serde(default = "default_streams_per_principal_max")]
    pub streams_per_principal_max: usize,
    /// Authentication. Required: `mode = "none"` must be said explicitly.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS for the gRPC listener; absent = plain text.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The declared collections; any other name is NOT_FOUND.
    #[serde(default)]
    pub collections: Vec<CollectionConfig>,
}

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `authorization: Bearer <JWT>` on every replication call.
    Jwt,
    /// No authentication: every caller acts as a service principal. Logged as a warning.
    None,
}

/// The `[auth]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `jwt` or `none`.
    pub mode: AuthMode,
    /// Shared secret for HS256 tokens.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// JWKS file with RS256/ES256 public keys; re-read when it changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// The scope that lets a principal read and write every document.
    #[serde(default = "default_service_scope")]
    pub service_scope: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// Longest accepted `sub` in bytes: the subject becomes the owner of documents, stored and
    /// indexed with each one, so a token may not bring an unbounded one.
    #[serde(default = "default_subject_bytes_max")]
    pub subject_bytes_max: usize,
}

/// The `[tls]` table: rustls with PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to: mutual TLS when set.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// One replicated collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Name used in requests: 1-64 of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Optional JSON Schema file for live documents; relative paths start at the config file's folder.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Body field that, when present, must equal the document id.
    #[serde(default = "default_primary_key")]
    pub primary_key: String,
    /// When non-empty, only principals holding one of these scopes (or the service scope) may
    /// Pull or Subscribe.
    #[serde(default)]
    pub read_scopes: Vec<String>,
    /// When non-empty, only principals holding one of these scopes (or the service scope) may
    /// Push.
    #[serde(default)]
    pub write_scopes: Vec<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 50051))
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9464))
}
fn default_statement_cache_capacity() -> usize {
    100
}
fn default_read_ahead_pages() -> usize {
    16
}
fn default_true() -> bool {
    true
}
fn default_pool_size() -> u32 {
    16
}
fn default_acquire_timeout_seconds() -> u64 {
    5
}
fn default_heartbeat_seconds() -> u64 {
    15
}
fn default_visibility_wait_ms() -> u64 {
    1000
}
fn default_pull_limit_default() -> u32 {
    100
}
fn default_pull_limit_max() -> u32 {
    1000
}
fn default_push_rows_max() -> usize {
    1000
}
fn default_document_bytes_max() -> usize {
    1024 * 1024
}
fn default_json_depth_max() -> usize {
    64
}
fn default_id_bytes_max() -> usize {
    512
}
fn default_streams_max() -> usize {
    10_000
}
fn default_message_bytes_max() -> usize {
    64 * 1024 * 1024
}
fn default_keepalive_seconds() -> u64 {
    30
}
fn default_health_check_seconds() -> u64 {
    2
}
fn default_stream_buffer_documents() -> usize {
    10_000
}
fn default_streams_per_principal_max() -> usize {
    100
}
fn default_service_scope() -> String {
    "syncline:service".to_owned()
}
fn default_leeway_seconds() -> u64 {
    30
}
fn default_subject_bytes_max() -> usize {
    256
}
fn default_primary_key() -> String {
    "id".to_owned()
}

impl Config {
    /// Loads the file (if any), applies the environment, resolves schema paths and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]))
            // SYNCLINE_CONFIG names the file itself (see main.rs), it is not a key.
            .merge(Env::prefixed("SYNCLINE_").ignore(&["config"]).split("__"));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for collection in &mut config.collections {
            if let Some(schema) = &mut collection.schema {
                resolve(schema);
            }
        }
        if let Some(auth) = &mut config.auth
            && let Some(jwks) = &mut auth.jwks_file
        {
            resolve(jwks);
        }
        if let Some(tls) = &mut config.tls {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
            if let Some(ca) = &mut tls.client_ca_file {
                resolve(ca);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string without the environment (tests and examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The URL for the LISTEN connection.
    pub fn listener_url(&self) -> Option<&str> {
        self.listen_database_url
            .as_deref()
            .or(self.database_url.as_deref())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.pool_size == 0 {
            return invalid("pool_size must be at least 1".into());
        }
        if self.heartbeat_seconds == 0 {
            return invalid("heartbeat_seconds must be at least 1".into());
        }
        if self.json_depth_max == 0 || self.json_depth_max > 128 {
            return invalid("json_depth_max must be between 1 and 128".into());
        }
        if self.pull_limit_max == 0 || self.pull_limit_default == 0 {
            return invalid("pull_limit_default and pull_limit_max must be at least 1".into());
        }
        if self.pull_limit_default > self.pull_limit_max {
            return invalid("pull_limit_default must not exceed pull_limit_max".into());
        }
        if self.push_rows_max == 0 || self.document_bytes_max == 0 || self.id_bytes_max == 0 {
            return invalid(
                "push_rows_max, document_bytes_max and id_bytes_max must be at least 1".into(),
            );
        }
        match &self.auth {
            None => {
                return invalid(
                    "no [auth] table: configure auth.mode = \"jwt\" with hs256_secret and/or \
                     jwks_file, or say auth.mode = \"none\" to run without authentication"
                        .into(),
                );
            }
            Some(a)
                if a.mode == AuthMode::Jwt && a.hs256_secret.is_none() && a.jwks_file.is_none() =>
            {
                return invalid("auth.mode = \"jwt\" needs hs256_secret and/or jwks_file".into());
            }
            Some(a) if a.hs256_secret.as_deref().is_some_and(|s| s.len() < 32) => {
                return invalid("auth.hs256_secret must be at least 32 bytes".into());
            }
            Some(a) if a.service_scope.is_empty() => {
                return invalid("auth.service_scope must not be empty".into());
            }
            Some(a) if a.subject_bytes_max == 0 => {
                return invalid("auth.subject_bytes_max must be at least 1".into());
            }
            _ => {}
        }
        if self.collections.is_empty() {
            return invalid("declare at least one [[collections]] entry".into());
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.collections {
            let ok = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return invalid(format!(
                    "collection name {:?} must be 1-64 characters of [A-Za-z0-9_.-]",
                    c.name
                ));
            }
            if !seen.insert(c.name.as_str()) {
                return invalid(format!("collection {:?} is declared twice", c.name));
            }
            if c.primary_key.is_empty() {
                return invalid(format!("collection {:?}: primary_key is empty", c.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml("[auth]\nmode = \"none\"\n[[collections]]\nname = \"tasks\"\n")
            .unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.pull_limit_max, 1000);
        assert_eq!(c.collections[0].primary_key, "id");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml(
            "pool_sise = 3\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("pool_sise"), "{err}");
        let err = Config::from_toml(
            "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\nschemaa = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("schemaa"), "{err}");
    }

    #[test]
    fn auth_must_be_configured_explicitly() {
        let err = Config::from_toml("[[collections]]\nname = \"t\"\n").unwrap_err();
        assert!(err.to_string().contains("auth.mode"), "{err}");
        let err = Config::from_toml("[auth]\nmode = \"jwt\"\n[[collections]]\nname = \"t\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("hs256_secret"), "{err}");
        let err = Config::from_toml(
            "[auth]\nmode = \"jwt\"\nhs256_secret = \"short\"\n[[collections]]\nname = \"t\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "pull_limit_default = 2000\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "[auth]\nmode = \"none\"\n[[collections]]\nname = \"bad name\"\n",
            "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n[[collections]]\nname = \"t\"\n",
            "pool_size = 0\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "",
        ] {
            assert!(Config::from_toml(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the error type
    fn file_and_environment_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syncline.toml");
        std::fs::write(
            &path,
            "pool_size = 3\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"tasks\"\nschema = \"schemas/tasks.json\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SYNCLINE_POOL_SIZE", "7");
            jail.set_env("DATABASE_URL", "postgres://example/db");
            let c = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(c.pool_size, 7);
            assert_eq!(c.database_url.as_deref(), Some("postgres://example/db"));
            assert_eq!(
                c.collections[0].schema.as_deref(),
                Some(dir.path().join("schemas/tasks.json").as_path())
            );
            jail.set_env("SYNCLINE_CONFIG", path.display().to_string());
            assert!(
                Config::load(Some(&path)).is_ok(),
                "SYNCLINE_CONFIG is not a key"
            );
            jail.set_env("SYNCLINE_POOL_SIZ", "7");
            assert!(Config::load(Some(&path)).is_err());
            Ok(())
        });
    }
}
