//! The blob index in PostgreSQL (migrations/0011_blobs.sql), shared by both back ends: which
//! blobs exist, who proved they hold them, which live documents reference them.

use sqlx::PgPool;

use super::{BlobMeta, StoredBlob, db_error};
use crate::store::StoreError;
use crate::store::filter::{BlobScope, ReadFilter};
use crate::store::postgres::bind_filter;

/// `sql` with its `FILTER` placeholder replaced by the scope's read rule (its parameters
/// numbered from `$first`), or `true`.
fn scoped(sql: &'static str, filter: Option<&ReadFilter>, first: usize) -> String {
    match filter {
        None => sql.replace("FILTER", "true"),
        Some(f) => sql.replace("FILTER", &format!("({})", f.current_from(first))),
    }
}

/// The expression the GIN index `syncline_documents_attachments` covers; every reference
/// lookup repeats it verbatim (`d` is `syncline_documents`), with `NOT d.deleted`. Lookups
/// count the references rather than ask EXISTS: the planner cannot estimate how selective a
/// digest is and, for EXISTS, bets on finding one soon by walking the whole collection (which,
/// for an unreferenced blob, the GC's usual case, means every document).
macro_rules! references {
    ($digest:literal) => {
        concat!(
            "jsonb_path_query_array(d.body, '$._attachments.*.digest') @> jsonb_build_array(",
            $digest,
            "::text)"
        )
    };
}

// A digest is available to a principal when the blob is stored and the principal is a service
// ($3 NULL), proved it holds the bytes (a grant), or may read a live document referencing it.
// Found blobs are touched (at most once a minute) so that the GC spares them for its grace
// period: the push that follows a "held" answer has that long to commit. The key-share lock
// waits for a GC batch that holds the row, so a blob it deletes is never answered as held.
const AVAILABLE_SQL: &str = concat!(
    "WITH found AS (
    SELECT b.digest, b.length FROM syncline_blobs b
    WHERE b.collection = $1 AND b.digest = ANY($2)
      AND ($3::text IS NULL
        OR EXISTS (SELECT 1 FROM syncline_blob_grants g
                   WHERE g.collection = $1 AND g.digest = b.digest AND g.owner = $3)
        OR (SELECT count(*) FROM syncline_documents d
            WHERE d.collection = $1 AND NOT d.deleted AND ($4::text IS NULL OR d.owner = $4)
              AND FILTER AND ",
    references!("b.digest"),
    ") > 0)
    FOR KEY SHARE OF b
), touched AS (
    UPDATE syncline_blobs b SET touched_at = now() FROM found f
    WHERE b.collection = $1 AND b.digest = f.digest AND b.touched_at < now() - interval '1 minute'
)
SELECT digest, length FROM found"
);

// A blob the principal may download: stored, and referenced by a live document it may read
// (its own, or any for a service). Otherwise nothing, exactly as for an absent blob.
const READABLE_SQL: &str = concat!(
    "SELECT b.length, b.content_type, b.location FROM syncline_blobs b
WHERE b.collection = $1 AND b.digest = $2
  AND (SELECT count(*) FROM syncline_documents d
       WHERE d.collection = $1 AND NOT d.deleted AND ($3::text IS NULL OR d.owner = $3)
         AND FILTER AND ",
    references!("$2"),
    ") > 0"
);

const TOTALS_SQL: &str = "SELECT collection, blobs, bytes FROM syncline_blob_totals";

const EXISTS_SQL: &str =
    "SELECT digest FROM syncline_blobs WHERE collection = $1 AND digest = ANY($2)";

/// Records a verified blob (or, when it is already stored, keeps the stored one and refreshes
/// it): the row lock it takes orders it against the GC, which deletes only rows it locked.
pub(super) const UPSERT_SQL: &str = "
INSERT INTO syncline_blobs AS b (collection, digest, length, content_type, location)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (collection, digest) DO UPDATE SET touched_at = now()
RETURNING (xmax = 0) AS inserted, b.location";

/// Records that `owner` proved it holds the bytes.
pub(super) const GRANT_SQL: &str = "
INSERT INTO syncline_blob_grants (collection, digest, owner) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING";

/// One replica collects garbage at a time; one that finds the lock taken skips the round.
pub(super) const GC_LOCK_SQL: &str =
    "SELECT pg_try_advisory_xact_lock(hashtext('syncline.blob_gc'), 0)";

/// Unreferenced blobs older than the grace period, deleted (row locks held until commit, so
/// an upload of the same digest waits and then inserts it anew). Returns where their bytes
/// were, for the back end to delete in the same transaction.
pub(super) const GC_VICTIMS_SQL: &str = concat!(
    "WITH victims AS (
    SELECT b.collection, b.digest FROM syncline_blobs b
    WHERE b.touched_at < now() - $1::bigint * interval '1 second'
      AND b.created_at < now() - $1::bigint * interval '1 second'
      AND (SELECT count(*) FROM syncline_documents d
           WHERE d.collection = b.collection AND NOT d.deleted AND ",
    references!("b.digest"),
    ") = 0
    ORDER BY b.touched_at LIMIT $2
    FOR UPDATE OF b SKIP LOCKED
)
DELETE FROM syncline_blobs b USING victims v
WHERE b.collection = v.collection AND b.digest = v.digest
RETURNING b.location, b.length"
);

/// Uploads that started longer than the grace period ago and never finished (a crash, a
/// cancelled call whose clean-up did not run): forgotten, their staged bytes deleted.
pub(super) const GC_STALE_UPLOADS_SQL: &str = "
DELETE FROM syncline_blob_uploads WHERE upload_id = ANY(ARRAY(
    SELECT upload_id FROM syncline_blob_uploads
    WHERE started_at < now() - $1::bigint * interval '1 second'
    ORDER BY started_at LIMIT $2 FOR UPDATE SKIP LOCKED))
RETURNING upload_id, location";

/// The blob index on a pool.
#[derive(Debug, Clone)]
pub struct BlobIndex {
    pool: PgPool,
}

impl BlobIndex {
    /// The index in `pool`'s database.
    pub fn new(pool: PgPool) -> BlobIndex {
        BlobIndex { pool }
    }

    /// The pool (back ends write through it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Which of `digests` (valid, deduplicated by the caller) `collection` holds for a
    /// principal in `scope`: stored, and proven held by it (uploaded) or referenced by a live
    /// document it may read, with their lengths. Touches them for the GC.
    pub async fn available(
        &self,
        collection: &str,
        scope: BlobScope<'_>,
        digests: &[String],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let sql = scoped(AVAILABLE_SQL, scope.filter, 5);
        let query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(collection)
            .bind(digests)
            .bind(scope.grantee)
            .bind(scope.owner);
        let rows: Vec<(String, i64)> = bind_filter(query, scope.filter)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(d, n)| (d, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// The blob `digest` of `collection` if a principal in `scope` may read it (a live
    /// document it may read references it); `None` both when it is absent and when it is not
    /// the principal's to read.
    pub async fn readable(
        &self,
        collection: &str,
        scope: BlobScope<'_>,
        digest: &str,
    ) -> Result<Option<StoredBlob>, StoreError> {
        let sql = scoped(READABLE_SQL, scope.filter, 4);
        let query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(collection)
            .bind(digest)
            .bind(scope.owner);
        let row: Option<(i64, String, String)> = bind_filter(query, scope.filter)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.map(|(length, content_type, location)| StoredBlob {
            length: u64::try_from(length).unwrap_or(0),
            content_type,
            location,
        }))
    }

    /// Blobs and bytes stored per collection (kept by a trigger: a few rows, never a scan).
    pub async fn totals(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(TOTALS_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(c, n, b)| {
                let n = u64::try_from(n).unwrap_or(0);
                (c, n, u64::try_from(b).unwrap_or(0))
            })
            .collect())
    }

    /// Which of `digests` `collection` holds, whoever may read them.
    pub async fn exists_many(
        &self,
        collection: &str,
        digests: &[String],
    ) -> Result<Vec<bool>, StoreError> {
        let found: Vec<String> = sqlx::query_scalar(EXISTS_SQL)
            .bind(collection)
            .bind(digests)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(digests.iter().map(|d| found.contains(d)).collect())
    }

    /// The plans of the reference lookups with sequential scans discouraged: availability and
    /// download for an owner (served by the owner index or the digest index, whichever the
    /// planner prefers), download for a service and the GC (the digest index).
    pub async fn explain_reference_queries(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let digest = "0".repeat(super::DIGEST_CHARS);
        let mut plans = Vec::new();
        let service: Option<&str> = None;
        for (sql, owner) in [
            (AVAILABLE_SQL, Some("owner")),
            (READABLE_SQL, Some("owner")),
            (READABLE_SQL, service),
            (GC_VICTIMS_SQL, service),
        ] {
            let explain = sqlx::AssertSqlSafe(format!("EXPLAIN {}", scoped(sql, None, 0)));
            let query = sqlx::query_scalar::<_, String>(explain);
            let query = if sql == GC_VICTIMS_SQL {
                query.bind(86_400_i64).bind(100_i64)
            } else if sql == AVAILABLE_SQL {
                query
                    .bind("tasks")
                    .bind(vec![digest.clone()])
                    .bind(owner)
                    .bind(owner)
            } else {
                query.bind("tasks").bind(digest.clone()).bind(owner)
            };
            let lines = query.fetch_all(&mut *tx).await.map_err(db_error)?;
            plans.push(lines.join("\n"));
        }
        tx.rollback().await.map_err(db_error)?;
        Ok(plans)
    }

    /// Records a staged upload (so that a crash leaves something the GC can find).
    pub async fn start_upload(&self, upload_id: &str, location: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO syncline_blob_uploads (upload_id, location) VALUES ($1, $2)")
            .bind(upload_id)
            .bind(location)
            .execute(&self.pool)
            .await
            .map_err(db_error)
            .map(drop)
    }

    /// Forgets a staged upload.
    pub async fn end_upload(&self, upload_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM syncline_blob_uploads WHERE upload_id = $1")
            .bind(upload_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)
            .map(drop)
    }
}

/// Inserts (or refreshes) the blob row and the grant in `tx`; returns whether the row is new
/// and the location of the stored bytes.
pub(super) async fn record(
    tx: &mut sqlx::PgConnection,
    meta: &BlobMeta,
    location: &str,
    owner: &str,
) -> Result<(bool, String), StoreError> {
    let length = i64::try_from(meta.length)
        .map_err(|_| StoreError::Internal("blob length over i64".into()))?;
    let (inserted, stored_at): (bool, String) = sqlx::query_as(UPSERT_SQL)
        .bind(&meta.collection)
        .bind(&meta.digest)
        .bind(length)
        .bind(&meta.content_type)
        .bind(location)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    sqlx::query(GRANT_SQL)
        .bind(&meta.collection)
        .bind(&meta.digest)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok((inserted, stored_at))
}

/// One GC batch being collected: its transaction (holding the GC lock and the victims' row
/// locks), the unreferenced blobs past the grace period (storage location, length), and the
/// stale staged uploads (upload id, location).
pub(super) struct GcCandidates {
    /// Commit it once the bytes are gone; dropping it rolls the batch back.
    pub tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub victims: Vec<(String, i64)>,
    pub stale: Vec<(String, String)>,
}

impl GcCandidates {
    /// The batch's figures.
    pub fn batch(&self) -> super::gc::GcBatch {
        super::gc::GcBatch {
            blobs: self.victims.len() as u64,
            bytes: self
                .victims
                .iter()
                .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
                .sum(),
            stale_uploads: self.stale.len() as u64,
        }
    }
}

impl BlobIndex {
    /// Opens a GC batch of at most `batch` blobs and `batch` stale uploads older than
    /// `grace`; `None` when another replica holds the GC lock.
    pub(super) async fn gc_candidates(
        &self,
        grace: std::time::Duration,
        batch: u32,
    ) -> Result<Option<GcCandidates>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let locked: bool = sqlx::query_scalar(GC_LOCK_SQL)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        if !locked {
            return Ok(None);
        }
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let victims: Vec<(String, i64)> = sqlx::query_as(GC_VICTIMS_SQL)
            .bind(grace)
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        let stale: Vec<(String, String)> = sqlx::query_as(GC_STALE_UPLOADS_SQL)
            .bind(grace)
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        Ok(Some(GcCandidates { tx, victims, stale }))
    }
}
