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
    /// Largest gRPC message accepted and sent, in bytes. Unset: requests up to the largest
    /// push the limits allow (see [`Config::decoding_message_bytes_max`]), responses up to
    /// 64 MiB.
    #[serde(default)]
    pub message_bytes_max: Option<usize>,
    /// Connections older than this are asked to reconnect (GOAWAY), so long-lived HTTP/2
    /// connections rebalance across replicas. 0 = never.
    #[serde(default)]
    pub max_connection_age_seconds: u64,
    /// HTTP/2 keepalive ping interval; 0 = off.
    #[serde(default = "default_keepalive_seconds")]
    pub keepalive_seconds: u64,
    /// Most open client connections in this process; beyond it a new connection is accepted
    /// and closed at once. Lowered at start-up to fit the open-file limit (`ulimit -n`).
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// A new connection must finish TLS and send its first request within this many
    /// milliseconds, or it is closed.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Most concurrent HTTP/2 streams (calls) on one connection; clients queue the rest.
    #[serde(default = "default_streams_per_connection_max")]
    pub streams_per_connection_max: u32,
    /// HTTP/2 streams a client may reset before the server accepted them before the
    /// connection gets a GOAWAY (rapid-reset protection).
    #[serde(default = "default_http2_pending_resets_max")]
    pub http2_pending_resets_max: usize,
    /// HTTP/2 streams the server may reset for a client's protocol errors (malformed
    /// requests) before the connection gets a GOAWAY.
    #[serde(default = "default_http2_error_resets_max")]
    pub http2_error_resets_max: usize,
    /// Largest HTTP/2 frame a client may send (SETTINGS_MAX_FRAME_SIZE, 16384 to 16777215).
    /// Larger than HTTP/2's 16 KiB default so that an attachment chunk arrives in a few
    /// frames, not 64 per MiB; a connection buffers at most one frame being read, less than
    /// its flow-control window already allows.
    #[serde(default = "default_http2_max_frame_size")]
    pub http2_max_frame_size: u32,
    /// Most open `grpc.health.v1.Health/Watch` streams in this process (they need no token);
    /// beyond it Watch answers RESOURCE_EXHAUSTED. 0 turns Watch off; Check is unaffected.
    #[serde(default = "default_health_watches_max")]
    pub health_watches_max: usize,
    /// Seconds between database health probes.
    #[serde(default = "default_health_check_seconds")]
    pub health_check_seconds: u64,
    /// Warn when the visibility horizon has been held back (or a heard-of commit has not been
    /// readable) this many seconds: a long-running or prepared transaction delays delivery.
    #[serde(default = "default_horizon_warn_seconds")]
    pub horizon_warn_seconds: u64,
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
    /// Most bytes of document bodies in one Push, new and assumed states together.
    #[serde(default = "default_push_bytes_max")]
    pub push_bytes_max: usize,
    /// Longest owner a service principal may name for a new document, in bytes.
    #[serde(default = "default_owner_bytes_max")]
    pub owner_bytes_max: usize,
    /// `synchronous_commit` of every push transaction: `on` (default) makes an acknowledged push
    /// durable whatever the database's or role's default; `remote_apply`, `remote_write`,
    /// `local` or `off` trade that for latency (`off` may lose acknowledged pushes on a crash).
    #[serde(default = "default_push_synchronous_commit")]
    pub push_synchronous_commit: String,
    /// Most bytes in one Pull page or stream batch (bodies as sent, ids, owners, revisions and
    /// 64 bytes per document); a page ends early at this budget, but always holds at least one
    /// document so that paging progresses.
    #[serde(default = "default_page_bytes_max")]
    pub page_bytes_max: usize,
    /// Most bytes (counted like `page_bytes_max`) kept per collection in the shared stream
    /// buffer, besides `stream_buffer_documents`.
    #[serde(default = "default_stream_buffer_bytes")]
    pub stream_buffer_bytes: usize,
    /// Most memory one principal's streams may pin: each stream counts for two batches of
    /// `page_bytes_max` (one queued, one being sent); a Subscribe beyond it is refused with
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "default_stream_bytes_per_principal_max")]
    pub stream_bytes_per_principal_max: usize,
    /// Authentication. Required: `mode = "none"` must be said explicitly.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS for the gRPC listener; absent = plain text.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The declared collections; any other name is NOT_FOUND.
    #[serde(default)]
    pub collections: Vec<CollectionConfig>,
    /// The key that seals checkpoint tokens: base64 of 32 random bytes (`openssl rand -base64
    /// 32`), the same on every replica. Unset: a key generated once and kept in the database.
    #[serde(default)]
    pub checkpoint_key: Option<String>,
    /// Seconds between rounds of the tombstone purge (collections with a
    /// `tombstone_retention`); one replica purges a collection at a time.
    #[serde(default = "default_purge_interval_seconds")]
    pub purge_interval_seconds: u64,
    /// Most tombstones one purge transaction deletes; a round repeats batches until none is
    /// left.
    #[serde(default = "default_purge_batch_rows")]
    pub purge_batch_rows: u32,
    /// Message compressions the server accepts and answers with, negotiated per call through
    /// `grpc-encoding` / `grpc-accept-encoding`; empty turns compression off.
    #[serde(default = "default_compression")]
    pub compression: Vec<Compression>,
    /// Replies smaller than this many bytes (encoded) are sent uncompressed: compressing them
    /// costs CPU and saves next to nothing.
    #[serde(default = "default_compression_min_bytes")]
    pub compression_min_bytes: usize,
    /// Most bucket digests (also `within` prefixes, or buckets listed) in one Reconcile or
    /// ReconcileList request; more is INVALID_ARGUMENT naming the field.
    #[serde(default = "default_reconcile_digests_max")]
    pub reconcile_digests_max: usize,
    /// Most (id, revision) pairs in one ReconcileList reply; buckets holding more are
    /// RESOURCE_EXHAUSTED (the client lists fewer buckets at once, or compares deeper first).
    #[serde(default = "default_reconcile_list_max")]
    pub reconcile_list_max: usize,
    /// Most ids in one Fetch (its reply is also cut at `page_bytes_max`).
    #[serde(default = "default_fetch_ids_max")]
    pub fetch_ids_max: usize,
    /// Rows given new positions per transaction when a start-up finds positions of another
    /// cluster (after a logical restore); 0 is taken as 1.
    #[serde(default = "default_restamp_batch_rows")]
    pub restamp_batch_rows: u32,
    /// How long a push's idempotency key (and the response it is answered with again) is
    /// remembered per principal (`"24h"`: a number with s, m, h or d).
    #[serde(default = "default_idempotency_retention")]
    pub idempotency_retention: String,
    /// The `[attachments]` table: blob storage, limits and GC (see `blobs::AttachmentsConfig`).
    #[serde(default)]
    pub attachments: crate::blobs::AttachmentsConfig,
}

fn default_idempotency_retention() -> String {
    "24h".into()
}

impl Config {
    /// The parsed `idempotency_retention`.
    pub fn idempotency_retention(&self) -> Result<std::time::Duration, String> {
        parse_retention(&self.idempotency_retention)
            .map_err(|why| format!("idempotency_retention {why}"))
    }
}

fn default_reconcile_digests_max() -> usize {
    65_536
}
fn default_restamp_batch_rows() -> u32 {
    10_000
}
fn default_reconcile_list_max() -> usize {
    10_000
}
fn default_fetch_ids_max() -> usize {
    1_000
}

/// A message compression of the gRPC protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `gzip`: what every gRPC implementation speaks.
    Gzip,
    /// `zstd`: smaller and faster than gzip where the client has it.
    Zstd,
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
    /// How long tombstones are kept (`"30d"`: a number with s, m, h or d); older ones are
    /// purged, and checkpoints from before the purge are refused (CHECKPOINT_EXPIRED).
    /// Absent: tombstones are kept forever.
    #[serde(default)]
    pub tombstone_retention: Option<String>,
    /// What the server does with a conflicting row: `first-write-wins` (the default: not
    /// written, the server's state goes back), `last-write-wins`, `field-merge` or `crdt`
    /// (README "Conflict resolution").
    #[serde(default)]
    pub conflict: Option<String>,
    /// Body field (dotted path) that orders writes under `last-write-wins` and for `lww` CRDT
    /// fields: numbers or RFC 3339 strings. Absent: the later push wins.
    #[serde(default)]
    pub lww_field: Option<String>,
    /// `field-merge` and `crdt`: what a field changed on both sides becomes, by dotted path:
    /// `server` (the default), `client` or `union` (arrays).
    #[serde(default)]
    pub merge_rules: std::collections::BTreeMap<String, String>,
    /// `crdt`: fields merged as CRDTs, by dotted path: `counter`, `g-set` or `lww` (beside
    /// the schema's `"crdt": {"type": ...}` annotations).
    #[serde(default)]
    pub crdt_fields: std::collections::BTreeMap<String, String>,
    /// `field-merge` and `crdt`: `delete-wins` (the default) or `edit-wins` when a delete
    /// conflicts with an edit.
    #[serde(default)]
    pub on_delete: Option<String>,
    /// How long the versions that lose an automatic resolution are kept for ListOverwritten
    /// (`"7d"`). Absent: not kept.
    #[serde(default)]
    pub keep_overwritten: Option<String>,
    /// Fields selectors may filter on, by dotted path: `string`, `number`, `boolean` or arrays
    /// of them (`string[]`, ...). Each gets an index. Empty: no filtering.
    #[serde(default)]
    pub filter_fields: std::collections::BTreeMap<String, String>,
    /// Selector every read is narrowed to, over `filter_fields`; a value may be
    /// `{ "$claim" = "name" }`, the caller's token claim. Needs `access` `claims` or `either`.
    #[serde(default)]
    pub read_filter: Option<serde_json::Value>,
    /// Selector that the server's and the new state of every pushed document must match
    /// (values may be claims, as in `read_filter`).
    #[serde(default)]
    pub write_filter: Option<serde_json::Value>,
    /// How `read_filter` / `write_filter` combine with the owner rule: `owner` (the default:
    /// no filters), `claims` (the filters alone) or `either` (owner or filters).
    #[serde(default)]
    pub access: Option<String>,
}

impl CollectionConfig {
    /// The parsed `tombstone_retention`, `None` when tombstones are kept forever.
    pub fn retention(&self) -> Result<Option<std::time::Duration>, String> {
        self.tombstone_retention
            .as_deref()
            .map(|text| {
                parse_retention(text)
                    .map_err(|why| format!("collection {:?}: tombstone_retention {why}", self.name))
            })
            .transpose()
    }
}

/// Parses a retention: a number with s, m, h or d, at least one second.
pub fn parse_retention(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?}: expected a number with s, m, h or d (\"30d\"), at least 1s");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    // Bounded so that `now() - retention` stays a valid timestamp.
    .filter(|s| (1..=100 * 365 * 86_400).contains(s))
    .ok_or_else(bad)?;
    Ok(std::time::Duration::from_secs(seconds))
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
fn default_push_synchronous_commit() -> String {
    "on".into()
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
/// Responses when `message_bytes_max` is unset.
const DEFAULT_ENCODING_BYTES_MAX: usize = 64 * 1024 * 1024;
fn default_push_bytes_max() -> usize {
    64 * 1024 * 1024
}
fn default_owner_bytes_max() -> usize {
    256
}
fn default_keepalive_seconds() -> u64 {
    30
}
fn default_connections_max() -> usize {
    10_000
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_streams_per_connection_max() -> u32 {
    100
}
fn default_http2_pending_resets_max() -> usize {
    20
}
fn default_http2_error_resets_max() -> usize {
    1024
}
fn default_http2_max_frame_size() -> u32 {
    256 * 1024
}
fn default_health_watches_max() -> usize {
    1000
}
fn default_health_check_seconds() -> u64 {
    2
}

fn default_horizon_warn_seconds() -> u64 {
    60
}
fn default_stream_buffer_documents() -> usize {
    10_000
}
fn default_streams_per_principal_max() -> usize {
    100
}
fn default_page_bytes_max() -> usize {
    4 * 1024 * 1024
}
fn default_stream_buffer_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_stream_bytes_per_principal_max() -> usize {
    512 * 1024 * 1024
}
fn default_service_scope() -> String {
    "syncline:service".to_owned()
}
/// The most clock skew `auth.leeway_seconds` may allow.
const LEEWAY_SECONDS_MAX: u64 = 86_400;

fn default_leeway_seconds() -> u64 {
    30
}
fn default_subject_bytes_max() -> usize {
    256
}
fn default_purge_interval_seconds() -> u64 {
    60
}
fn default_purge_batch_rows() -> u32 {
    1000
}
fn default_primary_key() -> String {
    "id".to_owned()
}
fn default_compression() -> Vec<Compression> {
    vec![Compression::Gzip, Compression::Zstd]
}
fn default_compression_min_bytes() -> usize {
    1024
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

    /// The configured checkpoint key's bytes, when one is set.
    pub fn checkpoint_key_bytes(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        use base64::Engine;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        let Some(text) = &self.checkpoint_key else {
            return Ok(None);
        };
        // Standard or URL-safe alphabet, padded or not; the value itself is never echoed.
        let lenient =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let text = text.trim();
        let bytes = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient)
            .decode(text)
            .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient).decode(text))
            .map_err(|_| ConfigError::Invalid("checkpoint_key is not base64".into()))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| {
                ConfigError::Invalid(format!(
                    "checkpoint_key must be base64 of 32 bytes, not {}",
                    bytes.len()
                ))
            })
    }

    /// The URL for the LISTEN connection.
    pub fn listener_url(&self) -> Option<&str> {
        self.listen_database_url
            .as_deref()
            .or(self.database_url.as_deref())
    }

    /// The largest request accepted: `message_bytes_max` when set, else the largest Push the
    /// limits allow (bodies up to `push_bytes_max`, every other field at its limit, framing
    /// and slack), so that no valid push is refused by the transport.
    pub fn decoding_message_bytes_max(&self) -> usize {
        self.message_bytes_max.unwrap_or_else(|| {
            crate::api::push_scan::WireLimits::from_limits(&crate::protocol::Limits::from_config(
                self,
            ))
            .message_bytes_max()
        })
    }

    /// The largest response sent: `message_bytes_max` when set, else 64 MiB.
    pub fn encoding_message_bytes_max(&self) -> usize {
        self.message_bytes_max.unwrap_or(DEFAULT_ENCODING_BYTES_MAX)
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
        if self.reconcile_digests_max == 0
            || self.reconcile_list_max == 0
            || self.fetch_ids_max == 0
        {
            return invalid(
                "reconcile_digests_max, reconcile_list_max and fetch_ids_max must be at least 1"
                    .into(),
            );
        }
        if self.push_rows_max == 0 || self.document_bytes_max == 0 || self.id_bytes_max == 0 {
            return invalid(
                "push_rows_max, document_bytes_max and id_bytes_max must be at least 1".into(),
            );
        }
        if self.connections_max == 0
            || self.handshake_timeout_ms == 0
            || self.streams_per_connection_max == 0
            || self.http2_pending_resets_max == 0
            || self.http2_error_resets_max == 0
        {
            return invalid(
                "connections_max, handshake_timeout_ms, streams_per_connection_max, \
                 http2_pending_resets_max and http2_error_resets_max must be at least 1"
                    .into(),
            );
        }
        if !(16_384..=16_777_215).contains(&self.http2_max_frame_size) {
            return invalid(format!(
                "http2_max_frame_size {} must be between 16384 and 16777215 (RFC 9113)",
                self.http2_max_frame_size
            ));
        }
        if self.push_bytes_max < self.document_bytes_max || self.owner_bytes_max == 0 {
            return invalid(
                "push_bytes_max must be at least document_bytes_max, and owner_bytes_max at \
                 least 1"
                    .into(),
            );
        }
        if !crate::store::postgres::SYNCHRONOUS_COMMIT_LEVELS
            .contains(&self.push_synchronous_commit.as_str())
        {
            return invalid(format!(
                "push_synchronous_commit must be one of {:?}",
                crate::store::postgres::SYNCHRONOUS_COMMIT_LEVELS
            ));
        }
        self.validate_page_bytes()?;
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
            // Beyond the current Unix time the token checks underflow (every token expired).
            Some(a) if a.leeway_seconds > LEEWAY_SECONDS_MAX => {
                return invalid(format!(
                    "auth.leeway_seconds must be at most {LEEWAY_SECONDS_MAX} (one day)"
                ));
            }
            _ => {}
        }
        self.checkpoint_key_bytes()?;
        self.idempotency_retention().map_err(ConfigError::Invalid)?;
        if self.purge_interval_seconds == 0 || self.purge_batch_rows == 0 {
            return invalid(
                "purge_interval_seconds and purge_batch_rows must be at least 1".into(),
            );
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
            c.retention().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

/// Room for a page's checkpoint and protobuf framing beside its documents.
const PAGE_FRAMING_BYTES: usize = 4096;

impl Config {
    /// The most one document can weigh in a page: its body as PostgreSQL gives it back (jsonb's
    /// text form adds a space after each `,` and `:`, so up to half again the bytes pushed),
    /// its id and its metadata.
    pub fn document_page_bytes_max(&self) -> usize {
        crate::protocol::Limits::from_config(self).document_page_bytes()
    }

    /// No page or stream batch of documents within the limits may exceed the message size the
    /// server itself will send: a page holds at most `page_bytes_max`, or one document alone.
    fn validate_page_bytes(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.page_bytes_max == 0 {
            return invalid("page_bytes_max must be at least 1".into());
        }
        let page = self.page_bytes_max.max(self.document_page_bytes_max());
        let message = page.saturating_add(PAGE_FRAMING_BYTES);
        if self.encoding_message_bytes_max() < message {
            return invalid(format!(
                "message_bytes_max ({}) must hold a full page: at least {message} bytes, \
                 the larger of page_bytes_max ({}) and one document of document_bytes_max \
                 ({}, up to {} as text with its id and metadata), plus {PAGE_FRAMING_BYTES}",
                self.encoding_message_bytes_max(),
                self.page_bytes_max,
                self.document_bytes_max,
                self.document_page_bytes_max()
            ));
        }
        if self.stream_buffer_bytes < page {
            return invalid(format!(
                "stream_buffer_bytes ({}) must hold at least one page ({page} bytes)",
                self.stream_buffer_bytes
            ));
        }
        let stream = self
            .page_bytes_max
            .saturating_add(self.document_page_bytes_max())
            .saturating_mul(
                crate::protocol::fanout::stream_limits::StreamLimits::STREAM_PINS_PAGES,
            );
        if self.stream_bytes_per_principal_max < stream {
            return invalid(format!(
                "stream_bytes_per_principal_max ({}) must allow one stream: at least {stream} \
                 bytes (two batches)",
                self.stream_bytes_per_principal_max
            ));
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
    fn the_message_limits_follow_the_push_limits_unless_set() {
        let base = "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n";
        let c = Config::from_toml(base).unwrap();
        // 64 MiB of bodies, 1000 rows of ids, owners and revisions, framing and slack.
        let decoding = c.decoding_message_bytes_max();
        assert!((66 << 20..67 << 20).contains(&decoding), "{decoding}");
        assert_eq!(c.encoding_message_bytes_max(), 64 << 20);
        let c = Config::from_toml(&format!("push_rows_max = 10\n{base}")).unwrap();
        assert!(
            c.decoding_message_bytes_max() < 21 << 20,
            "10 rows of two 1 MiB bodies"
        );
        let c = Config::from_toml(&format!("message_bytes_max = 8000000\n{base}")).unwrap();
        assert_eq!(c.decoding_message_bytes_max(), 8_000_000);
        assert_eq!(c.encoding_message_bytes_max(), 8_000_000);
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
    fn page_bytes_must_fit_in_a_message() {
        let base = "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n";
        let c = Config::from_toml(base).unwrap();
        assert_eq!(c.page_bytes_max, 4 * 1024 * 1024);
        assert!(
            c.encoding_message_bytes_max() >= c.page_bytes_max.max(c.document_page_bytes_max())
        );
        for (bad, key) in [
            ("page_bytes_max = 0\n", "page_bytes_max"),
            ("page_bytes_max = 67108864\n", "message_bytes_max"),
            ("document_bytes_max = 60000000\n", "message_bytes_max"),
            ("message_bytes_max = 2000000\n", "message_bytes_max"),
            ("stream_buffer_bytes = 1000000\n", "stream_buffer_bytes"),
            (
                "stream_bytes_per_principal_max = 8000000\n",
                "stream_bytes_per_principal_max",
            ),
            ("fetch_ids_max = 0\n", "fetch_ids_max"),
            ("reconcile_list_max = 0\n", "reconcile_list_max"),
        ] {
            let err = Config::from_toml(&format!("{bad}{base}")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
        let small = "page_bytes_max = 65536\ndocument_bytes_max = 16384\nmessage_bytes_max = 100000\n\
                     stream_buffer_bytes = 65536\nstream_bytes_per_principal_max = 200000\n";
        Config::from_toml(&format!("{small}{base}")).unwrap();
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "pull_limit_default = 2000\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "[auth]\nmode = \"none\"\n[[collections]]\nname = \"bad name\"\n",
            "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n[[collections]]\nname = \"t\"\n",
            "pool_size = 0\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "[auth]\nmode = \"none\"\nleeway_seconds = 2000000000\n[[collections]]\nname = \"t\"\n",
            "connections_max = 0\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "handshake_timeout_ms = 0\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "streams_per_connection_max = 0\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "push_bytes_max = 10\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "owner_bytes_max = 0\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n",
            "",
        ] {
            assert!(Config::from_toml(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn checkpoint_key_is_32_bytes_of_base64() {
        let with = |key: &str| {
            Config::from_toml(&format!(
                "checkpoint_key = \"{key}\"\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n"
            ))
        };
        let standard = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let url_safe = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
        for ok in [standard, url_safe] {
            let key = with(ok).unwrap().checkpoint_key_bytes().unwrap().unwrap();
            assert_eq!(key, std::array::from_fn(|i| i as u8));
        }
        for bad in ["AAECAwQFBgcICQoLDA0ODw==", "not base64!", ""] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("checkpoint_key"), "{err}");
            assert!(
                bad.is_empty() || !err.contains(bad),
                "the key is echoed: {err}"
            );
        }
    }

    #[test]
    fn push_synchronous_commit_is_checked() {
        let base = "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n";
        assert_eq!(
            Config::from_toml(base).unwrap().push_synchronous_commit,
            "on"
        );
        let relaxed = format!("push_synchronous_commit = \"local\"\n{base}");
        assert_eq!(
            Config::from_toml(&relaxed).unwrap().push_synchronous_commit,
            "local"
        );
        let err =
            Config::from_toml(&format!("push_synchronous_commit = \"maybe\"\n{base}")).unwrap_err();
        assert!(err.to_string().contains("push_synchronous_commit"), "{err}");
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

    #[test]
    fn compression_is_a_list_of_known_encodings() {
        let base = "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n";
        let c = Config::from_toml(base).unwrap();
        assert_eq!(c.compression, vec![Compression::Gzip, Compression::Zstd]);
        assert_eq!(c.compression_min_bytes, 1024);
        let c = Config::from_toml(&format!("compression = []\n{base}")).unwrap();
        assert!(c.compression.is_empty());
        let err = Config::from_toml(&format!("compression = [\"brotli\"]\n{base}")).unwrap_err();
        assert!(err.to_string().contains("brotli"), "{err}");
    }

    #[test]
    fn tombstone_retention_parses_or_is_refused() {
        let with = |value: &str| {
            Config::from_toml(&format!(
                "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\ntombstone_retention = \"{value}\"\n"
            ))
        };
        let days = with("30d").unwrap().collections[0].retention().unwrap();
        assert_eq!(days, Some(std::time::Duration::from_secs(30 * 86_400)));
        assert_eq!(
            with("90s").unwrap().collections[0].retention().unwrap(),
            Some(std::time::Duration::from_secs(90))
        );
        for bad in ["", "30", "0s", "d", "-1d", "30 d", "1y", "999999999999d"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("tombstone_retention"), "{bad:?}: {err}");
        }
        let kept =
            Config::from_toml("[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n").unwrap();
        assert_eq!(kept.collections[0].retention().unwrap(), None);
        assert_eq!(
            (kept.purge_interval_seconds, kept.purge_batch_rows),
            (60, 1000)
        );
    }
}
