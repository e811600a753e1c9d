//! Export: a collection's documents as JSON lines, from one consistent snapshot. (Import writes
//! through the push statement of `write.rs`, so positions, revisions and the notification come
//! from one place.)
//!
//! One REPEATABLE READ, READ ONLY transaction reads keyset pages in id order over the primary
//! key: every page sees the same snapshot, and memory is bounded by one page.

use super::PgStore;
use super::error::to_store_error;
use crate::store::StoreError;

/// What an export writes.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Tombstones too, each with `"_deleted": true`.
    pub include_deleted: bool,
    /// Each line with `"_owner"`, so that an import recreates the owners.
    pub with_owner: bool,
    /// Documents per page read.
    pub page_rows: u32,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Writing the lines failed.
    #[error("cannot write: {0}")]
    Write(#[from] std::io::Error),
}

// The line is built in SQL: the body with its primary key field set to the id (a body may leave
// it out; an import needs it), `_deleted` for tombstones, `_owner` on request. A body's own
// fields of those names are left out: import reads them as flags, and a live document whose
// body says `"_deleted": true` must not come back as a tombstone. Rows with the
// empty revision are uncommitted placeholders of a push (write.rs): never visible here, but
// excluded all the same. $1 collection, $2 primary key field, $3 with owner, $4 with tombstones,
// $5 page size, $6 the last id of the previous page.
macro_rules! export_sql {
    ($after:literal) => {
        concat!(
            "
SELECT id,
       (body - '_deleted' - '_owner' || jsonb_build_object($2::text, id)
             || CASE WHEN deleted THEN '{\"_deleted\": true}'::jsonb ELSE '{}'::jsonb END
             || CASE WHEN $3 THEN jsonb_build_object('_owner', owner) ELSE '{}'::jsonb END
       )::text AS line
FROM syncline_documents
WHERE collection = $1 AND revision <> '' AND ($4 OR NOT deleted)",
            $after,
            "
ORDER BY id
LIMIT $5"
        )
    };
}

const FIRST_PAGE_SQL: &str = export_sql!("");
const NEXT_PAGE_SQL: &str = export_sql!(" AND id > $6");

impl PgStore {
    /// Writes every document of `collection` (whose primary key field is `primary_key`) as one
    /// JSON line each to `write`, in id order, from one snapshot. Returns the number written.
    pub async fn export(
        &self,
        collection: &str,
        primary_key: &str,
        options: ExportOptions,
        mut write: impl FnMut(&str) -> std::io::Result<()>,
    ) -> Result<u64, ExportError> {
        let mut tx = self.pool().begin().await.map_err(to_store_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(to_store_error)?;
        let mut last: Option<String> = None;
        let mut written = 0u64;
        loop {
            let sql = if last.is_some() {
                NEXT_PAGE_SQL
            } else {
                FIRST_PAGE_SQL
            };
            let mut query = sqlx::query_as::<_, (String, String)>(sql)
                .bind(collection)
                .bind(primary_key)
                .bind(options.with_owner)
                .bind(options.include_deleted)
                .bind(i64::from(options.page_rows.max(1)));
            if let Some(after) = &last {
                query = query.bind(after);
            }
            let page = query.fetch_all(&mut *tx).await.map_err(to_store_error)?;
            let full = page.len() >= options.page_rows.max(1) as usize;
            for (_, line) in &page {
                write(line)?;
            }
            written += page.len() as u64;
            match page.into_iter().next_back() {
                Some((id, _)) if full => last = Some(id),
                _ => break,
            }
        }
        tx.rollback().await.map_err(to_store_error)?;
        Ok(written)
    }
}
