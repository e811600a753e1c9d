//! Reading changes in order under the visibility horizon.

use chrono::{DateTime, Utc};

use super::PgStore;
use super::error::to_store_error;
use crate::store::{ChangePage, Position, StoreError, StoredDocument};

/// One row of the page query; the document columns are NULL when the page is empty, so that
/// the horizon still comes back.
#[derive(sqlx::FromRow)]
struct PageRow {
    horizon: i64,
    id: Option<String>,
    owner: Option<String>,
    body: Option<String>,
    deleted: Option<bool>,
    revision: Option<String>,
    updated_at: Option<DateTime<Utc>>,
    change_xid: Option<i64>,
    change_seq: Option<i64>,
}

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
) d ON true
ORDER BY d.change_xid, d.change_seq"
        )
    };
}

/// Every owner's documents (service principals).
pub(super) const PAGE_SQL: &str = page_sql!("");
/// One owner's documents; `$5` is the owner.
pub(super) const OWNER_PAGE_SQL: &str = page_sql!("\n      AND owner = $5");

impl PgStore {
    #[tracing::instrument(name = "db.read_changes", skip_all, fields(db.system = "postgresql", collection = %collection, limit = limit))]
    pub(crate) async fn read_page(
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
        let mut query = sqlx::query_as::<_, PageRow>(sql)
            .bind(collection)
            .bind(after.tx)
            .bind(after.seq)
            .bind(i64::from(limit));
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        let mut conn = self.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await.map_err(to_store_error)?;
        let horizon = rows.first().map(|r| r.horizon).unwrap_or_default();
        let documents = rows.into_iter().filter_map(into_document).collect();
        Ok(ChangePage { documents, horizon })
    }
}

fn into_document(row: PageRow) -> Option<StoredDocument> {
    Some(StoredDocument {
        id: row.id?,
        owner: row.owner?,
        body: row.body?,
        deleted: row.deleted?,
        revision: row.revision?,
        updated_at: row.updated_at?,
        position: Position {
            tx: row.change_xid?,
            seq: row.change_seq?,
        },
    })
}
