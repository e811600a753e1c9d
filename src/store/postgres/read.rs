//! Reading changes in order under the visibility horizon.

use std::collections::HashSet;

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use super::error::to_store_error;
use super::read_ahead::{PageKey, Prepared, WRITTEN_SINCE_MAX, WRITTEN_SINCE_SQL};
use crate::store::{ChangePage, Position, StoreError, StoredDocument};
use crate::telemetry::metrics::READ_AHEAD;

// The horizon is the snapshot's xmin: every transaction id below it has committed or aborted,
// and this statement sees all of the committed ones. Returning only rows below it means no
// transaction can later commit a row at a position at or before the last one returned.
// Two statements rather than an optional filter, so that each has a plan on its own index.
macro_rules! page_sql {
    ($owner_filter:literal) => {
        concat!(
            "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon)
SELECT h.horizon, d.id, d.owner, d.body::text AS body, d.deleted, d.revision, d.updated_at,
       d.change_xid, d.change_seq
FROM h
LEFT JOIN LATERAL (
    SELECT id, owner, body, deleted, revision, updated_at, change_xid, change_seq
    FROM syncline_documents
    WHERE collection = $1
      AND (change_xid, change_seq) > ($2, $3)
      AND change_xid < h.horizon",
            $owner_filter,
            "
    ORDER BY change_xid, change_seq
    LIMIT $4
) d ON true"
        )
    };
}

/// Every owner's documents (service principals).
pub(super) const PAGE_SQL: &str = page_sql!("");
/// One owner's documents; `$5` is the owner.
pub(super) const OWNER_PAGE_SQL: &str = page_sql!("\n      AND owner = $5");

impl PgStore {
    /// The page after `after`: the one read ahead when it is still exactly what a read now
    /// would return, else read now. A full page starts the read of the next one.
    #[tracing::instrument(name = "db.read_changes", skip_all, fields(db.system = "postgresql", collection = %collection, limit = limit))]
    pub(crate) async fn read_page(
        &self,
        collection: &str,
        owner: Option<&str>,
        after: Position,
        limit: u32,
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
            && page.documents.len() >= limit as usize
        {
            let next = key.from(last.position);
            self.read_ahead.start(next.clone(), page.horizon, || {
                let store = self.clone();
                tokio::spawn(async move {
                    store
                        .query_page(
                            &next.collection,
                            next.owner.as_deref(),
                            next.after,
                            next.limit,
                        )
                        .await
                })
            });
        }
        Ok(page)
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
            Ok(Ok(page)) if page.documents.len() >= key.limit as usize => page,
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

    async fn query_page(
        &self,
        collection: &str,
        owner: Option<&str>,
        after: Position,
        limit: u32,
    ) -> Result<ChangePage, StoreError> {
        let sql = if owner.is_some() {
            OWNER_PAGE_SQL
        } else {
            PAGE_SQL
        };
        let mut query = sqlx::query(sql)
            .bind(collection)
            .bind(after.tx)
            .bind(after.seq)
            .bind(i64::from(limit));
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        let mut conn = self.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await.map_err(to_store_error)?;
        let horizon = match rows.first() {
            Some(row) => row.try_get_unchecked(0).map_err(to_store_error)?,
            None => 0,
        };
        let mut documents = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(document) = into_document(row).map_err(to_store_error)? {
                documents.push(document);
            }
        }
        // The join does not promise the lateral's order; sorting here is cheaper than a Sort
        // node in the plan (and a no-op on already ordered rows).
        documents.sort_by_key(|d| d.position);
        Ok(ChangePage { documents, horizon })
    }
}

/// A row of the page query: horizon, then the document columns, NULL when the page is empty
/// (so that the horizon still comes back).
fn into_document(row: &PgRow) -> Result<Option<StoredDocument>, sqlx::Error> {
    if row.try_get_unchecked::<Option<&str>, _>(1)?.is_none() {
        return Ok(None);
    }
    document_at(row, 1).map(Some)
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
    })
}
