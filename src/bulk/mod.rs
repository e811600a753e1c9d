//! The `import` and `export` commands: a collection to and from JSON lines, for migrations
//! and backups next to the service. The rules (what a line is, what a rerun rewrites) live in
//! [`crate::protocol::import`]; the SQL in `store/postgres` (the push statement, and
//! `bulk.rs` for export).

pub mod export;
pub mod import;
mod progress;

use crate::config::Config;
use crate::protocol::Collections;
use crate::store::postgres::PgStore;

/// Why a bulk command stopped. Each message is complete for a person reading it.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The configuration, a flag or the collection is wrong.
    #[error("{0}")]
    Usage(String),
    /// A line of the input is invalid, or cannot be read.
    #[error("{0}")]
    Input(String),
    /// The database failed.
    #[error("{0}")]
    Database(String),
    /// The reader of standard output went away (`export | head`): a normal end, not a failure.
    #[error("output closed")]
    OutputClosed,
}

/// The process exit code of a bulk command, after printing its error: 0 done (or the reader of
/// stdout went away), 2 a wrong flag, configuration or collection, 1 anything else.
pub fn exit_code(result: Result<(), BulkError>) -> u8 {
    match result {
        Ok(()) | Err(BulkError::OutputClosed) => 0,
        Err(e) => {
            eprintln!("syncline: {e}");
            if matches!(e, BulkError::Usage(_)) {
                2
            } else {
                1
            }
        }
    }
}

/// The store and the collection a command works on, after checking that the database has
/// Syncline's current tables.
async fn open(
    config: &Config,
    collection: &str,
) -> Result<(PgStore, std::sync::Arc<crate::protocol::Collection>), BulkError> {
    let collections = Collections::from_config(config).map_err(BulkError::Usage)?;
    let collection = collections
        .get(collection)
        .map_err(|e| BulkError::Usage(format!("--collection: {e}")))?;
    let store = crate::server::open_store(config).map_err(|e| BulkError::Usage(e.to_string()))?;
    let ready = store
        .ready()
        .await
        .map_err(|e| BulkError::Database(e.to_string()))?;
    if !ready {
        return Err(BulkError::Usage(
            "the database lacks Syncline's latest migrations: run `syncline migrate` first".into(),
        ));
    }
    Ok((store, collection))
}
