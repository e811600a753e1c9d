//! Applying a push. First optimistically: read the touched rows, let the protocol decide, and
//! write everything with one guarded statement (two round trips, no row locks). The statement
//! applies nothing if any row changed since the read; then the push is decided again inside a
//! transaction that locks the rows first, retried on serialization failures and deadlocks.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::error::{Class, classify};
use super::{NOTIFY_CHANNEL, PgStore};
use crate::protocol::ProtocolError;
use crate::store::{DocumentWrite, PushOutcome, PushPlan, PushTarget, StoreError, StoredDocument};

/// Attempts before a contended push gives up with a retryable error.
const MAX_ATTEMPTS: u32 = 12;

// The rows a push touches, as the optimistic path reads them. A body is read only when the
// row's revision is not the one the push's first row for it assumes ($3): at that revision the
// row is replaced unread, and bodies are most of what a push would otherwise read back.
macro_rules! current_sql {
    ($tail:literal) => {
        concat!(
            "
SELECT d.id, d.owner,
       CASE WHEN d.revision = t.skip_at THEN '' ELSE d.body::text END AS body,
       d.deleted, d.revision, d.updated_at, d.change_xid, d.change_seq
FROM unnest($2::text[], $3::text[]) AS t(id, skip_at)
JOIN syncline_documents d ON d.collection = $1 AND d.id = t.id",
            $tail
        )
    };
}
const READ_SQL: &str = current_sql!("");

// Locks in id order so two pushes over the same ids cannot deadlock.
pub(super) const LOCK_SQL: &str = current_sql!("\nORDER BY d.id\nFOR UPDATE OF d");

// One round trip for every write of the push. Inserts use DO NOTHING and updates require the
// revision the plan saw: if any row changed since it was read (a concurrent insert of the same
// new id, a concurrent update), the counts fall short and syncline_stale_push() aborts the
// statement, so nothing is applied and the push is decided again.
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
    FROM unnest($6::text[], $7::text[], $8::bool[], $9::text[], $12::text[])
         AS t(id, body, deleted, revision, expected)
    WHERE d.collection = $1 AND d.id = t.id AND d.revision = t.expected
    RETURNING 1
), note AS (
    SELECT pg_notify($10, pg_current_xact_id()::text || ':' || $1)
)
SELECT CASE WHEN (SELECT count(*) FROM ins) = cardinality($2::text[])
             AND (SELECT count(*) FROM upd) = cardinality($6::text[])
            THEN pg_current_xact_id()::text::bigint
            ELSE syncline_stale_push() END AS tx,
       (SELECT count(*) FROM note) AS notified,
       now() AS written_at";

#[derive(sqlx::FromRow)]
struct WriteResult {
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
    #[tracing::instrument(name = "db.push", skip_all, fields(db.system = "postgresql", collection = %collection, rows = targets.len()))]
    pub(crate) async fn push<F>(
        &self,
        collection: &str,
        targets: &[PushTarget],
        decide: F,
    ) -> Result<PushOutcome, StoreError>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan, ProtocolError> + Send + Sync,
    {
        let mut targets: Vec<&PushTarget> = targets.iter().collect();
        targets.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        let skip_at: Vec<Option<&str>> =
            targets.iter().map(|t| t.skip_body_at.as_deref()).collect();
        let ids = (ids.as_slice(), skip_at.as_slice());
        for attempt in 1..=MAX_ATTEMPTS {
            // Optimistic first; after any collision, under row locks.
            match self.attempt(collection, ids, &decide, attempt > 1).await {
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

    /// One try. Optimistic: read without locks and write with the guarded statement in its own
    /// implicit transaction. Locking: the same inside a transaction that locks the rows first.
    async fn attempt<F>(
        &self,
        collection: &str,
        ids: (&[&str], &[Option<&str>]),
        decide: &F,
        locking: bool,
    ) -> Result<PushOutcome, AttemptError>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan, ProtocolError> + Send + Sync,
    {
        // The wait for a connection (with the BEGIN round trip, when locking).
        let started = std::time::Instant::now();
        if !locking {
            let mut conn = self.acquire().await.map_err(AttemptError::Fail)?;
            let rows = sqlx::query(READ_SQL)
                .bind(collection)
                .bind(ids.0)
                .bind(ids.1)
                .fetch_all(&mut *conn)
                .await?;
            return write_plan(&mut conn, collection, documents(&rows)?, decide).await;
        }
        let mut tx: Transaction<'_, Postgres> = self.pool().begin().await?;
        metrics::histogram!(crate::telemetry::metrics::POOL_ACQUIRE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let rows = sqlx::query(LOCK_SQL)
            .bind(collection)
            .bind(ids.0)
            .bind(ids.1)
            .fetch_all(&mut *tx)
            .await?;
        let outcome = write_plan(&mut tx, collection, documents(&rows)?, decide).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Decides the push on `rows` (the current states) and writes the plan with the guarded
/// statement on `conn`.
async fn write_plan<F>(
    conn: &mut sqlx::PgConnection,
    collection: &str,
    rows: Vec<StoredDocument>,
    decide: &F,
) -> Result<PushOutcome, AttemptError>
where
    F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan, ProtocolError> + Send + Sync,
{
    let current: HashMap<String, StoredDocument> =
        rows.into_iter().map(|d| (d.id.clone(), d)).collect();
    let plan = decide(&current).map_err(|e| AttemptError::Fail(StoreError::Rejected(e)))?;
    let mut conflicts = plan.conflicts;
    if plan.writes.is_empty() {
        return Ok(PushOutcome {
            conflicts,
            written: 0,
            tx: None,
        });
    }
    let (inserts, updates): (Vec<_>, Vec<_>) = plan.writes.iter().partition(|w| w.is_new);
    let (i_id, i_body, i_del, i_rev) = columns(&inserts);
    let (u_id, u_body, u_del, u_rev) = columns(&updates);
    // The revision each update was planned on: the guard that makes the write safe.
    let expected: Vec<&str> = updates
        .iter()
        .map(|w| current.get(&w.id).map_or("", |d| d.revision.as_str()))
        .collect();
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
        .bind(&expected)
        .fetch_one(&mut *conn)
        .await?;
    for c in &mut conflicts {
        c.updated_at.get_or_insert(result.written_at);
    }
    Ok(PushOutcome {
        conflicts,
        written: plan.writes.len(),
        tx: Some(result.tx),
    })
}

/// The current states as READ_SQL and LOCK_SQL return them.
fn documents(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<StoredDocument>, sqlx::Error> {
    rows.iter()
        .map(|r| super::read::document_at(r, 0))
        .collect()
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
