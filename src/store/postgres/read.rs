//! Reading changes in order under the visibility horizon.

use std::collections::HashSet;

use futures::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::PgStore;
use super::error::to_store_error;
use super::read_ahead::{PageKey, Prepared, WRITTEN_SINCE_MAX, WRITTEN_SINCE_SQL};
use crate::store::{
    ChangePage, DOCUMENT_OVERHEAD_BYTES, PageLimit, Position, Resume, StoreError, StoredDocument,
};
use crate::telemetry::metrics::READ_AHEAD;

// The horizon is the snapshot's xmin: every transaction id below it has committed or aborted,
// and this statement sees all of the committed ones. Returning only rows below it means no
// transaction can later commit a row at a position at or before the last one returned.
// Two statements rather than an optional filter, so that each has a plan on its own index.
//
// The purge horizon is read here too, in the same snapshot as the rows: a purge deletes its
// tombstones and raises the horizon in one transaction, so this statement either sees the
// rows or the raised horizon, never the rows gone and the old horizon. A position at or below
// the horizon reads nothing and comes back `expired`, unless the tombstone at the horizon is
// older than the reader's floor ($6: the horizon when it began from the start; every purged
// tombstone is then older still, and the reader never held what they deleted). The start of
// the collection is never expired.
//
// The byte budget ($5) is applied here, from a running sum of each row's weight (the stored
// `body_bytes` plus id, owner and revision, as `StoredDocument::page_bytes` counts), so that
// rows past the budget are never turned into text nor sent: a page of 1 MiB documents reads
// four bodies, not a thousand. The scan still stops at the row limit ($4). The first row always
// fits (a page makes progress), and the rows that fit are a prefix; the first row that does not
// fit (the one after the last that does: the second, or one whose predecessors' sum is within
// the budget) comes back without its body, to say that the page ended at its budget. Pages
// that hold no large document skip this statement (see `fast_page_sql!`).
macro_rules! page_sql {
    ($owner_filter:literal) => {
        concat!(
            "WITH h AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           ($2, $3) <> (0::bigint, 0::bigint) AND EXISTS (
               SELECT FROM syncline_purge_horizon p
               WHERE p.collection = $1 AND ($2, $3) <= (p.change_xid, p.change_seq)
                 AND p.change_xid >= $6
           ) AS expired
)
SELECT h.horizon, h.expired, d.id, d.owner, CASE WHEN d.fits THEN d.body::text END AS body, d.deleted,
       d.revision, d.updated_at, d.change_xid, d.change_seq
FROM h
LEFT JOIN LATERAL (
    SELECT w.*, (w.n = 1 OR w.total <= $5) AS fits
    FROM (
        SELECT id, owner, body, deleted, revision, updated_at, change_xid, change_seq,
               row_number() OVER w AS n,
               sum(body_bytes + octet_length(id) + octet_length(owner) + octet_length(revision)
                   + 64) OVER w AS total,
               body_bytes + octet_length(id) + octet_length(owner) + octet_length(revision)
                   + 64 AS size
        FROM syncline_documents
        WHERE collection = $1
          AND (change_xid, change_seq) > ($2, $3)
          AND change_xid < h.horizon
          AND NOT h.expired",
            $owner_filter,
            "
        WINDOW w AS (ORDER BY change_xid, change_seq ROWS UNBOUNDED PRECEDING)
        ORDER BY change_xid, change_seq
        LIMIT $4
    ) w
    WHERE w.n <= 2 OR w.total - w.size <= $5
) d ON true"
        )
    };
}

// The statements spell DOCUMENT_OVERHEAD_BYTES as 64.
const _: () = assert!(DOCUMENT_OVERHEAD_BYTES == 64, "update the page statements");

/// The weight ([`StoredDocument::page_bytes`]) above which a document is *large*: indexed
/// apart (`migrations/0014_large_documents.sql`, which spells it as 4032 + 64).
pub(super) const LARGE_DOCUMENT_BYTES: usize = 4096;
const _: () = assert!(LARGE_DOCUMENT_BYTES == 4032 + DOCUMENT_OVERHEAD_BYTES);

// The page without the running sum, for limits where `limit` small documents always fit the
// budget ([`LARGE_DOCUMENT_BYTES`] x limit <= budget). The running sum (a WindowAgg over the
// page's rows) cost about a third of PostgreSQL's time per page; this statement instead probes
// the partial index of large documents once and reads only the rows before the first large one
// (and below the horizon): each weighs at most LARGE_DOCUMENT_BYTES, so together they fit and
// every row it turns into text is one the page keeps. When the page stops short at a large
// document, the store reads it again with the running sum (`page_sql!`), as before.
//
// The first row carries the horizon, the expired flag and whether a large document below the
// horizon bounded the page; the document rows follow, in order. The horizon and expired rules
// are those of `page_sql!`. Both bounds sit in the change index's range condition: the scan
// stops at the page's end, the first large document, or the horizon.
macro_rules! fast_page_sql {
    ($owner_filter:literal) => {
        concat!(
            "WITH t AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           ($2, $3) <> (0::bigint, 0::bigint) AND EXISTS (
               SELECT FROM syncline_purge_horizon p
               WHERE p.collection = $1 AND ($2, $3) <= (p.change_xid, p.change_seq)
                 AND p.change_xid >= $5
           ) AS expired
), h AS MATERIALIZED (
    SELECT t.horizon, t.expired, coalesce(l.x < t.horizon, false) AS large,
           CASE WHEN t.expired THEN 0 WHEN l.x < t.horizon THEN l.x ELSE t.horizon END AS end_xid,
           CASE WHEN t.expired THEN 0 WHEN l.x < t.horizon THEN l.s ELSE 0 END AS end_seq
    FROM t
    LEFT JOIN LATERAL (
        SELECT change_xid AS x, change_seq AS s
        FROM syncline_documents
        WHERE collection = $1",
            $owner_filter,
            "
          AND (change_xid, change_seq) > ($2, $3)
          AND body_bytes + octet_length(id) + octet_length(owner) + octet_length(revision) > 4032
        ORDER BY change_xid, change_seq
        LIMIT 1
    ) l ON true
)
SELECT horizon, expired, large, NULL::text AS id, NULL::text AS owner, NULL::text AS body,
       NULL::boolean AS deleted, NULL::text AS revision, NULL::timestamptz AS updated_at,
       NULL::bigint AS change_xid, NULL::bigint AS change_seq
FROM h
UNION ALL
(
    SELECT NULL, NULL, NULL, id, owner, body::text, deleted, revision, updated_at, change_xid,
           change_seq
    FROM syncline_documents
    WHERE collection = $1",
            $owner_filter,
            "
      AND (change_xid, change_seq) > ($2, $3)
      AND (change_xid, change_seq) < ((SELECT end_xid FROM h), (SELECT end_seq FROM h))
    ORDER BY change_xid, change_seq
    LIMIT $4
)"
        )
    };
}

/// Every owner's documents, without the running sum (see `fast_page_sql!`).
pub(super) const FAST_PAGE_SQL: &str = fast_page_sql!("");
/// One owner's documents, without the running sum; `$6` is the owner.
pub(super) const OWNER_FAST_PAGE_SQL: &str = fast_page_sql!("\n          AND owner = $6");

/// Every owner's documents (service principals).
pub(super) const PAGE_SQL: &str = page_sql!("");
/// One owner's documents; `$7` is the owner.
pub(super) const OWNER_PAGE_SQL: &str = page_sql!("\n          AND owner = $7");

impl PgStore {
    /// The page after `after`: the one read ahead when it is still exactly what a read now
    /// would return, else read now. A full page starts the read of the next one.
    #[tracing::instrument(name = "db.read_changes", skip_all, fields(db.system = "postgresql", collection = %collection, limit = limit.documents))]
    pub(crate) async fn read_page(
        &self,
        collection: &str,
        owner: Option<&str>,
        after: Resume,
        limit: PageLimit,
    ) -> Result<ChangePage, StoreError> {
        let key = PageKey {
            collection: collection.to_owned(),
            owner: owner.map(str::to_owned),
            after,
            limit,
        };
        let prepared = match self.read_ahead.take(&key) {
            Some(prepared) => self.still_valid(prepared, &key).await,
            None => None,
        };
        let page = match prepared {
            Some(page) => page,
            None => self.query_page(collection, owner, after, limit).await?,
        };
        if let Some(last) = page.documents.last()
            && page.more
        {
            self.read_next(key.from(last.position), page.horizon, true);
        }
        Ok(page)
    }

    /// Starts reading `next` ahead (it follows a page of horizon `horizon_before`); with
    /// `follow` (a reader was just served the page before `next`), the page after `next` is
    /// read too, once `next` came back full (see [`ReadAhead::start`]).
    fn read_next(&self, next: PageKey, horizon_before: i64, follow: bool) {
        let after = self
            .read_ahead
            .start(next.clone(), horizon_before, follow, |follow| {
                let store = self.clone();
                tokio::spawn(async move {
                    let page = store
                        .query_page(
                            &next.collection,
                            next.owner.as_deref(),
                            next.after,
                            next.limit,
                        )
                        .await;
                    if let Ok(page) = &page
                        && page.more
                        && let Some(last) = page.documents.last()
                        && let Some((after, horizon)) =
                            follow.read_full(next.from(last.position), page.horizon)
                    {
                        store.read_next(after, horizon, false);
                    }
                    page
                })
            });
        if let Some((after, horizon)) = after {
            self.read_next(after, horizon, false);
        }
    }

    /// How many pages are being read ahead or wait for their reader (tests).
    pub fn pages_read_ahead(&self) -> usize {
        self.read_ahead.len()
    }

    /// The prepared page if it is full and none of its documents was written since its read.
    /// Which documents were written since is asked while the read finishes.
    async fn still_valid(&self, prepared: Prepared, key: &PageKey) -> Option<ChangePage> {
        let outcome = |o: &'static str| metrics::counter!(READ_AHEAD, "outcome" => o).increment(1);
        let written = sqlx::query_scalar::<_, String>(WRITTEN_SINCE_SQL)
            .bind(&key.collection)
            .bind(prepared.horizon_before)
            .bind(WRITTEN_SINCE_MAX)
            .fetch_all(self.pool());
        let (read, written) = tokio::join!(prepared.read, written);
        let page = match read {
            Ok(Ok(page)) if page.more => page,
            _ => {
                outcome("unused");
                return None;
            }
        };
        let unchanged = written.is_ok_and(|ids| {
            let written: HashSet<&str> = ids.iter().map(String::as_str).collect();
            (ids.len() as i64) < WRITTEN_SINCE_MAX
                && !page
                    .documents
                    .iter()
                    .any(|d| written.contains(d.id.as_str()))
        });
        if unchanged {
            outcome("used");
            Some(page)
        } else {
            outcome("stale");
            None
        }
    }

    /// The page after `after`, read now: without the running sum of the weights when
    /// `limit` small documents always fit the budget and no large one bounds the page, else
    /// with it.
    async fn query_page(
        &self,
        collection: &str,
        owner: Option<&str>,
        after: Resume,
        limit: PageLimit,
    ) -> Result<ChangePage, StoreError> {
        let mut conn = self.acquire().await?;
        let small_pages_fit =
            (limit.documents as usize).saturating_mul(LARGE_DOCUMENT_BYTES) <= limit.bytes;
        if small_pages_fit
            && let Some(page) = fast_page(&mut conn, collection, owner, after, limit)
                .await
                .map_err(to_store_error)?
        {
            return Ok(page);
        }
        budget_page(&mut conn, collection, owner, after, limit)
            .await
            .map_err(to_store_error)
    }
}

/// The page read by `fast_page_sql!`; `None` when a large document ended it before it was
/// full (the rows it read all fit, but the page may hold more: read it with the running sum).
async fn fast_page(
    conn: &mut PgConnection,
    collection: &str,
    owner: Option<&str>,
    after: Resume,
    limit: PageLimit,
) -> Result<Option<ChangePage>, sqlx::Error> {
    let sql = if owner.is_some() {
        OWNER_FAST_PAGE_SQL
    } else {
        FAST_PAGE_SQL
    };
    let mut query = sqlx::query(sql)
        .bind(collection)
        .bind(after.position.tx)
        .bind(after.position.seq)
        .bind(i64::from(limit.documents))
        .bind(after.floor);
    if let Some(owner) = owner {
        query = query.bind(owner);
    }
    // Each row is decoded as it arrives and dropped, rather than all kept until the last.
    let mut rows = query.fetch(&mut *conn);
    let mut documents = Vec::with_capacity((limit.documents as usize).min(1024));
    let mut header = None;
    while let Some(row) = rows.try_next().await? {
        if row.try_get_unchecked::<Option<&str>, _>(3)?.is_some() {
            documents.push(document_at(&row, 3)?);
        } else {
            header = Some((
                row.try_get_unchecked::<i64, _>(0)?,
                row.try_get_unchecked::<bool, _>(1)?,
                row.try_get_unchecked::<bool, _>(2)?,
            ));
        }
    }
    let Some((horizon, expired, large)) = header else {
        return Err(sqlx::Error::Protocol(
            "the page statement returned no horizon row".into(),
        ));
    };
    // UNION ALL returns its branches in order; sorting sorted rows is one pass.
    documents.sort_by_key(|d| d.position);
    let full = documents.len() >= limit.documents as usize;
    if large && !full && !expired {
        return Ok(None);
    }
    Ok(Some(ChangePage {
        documents,
        more: full,
        horizon,
        expired,
    }))
}

/// The page read by `page_sql!`: cut at the byte budget by the running sum of the weights.
async fn budget_page(
    conn: &mut PgConnection,
    collection: &str,
    owner: Option<&str>,
    after: Resume,
    limit: PageLimit,
) -> Result<ChangePage, sqlx::Error> {
    let sql = if owner.is_some() {
        OWNER_PAGE_SQL
    } else {
        PAGE_SQL
    };
    let budget = i64::try_from(limit.bytes).unwrap_or(i64::MAX);
    let mut query = sqlx::query(sql)
        .bind(collection)
        .bind(after.position.tx)
        .bind(after.position.seq)
        .bind(i64::from(limit.documents))
        .bind(budget)
        .bind(after.floor);
    if let Some(owner) = owner {
        query = query.bind(owner);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let (horizon, expired) = match rows.first() {
        Some(row) => (row.try_get_unchecked(0)?, row.try_get_unchecked(1)?),
        None => (0, false),
    };
    let mut documents = Vec::with_capacity(rows.len());
    let mut cut = false;
    for row in &rows {
        match into_document(row)? {
            PageRow::Document(document) => documents.push(document),
            PageRow::OverBudget => cut = true,
            PageRow::Empty => {}
        }
    }
    // The join does not promise the lateral's order; sorting here is cheaper than a Sort
    // node in the plan (and a no-op on already ordered rows).
    documents.sort_by_key(|d| d.position);
    let more = cut || documents.len() >= limit.documents as usize;
    Ok(ChangePage {
        documents,
        more,
        horizon,
        expired,
    })
}

/// What one row of the page query holds.
enum PageRow {
    /// A document of the page.
    Document(StoredDocument),
    /// The first document past the byte budget (sent without its body): the page is cut.
    OverBudget,
    /// No document (the page is empty; the row carries the horizon only).
    Empty,
}

/// A row of the page query: horizon and expired flag, then the document columns, NULL when the
/// page is empty (so that the horizon still comes back); the body is NULL for the row past the
/// byte budget.
fn into_document(row: &PgRow) -> Result<PageRow, sqlx::Error> {
    if row.try_get_unchecked::<Option<&str>, _>(2)?.is_none() {
        return Ok(PageRow::Empty);
    }
    if row.try_get_unchecked::<Option<&str>, _>(4)?.is_none() {
        return Ok(PageRow::OverBudget);
    }
    document_at(row, 2).map(PageRow::Document)
}

/// The document whose columns start at `first`: id, owner, body (as text), deleted, revision,
/// updated_at, change_xid, change_seq. Decoded by position and without sqlx's per-value type
/// check: the statements fix every column's type, and this is the hottest loop of a Pull.
pub(super) fn document_at(row: &PgRow, first: usize) -> Result<StoredDocument, sqlx::Error> {
    Ok(StoredDocument {
        id: row.try_get_unchecked(first)?,
        owner: row.try_get_unchecked(first + 1)?,
        body: row.try_get_unchecked(first + 2)?,
        deleted: row.try_get_unchecked(first + 3)?,
        revision: row.try_get_unchecked(first + 4)?,
        updated_at: row.try_get_unchecked(first + 5)?,
        position: Position {
            tx: row.try_get_unchecked(first + 6)?,
            seq: row.try_get_unchecked(first + 7)?,
        },
        left_scope: false,
    })
}
