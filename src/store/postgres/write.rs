//! Applying a push. First optimistically: read the touched rows, let the protocol decide, and
//! write everything with one guarded statement (two round trips, no row locks held while
//! deciding). The statement applies nothing if any row changed since the read; then the push is
//! decided again inside a transaction that first claims every id, retried on serialization
//! failures and deadlocks. Both paths take row locks and insert waits in id order (the one
//! global order), so pushes over overlapping ids wait for each other but never deadlock.
//! A push whose every row creates its document skips the read: decided on no stored state,
//! its guarded write alone (one statement) checks that every id is new; if one is not, the
//! push is decided again on a read. A push with an idempotency key is, first, the same
//! statements: the read also looks the
//! key up, and the guarded write also stores the key with its response (which the decision
//! determines). Its retries run in one transaction that claims the key before anything else
//! (see `keyed_attempt`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use super::error::{Class, classify};
use super::idempotency::{self, Claim};
use super::overwritten;
use super::{NOTIFY_CHANNEL, PgStore};
use crate::store::{
    Idempotency, PushApplied, PushError, PushOutcome, PushPlan, PushTarget, StoreError,
    StoredDocument,
};

/// Attempts before a contended push gives up with a retryable error.
const MAX_ATTEMPTS: u32 = 12;

// The rows a push touches, as the optimistic path reads them. A body is read only when the
// row's revision is not the one the push's first row for it assumes ($3): at that revision the
// row is replaced unread, and bodies are most of what a push would otherwise read back. Rows
// with the empty revision are the locking path's own placeholders (CLAIM_SQL), not documents.
macro_rules! read_sql {
    () => {
        "
SELECT d.id, d.owner,
       CASE WHEN d.revision = t.skip_at THEN '' ELSE d.body::text END AS body,
       d.deleted, d.revision, d.updated_at, d.change_xid, d.change_seq
FROM unnest($2::text[], $3::text[]) AS t(id, skip_at)
JOIN syncline_documents d ON d.collection = $1 AND d.id = t.id AND d.revision <> ''"
    };
}
pub(super) const READ_SQL: &str = read_sql!();

// A keyed push's optimistic read: READ_SQL's rows, each after the key's remembered request
// hash and response when an earlier push committed it and it has not expired (NULLs
// otherwise). One row at least, with NULL document columns when no target exists. The key is
// not claimed here: the write statement inserts it (KEYED_WRITE), so that the common keyed
// push is two round trips and no explicit transaction.
pub(super) const KEYED_READ_SQL: &str = concat!(
    "
SELECT k.request_hash, k.response, r.*
FROM (SELECT 1) AS one
LEFT JOIN syncline_push_keys k ON k.principal = $4 AND k.key = $5 AND k.expires_at > now()
LEFT JOIN (",
    read_sql!(),
    "
) AS r ON true"
);

// Every statement of a push first marks its transaction (set_config(.., true) lasts until the
// transaction ends, commit included, and costs no round trip): `syncline.writer = push` tells
// the SQL-write triggers (migrations/0004) that the rows are stamped and notified already, and
// `synchronous_commit` makes the acknowledgement durable whatever the database's default. The
// uncorrelated subquery is an InitPlan, evaluated once before the first row is written.
macro_rules! marked {
    ($param:literal) => {
        concat!(
            "(SELECT set_config('syncline.writer', 'push', true) || set_config('synchronous_commit', ",
            $param,
            ", true)) IS NOT NULL"
        )
    };
}
pub(super) use marked;

// The locking path's first statement: takes every target id in id order, the one global order
// every push path locks in. An existing row is locked (ON CONFLICT DO UPDATE locks the row even
// though its WHERE is false); an absent id gets a placeholder row (empty revision, never
// committed: the push overwrites or deletes it), so that a concurrent insert of the same id
// waits for this transaction instead of this transaction waiting for it later, out of order.
// Returns the ids that got a placeholder.
const CLAIM_SQL: &str = concat!(
    "
INSERT INTO syncline_documents AS d
    (collection, id, owner, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT $1, t.id, '', '{}', true, '', now(), pg_current_xact_id()::text::bigint, 0
FROM unnest($2::text[]) AS t(id)
WHERE ",
    marked!("$3"),
    "
ORDER BY t.id
ON CONFLICT (collection, id) DO UPDATE SET revision = d.revision WHERE false
RETURNING d.id"
);

// Removes the placeholders of ids the plan did not write. Today an absent id is always written
// (only a stored document can conflict); this keeps a placeholder from ever committing if a
// decision ever leaves one out.
pub(super) const UNCLAIM_SQL: &str = "DELETE FROM syncline_documents WHERE collection = $1 AND id = ANY($2::text[]) AND revision = ''";

// One round trip for every write of the push: one upsert over all written ids in id order, so
// row locks and insert waits are taken in the same global order as CLAIM_SQL's (an INSERT and an
// UPDATE in two CTEs would lock in two phases, and two pushes could each hold what the other
// needs next). $7 maps each id that must exist to the revision the plan saw (a placeholder: '');
// an id absent from it must be new. A row that changed since it was read (a concurrent insert of
// a "new" id, an update) is neither inserted nor updated, so the counts fall short and
// syncline_stale_push() aborts the statement: nothing is applied and the push is decided again.
// `xmax = 0` holds for the rows this statement inserted (an updated row carries its lock).
// Positions follow the request, not the lock order: the subquery (not flattened, its target
// list being volatile) draws the sequence in array order before the rows are sorted by id.
//
// A keyed optimistic push also stores its key with its response here ($11-$15; $11 NULL: no
// key), before any document (the uncorrelated count below is evaluated before the first row,
// and the key's CTE runs when first read): a concurrent push with the same key waits on the
// key, never on a document, as in the locking path (idempotency.rs claims the key first too),
// so the two orders never form a cycle. A key another push holds and has not let expire is
// not replaced: $16 keys stored are then missing, nothing is written, and the push is decided
// again (the next attempt claims the key first and finds the remembered response).
pub(super) const WRITE_SQL: &str = concat!(
    "
WITH keyed AS (
    INSERT INTO syncline_push_keys AS k
        (principal, key, request_hash, response, created_at, expires_at)
    SELECT $11::text, $12::bytea, $13::bytea, $14::bytea, now(),
           now() + $15::float8 * interval '1 second'
    WHERE $11::text IS NOT NULL
    ON CONFLICT (principal, key) DO UPDATE
    SET request_hash = excluded.request_hash, response = excluded.response,
        created_at = excluded.created_at, expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
    RETURNING true
), up AS (
    INSERT INTO syncline_documents AS d
        (collection, id, owner, body, deleted, revision, updated_at, change_xid, change_seq)
    SELECT $1, t.id, t.owner, t.body::jsonb, t.deleted, t.revision, now(),
           pg_current_xact_id()::text::bigint, t.seq
    FROM (SELECT u.*, nextval('syncline_change_seq') AS seq
          FROM unnest($2::text[], $3::text[], $4::bool[], $5::text[], $6::text[])
               AS u(id, body, deleted, revision, owner)) AS t
    WHERE ",
    marked!("$10"),
    " AND (SELECT count(*) FROM keyed) = $16::bigint
    ORDER BY t.id
    ON CONFLICT (collection, id) DO UPDATE
    SET body = excluded.body, deleted = excluded.deleted, revision = excluded.revision,
        owner = CASE WHEN d.revision = '' THEN excluded.owner ELSE d.owner END,
        updated_at = excluded.updated_at, change_xid = excluded.change_xid,
        change_seq = excluded.change_seq
    WHERE d.revision = ($7::jsonb ->> d.id)
    RETURNING d.xmax = 0 AS inserted
), note AS (
    SELECT pg_notify($9, pg_current_xact_id()::text || ':' || $1)
)
SELECT CASE WHEN (SELECT count(*) FROM up) = cardinality($2::text[])
             AND (SELECT count(*) FILTER (WHERE inserted) FROM up) = $8::bigint
            THEN pg_current_xact_id()::text::bigint
            ELSE syncline_stale_push() END AS tx,
       (SELECT count(*) FROM note) AS notified,
       now() AS written_at"
);

#[derive(sqlx::FromRow)]
struct WriteResult {
    written_at: DateTime<Utc>,
    tx: i64,
}

/// Why one attempt did not commit.
enum AttemptError<E> {
    Retry,
    Fail(StoreError),
    Refused(E),
    KeyReused,
}

impl<E> From<StoreError> for AttemptError<E> {
    fn from(err: StoreError) -> Self {
        AttemptError::Fail(err)
    }
}

impl<E> From<sqlx::Error> for AttemptError<E> {
    fn from(err: sqlx::Error) -> Self {
        match classify(err) {
            Class::Retry => AttemptError::Retry,
            Class::Fail(e) => AttemptError::Fail(e),
        }
    }
}

/// The target ids and, for each, the revision at which its body is not read back.
type Ids<'a> = (&'a [&'a str], &'a [Option<&'a str>]);

/// The current states by id, as a decision sees them.
type Current = HashMap<String, StoredDocument>;

/// A key to store with the push's writes, and the response to remember under it.
type Remember<'a, R> = (&'a Idempotency<'a, R>, &'a [u8]);

impl PgStore {
    #[tracing::instrument(name = "db.push", skip_all, fields(db.system = "postgresql", collection = %collection, rows = targets.len(), keyed = idempotency.is_some()))]
    pub(crate) async fn push<F, E, R>(
        &self,
        collection: &str,
        targets: &[PushTarget],
        decide: F,
        idempotency: Option<&Idempotency<'_, R>>,
    ) -> Result<PushApplied<R>, PushError<E>>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync,
    {
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        let skip_at: Vec<Option<&str>> =
            targets.iter().map(|t| t.skip_body_at.as_deref()).collect();
        let ids = (ids.as_slice(), skip_at.as_slice());
        if !targets.is_empty() && targets.iter().all(|t| t.new) {
            match self
                .blind_attempt(collection, ids.0, &decide, idempotency)
                .await
            {
                Ok(Some(applied)) => return Ok(applied),
                Err(AttemptError::Fail(e)) => return Err(PushError::Store(e)),
                // Some id exists (or the key does), or the decision needs stored states:
                // decide on what a read finds, at once (nothing to back off from).
                Ok(None) | Err(_) => {}
            }
        }
        for attempt in 1..=MAX_ATTEMPTS {
            // Optimistic first; after any collision, under row locks. Each attempt is a
            // transaction of its own: a keyed attempt that does not commit leaves no key.
            let locking = attempt > 1;
            let result = match idempotency {
                None => self
                    .attempt(collection, ids, &decide, locking)
                    .await
                    .map(PushApplied::Applied),
                Some(key) => {
                    self.keyed_attempt(collection, ids, &decide, locking, key)
                        .await
                }
            };
            match result {
                Ok(applied) => return Ok(applied),
                Err(AttemptError::Fail(e)) => return Err(PushError::Store(e)),
                Err(AttemptError::Refused(e)) => return Err(PushError::Refused(e)),
                Err(AttemptError::KeyReused) => return Err(PushError::KeyReused),
                Err(AttemptError::Retry) => {
                    tracing::debug!(attempt, collection, "push collided; retrying");
                    // Jittered backoff so colliding pushes do not collide again in lockstep.
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2 + jitter))
                        .await;
                }
            }
        }
        Err(PushError::Store(StoreError::Contention(format!(
            "push to {collection} collided with concurrent pushes {MAX_ATTEMPTS} times"
        ))))
    }

    /// One try without a key. Optimistic: read without locks and write with the guarded
    /// statement in its own implicit transaction. Locking: a transaction that first claims
    /// every id (CLAIM_SQL), then reads, decides and writes the same way.
    async fn attempt<F, E, R>(
        &self,
        collection: &str,
        ids: Ids<'_>,
        decide: &F,
        locking: bool,
    ) -> Result<PushOutcome<R>, AttemptError<E>>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send,
    {
        // The wait for a connection (with the BEGIN round trip, when locking).
        let started = std::time::Instant::now();
        let sync = self.push_synchronous_commit;
        if !locking {
            let mut conn = self.acquire().await.map_err(AttemptError::Fail)?;
            let rows = read(&mut conn, collection, ids).await?;
            let (current, plan) = decide_on(rows, decide)?;
            if plan.overwritten.is_empty() {
                return write_plan(&mut conn, collection, &current, plan, &[], sync, None).await;
            }
            // Kept versions must commit with the writes, or not at all. Only a push that
            // resolved a conflict keeps any, so the common push stays one implicit
            // transaction; such a push pays for BEGIN and COMMIT here instead (rather than a
            // CTE in the write statement, which a plan that keeps versions without writing
            // anything, a losing last-write-wins row, would not run). The read before BEGIN
            // is safe: the guarded write re-checks every revision it planned on.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let outcome = write_plan(&mut tx, collection, &current, plan, &[], sync, None).await?;
            tx.commit().await?;
            return Ok(outcome);
        }
        let mut tx: Transaction<'_, Postgres> = self.pool().begin().await?;
        metrics::histogram!(crate::telemetry::metrics::POOL_ACQUIRE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let claimed = claim_ids(&mut tx, collection, ids, sync).await?;
        let rows = read(&mut tx, collection, ids).await?;
        let (current, plan) = decide_on(rows, decide)?;
        let outcome = write_plan(&mut tx, collection, &current, plan, &claimed, sync, None).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// One try with an idempotency key. The first: two statements (`keyed_optimistic`).
    /// Later ones (after a collision): one transaction that claims the key first (a
    /// concurrent push with the same key waits here until this one ends), then claims the
    /// ids, reads, decides and writes as [`PgStore::attempt`] does, and stores the response
    /// before committing. A key held by an earlier push is answered from it, without
    /// deciding.
    async fn keyed_attempt<F, E, R>(
        &self,
        collection: &str,
        ids: Ids<'_>,
        decide: &F,
        locking: bool,
        key: &Idempotency<'_, R>,
    ) -> Result<PushApplied<R>, AttemptError<E>>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync,
    {
        if !locking {
            return self.keyed_optimistic(collection, ids, decide, key).await;
        }
        let started = std::time::Instant::now();
        let mut tx: Transaction<'_, Postgres> = self.pool().begin().await?;
        metrics::histogram!(crate::telemetry::metrics::POOL_ACQUIRE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let result = keyed_body(
            &mut tx,
            collection,
            ids,
            decide,
            key,
            self.push_synchronous_commit,
        )
        .await;
        end_keyed(tx, result).await
    }
}

impl PgStore {
    /// The common keyed push in two statements and no explicit transaction: the read also
    /// looks the key up (KEYED_READ_SQL), and the write stores the key with its response
    /// (WRITE_SQL), which must therefore be known before the write. It is, unless it shows the
    /// write's commit time (a state this push wrote, reported back) or the push keeps
    /// overwritten versions: then the plan is written in a transaction that claims the key
    /// first and stores the response after the write, as the locking path does. A concurrent
    /// push with the same key makes the write fail (`Retry`), and the next attempt claims the
    /// key first and finds the remembered response.
    async fn keyed_optimistic<F, E, R>(
        &self,
        collection: &str,
        ids: Ids<'_>,
        decide: &F,
        key: &Idempotency<'_, R>,
    ) -> Result<PushApplied<R>, AttemptError<E>>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync,
    {
        let mut conn = self.acquire().await.map_err(AttemptError::Fail)?;
        let rows = sqlx::query(KEYED_READ_SQL)
            .bind(collection)
            .bind(ids.0)
            .bind(ids.1)
            .bind(key.principal)
            .bind(key.key.as_bytes())
            .fetch_all(&mut *conn)
            .await?;
        if let Some(first) = rows.first() {
            let request_hash: Option<Vec<u8>> = first.try_get(0)?;
            if let Some(request_hash) = request_hash {
                let response = first.try_get(1)?;
                return remembered(key, &request_hash, response).map(PushApplied::Replayed);
            }
        }
        let mut documents = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<&str>, _>(2)?.is_some() {
                documents.push(super::read::document_at(row, 2)?);
            }
        }
        let (current, mut plan) = decide_on(documents, decide)?;
        let sync = self.push_synchronous_commit;
        if let Some(response) = response_before_write(&mut plan, key) {
            let remember = Some((key, response.as_slice()));
            let outcome =
                write_plan(&mut conn, collection, &current, plan, &[], sync, remember).await?;
            return Ok(PushApplied::Applied(outcome));
        }
        // The read before BEGIN is safe: the guarded write re-checks every revision it
        // planned on.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let result = async {
            match idempotency::claim(&mut tx, key, sync).await? {
                Claim::Claimed => {}
                Claim::Remembered {
                    request_hash,
                    response,
                } => return remembered(key, &request_hash, response).map(KeyedEnd::Replay),
                Claim::Vanished => return Err(AttemptError::Retry),
            }
            let outcome = write_plan(&mut tx, collection, &current, plan, &[], sync, None).await?;
            idempotency::respond(&mut tx, key, &(key.respond)(&outcome)).await?;
            Ok(KeyedEnd::Commit(outcome))
        }
        .await;
        end_keyed(tx, result).await
    }
}

impl PgStore {
    /// A push whose every row creates its document, in one statement: decided on no stored
    /// state and written without a read (WRITE_SQL checks that every id is new, and stores
    /// the key). `None` when that decision does not write every target (it refuses or
    /// reports some, whose stored states it must see), keeps overwritten versions, or has a
    /// keyed response that shows the commit time: the caller then reads and decides.
    async fn blind_attempt<F, E, R>(
        &self,
        collection: &str,
        ids: &[&str],
        decide: &F,
        idempotency: Option<&Idempotency<'_, R>>,
    ) -> Result<Option<PushApplied<R>>, AttemptError<E>>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync,
    {
        let current = Current::new();
        let Ok(mut plan) = decide(&current) else {
            return Ok(None);
        };
        let written: std::collections::HashSet<&str> =
            plan.writes.iter().map(|w| w.id.as_str()).collect();
        if !plan.overwritten.is_empty() || !ids.iter().all(|id| written.contains(id)) {
            return Ok(None);
        }
        let response = match idempotency {
            Some(key) => match response_before_write(&mut plan, key) {
                Some(response) => Some(response),
                None => return Ok(None),
            },
            None => None,
        };
        let remember = idempotency.zip(response.as_deref());
        let mut conn = self.acquire().await.map_err(AttemptError::Fail)?;
        let sync = self.push_synchronous_commit;
        let outcome =
            write_plan(&mut conn, collection, &current, plan, &[], sync, remember).await?;
        Ok(Some(PushApplied::Applied(outcome)))
    }
}

/// The remembered response of an earlier push with the same key, if it was the same request.
fn remembered<R, E>(
    key: &Idempotency<'_, R>,
    request_hash: &[u8],
    response: Option<Vec<u8>>,
) -> Result<Vec<u8>, AttemptError<E>> {
    if request_hash != key.request_hash.as_slice() {
        return Err(AttemptError::KeyReused);
    }
    // A committed key always has its response (set in the claiming transaction).
    response.ok_or_else(|| {
        AttemptError::Fail(StoreError::Internal(
            "a remembered push key has no response".into(),
        ))
    })
}

/// Ends a keyed attempt's transaction as `result` says.
async fn end_keyed<R, E>(
    tx: Transaction<'_, Postgres>,
    result: Result<KeyedEnd<R>, AttemptError<E>>,
) -> Result<PushApplied<R>, AttemptError<E>> {
    match result {
        Ok(KeyedEnd::Commit(outcome)) => {
            tx.commit().await?;
            Ok(PushApplied::Applied(outcome))
        }
        Ok(KeyedEnd::Replay(response)) => {
            // Nothing was written; ending now releases the key row's lock.
            tx.rollback().await?;
            Ok(PushApplied::Replayed(response))
        }
        Err(e) => {
            // Roll back now rather than when the connection is next used: the key (and
            // any row claimed) is released before this push backs off, and a concurrent
            // duplicate waiting on the key goes ahead.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The response `plan` will have once written, when it does not depend on the write's commit
/// time (compared by encoding it without and with a stand-in time), nor needs a transaction
/// (overwritten versions are kept in the push's).
fn response_before_write<R>(plan: &mut PushPlan<R>, key: &Idempotency<'_, R>) -> Option<Vec<u8>> {
    if !plan.overwritten.is_empty() {
        return None;
    }
    let writes = !plan.writes.is_empty();
    // States this push writes are reported with its commit time, which only the write knows.
    if writes
        && (plan.conflicts.iter().any(|c| c.updated_at.is_none())
            || plan.resolved.iter().any(|r| r.state.updated_at.is_none()))
    {
        return None;
    }
    let mut outcome = PushOutcome {
        conflicts: std::mem::take(&mut plan.conflicts),
        resolved: std::mem::take(&mut plan.resolved),
        refused: std::mem::take(&mut plan.refused),
        written: plan.writes.len(),
        tx: None,
        written_at: None,
    };
    let response = (key.respond)(&outcome);
    let same = !writes || {
        // The caller's encoding may show the commit time (a refused row's state it wrote).
        outcome.tx = Some(0);
        outcome.written_at = Some(DateTime::<Utc>::UNIX_EPOCH);
        (key.respond)(&outcome) == response
    };
    plan.conflicts = outcome.conflicts;
    plan.resolved = outcome.resolved;
    plan.refused = outcome.refused;
    same.then_some(response)
}

/// How a keyed attempt's transaction ends.
enum KeyedEnd<R> {
    /// Applied and the response stored: commit.
    Commit(PushOutcome<R>),
    /// Answered from the earlier push: roll back.
    Replay(Vec<u8>),
}

/// The statements of a keyed attempt on the locking path, in its transaction `conn`.
async fn keyed_body<F, E, R>(
    conn: &mut sqlx::PgConnection,
    collection: &str,
    ids: Ids<'_>,
    decide: &F,
    key: &Idempotency<'_, R>,
    sync: &str,
) -> Result<KeyedEnd<R>, AttemptError<E>>
where
    F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
    E: Send,
    R: Send + Sync,
{
    // The key before any document: a push waiting for a key holds no row, so the key wait
    // never joins a cycle with the id-ordered row locks.
    match idempotency::claim(conn, key, sync).await? {
        Claim::Claimed => {}
        Claim::Remembered {
            request_hash,
            response,
        } => return remembered(key, &request_hash, response).map(KeyedEnd::Replay),
        Claim::Vanished => return Err(AttemptError::Retry),
    }
    let claimed = claim_ids(conn, collection, ids, sync).await?;
    let rows = read(conn, collection, ids).await?;
    let (current, plan) = decide_on(rows, decide)?;
    let outcome = write_plan(conn, collection, &current, plan, &claimed, sync, None).await?;
    let response = (key.respond)(&outcome);
    idempotency::respond(conn, key, &response).await?;
    Ok(KeyedEnd::Commit(outcome))
}

/// Takes every target id in the locking transaction on `conn` (CLAIM_SQL); returns the ids
/// that got a placeholder.
async fn claim_ids<E>(
    conn: &mut sqlx::PgConnection,
    collection: &str,
    ids: Ids<'_>,
    synchronous_commit: &str,
) -> Result<Vec<String>, AttemptError<E>> {
    Ok(sqlx::query_scalar(CLAIM_SQL)
        .bind(collection)
        .bind(ids.0)
        .bind(synchronous_commit)
        .fetch_all(&mut *conn)
        .await?)
}

/// The current states of the targets (placeholders excluded).
async fn read<E>(
    conn: &mut sqlx::PgConnection,
    collection: &str,
    ids: Ids<'_>,
) -> Result<Vec<StoredDocument>, AttemptError<E>> {
    let rows = sqlx::query(READ_SQL)
        .bind(collection)
        .bind(ids.0)
        .bind(ids.1)
        .fetch_all(&mut *conn)
        .await?;
    Ok(documents(&rows)?)
}

/// Decides the push on `rows` (the current states), returning them by id with the plan.
fn decide_on<F, E, R>(
    rows: Vec<StoredDocument>,
    decide: &F,
) -> Result<(Current, PushPlan<R>), AttemptError<E>>
where
    F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
{
    let current: Current = rows.into_iter().map(|d| (d.id.clone(), d)).collect();
    let plan = decide(&current).map_err(AttemptError::Refused)?;
    Ok((current, plan))
}

/// Writes `plan` (decided on `current`) with the guarded statement on `conn`, and stores its
/// overwritten versions (`conn` must then be in a transaction). `claimed` are the ids that
/// hold this transaction's placeholders: they are updated like existing rows, and removed
/// when the plan does not write them.
async fn write_plan<E, R>(
    conn: &mut sqlx::PgConnection,
    collection: &str,
    current: &Current,
    plan: PushPlan<R>,
    claimed: &[String],
    synchronous_commit: &str,
    remember: Option<Remember<'_, R>>,
) -> Result<PushOutcome<R>, AttemptError<E>> {
    let mut conflicts = plan.conflicts;
    let mut resolved = plan.resolved;
    let written: std::collections::HashSet<&str> =
        plan.writes.iter().map(|w| w.id.as_str()).collect();
    let unwritten: Vec<&str> = claimed
        .iter()
        .map(String::as_str)
        .filter(|id| !written.contains(id))
        .collect();
    if !unwritten.is_empty() {
        sqlx::query(UNCLAIM_SQL)
            .bind(collection)
            .bind(&unwritten)
            .execute(&mut *conn)
            .await?;
    }
    if plan.writes.is_empty() {
        if let Some((key, response)) = remember
            && !idempotency::store(conn, key, response, synchronous_commit).await?
        {
            // Another push holds the key: decide again, claiming it first.
            return Err(AttemptError::Retry);
        }
        overwritten::keep(conn, collection, &plan.overwritten, synchronous_commit).await?;
        return Ok(PushOutcome {
            conflicts,
            resolved,
            refused: plan.refused,
            written: 0,
            tx: None,
            written_at: None,
        });
    }
    // The revision each write must find: the one the plan saw, or a placeholder's; absent for
    // ids that must still be new.
    let placeholders: std::collections::HashSet<&str> =
        claimed.iter().map(String::as_str).collect();
    let mut expected: HashMap<&str, &str> = HashMap::with_capacity(plan.writes.len());
    for w in &plan.writes {
        if let Some(d) = current.get(&w.id) {
            expected.insert(&w.id, &d.revision);
        } else if placeholders.contains(w.id.as_str()) {
            expected.insert(&w.id, "");
        }
    }
    let inserts = plan.writes.len() - expected.len();
    let w = &plan.writes;
    let result: WriteResult = sqlx::query_as(WRITE_SQL)
        .bind(collection)
        .bind(w.iter().map(|w| w.id.as_str()).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.body.as_str()).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.deleted).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.revision.as_str()).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.owner.as_str()).collect::<Vec<_>>())
        .bind(sqlx::types::Json(&expected))
        .bind(i64::try_from(inserts).unwrap_or(i64::MAX))
        .bind(NOTIFY_CHANNEL)
        .bind(synchronous_commit)
        .bind(remember.map(|(key, _)| key.principal))
        .bind(remember.map(|(key, _)| key.key.as_bytes()))
        .bind(remember.map(|(key, _)| &key.request_hash[..]))
        .bind(remember.map(|(_, response)| response))
        .bind(remember.map_or(0.0, |(key, _)| idempotency::retention_seconds(key)))
        .bind(i64::from(remember.is_some()))
        .fetch_one(&mut *conn)
        .await?;
    // After the write: a stale plan fails the write statement before anything else is done.
    overwritten::keep(conn, collection, &plan.overwritten, synchronous_commit).await?;
    for c in &mut conflicts {
        c.updated_at.get_or_insert(result.written_at);
    }
    for r in &mut resolved {
        r.state.updated_at.get_or_insert(result.written_at);
    }
    Ok(PushOutcome {
        conflicts,
        resolved,
        refused: plan.refused,
        written: plan.writes.len(),
        tx: Some(result.tx),
        written_at: Some(result.written_at),
    })
}

/// The current states as READ_SQL returns them.
fn documents(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<StoredDocument>, sqlx::Error> {
    rows.iter()
        .map(|r| super::read::document_at(r, 0))
        .collect()
}
