//! Positions across a restore: positions are transaction ids of one PostgreSQL cluster, so a
//! logical copy (`pg_dump | psql`, logical replication) into another cluster brings rows whose
//! positions mean nothing there (above its counter: never readable; below: behind every old
//! checkpoint). `syncline_dataset` records whose ids they are; when that is not the current
//! cluster, every row gets a new position and the dataset a new generation, so that old
//! checkpoint tokens are refused (CHECKPOINT_EXPIRED) and clients reconcile.
//! See docs/architecture.md, "Restore into another cluster".

use sqlx::Connection;

use super::PgStore;
use super::error::to_store_error;
use crate::store::StoreError;

/// Rows per transaction of a re-stamp that the first request starts (`restamp_batch_rows`
/// applies at start-up).
const LATE_BATCH_ROWS: u32 = 10_000;

/// Serializes re-stamps across processes: `pg_advisory_lock(hashtext(this), 0)`.
const LOCK_NAME: &str = "syncline.restamp";

// Everything the decision needs, from one snapshot. `pg_snapshot_xmax` is the next
// transaction id to be assigned (unlike pg_current_xact_id() it assigns none, so it also works
// on a hot standby): a stored position at or above it comes from another cluster. The highest
// position is found per collection on the change index (a skip scan over the collections), not
// by reading the table.
const STATE_SQL: &str = "
WITH RECURSIVE names AS (
    SELECT min(collection) AS name FROM syncline_documents
    UNION ALL
    SELECT (SELECT min(collection) FROM syncline_documents WHERE collection > names.name)
    FROM names WHERE names.name IS NOT NULL
)
SELECT pg_is_in_recovery(),
       (SELECT system_identifier FROM pg_control_system()),
       d.system_identifier,
       d.generation,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       (SELECT max((SELECT max(change_xid) FROM syncline_documents x WHERE x.collection = n.name))
        FROM names n WHERE n.name IS NOT NULL),
       (SELECT count(*) FROM syncline_restamp)
FROM syncline_dataset d WHERE d.id = 1";

const FILL_SQL: &str = "INSERT INTO syncline_restamp (collection, old_xid, old_seq, id)
    SELECT collection, change_xid, change_seq, id FROM syncline_documents";

// One batch, in the old change order: new positions from this transaction's id, with the
// tie-breakers numbered in the old order, so the relative order of the batch is kept. The
// batch leaves the work table in the same transaction.
const BATCH_SQL: &str = "
WITH batch AS (
    DELETE FROM syncline_restamp r
    WHERE (r.collection, r.old_xid, r.old_seq, r.id) IN (
        SELECT collection, old_xid, old_seq, id FROM syncline_restamp
        ORDER BY collection, old_xid, old_seq, id LIMIT $1)
    RETURNING r.collection, r.old_xid, r.old_seq, r.id
), numbered AS (
    SELECT collection, id,
           row_number() OVER (ORDER BY collection, old_xid, old_seq, id) AS seq
    FROM batch
)
UPDATE syncline_documents d
SET change_xid = pg_current_xact_id()::text::bigint, change_seq = n.seq
FROM numbered n
WHERE d.collection = n.collection AND d.id = n.id";

const LEFT_SQL: &str = "SELECT EXISTS (SELECT 1 FROM syncline_restamp)";

// The purge horizons are positions of the old cluster too; every checkpoint they guarded is of
// the old generation and refused anyway, so they go. So do the removal records (selective
// sync): their positions are the old cluster's and could sort after the new ones, and every
// reader that could need one holds a checkpoint of the old generation (it starts over).
const FINISH_SQL: &str = "
WITH horizons AS (DELETE FROM syncline_purge_horizon),
     moves AS (DELETE FROM syncline_moves)
UPDATE syncline_dataset
SET system_identifier = (SELECT system_identifier FROM pg_control_system()),
    generation = generation + 1,
    restamped_at = now()
WHERE id = 1
RETURNING generation";

/// Why the positions are taken to come from another cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Foreign {
    /// The recorded cluster identity is not the current cluster's.
    OtherCluster {
        /// `system_identifier` recorded with the positions.
        recorded: i64,
        /// The current cluster's.
        current: i64,
    },
    /// A row's position lies at or above the current transaction counter.
    AboveCounter {
        /// The highest stored transaction id.
        highest: i64,
        /// The next transaction id of this cluster.
        next: i64,
    },
    /// A re-stamp started and did not finish (rows are left in `syncline_restamp`).
    Unfinished {
        /// Rows still to re-stamp.
        left: i64,
    },
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Foreign::OtherCluster { recorded, current } => write!(
                f,
                "the positions were recorded on cluster {recorded}, this is cluster {current} \
                 (a logical restore or copy)"
            ),
            Foreign::AboveCounter { highest, next } => write!(
                f,
                "a position's transaction id {highest} is at or above this cluster's next \
                 transaction id {next} (a logical restore or copy)"
            ),
            Foreign::Unfinished { left } => {
                write!(f, "an interrupted re-stamp has {left} rows left")
            }
        }
    }
}

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetState {
    /// The positions are this cluster's: nothing to do.
    Current {
        /// The dataset generation.
        generation: u32,
    },
    /// The positions come from another transaction-id space and must be re-stamped.
    Foreign {
        /// Why.
        why: Foreign,
        /// The dataset generation now (the re-stamp moves to the next).
        generation: u32,
    },
    /// A read-only hot standby: nothing may be written here (its primary re-stamps).
    Standby,
    /// The migrations have not run yet.
    NotMigrated,
}

/// What a re-stamp did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restamp {
    /// Why it ran.
    pub why: Foreign,
    /// Rows given new positions.
    pub rows: u64,
    /// Batch transactions.
    pub batches: u32,
    /// The new dataset generation.
    pub generation: u32,
}

impl PgStore {
    /// Checks whether the stored positions are this cluster's (nothing is written).
    pub async fn dataset_state(&self) -> Result<DatasetState, StoreError> {
        let mut conn = self.acquire().await?;
        read_state(&mut conn).await
    }

    /// Re-stamps every position when they come from another cluster (see the module doc),
    /// `batch_rows` rows per transaction, under an advisory lock: a process that waited for
    /// another's re-stamp finds nothing left to do. `None`: nothing needed (or a standby).
    pub async fn restamp_if_foreign(&self, batch_rows: u32) -> Result<Option<Restamp>, StoreError> {
        if !matches!(self.dataset_state().await?, DatasetState::Foreign { .. }) {
            return Ok(None);
        }
        // A connection of its own, closed at the end: the session lock cannot outlive it in
        // the pool, even when an error returns early.
        let mut conn = self.acquire().await?.detach();
        let result = restamp_locked(&mut conn, batch_rows.max(1)).await;
        let _ = conn.close().await;
        result
    }

    /// The dataset generation checkpoint tokens are sealed with. Normally the start-up
    /// re-stamped already; a server that started while the database was down does it here,
    /// before its first token.
    pub(crate) async fn load_dataset_generation(&self) -> Result<u32, StoreError> {
        match self.dataset_state().await? {
            DatasetState::Current { generation } => return Ok(generation),
            DatasetState::Foreign { .. } => {
                if let Some(done) = self.restamp_if_foreign(LATE_BATCH_ROWS).await? {
                    return Ok(done.generation);
                }
            }
            DatasetState::NotMigrated | DatasetState::Standby => {}
        }
        let generation: Option<i32> =
            sqlx::query_scalar("SELECT generation FROM syncline_dataset WHERE id = 1")
                .fetch_optional(self.pool())
                .await
                .map_err(missing_table_is_unavailable)?;
        Ok(generation.map_or(0, |g| u32::try_from(g).unwrap_or(0)))
    }
}

async fn restamp_locked(
    conn: &mut sqlx::PgConnection,
    batch_rows: u32,
) -> Result<Option<Restamp>, StoreError> {
    sqlx::query("SELECT pg_advisory_lock(hashtext($1), 0)")
        .bind(LOCK_NAME)
        .execute(&mut *conn)
        .await
        .map_err(to_store_error)?;
    // Another process may have finished it while we waited for the lock.
    let why = match read_state(conn).await? {
        DatasetState::Foreign { why, .. } => why,
        _ => return Ok(None),
    };
    tracing::warn!(reason = %why, "re-stamping every document's position before serving");
    if !matches!(why, Foreign::Unfinished { .. }) {
        sqlx::query(FILL_SQL)
            .execute(&mut *conn)
            .await
            .map_err(to_store_error)?;
    }
    let mut rows = 0;
    let mut batches = 0;
    loop {
        let mut tx = conn.begin().await.map_err(to_store_error)?;
        // The triggers of SQL writes would give each row a new revision and a NOTIFY: a
        // re-stamp changes no document.
        sqlx::query("SELECT set_config('syncline.writer', 'push', true)")
            .execute(&mut *tx)
            .await
            .map_err(to_store_error)?;
        rows += sqlx::query(BATCH_SQL)
            .bind(i64::from(batch_rows))
            .execute(&mut *tx)
            .await
            .map_err(to_store_error)?
            .rows_affected();
        batches += 1;
        let left: bool = sqlx::query_scalar(LEFT_SQL)
            .fetch_one(&mut *tx)
            .await
            .map_err(to_store_error)?;
        if left {
            tx.commit().await.map_err(to_store_error)?;
            if batches % 100 == 0 {
                tracing::info!(rows, batches, "re-stamping positions");
            }
            continue;
        }
        // The last batch moves the generation and records the identity in its own
        // transaction: a crash before it leaves rows in the work table, and the next start
        // resumes; none after it leaves a re-stamped table on the old generation.
        let generation: i32 = sqlx::query_scalar(FINISH_SQL)
            .fetch_one(&mut *tx)
            .await
            .map_err(to_store_error)?;
        tx.commit().await.map_err(to_store_error)?;
        // Every position changed: the planner's statistics of them are stale.
        if let Err(e) = super::plans::analyze(conn).await {
            tracing::warn!(error = %e, "ANALYZE after the re-stamp failed");
        }
        let generation = u32::try_from(generation).unwrap_or(0);
        tracing::warn!(
            rows,
            batches,
            generation,
            "re-stamped every position: checkpoints of earlier generations are now expired \
             (clients reconcile)"
        );
        return Ok(Some(Restamp {
            why,
            rows,
            batches,
            generation,
        }));
    }
}

async fn read_state(conn: &mut sqlx::PgConnection) -> Result<DatasetState, StoreError> {
    type Row = (bool, i64, i64, i32, i64, Option<i64>, i64);
    let row: Option<Row> = match sqlx::query_as(STATE_SQL).fetch_optional(&mut *conn).await {
        Ok(row) => row,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
            return Ok(DatasetState::NotMigrated);
        }
        Err(e) => return Err(to_store_error(e)),
    };
    let Some((standby, current, recorded, generation, next, highest, left)) = row else {
        return Err(StoreError::Internal(
            "syncline_dataset has no row: restore it or re-run migration 0009".into(),
        ));
    };
    if standby {
        return Ok(DatasetState::Standby);
    }
    let generation = u32::try_from(generation).unwrap_or(0);
    let why = if left > 0 {
        Foreign::Unfinished { left }
    } else if recorded != current {
        Foreign::OtherCluster { recorded, current }
    } else {
        match highest {
            Some(highest) if highest >= next => Foreign::AboveCounter { highest, next },
            _ => return Ok(DatasetState::Current { generation }),
        }
    };
    Ok(DatasetState::Foreign { why, generation })
}

/// Before its migration ran the table is missing: retry later (UNAVAILABLE), not a bug.
fn missing_table_is_unavailable(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
            StoreError::Unavailable("the dataset table is missing: run the migrations".into())
        }
        _ => to_store_error(err),
    }
}
