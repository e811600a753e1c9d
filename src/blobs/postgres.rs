//! The default back end: blob bytes as chunk rows in PostgreSQL (`syncline_blob_chunks`).
//! Chunks are written as they arrive, each in its own short statement, under a fresh upload
//! id that no blob names: readers cannot see them until the verified upload's blob row names
//! that id, so a refused or cut-off upload is never visible.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use super::gc::GcBatch;
use super::index::{self, BlobIndex};
use super::{BlobMeta, BlobStoreKind, Blobs, ByteStream, db_error};
use crate::store::StoreError;

/// Blob bytes in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresBlobs {
    index: BlobIndex,
}

/// An upload being staged: its id and the offset of its next chunk.
#[derive(Debug)]
pub struct PgStaging {
    upload_id: String,
    next: i64,
}

impl PostgresBlobs {
    /// Blobs in `pool`'s database.
    pub fn new(pool: sqlx::PgPool) -> PostgresBlobs {
        PostgresBlobs {
            index: BlobIndex::new(pool),
        }
    }
}

// Chunk statements run in a transaction of their own whose plans are generic: the pool's
// connections force custom plans (plan stability of the hot path, store/postgres/plans.rs),
// and a custom plan of a chunk statement copies its megabyte parameter into the plan and
// costs PostgreSQL about twice the CPU per MiB (docs/performance.md, "Attachments"). One
// round trip, and SET LOCAL ends with the transaction, whatever happens to it.
const GENERIC_BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

const CHUNK_SQL: &str =
    "INSERT INTO syncline_blob_chunks (upload_id, start, data) VALUES ($1, $2, $3)";

// The stored chunk holding byte $2, cut to at most $3 bytes from there. A read of a whole
// stored chunk (every read of a download from a chunk boundary with the upload's chunk size)
// returns the column itself, which PostgreSQL detoasts once, straight into the message, as a
// plain `SELECT data` does; `substring` would build the slice, copy it for the tuple and again
// for the output (three fresh megabytes per chunk, each one page-faulted in: 3.1 against 0.8 ms
// of PostgreSQL CPU per MiB, docs/performance.md, "Attachments throughput"). `octet_length` of
// an out-of-line value reads only its pointer.
const READ_SQL: &str = "
SELECT CASE WHEN start = $2 AND octet_length(data) <= $3 THEN data
            ELSE substring(data FROM ($2 - start + 1)::int FOR $3::int) END
FROM syncline_blob_chunks WHERE upload_id = $1 AND start <= $2
ORDER BY start DESC LIMIT 1";

impl Blobs for PostgresBlobs {
    type Staging = PgStaging;

    fn kind(&self) -> BlobStoreKind {
        BlobStoreKind::Postgres
    }

    fn index(&self) -> &BlobIndex {
        &self.index
    }

    async fn begin(&self, _collection: &str, _digest: &str) -> Result<PgStaging, StoreError> {
        let upload_id = super::upload_id();
        self.index.start_upload(&upload_id, &upload_id).await?;
        Ok(PgStaging { upload_id, next: 0 })
    }

    async fn write(&self, staging: &mut PgStaging, chunk: Bytes) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .index
            .pool()
            .begin_with(GENERIC_BEGIN)
            .await
            .map_err(db_error)?;
        sqlx::query(CHUNK_SQL)
            .bind(&staging.upload_id)
            .bind(staging.next)
            .bind(chunk.as_ref())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        staging.next += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    async fn commit(
        &self,
        staging: PgStaging,
        meta: &BlobMeta,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.index.pool().begin().await.map_err(db_error)?;
        let (inserted, _) = index::record(&mut tx, meta, &staging.upload_id, owner).await?;
        if !inserted {
            delete_chunks(&mut tx, std::slice::from_ref(&staging.upload_id)).await?;
        }
        sqlx::query("DELETE FROM syncline_blob_uploads WHERE upload_id = $1")
            .bind(&staging.upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(inserted)
    }

    async fn abort(&self, staging: PgStaging) {
        let done = async {
            let mut tx = self.index.pool().begin().await.map_err(db_error)?;
            delete_chunks(&mut tx, std::slice::from_ref(&staging.upload_id)).await?;
            sqlx::query("DELETE FROM syncline_blob_uploads WHERE upload_id = $1")
                .bind(&staging.upload_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        };
        if let Err(e) = done.await {
            // The GC removes it after the grace period.
            tracing::warn!(error = %e, "could not drop a refused upload's chunks");
        }
    }

    async fn read(
        &self,
        location: &str,
        range: Range<u64>,
        chunk: usize,
    ) -> Result<ByteStream, StoreError> {
        let pool = self.index.pool().clone();
        let location = location.to_owned();
        let chunk = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
        let start = i64::try_from(range.start).unwrap_or(i64::MAX);
        let end = i64::try_from(range.end).unwrap_or(i64::MAX);
        let stream = futures::stream::try_unfold(start, move |pos| {
            let pool = pool.clone();
            let location = location.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let want = chunk.min(end - pos);
                // One statement, no transaction: its parameters are small, so the custom plan
                // the pool's connections make costs little (unlike a chunk write's).
                let row: Option<Vec<u8>> = sqlx::query_scalar(READ_SQL)
                    .bind(&location)
                    .bind(pos)
                    .bind(want)
                    .fetch_optional(&pool)
                    .await
                    .map_err(db_error)?;
                match row {
                    Some(bytes) if !bytes.is_empty() => {
                        let next = pos + i64::try_from(bytes.len()).unwrap_or(i64::MAX);
                        Ok(Some((Bytes::from(bytes), next)))
                    }
                    _ => Err(StoreError::Internal(format!(
                        "blob chunks of upload {location} end before byte {pos}"
                    ))),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn exists_many(
        &self,
        collection: &str,
        digests: &[String],
    ) -> Result<Vec<bool>, StoreError> {
        self.index.exists_many(collection, digests).await
    }

    async fn collect_garbage(
        &self,
        grace: Duration,
        batch: u32,
    ) -> Result<Option<GcBatch>, StoreError> {
        let Some(mut gc) = self.index.gc_candidates(grace, batch).await? else {
            return Ok(None);
        };
        let mut ids: Vec<String> = gc.victims.iter().map(|(l, _)| l.clone()).collect();
        ids.extend(gc.stale.iter().map(|(_, l)| l.clone()));
        delete_chunks(&mut gc.tx, &ids).await?;
        let done = gc.batch();
        gc.tx.commit().await.map_err(db_error)?;
        Ok(Some(done))
    }
}

async fn delete_chunks(
    tx: &mut sqlx::PgConnection,
    upload_ids: &[String],
) -> Result<(), StoreError> {
    if upload_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM syncline_blob_chunks WHERE upload_id = ANY($1)")
        .bind(upload_ids)
        .execute(tx)
        .await
        .map_err(db_error)
        .map(drop)
}
