//! The attachment GC: blobs no live document references (tombstones reference nothing),
//! stored and last touched longer than `attachment_gc_grace` ago, are deleted in batches by a
//! background task on every replica, one replica at a time (a transaction-level advisory lock
//! per batch, like the tombstone purge). Uploads a crash left half-staged go too.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Blobs;
use crate::store::StoreError;
use crate::telemetry::metrics::{ATTACHMENT_GC_BYTES, ATTACHMENT_GC_DELETED, ATTACHMENT_GC_RUNS};

/// What one GC batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcBatch {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Stale staged uploads deleted.
    pub stale_uploads: u64,
}

/// What a GC round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Totals of its batches.
    pub deleted: GcBatch,
    /// Batches run.
    pub batches: u32,
    /// Another replica held the GC lock: this round did nothing more.
    pub locked_out: bool,
}

/// Runs batches of at most `batch` blobs until one comes back short.
pub async fn collect<B: Blobs>(
    blobs: &B,
    grace: Duration,
    batch: u32,
) -> Result<GcReport, StoreError> {
    let batch = batch.max(1);
    let mut report = GcReport::default();
    loop {
        let Some(done) = blobs.collect_garbage(grace, batch).await? else {
            report.locked_out = true;
            return Ok(report);
        };
        report.batches += 1;
        report.deleted.blobs += done.blobs;
        report.deleted.bytes += done.bytes;
        report.deleted.stale_uploads += done.stale_uploads;
        metrics::counter!(ATTACHMENT_GC_DELETED, "kind" => "blob").increment(done.blobs);
        metrics::counter!(ATTACHMENT_GC_DELETED, "kind" => "stale_upload")
            .increment(done.stale_uploads);
        metrics::counter!(ATTACHMENT_GC_BYTES).increment(done.bytes);
        let full = u64::from(batch);
        if done.blobs < full && done.stale_uploads < full {
            return Ok(report);
        }
    }
}

/// Collects garbage every `interval` until `stop`; a batch in flight finishes or rolls back
/// whole.
pub async fn run<B: Blobs>(
    blobs: B,
    grace: Duration,
    batch: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    super::stored::refresh(blobs.index(), blobs.kind().label()).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = collect(&blobs, grace, batch) => outcome,
        };
        let label = match &outcome {
            Ok(r) if r.locked_out && r.batches == 0 => "locked_out",
            Ok(_) => "done",
            Err(_) => "failed",
        };
        metrics::counter!(ATTACHMENT_GC_RUNS, "outcome" => label).increment(1);
        match outcome {
            Ok(r) if r.deleted.blobs + r.deleted.stale_uploads > 0 => tracing::info!(
                blobs = r.deleted.blobs,
                bytes = r.deleted.bytes,
                stale_uploads = r.deleted.stale_uploads,
                "attachment GC"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "attachment GC failed"),
        }
        // Every replica, also one locked out: uploads and other replicas' GC change the totals.
        super::stored::refresh(blobs.index(), blobs.kind().label()).await;
    }
}
