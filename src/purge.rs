//! The tombstone purge: per collection with a `tombstone_retention`, delete tombstones older
//! than it in batches and raise the collection's purge horizon, on one replica at a time.
//! Checkpoints at or below the horizon are then refused (FAILED_PRECONDITION /
//! `CHECKPOINT_EXPIRED`, or `Resync` on a stream); see docs/architecture.md, "Retention".
//! Each round also deletes expired idempotency keys and overwritten versions.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::StoreError;
use crate::store::postgres::PgStore;
use crate::telemetry::metrics::{DOCS_PURGED, EXPIRED_PURGED, PURGE_HORIZON_AGE_SECONDS};

/// What one purge of a collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Tombstones deleted.
    pub purged: u64,
    /// Purge transactions that ran (each deletes at most the batch size).
    pub batches: u32,
    /// Another replica held the collection's purge lock: this round did nothing.
    pub locked_out: bool,
}

/// A collection whose tombstones expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// The collection.
    pub collection: String,
    /// How long its tombstones are kept.
    pub keep: Duration,
}

/// The collections of `config` that have a `tombstone_retention`.
pub fn retentions(config: &Config) -> Result<Vec<Retention>, String> {
    let mut out = Vec::new();
    for c in &config.collections {
        if let Some(keep) = c.retention()? {
            out.push(Retention {
                collection: c.name.clone(),
                keep,
            });
        }
    }
    Ok(out)
}

/// Purges `collection`'s tombstones older than `keep`, `batch_rows` per transaction, until a
/// batch comes back short. Stops at once (doing nothing) when another replica holds the lock.
pub async fn purge_collection(
    store: &PgStore,
    collection: &str,
    keep: Duration,
    batch_rows: u32,
) -> Result<PurgeReport, StoreError> {
    let mut report = PurgeReport::default();
    loop {
        let batch = store.purge_batch(collection, keep, batch_rows).await?;
        if batch.locked_out {
            report.locked_out = true;
            return Ok(report);
        }
        report.batches += 1;
        report.purged += batch.purged;
        metrics::counter!(DOCS_PURGED, "collection" => collection.to_owned())
            .increment(batch.purged);
        // Short: nothing older was left (rows a push held are retried next round). New
        // tombstones are never old enough to join, so the loop ends.
        if batch.purged < u64::from(batch_rows) {
            return Ok(report);
        }
    }
}

/// What one expiry purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Expired idempotency keys deleted.
    pub keys: u64,
    /// Expired overwritten versions deleted.
    pub versions: u64,
    /// Removal records below their collection's purge horizon deleted.
    pub moves: u64,
    /// Batches run.
    pub batches: u32,
}

/// Deletes expired idempotency keys, overwritten versions and removal records below the purge
/// horizon, `batch_rows` of each per
/// statement, until a batch of both comes back short. Safe on every replica at once.
pub async fn purge_expired(store: &PgStore, batch_rows: u32) -> Result<ExpiryReport, StoreError> {
    let mut report = ExpiryReport::default();
    loop {
        let batch = store.purge_expired_batch(batch_rows).await?;
        report.batches += 1;
        report.keys += batch.keys;
        report.versions += batch.versions;
        report.moves += batch.moves;
        metrics::counter!(EXPIRED_PURGED, "kind" => "removal_record").increment(batch.moves);
        metrics::counter!(EXPIRED_PURGED, "kind" => "push_key").increment(batch.keys);
        metrics::counter!(EXPIRED_PURGED, "kind" => "overwritten_version")
            .increment(batch.versions);
        // Short: nothing older was left but rows others hold (deleted next round). Rows
        // expire no faster than pushes wrote them, so the loop ends.
        let full = u64::from(batch_rows);
        if batch.keys < full && batch.versions < full && batch.moves < full {
            return Ok(report);
        }
    }
}

/// Publishes the age of `collection`'s purge horizon.
async fn report_horizon_age(store: &PgStore, collection: &str) {
    if let Ok(Some(horizon)) = store.purge_horizon(collection).await {
        let age = (chrono::Utc::now() - horizon.updated_at).as_seconds_f64();
        metrics::gauge!(PURGE_HORIZON_AGE_SECONDS, "collection" => collection.to_owned())
            .set(age.max(0.0));
    }
}

/// Purges every collection of `retentions`, then expired keys and versions, every `interval`
/// until `stop`.
pub async fn run(
    store: PgStore,
    retentions: Vec<Retention>,
    interval: Duration,
    batch_rows: u32,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for r in &retentions {
            // A round in progress finishes its current transaction, never half of one.
            let round = purge_collection(&store, &r.collection, r.keep, batch_rows);
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = round => outcome,
            };
            match outcome {
                Ok(report) if report.purged > 0 => {
                    tracing::info!(collection = %r.collection, purged = report.purged, batches = report.batches, "purged tombstones");
                }
                Ok(report) if report.locked_out => {
                    tracing::debug!(collection = %r.collection, "another replica is purging");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(collection = %r.collection, error = %e, "tombstone purge failed")
                }
            }
            report_horizon_age(&store, &r.collection).await;
        }
        let expiry = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = purge_expired(&store, batch_rows) => outcome,
        };
        match expiry {
            Ok(r) if r.keys + r.versions + r.moves > 0 => {
                tracing::info!(
                    keys = r.keys,
                    versions = r.versions,
                    removal_records = r.moves,
                    batches = r.batches,
                    "purged expired push keys, overwritten versions and removal records"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "expiry purge failed"),
        }
    }
}

/// `syncline purge`: purges `collection` now, or with `dry_run` describes what would go.
/// Returns the lines to print.
pub async fn command(config: &Config, collection: &str, dry_run: bool) -> Result<String, String> {
    let declared = config
        .collections
        .iter()
        .find(|c| c.name == collection)
        .ok_or_else(|| format!("collection {collection:?} is not declared"))?;
    let keep = declared.retention()?.ok_or_else(|| {
        format!(
            "collection {collection:?} has no tombstone_retention: its tombstones are kept forever"
        )
    })?;
    let store = crate::server::open_store(config).map_err(|e| e.to_string())?;
    let outcome = if dry_run {
        store
            .purge_preview(collection, keep)
            .await
            .map(|p| match (p.oldest, p.newest) {
                (Some(oldest), Some(newest)) => format!(
                    "{collection}: {} tombstone(s) older than {} would be purged (written {oldest} to {newest})",
                    p.count,
                    declared.tombstone_retention.as_deref().unwrap_or_default(),
                ),
                _ => format!("{collection}: nothing to purge"),
            })
    } else {
        match purge_collection(&store, collection, keep, config.purge_batch_rows).await {
            Ok(r) if r.locked_out => Ok(format!(
                "{collection}: another replica is purging it now; nothing done"
            )),
            Ok(r) => match store.purge_horizon(collection).await {
                Ok(h) => Ok(format!(
                    "{collection}: purged {} tombstone(s) in {} batch(es); {}",
                    r.purged,
                    r.batches,
                    match h {
                        Some(h) =>
                            format!("checkpoints from before {} are now expired", h.updated_at),
                        None => "no checkpoint is expired".to_owned(),
                    }
                )),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    };
    store.close().await;
    outcome.map_err(|e| e.to_string())
}
