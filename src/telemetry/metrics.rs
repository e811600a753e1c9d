//! Prometheus metrics: the exporter, the metric names (one place), and their descriptions.
//! Labels stay bounded: collection, RPC service and method, status code, reason. Never ids,
//! owners or tokens.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Requests handled, by `grpc_service`, `grpc_method`, `grpc_code`.
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
/// Handling time (until the last byte of the response; a stream's whole life), seconds.
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// Documents returned by Pull, by collection.
pub const DOCS_PULLED: &str = "syncline_documents_pulled_total";
/// Documents written by Push, by collection.
pub const DOCS_PUSHED: &str = "syncline_documents_pushed_total";
/// Documents sent on streams, by collection.
pub const DOCS_STREAMED: &str = "syncline_documents_streamed_total";
/// Push rows not written, by collection and reason (`conflict`, `invalid`, `permission`).
pub const PUSH_ROWS_REJECTED: &str = "syncline_push_rows_rejected_total";
/// Conflicting push rows, by collection.
pub const CONFLICTS: &str = "syncline_conflicts_total";
/// Open Subscribe streams.
pub const STREAMS_OPEN: &str = "syncline_streams_open";
/// Time from a write's commit to its send on a stream, seconds.
pub const STREAM_LAG_SECONDS: &str = "syncline_stream_lag_seconds";
/// Heartbeats sent.
pub const HEARTBEATS: &str = "syncline_heartbeats_sent_total";
/// Resync events sent.
pub const RESYNCS: &str = "syncline_resyncs_sent_total";
/// Pool connections by `state` (`in_use`, `idle`) and the configured maximum (`max`).
pub const POOL_CONNECTIONS: &str = "syncline_db_pool_connections";
/// Time to get a pooled connection, seconds.
pub const POOL_ACQUIRE_SECONDS: &str = "syncline_db_pool_acquire_seconds";
/// Failed database operations, by `kind` (`unavailable`, `contention`, `internal`).
pub const DB_ERRORS: &str = "syncline_db_errors_total";
/// 1 while the LISTEN connection is up.
pub const LISTENER_UP: &str = "syncline_listener_connected";
/// LISTEN connection (re)connects after the first.
pub const LISTENER_RECONNECTS: &str = "syncline_listener_reconnects_total";
/// Change notifications ignored, by `reason`: `malformed`, or `impossible` (names a
/// transaction that has not started: forged, or remembered from another cluster).
pub const NOTIFICATIONS_DROPPED: &str = "syncline_notifications_dropped_total";
/// Pulls that waited for a signalled commit to become readable in order, by `outcome`:
/// `readable` (it did), `waited_out` (the wait ran out; not waited for again).
pub const VISIBILITY_WAITS: &str = "syncline_visibility_waits_total";
/// Seconds the oldest transaction holding back the visibility horizon has been running
/// (prepared transactions included); 0 when none.
pub const HORIZON_AGE_SECONDS: &str = "syncline_horizon_age_seconds";
/// Seconds since the oldest commit this process heard of became pending, that is, still not
/// readable in order; 0 when every signalled commit is readable.
pub const PENDING_COMMIT_AGE_SECONDS: &str = "syncline_pending_commit_age_seconds";
/// Pages read ahead, by `outcome`: `used`, `stale` (a document in it was written since),
/// `unused` (the read failed or came back short).
pub const READ_AHEAD: &str = "syncline_read_ahead_pages_total";
/// Open client connections (each holds one of `connections_max` slots).
pub const CONNECTIONS_OPEN: &str = "syncline_connections_open";
/// Connections closed at once because `connections_max` were open.
pub const CONNECTIONS_REFUSED: &str = "syncline_connections_refused_total";
/// Connections closed because no request came within `handshake_timeout_ms`.
pub const CONNECTIONS_TIMED_OUT: &str = "syncline_connections_timed_out_total";
/// Always 1, labelled with `version` and `git_commit`.
pub const BUILD_INFO: &str = "syncline_build_info";
/// Rows refused by per-row pushes, by collection and `reason` (the error reason codes).
pub const PUSH_ROWS_REFUSED: &str = "syncline_push_rows_refused_total";
/// Conflicting push rows decided by an automatic strategy, by collection, `strategy` and
/// `outcome` (`written`: resolved and written; `lost`: the server's state won;
/// `unresolvable`: the strategy could not merge, returned as a conflict).
pub const PUSH_RESOLUTIONS: &str = "syncline_push_resolutions_total";
/// Pushes answered from a remembered idempotency key, by collection.
pub const PUSH_REPLAYS: &str = "syncline_push_replays_total";
/// Tombstones deleted by the retention purge, by collection.
pub const DOCS_PURGED: &str = "syncline_documents_purged_total";
/// Seconds since the tombstone at a collection's purge horizon was written: checkpoints about
/// that old or older are expired. By collection; absent before the first purge.
pub const PURGE_HORIZON_AGE_SECONDS: &str = "syncline_purge_horizon_age_seconds";
/// Expired rows deleted by the background purge, by `kind` (`push_key`, `overwritten_version`).
pub const EXPIRED_PURGED: &str = "syncline_expired_rows_purged_total";

/// Attachment bytes received by Upload (staged, verified or not), by collection.
pub const ATTACHMENT_BYTES_UPLOADED: &str = "syncline_attachment_bytes_uploaded_total";
/// Attachment bytes sent by Download, by collection.
pub const ATTACHMENT_BYTES_DOWNLOADED: &str = "syncline_attachment_bytes_downloaded_total";
/// Uploads by collection and `outcome`: `stored` (a new blob), `deduplicated` (verified, but
/// another upload had stored it), `already_stored` (answered after the first message),
/// `refused` (wrong digest or length, or a failure: nothing stored).
pub const ATTACHMENT_UPLOADS: &str = "syncline_attachment_uploads_total";
/// Deleted by the attachment GC, by `kind` (`blob`, `stale_upload`).
pub const ATTACHMENT_GC_DELETED: &str = "syncline_attachment_gc_deleted_total";
/// Bytes of the blobs the attachment GC deleted.
pub const ATTACHMENT_GC_BYTES: &str = "syncline_attachment_gc_bytes_total";
/// Attachment GC rounds by `outcome`: `done`, `locked_out` (another replica held the GC lock
/// at once), `failed`.
pub const ATTACHMENT_GC_RUNS: &str = "syncline_attachment_gc_runs_total";
/// Blobs stored, by collection and `store` (`postgres`, `s3`): database-wide, the same on every
/// replica; refreshed after each GC round and each upload that stored a blob.
pub const BLOBS_STORED: &str = "syncline_blobs_stored";
/// Bytes of the blobs stored, by collection and `store`; refreshed like [`BLOBS_STORED`].
pub const BLOB_BYTES_STORED: &str = "syncline_blob_bytes_stored";

/// Histogram buckets for every `_seconds` metric.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide Prometheus recorder and its HTTP listener (`/metrics`). Only the
/// first call in a process installs; later calls (several servers in one test process) are
/// no-ops, since the recorder is global.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .map_err(|e| format!("metrics: {e}"))?
        .build()
        .map_err(|e| format!("metrics_listen {addr}: {e}"))?;
    metrics::set_global_recorder(recorder).map_err(|e| format!("metrics: {e}"))?;
    let _ = INSTALLED.set(());
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics listener stopped");
        }
    });
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_commit" => env!("BUILD_GIT_COMMIT"))
        .set(1.0);
    tracing::info!(address = %addr, "serving Prometheus metrics");
    Ok(())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        GRPC_HANDLED,
        "RPCs completed, by service, method and gRPC status code"
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "RPC handling time (streams: their whole life)"
    );
    describe_counter!(DOCS_PULLED, "Documents returned by Pull");
    describe_counter!(
        READ_AHEAD,
        "Pages read ahead after a full page, by outcome (used, stale, unused)"
    );
    describe_counter!(DOCS_PUSHED, "Documents written by Push");
    describe_counter!(DOCS_STREAMED, "Documents sent on Subscribe streams");
    describe_counter!(PUSH_ROWS_REJECTED, "Push rows not written, by reason");
    describe_counter!(CONFLICTS, "Push rows that conflicted with the server state");
    describe_gauge!(STREAMS_OPEN, "Open Subscribe streams");
    describe_histogram!(
        STREAM_LAG_SECONDS,
        Unit::Seconds,
        "Time from a write's commit to its send on a stream"
    );
    describe_counter!(HEARTBEATS, "Heartbeats sent on idle streams");
    describe_counter!(RESYNCS, "Resync events sent");
    describe_gauge!(
        POOL_CONNECTIONS,
        "Database pool connections by state (in_use, idle, max)"
    );
    describe_histogram!(
        POOL_ACQUIRE_SECONDS,
        Unit::Seconds,
        "Wait for a pooled database connection"
    );
    describe_counter!(DB_ERRORS, "Failed database operations by kind");
    describe_gauge!(LISTENER_UP, "1 while the LISTEN connection is up");
    describe_counter!(LISTENER_RECONNECTS, "LISTEN connection reconnects");
    describe_counter!(NOTIFICATIONS_DROPPED, "Change notifications ignored");
    describe_counter!(
        VISIBILITY_WAITS,
        "Pulls that waited for a commit to become readable"
    );
    describe_gauge!(
        HORIZON_AGE_SECONDS,
        "Age of the oldest transaction holding back the visibility horizon"
    );
    describe_gauge!(
        PENDING_COMMIT_AGE_SECONDS,
        "Age of the oldest heard-of commit not yet readable in order"
    );
    describe_gauge!(BUILD_INFO, "Build information");
    describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed on arrival because connections_max were open"
    );
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed for sending no request within handshake_timeout_ms"
    );
    describe_counter!(
        PUSH_RESOLUTIONS,
        "Conflicting push rows decided by an automatic strategy, by strategy and outcome"
    );
    describe_counter!(
        PUSH_REPLAYS,
        "Pushes answered with the remembered response of their idempotency key"
    );
    describe_counter!(
        PUSH_ROWS_REFUSED,
        "Rows refused by per-row pushes, by reason code"
    );
    describe_counter!(DOCS_PURGED, "Tombstones deleted by the retention purge");
    describe_gauge!(
        PURGE_HORIZON_AGE_SECONDS,
        Unit::Seconds,
        "Age of the tombstone at the purge horizon (older checkpoints are expired)"
    );
    describe_counter!(
        EXPIRED_PURGED,
        "Expired idempotency keys and overwritten versions deleted, by kind"
    );
    describe_counter!(
        ATTACHMENT_BYTES_UPLOADED,
        Unit::Bytes,
        "Attachment bytes received by Upload"
    );
    describe_counter!(
        ATTACHMENT_BYTES_DOWNLOADED,
        Unit::Bytes,
        "Attachment bytes sent by Download"
    );
    describe_counter!(ATTACHMENT_UPLOADS, "Attachment uploads by outcome");
    describe_counter!(
        ATTACHMENT_GC_DELETED,
        "Blobs and stale uploads deleted by the attachment GC"
    );
    describe_counter!(
        ATTACHMENT_GC_BYTES,
        Unit::Bytes,
        "Bytes of blobs deleted by the attachment GC"
    );
    describe_counter!(ATTACHMENT_GC_RUNS, "Attachment GC rounds by outcome");
    describe_gauge!(BLOBS_STORED, "Attachment blobs stored, by collection");
    describe_gauge!(
        BLOB_BYTES_STORED,
        Unit::Bytes,
        "Bytes of the attachment blobs stored, by collection"
    );
}
