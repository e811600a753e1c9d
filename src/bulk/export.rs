//! `syncline export`: a collection's live documents as JSON lines (the format `import`
//! reads), in id order, from one consistent snapshot.

use std::io::Write;
use std::path::PathBuf;

use super::{BulkError, open};
use crate::config::Config;
use crate::store::postgres::{ExportError, ExportOptions};

/// Documents read per page: bounds the memory an export holds.
const PAGE_ROWS: u32 = 1000;

/// The flags of `syncline export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The collection (declared in the configuration).
    #[arg(long)]
    pub collection: String,
    /// Write to this file (replaced only once the export is complete) instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Tombstones too, each line with `"_deleted": true`.
    #[arg(long)]
    pub include_deleted: bool,
    /// Each line with `"_owner"`, so that an import recreates the owners.
    #[arg(long)]
    pub with_owner: bool,
}

/// Runs the export; returns the number of documents written.
pub async fn run(config: &Config, args: &ExportArgs) -> Result<u64, BulkError> {
    let (store, collection) = open(config, &args.collection).await?;
    let options = ExportOptions {
        include_deleted: args.include_deleted,
        with_owner: args.with_owner,
        page_rows: PAGE_ROWS,
    };
    let result = match &args.output {
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let n = export_to(
                &store,
                &collection.primary_key,
                &collection.name,
                options,
                &mut out,
            )
            .await?;
            out.flush().map_err(write_error)?;
            Ok(n)
        }
        Some(path) => to_file(&store, &collection, options, path).await,
    };
    store.close().await;
    result
}

/// Exports into `<path>.partial`, then renames it: a failed export never leaves a file that
/// looks complete.
async fn to_file(
    store: &crate::store::postgres::PgStore,
    collection: &crate::protocol::Collection,
    options: ExportOptions,
    path: &std::path::Path,
) -> Result<u64, BulkError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = std::fs::File::create(&partial)
        .map_err(|e| BulkError::Usage(format!("--output {}: {e}", partial.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let written = export_to(
        store,
        &collection.primary_key,
        &collection.name,
        options,
        &mut out,
    )
    .await
    .and_then(|n| {
        out.flush()
            .and_then(|()| out.get_ref().sync_all())
            .map_err(|e| BulkError::Input(format!("cannot write {}: {e}", partial.display())))?;
        Ok(n)
    });
    match written {
        Ok(n) => {
            std::fs::rename(&partial, path).map_err(|e| {
                BulkError::Input(format!("cannot rename to {}: {e}", path.display()))
            })?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn export_to(
    store: &crate::store::postgres::PgStore,
    primary_key: &str,
    collection: &str,
    options: ExportOptions,
    out: &mut impl Write,
) -> Result<u64, BulkError> {
    store
        .export(collection, primary_key, options, |line| {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")
        })
        .await
        .map_err(|e| match e {
            ExportError::Store(e) => BulkError::Database(e.to_string()),
            ExportError::Write(e) => write_error(e),
        })
}

fn write_error(e: std::io::Error) -> BulkError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        BulkError::OutputClosed
    } else {
        BulkError::Input(format!("cannot write: {e}"))
    }
}
