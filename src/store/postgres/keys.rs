//! The key that seals checkpoint tokens: created once per database, at random, by whichever
//! process needs it first, and read by every process after that.

use rand::TryRngCore;

use super::PgStore;
use super::error::to_store_error;
use crate::store::StoreError;

/// Bytes of the checkpoint key.
const KEY_LEN: usize = 32;

const READ_SQL: &str = "SELECT key FROM syncline_checkpoint_key WHERE id = 1";
// A concurrent first start inserts too: one insert wins, the other does nothing and both then
// read the winner's key.
const CREATE_SQL: &str =
    "INSERT INTO syncline_checkpoint_key (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";

impl PgStore {
    /// The database's checkpoint key, created on first use.
    pub(crate) async fn load_checkpoint_key(&self) -> Result<[u8; KEY_LEN], StoreError> {
        if let Some(key) = self.read_checkpoint_key().await? {
            return Ok(key);
        }
        let mut candidate = [0u8; KEY_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut candidate)
            .map_err(|e| {
                StoreError::Internal(format!("no randomness for the checkpoint key: {e}"))
            })?;
        let created = sqlx::query(CREATE_SQL)
            .bind(candidate.as_slice())
            .execute(self.pool())
            .await
            .map_err(to_store_error)?
            .rows_affected();
        if created == 1 {
            tracing::info!("created the checkpoint key");
        }
        self.read_checkpoint_key().await?.ok_or_else(|| {
            StoreError::Internal("the checkpoint key vanished right after it was created".into())
        })
    }

    async fn read_checkpoint_key(&self) -> Result<Option<[u8; KEY_LEN]>, StoreError> {
        let key: Option<Vec<u8>> = sqlx::query_scalar(READ_SQL)
            .fetch_optional(self.pool())
            .await
            .map_err(missing_table_is_unavailable)?;
        key.map(|k| {
            <[u8; KEY_LEN]>::try_from(k.as_slice()).map_err(|_| {
                StoreError::Internal(format!(
                    "the stored checkpoint key has {} bytes, not {KEY_LEN}",
                    k.len()
                ))
            })
        })
        .transpose()
    }
}

/// Without its migration (a server started with `migrate_on_start = false` before `syncline
/// migrate` ran) the table is missing: health says NOT_SERVING then, and requests should be
/// retried (UNAVAILABLE), not reported as a server bug.
fn missing_table_is_unavailable(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
            StoreError::Unavailable(
                "the checkpoint key table is missing: run the migrations".into(),
            )
        }
        _ => to_store_error(err),
    }
}
