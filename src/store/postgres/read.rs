//! Reading changes in order under the visibility horizon.

use chrono::{DateTime, Utc};

use super::PgStore;
use super::error::to_store_error;
use crate::store::{ChangePage, Position, StoreError, StoredDocument};

/// One row of the page query, decoded by column position (cheaper than by name on the hot
/// path): horizon, id, owner, body, deleted, revision, updated_at, change_xid, change_seq. The
/// document columns are NULL when the page is empty, so that the horizon still comes back.
type PageRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
);

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
        let horizon = rows.first().map(|r| r.0).unwrap_or_default();
        let mut documents: Vec<StoredDocument> =
            rows.into_iter().filter_map(into_document).collect();
        // The join does not promise the lateral's order; sorting here is cheaper than a Sort
        // node in the plan (and a no-op on already ordered rows).
        documents.sort_by_key(|d| d.position);
        Ok(ChangePage { documents, horizon })
    }
}

fn into_document(row: PageRow) -> Option<StoredDocument> {
    let (_, id, owner, body, deleted, revision, updated_at, tx, seq) = row;
    Some(StoredDocument {
        id: id?,
        owner: owner?,
        body: body?,
        deleted: deleted?,
        revision: revision?,
        updated_at: updated_at?,
        position: Position { tx: tx?, seq: seq? },
    })
}
