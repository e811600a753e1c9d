//! Applying a push: lock the touched rows, let the protocol decide, write everything with one
//! statement, notify, commit. Retried on serialization failures, deadlocks and insert races.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::error::{Class, classify};
use super::{NOTIFY_CHANNEL, PgStore};
use crate::protocol::ProtocolError;
use crate::store::{DocumentWrite, Position, PushOutcome, PushPlan, StoreError, StoredDocument};

/// Attempts before a contended push gives up with a retryable error.
const MAX_ATTEMPTS: u32 = 12;

// Locks in id order so two pushes over the same ids cannot deadlock.
pub(super) const LOCK_SQL: &str = "
SELECT id, owner, body::text AS body, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND id = ANY($2)
ORDER BY id
FOR UPDATE";

// One round trip for every write of the push. Inserts use DO NOTHING: a row that appeared
// since LOCK_SQL read (a concurrent insert of the same new id) is counted as missing and the
// whole transaction is retried, now seeing that row. Updated rows are already locked.
const WRITE_SQL: &str = "
WITH ins AS (
    INSERT INTO syncline_documents
        (collection, id, owner, body, deleted, revision, updated_at, change_xid, change_seq)
    SELECT $1, t.id, t.owner, t.body::jsonb, t.deleted, t.revision, now(),
           pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
    FROM unnest($2::text[], $3::text[], $4::bool[], $5::text[], $11::text[])
         AS t(id, body, deleted, revision, owner)
    ON CONFLICT (collection, id) DO NOTHING
    RETURNING 1
), upd AS (
    UPDATE syncline_documents d
    SET body = t.body::jsonb, deleted = t.deleted, revision = t.revision, updated_at = now(),
        change_xid = pg_current_xact_id()::text::bigint,
        change_seq = nextval('syncline_change_seq')
    FROM unnest($6::text[], $7::text[], $8::bool[], $9::text[]) AS t(id, body, deleted, revision)
    WHERE d.collection = $1 AND d.id = t.id
    RETURNING 1
), note AS (
    SELECT pg_notify($10, pg_current_xact_id()::text || ':' || $1)
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       (SELECT count(*) FROM upd) AS updated,
       (SELECT count(*) FROM note) AS notified,
       now() AS written_at,
       pg_current_xact_id()::text::bigint AS tx";

#[derive(sqlx::FromRow)]
struct LockedRow {
    id: String,
    owner: String,
    body: String,
    deleted: bool,
    revision: String,
    updated_at: DateTime<Utc>,
    change_xid: i64,
    change_seq: i64,
}

#[derive(sqlx::FromRow)]
struct WriteResult {
    inserted: i64,
    updated: i64,
    written_at: DateTime<Utc>,
    tx: i64,
}

/// Why one attempt did not commit.
enum AttemptError {
    Retry,
    Fail(StoreError),
}

impl From<sqlx::Error> for AttemptError {
    fn from(err: sqlx::Error) -> Self {
        match classify(err) {
            Class::Retry => AttemptError::Retry,
            Class::Fail(e) => AttemptError::Fail(e),
        }
    }
}

impl PgStore {
    #[tracing::instrument(name = "db.push", skip_all, fields(db.system = "postgresql", collection = %collection, rows = ids.len()))]
    pub(crate) async fn push<F>(
        &self,
        collection: &str,
        ids: &[String],
        decide: F,
    ) -> Result<PushOutcome, StoreError>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan, ProtocolError> + Send + Sync,
    {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(collection, &ids, &decide).await {
                Ok(outcome) => return Ok(outcome),
                Err(AttemptError::Fail(e)) => return Err(e),
                Err(AttemptError::Retry) => {
                    tracing::debug!(attempt, collection, "push collided; retrying");
                    // Jittered backoff so colliding pushes do not collide again in lockstep.
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2 + jitter))
                        .await;
                }
            }
        }
        Err(StoreError::Contention(format!(
            "push to {collection} collided with concurrent pushes {MAX_ATTEMPTS} times"
        )))
    }

    async fn attempt<F>(
        &self,
        collection: &str,
        ids: &[String],
        decide: &F,
    ) -> Result<PushOutcome, AttemptError>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan, ProtocolError> + Send + Sync,
    {
        // The wait for a connection, measured with the BEGIN round trip it includes.
        let started = std::time::Instant::now();
        let mut tx: Transaction<'_, Postgres> = self.pool().begin().await?;
        metrics::histogram!(crate::telemetry::metrics::POOL_ACQUIRE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let locked: Vec<LockedRow> = sqlx::query_as(LOCK_SQL)
            .bind(collection)
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?;
        let current: HashMap<String, StoredDocument> = locked
            .into_iter()
            .map(|r| {
                let doc = StoredDocument {
                    id: r.id,
                    owner: r.owner,
                    body: r.body,
                    deleted: r.deleted,
                    revision: r.revision,
                    updated_at: r.updated_at,
                    position: Position {
                        tx: r.change_xid,
                        seq: r.change_seq,
                    },
                };
                (doc.id.clone(), doc)
            })
            .collect();
        let plan = decide(&current).map_err(|e| AttemptError::Fail(StoreError::Rejected(e)))?;
        let mut conflicts = plan.conflicts;
        if plan.writes.is_empty() {
            // Nothing to write: release the locks without touching anything.
            tx.rollback().await?;
            return Ok(PushOutcome {
                conflicts,
                written: 0,
                tx: None,
            });
        }

        let (inserts, updates): (Vec<_>, Vec<_>) = plan.writes.iter().partition(|w| w.is_new);
        let (i_id, i_body, i_del, i_rev) = columns(&inserts);
        let (u_id, u_body, u_del, u_rev) = columns(&updates);
        let result: WriteResult = sqlx::query_as(WRITE_SQL)
            .bind(collection)
            .bind(&i_id)
            .bind(&i_body)
            .bind(&i_del)
            .bind(&i_rev)
            .bind(&u_id)
            .bind(&u_body)
            .bind(&u_del)
            .bind(&u_rev)
            .bind(NOTIFY_CHANNEL)
            .bind(inserts.iter().map(|w| w.owner.as_str()).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await?;
        if result.inserted as usize != inserts.len() || result.updated as usize != updates.len() {
            // A concurrent push inserted one of our "new" ids after we read: decide again.
            tx.rollback().await?;
            return Err(AttemptError::Retry);
        }
        tx.commit().await?;
        for c in &mut conflicts {
            c.updated_at.get_or_insert(result.written_at);
        }
        Ok(PushOutcome {
            conflicts,
            written: plan.writes.len(),
            tx: Some(result.tx),
        })
    }
}

/// Splits writes into the column arrays that `unnest` takes.
#[allow(clippy::type_complexity)]
fn columns<'a>(ws: &[&'a DocumentWrite]) -> (Vec<&'a str>, Vec<&'a str>, Vec<bool>, Vec<&'a str>) {
    (
        ws.iter().map(|w| w.id.as_str()).collect(),
        ws.iter().map(|w| w.body.as_str()).collect(),
        ws.iter().map(|w| w.deleted).collect(),
        ws.iter().map(|w| w.revision.as_str()).collect(),
    )
}
