//! Filtered reads (selective sync): the documents whose latest state matches a reader's
//! selector, and removals for those it may hold that no longer do, from one snapshot.

use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;

use super::PgStore;
use super::error::to_store_error;
use super::read::document_at;
use crate::store::filter::{FILTER_FIRST_PARAM, MoveRecord, ReadFilter, SqlParam};
use crate::store::{ChangePage, PageLimit, Position, Resume, StoreError, StoredDocument};

/// The statement of a filtered page. `$1` collection, `$2`/`$3` the position, `$4` the row
/// limit, `$5` the byte budget, `$6` the floor, `$7` the owner (NULL: every owner), then the
/// filter's parameters.
///
/// Two sources, each in position order and each cut at the row limit, merged by the caller:
///
/// - `docs`: live documents after the position whose body matches now, under the horizon,
///   with the byte budget applied as in the unfiltered page (`read.rs`);
/// - `gone`: removal records after the position (and at or above the floor: an older record
///   is of a state superseded before the reader began) whose previous projection matched,
///   joined to the document's latest state, which is deleted or no longer matches. The latest
///   state may be above the horizon: it is what the reader will receive there, and a removal
///   sent now for a state that matches again later is followed by that state.
///
/// The horizon and the expiry come from the same snapshot, exactly as in the unfiltered page.
fn page_sql(filter: &ReadFilter) -> String {
    let current = &filter.current;
    let previous = &filter.previous;
    format!(
        "WITH h AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           ($2, $3) <> (0::bigint, 0::bigint) AND EXISTS (
               SELECT FROM syncline_purge_horizon p
               WHERE p.collection = $1 AND ($2, $3) <= (p.change_xid, p.change_seq)
                 AND p.change_xid >= $6
           ) AS expired
), docs AS (
    SELECT w.*, (w.n = 1 OR w.total <= $5) AS fits
    FROM (
        SELECT d.id, d.owner, d.body, d.deleted, d.revision, d.updated_at, d.change_xid,
               d.change_seq,
               row_number() OVER w AS n,
               sum(d.body_bytes + octet_length(d.id) + octet_length(d.owner)
                   + octet_length(d.revision) + 64) OVER w AS total,
               d.body_bytes + octet_length(d.id) + octet_length(d.owner)
                   + octet_length(d.revision) + 64 AS size
        FROM syncline_documents d, h
        WHERE d.collection = $1
          AND (d.change_xid, d.change_seq) > ($2, $3)
          AND d.change_xid < h.horizon
          AND NOT h.expired
          AND NOT d.deleted
          AND ($7::text IS NULL OR d.owner = $7::text)
          AND ({current})
        WINDOW w AS (ORDER BY d.change_xid, d.change_seq ROWS UNBOUNDED PRECEDING)
        ORDER BY d.change_xid, d.change_seq
        LIMIT $4
    ) w
    WHERE w.n <= 2 OR w.total - w.size <= $5
), gone AS (
    SELECT m.id, m.owner, d.deleted, d.revision, d.updated_at, m.change_xid, m.change_seq
    FROM syncline_moves m
    JOIN syncline_documents d ON d.collection = m.collection AND d.id = m.id,
    h
    WHERE m.collection = $1
      AND (m.change_xid, m.change_seq) > ($2, $3)
      AND ($2, $3) <> (0::bigint, 0::bigint)
      AND m.change_xid >= $6
      AND m.change_xid < h.horizon
      AND NOT h.expired
      AND ($7::text IS NULL OR m.owner = $7::text)
      AND ({previous})
      AND (d.deleted OR ({current}) IS NOT TRUE)
    ORDER BY m.change_xid, m.change_seq
    LIMIT $4
)
SELECT 0 AS kind, h.horizon, h.expired, docs.id, docs.owner,
       CASE WHEN docs.fits THEN docs.body::text END AS body, docs.deleted, docs.revision,
       docs.updated_at, docs.change_xid, docs.change_seq
FROM h LEFT JOIN docs ON true
UNION ALL
SELECT 1, NULL, NULL, gone.id, gone.owner, '{{}}', gone.deleted, gone.revision, gone.updated_at,
       gone.change_xid, gone.change_seq
FROM gone"
    )
}

// The pool's connections run with bitmap scans off (plans.rs: they mislead the hot statements
// on just-loaded tables). A selector may need them: an array field's GIN index is read only
// through one, and `$or` over two fields is a BitmapOr. The transaction of a filtered read sets
// them back on, for it only, in the same round trip as its BEGIN.
const BEGIN_FILTERED: &str =
    "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; SET LOCAL enable_bitmapscan = on";

pub(super) fn bind_param<'q>(
    query: Query<'q, sqlx::Postgres, PgArguments>,
    param: &'q SqlParam,
) -> Query<'q, sqlx::Postgres, PgArguments> {
    match param {
        SqlParam::Text(s) | SqlParam::Numeric(s) | SqlParam::Jsonb(s) => query.bind(s.as_str()),
        SqlParam::Bool(b) => query.bind(*b),
        SqlParam::TextArray(v) | SqlParam::NumericArray(v) => query.bind(v.as_slice()),
        SqlParam::BoolArray(v) => query.bind(v.as_slice()),
    }
}

impl PgStore {
    /// A filtered page (see [`crate::store::Store::read_filtered`]).
    #[tracing::instrument(name = "db.read_filtered", skip_all, fields(db.system = "postgresql", collection = %collection, limit = limit.documents))]
    pub(crate) async fn read_filtered_page(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: &ReadFilter,
        after: Resume,
        limit: PageLimit,
    ) -> Result<ChangePage, StoreError> {
        let rows = self
            .run_filtered(page_sql(filter), collection, owner, filter, after, limit)
            .await?;
        merge(&rows, limit.documents as usize).map_err(to_store_error)
    }

    /// `EXPLAIN (FORMAT JSON)` of the filtered page statement as
    /// [`PgStore::read_filtered_page`] runs it (same settings, same binds): for tests that
    /// check which indexes serve a selector.
    #[doc(hidden)]
    pub async fn explain_filtered(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: &ReadFilter,
        after: Resume,
        limit: PageLimit,
    ) -> Result<serde_json::Value, StoreError> {
        let sql = format!("EXPLAIN (FORMAT JSON) {}", page_sql(filter));
        let rows = self
            .run_filtered(sql, collection, owner, filter, after, limit)
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| StoreError::Internal("EXPLAIN returned no row".into()))?;
        first.try_get(0).map_err(to_store_error)
    }

    /// Runs `sql` (the filtered page statement, or a wrapper of it) with its binds, in the
    /// filtered reads' transaction.
    async fn run_filtered(
        &self,
        sql: String,
        collection: &str,
        owner: Option<&str>,
        filter: &ReadFilter,
        after: Resume,
        limit: PageLimit,
    ) -> Result<Vec<PgRow>, StoreError> {
        debug_assert_eq!(
            FILTER_FIRST_PARAM, 8,
            "the statement binds seven values first"
        );
        let budget = i64::try_from(limit.bytes).unwrap_or(i64::MAX);
        // Audited: the filter's SQL holds fixed fragments, configured paths and placeholders
        // only (`protocol::selector::sql`); every client value is one of `filter.params`.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            // One text per selector shape: kept out of the connection's statement cache,
            // which clients could otherwise churn.
            .persistent(false)
            .bind(collection)
            .bind(after.position.tx)
            .bind(after.position.seq)
            .bind(i64::from(limit.documents))
            .bind(budget)
            .bind(after.floor)
            .bind(owner);
        for param in &filter.params {
            query = bind_param(query, param);
        }
        let mut conn = self.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, BEGIN_FILTERED)
            .await
            .map_err(to_store_error)?;
        let rows = query.fetch_all(&mut *tx).await.map_err(to_store_error)?;
        tx.commit().await.map_err(to_store_error)?;
        Ok(rows)
    }
}

/// Merges the two sources into one page in position order. Each source read at most `limit`
/// rows: one that reached it (or, for `docs`, its byte budget) knows nothing past its last
/// row, so the page ends there; the page then keeps at most `limit` entries.
fn merge(rows: &[PgRow], limit: usize) -> Result<ChangePage, sqlx::Error> {
    let mut horizon = 0;
    let mut expired = false;
    let mut docs = Vec::new();
    let mut gone: Vec<StoredDocument> = Vec::new();
    let mut docs_cut = false;
    for row in rows {
        let kind: i32 = row.try_get_unchecked(0)?;
        if kind == 0 {
            horizon = row.try_get_unchecked(1)?;
            expired = row.try_get_unchecked(2)?;
            if row.try_get_unchecked::<Option<&str>, _>(3)?.is_none() {
                continue;
            }
            if row.try_get_unchecked::<Option<&str>, _>(5)?.is_none() {
                docs_cut = true;
                continue;
            }
            docs.push(document_at(row, 3)?);
        } else {
            let mut removal = document_at(row, 3)?;
            removal.left_scope = !removal.deleted;
            removal.deleted = true;
            if removal.left_scope {
                // Nothing of a state outside the reader's filter: not even its revision.
                removal.revision = String::new();
            }
            gone.push(removal);
        }
    }
    docs.sort_by_key(|d| d.position);
    gone.sort_by_key(|d| d.position);
    let docs_full = docs_cut || docs.len() >= limit;
    let gone_full = gone.len() >= limit;
    let mut end: Option<Position> = None;
    if docs_full && let Some(last) = docs.last() {
        end = Some(last.position);
    }
    if gone_full && let Some(last) = gone.last() {
        end = Some(end.map_or(last.position, |e| e.min(last.position)));
    }
    // One removal per document in a page: its latest record.
    let mut latest: std::collections::HashMap<&str, Position> = std::collections::HashMap::new();
    for g in &gone {
        latest.insert(g.id.as_str(), g.position);
    }
    let keep: Vec<bool> = gone
        .iter()
        .map(|g| latest.get(g.id.as_str()) == Some(&g.position))
        .collect();
    let mut merged: Vec<StoredDocument> = docs
        .into_iter()
        .chain(
            gone.into_iter()
                .zip(keep)
                .filter_map(|(g, keep)| keep.then_some(g)),
        )
        .filter(|d| end.is_none_or(|e| d.position <= e))
        .collect();
    merged.sort_by_key(|d| d.position);
    let truncated = merged.len() > limit;
    merged.truncate(limit.max(1));
    Ok(ChangePage {
        documents: merged,
        more: end.is_some() || truncated,
        horizon,
        expired,
    })
}

const MOVES_SQL: &str = "
SELECT id, owner, change_xid, change_seq, previous::text FROM syncline_moves
WHERE collection = $1
  AND (change_xid, change_seq) > ($2, $3) AND (change_xid, change_seq) <= ($4, $5)
ORDER BY change_xid, change_seq
LIMIT $6";

impl PgStore {
    /// See [`crate::store::Store::read_moves`].
    pub(crate) async fn moves_between(
        &self,
        collection: &str,
        after: Position,
        upto: Position,
        max: u32,
    ) -> Result<Vec<MoveRecord>, StoreError> {
        let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(MOVES_SQL)
            .bind(collection)
            .bind(after.tx)
            .bind(after.seq)
            .bind(upto.tx)
            .bind(upto.seq)
            .bind(i64::from(max))
            .fetch_all(self.pool())
            .await
            .map_err(to_store_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, owner, tx, seq, previous)| MoveRecord {
                id,
                owner,
                position: Position { tx, seq },
                previous,
            })
            .collect())
    }
}

// Two replicas starting together must not build the same index twice at once (a concurrent
// build that loses leaves an INVALID index behind): one at a time, under a session lock.
const INDEX_LOCK_SQL: &str = "SELECT pg_advisory_lock(hashtext('syncline.filter_indexes'))";
const INDEX_UNLOCK_SQL: &str = "SELECT pg_advisory_unlock(hashtext('syncline.filter_indexes'))";
// A build interrupted by a crash leaves an INVALID index that `IF NOT EXISTS` would keep.
const INVALID_INDEX_SQL: &str = "SELECT c.relname::text FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
WHERE NOT i.indisvalid AND c.relname::text = ANY($1)";

// Only ever adds: during a rolling deployment a replica still running (or restarting with) an
// older configuration must not stop the records that the others' filtered readers rely on. A
// path no configuration declares any more costs only a larger projection; delete its row by
// hand once no replica declares it.
const DECLARE_PATHS_SQL: &str = "
INSERT INTO syncline_filter_paths (collection, path, segments)
SELECT $1, p, string_to_array(p, '.') FROM unnest($2::text[]) AS p
ON CONFLICT (collection, path) DO NOTHING";

impl PgStore {
    /// Records the declared paths of `collection` for the removal-record trigger (adding to
    /// those already recorded, never removing), then builds the missing indexes
    /// (`CONCURRENTLY`: writes go on meanwhile).
    pub(crate) async fn declare_filter_paths(
        &self,
        collection: &str,
        paths: &[String],
        index_ddl: &[String],
    ) -> Result<(), StoreError> {
        sqlx::query(DECLARE_PATHS_SQL)
            .bind(collection)
            .bind(paths)
            .execute(self.pool())
            .await
            .map_err(to_store_error)?;
        if index_ddl.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool().acquire().await.map_err(to_store_error)?;
        sqlx::query(INDEX_LOCK_SQL)
            .execute(&mut *conn)
            .await
            .map_err(to_store_error)?;
        let built = async {
            let names: Vec<String> = index_ddl
                .iter()
                .filter_map(|ddl| {
                    ddl.split_whitespace()
                        .find(|w| w.starts_with("syncline_filter_"))
                })
                .map(str::to_owned)
                .collect();
            let invalid: Vec<String> = sqlx::query_scalar(INVALID_INDEX_SQL)
                .bind(&names)
                .fetch_all(&mut *conn)
                .await?;
            for name in invalid {
                // Names come from `FieldDecl::index_name`: `syncline_filter_` and hex.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {name}"
                )))
                .execute(&mut *conn)
                .await?;
            }
            for ddl in index_ddl {
                // Audited: `FieldDecl::index_ddl`, from checked configuration only.
                sqlx::query(sqlx::AssertSqlSafe(ddl.as_str()))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let unlocked = sqlx::query(INDEX_UNLOCK_SQL).execute(&mut *conn).await;
        built.map_err(to_store_error)?;
        unlocked.map_err(to_store_error)?;
        Ok(())
    }
}
