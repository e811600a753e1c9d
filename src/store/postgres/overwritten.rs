//! Versions that lost an automatic conflict resolution (migrations/0010_conflicts.sql):
//! stored in the resolving push's transaction, listed newest first until they expire.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PgStore;
use super::error::to_store_error;
use super::write::marked;
use crate::store::{OverwrittenRecord, OverwrittenVersion, StoreError};

// One statement for all of a push's versions, in the order the push decided them (`seq`
// follows the insertion order). All share the push's `now()`, its commit time as the
// documents see it. Marked like every push statement (write.rs).
const INSERT_SQL: &str = concat!(
    "
INSERT INTO syncline_overwritten
    (collection, id, owner, body, deleted, revision, source, strategy, resolved_revision,
     pushed_by, overwritten_at, expires_at)
SELECT $1, v.id, v.owner, v.body::jsonb, v.deleted, v.revision, v.source, v.strategy,
       v.resolved_revision, v.pushed_by, now(), now() + v.keep * interval '1 second'
FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::float8[])
     WITH ORDINALITY AS v(id, owner, body, deleted, revision, source, strategy,
                          resolved_revision, pushed_by, keep, n)
WHERE ",
    marked!("$12"),
    "
ORDER BY v.n"
);

// Served by syncline_overwritten_document; expired rows the purge has not deleted yet are
// skipped.
const LIST_SQL: &str = "
SELECT id, owner, body::text, deleted, revision, source, strategy, resolved_revision,
       pushed_by, overwritten_at, expires_at
FROM syncline_overwritten
WHERE collection = $1 AND id = $2 AND expires_at > now() AND ($3::text IS NULL OR owner = $3)
ORDER BY overwritten_at DESC, seq DESC
LIMIT $4";

/// Longest time a version is kept (about 100 years): a longer one would overflow the
/// timestamp.
const KEEP_MAX_SECONDS: f64 = 100.0 * 365.25 * 86_400.0;

/// The sources and strategies the store knows, so that listed rows carry the same static
/// names the push gave them (anything else, written by hand, lists as `unknown`).
const NAMES: [&str; 6] = [
    "server",
    "client",
    "first-write-wins",
    "last-write-wins",
    "field-merge",
    "crdt",
];

/// Stores `versions` on `conn`, which must be in the transaction of the push's writes.
pub(super) async fn keep(
    conn: &mut sqlx::PgConnection,
    collection: &str,
    versions: &[OverwrittenVersion],
    synchronous_commit: &str,
) -> Result<(), sqlx::Error> {
    if versions.is_empty() {
        return Ok(());
    }
    let v = versions;
    sqlx::query(INSERT_SQL)
        .bind(collection)
        .bind(v.iter().map(|v| v.id.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|v| v.owner.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|v| v.body.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|v| v.deleted).collect::<Vec<_>>())
        .bind(v.iter().map(|v| v.revision.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|v| v.source).collect::<Vec<_>>())
        .bind(v.iter().map(|v| v.strategy).collect::<Vec<_>>())
        .bind(
            v.iter()
                .map(|v| v.resolved_revision.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(v.iter().map(|v| v.pushed_by.as_str()).collect::<Vec<_>>())
        .bind(
            v.iter()
                .map(|v| v.keep.as_secs_f64().min(KEEP_MAX_SECONDS))
                .collect::<Vec<_>>(),
        )
        .bind(synchronous_commit)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A listed row, as LIST_SQL returns it.
type Row = (
    String,
    String,
    String,
    bool,
    String,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
);

impl PgStore {
    /// The kept versions of `id`, newest first (see [`crate::store::Store::overwritten_versions`]).
    pub(super) async fn list_overwritten(
        &self,
        collection: &str,
        id: &str,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OverwrittenRecord>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(LIST_SQL)
            .bind(collection)
            .bind(id)
            .bind(owner)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(to_store_error)?;
        Ok(rows.into_iter().map(record).collect())
    }
}

fn record(row: Row) -> OverwrittenRecord {
    let (id, owner, body, deleted, revision, source, strategy, resolved, pushed_by, at, until) =
        row;
    OverwrittenRecord {
        version: OverwrittenVersion {
            id,
            owner,
            body,
            deleted,
            revision,
            source: known(&source),
            strategy: known(&strategy),
            resolved_revision: resolved,
            pushed_by,
            keep: (until - at).to_std().unwrap_or(Duration::ZERO),
        },
        overwritten_at: at,
    }
}

fn known(name: &str) -> &'static str {
    NAMES.into_iter().find(|n| *n == name).unwrap_or("unknown")
}
