//! The tombstone purge's statements: delete a batch of old tombstones and raise the
//! collection's purge horizon in one transaction, under a per-collection advisory lock. Also
//! the expiry of idempotency keys and overwritten versions, in batches needing no lock.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PgStore;
use super::error::to_store_error;
use crate::store::{Position, StoreError};

// One replica purges a collection at a time: a replica that finds the lock taken skips the
// round rather than queueing behind it. The lock is the transaction's, so it is released by
// the commit that makes the deletes and the raised horizon visible together. The
// `syncline.purge` marker lets migration 0004's DELETE trigger through (a DELETE is otherwise
// turned into a tombstone).
const LOCK_SQL: &str = "SELECT pg_try_advisory_xact_lock(hashtext('syncline.purge'), hashtext($1)), \
     set_config('syncline.purge', 'on', true)";

// The oldest tombstones first, in change order. `FOR UPDATE SKIP LOCKED` re-checks each row
// after locking it (a push that brought the document back, or wrote it again, since the scan
// makes it no longer match) and passes over rows a push holds: the purge never waits for
// writers and never deletes a state it did not check. The horizon only rises; every row
// deleted here has a position at or below it.
const BATCH_SQL: &str = "
WITH victims AS (
    SELECT id FROM syncline_documents
    WHERE collection = $1 AND deleted AND updated_at < now() - $2::bigint * interval '1 second'
    ORDER BY change_xid, change_seq
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM syncline_documents d USING victims v
    WHERE d.collection = $1 AND d.id = v.id
    RETURNING d.change_xid, d.change_seq, d.updated_at
), top AS (
    SELECT change_xid, change_seq, updated_at FROM gone
    ORDER BY change_xid DESC, change_seq DESC LIMIT 1
), raised AS (
    INSERT INTO syncline_purge_horizon AS p
        (collection, change_xid, change_seq, horizon_updated_at, raised_at)
    SELECT $1, change_xid, change_seq, updated_at, now() FROM top
    ON CONFLICT (collection) DO UPDATE
    SET change_xid = excluded.change_xid, change_seq = excluded.change_seq,
        horizon_updated_at = excluded.horizon_updated_at, raised_at = excluded.raised_at
    WHERE (p.change_xid, p.change_seq) < (excluded.change_xid, excluded.change_seq)
)
SELECT count(*) FROM gone";

// Expired idempotency keys and overwritten versions (migrations/0010), oldest first, one
// batch per statement (its own short transaction). Any replica may run them at any time:
// `SKIP LOCKED` passes over rows another purge or a push holds (a push replacing an expired
// key locks it first), and deleting an expired row twice deletes nothing the second time. The
// locked rows keep their ctid until this statement ends, which is what makes the TID scan safe.
const EXPIRED_KEYS_SQL: &str = "
DELETE FROM syncline_push_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM syncline_push_keys WHERE expires_at <= now()
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED))";

const EXPIRED_VERSIONS_SQL: &str = "
DELETE FROM syncline_overwritten WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM syncline_overwritten WHERE expires_at <= now()
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED))";

// Removal records (migration 0012) at or below their collection's purge horizon: every reader
// that could need one is expired (its position is at or below the horizon, and a reader whose
// floor keeps it unexpired skips records older than its floor, which these are). Deleted in
// batches like the expired keys, by any replica at any time.
const EXPIRED_MOVES_SQL: &str = "
DELETE FROM syncline_moves WHERE ctid = ANY(ARRAY(
    SELECT m.ctid FROM syncline_moves m
    JOIN syncline_purge_horizon p ON p.collection = m.collection
    WHERE (m.change_xid, m.change_seq) <= (p.change_xid, p.change_seq)
    LIMIT $1 FOR UPDATE OF m SKIP LOCKED))";

const PREVIEW_SQL: &str = "
SELECT count(*), min(updated_at), max(updated_at) FROM syncline_documents
WHERE collection = $1 AND deleted AND updated_at < now() - $2::bigint * interval '1 second'";

const HORIZON_SQL: &str = "
SELECT change_xid, change_seq, horizon_updated_at, raised_at
FROM syncline_purge_horizon WHERE collection = $1";

/// What one purge transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeBatch {
    /// Tombstones deleted.
    pub purged: u64,
    /// Another transaction (another replica's purge) held the collection's purge lock: nothing
    /// was done.
    pub locked_out: bool,
}

/// What one batch of the expiry purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredBatch {
    /// Expired idempotency keys.
    pub keys: u64,
    /// Expired overwritten versions.
    pub versions: u64,
    /// Removal records at or below their collection's purge horizon.
    pub moves: u64,
}

/// The tombstones a purge would delete now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgePreview {
    /// How many.
    pub count: i64,
    /// The oldest one's `updated_at`.
    pub oldest: Option<DateTime<Utc>>,
    /// The newest one's `updated_at`.
    pub newest: Option<DateTime<Utc>>,
}

/// A collection's purge horizon: the highest position a purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeHorizon {
    /// The position; checkpoints at or below it are expired.
    pub position: Position,
    /// `updated_at` of the tombstone at that position.
    pub updated_at: DateTime<Utc>,
    /// When a purge last raised it.
    pub raised_at: DateTime<Utc>,
}

impl PgStore {
    /// In one transaction, if no other holds `collection`'s purge lock: deletes up to `rows`
    /// tombstones last written more than `retention` ago, oldest position first, and raises
    /// the collection's purge horizon to the highest position deleted.
    pub async fn purge_batch(
        &self,
        collection: &str,
        retention: Duration,
        rows: u32,
    ) -> Result<PurgeBatch, StoreError> {
        let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let mut tx = self.pool().begin().await.map_err(to_store_error)?;
        let (locked, _): (bool, String) = sqlx::query_as(LOCK_SQL)
            .bind(collection)
            .fetch_one(&mut *tx)
            .await
            .map_err(to_store_error)?;
        if !locked {
            tx.rollback().await.map_err(to_store_error)?;
            return Ok(PurgeBatch {
                purged: 0,
                locked_out: true,
            });
        }
        let purged: i64 = sqlx::query_scalar(BATCH_SQL)
            .bind(collection)
            .bind(seconds)
            .bind(i64::from(rows))
            .fetch_one(&mut *tx)
            .await
            .map_err(to_store_error)?;
        tx.commit().await.map_err(to_store_error)?;
        Ok(PurgeBatch {
            purged: u64::try_from(purged).unwrap_or(0),
            locked_out: false,
        })
    }

    /// Deletes up to `rows` expired idempotency keys, up to `rows` expired overwritten
    /// versions and up to `rows` removal records below the purge horizon, oldest first,
    /// passing over rows another transaction holds.
    pub async fn purge_expired_batch(&self, rows: u32) -> Result<ExpiredBatch, StoreError> {
        let mut batch = ExpiredBatch::default();
        for (sql, count) in [
            (EXPIRED_KEYS_SQL, &mut batch.keys),
            (EXPIRED_VERSIONS_SQL, &mut batch.versions),
            (EXPIRED_MOVES_SQL, &mut batch.moves),
        ] {
            *count = sqlx::query(sql)
                .bind(i64::from(rows))
                .execute(self.pool())
                .await
                .map_err(to_store_error)?
                .rows_affected();
        }
        Ok(batch)
    }

    /// What [`PgStore::purge_batch`] would delete now, all batches together.
    pub async fn purge_preview(
        &self,
        collection: &str,
        retention: Duration,
    ) -> Result<PurgePreview, StoreError> {
        let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let (count, oldest, newest) = sqlx::query_as(PREVIEW_SQL)
            .bind(collection)
            .bind(seconds)
            .fetch_one(self.pool())
            .await
            .map_err(to_store_error)?;
        Ok(PurgePreview {
            count,
            oldest,
            newest,
        })
    }

    /// `collection`'s purge horizon, `None` before its first purge.
    pub async fn purge_horizon(
        &self,
        collection: &str,
    ) -> Result<Option<PurgeHorizon>, StoreError> {
        let row: Option<(i64, i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(HORIZON_SQL)
            .bind(collection)
            .fetch_optional(self.pool())
            .await
            .map_err(to_store_error)?;
        Ok(row.map(|(tx, seq, updated_at, raised_at)| PurgeHorizon {
            position: Position { tx, seq },
            updated_at,
            raised_at,
        }))
    }
}
