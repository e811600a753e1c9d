//! The `syncline_blobs_stored` and `syncline_blob_bytes_stored` gauges: what is stored per
//! collection, read from `syncline_blob_totals` (one row per collection, kept by a trigger;
//! migrations/0013) after each GC round and after each upload that stored a new blob. Every
//! replica reports the same database-wide figures.

use super::index::BlobIndex;
use crate::telemetry::metrics::{BLOB_BYTES_STORED, BLOBS_STORED};

/// Sets the gauges of every collection that has (or had) blobs, labelled with the back end
/// (`store`). A failed read leaves them as they were (logged).
pub async fn refresh(index: &BlobIndex, store: &'static str) {
    match index.totals().await {
        Ok(totals) => {
            for (collection, blobs, bytes) in totals {
                metrics::gauge!(BLOBS_STORED, "collection" => collection.clone(), "store" => store)
                    .set(blobs as f64);
                metrics::gauge!(BLOB_BYTES_STORED, "collection" => collection, "store" => store)
                    .set(bytes as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read the stored blob totals"),
    }
}
