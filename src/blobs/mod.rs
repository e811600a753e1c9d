//! Attachments: content-addressed blobs beside the documents (docs/architecture.md,
//! "Attachments"). The PostgreSQL index (`index.rs`) is the truth of which blobs exist, who
//! proved they hold them and which documents reference them, for every back end; a [`Blobs`]
//! back end holds the bytes: [`PostgresBlobs`] (chunks in a table) or [`ObjectStoreBlobs`]
//! (S3-compatible object storage). `transfer.rs` runs the RPCs' rules, `gc.rs` the GC.

mod config;
pub mod gc;
pub mod index;
mod object_store;
mod postgres;
pub mod stored;
pub mod transfer;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::store::StoreError;

pub use self::config::{AttachmentsConfig, BlobStoreKind};
pub use self::object_store::ObjectStoreBlobs;
pub use self::postgres::PostgresBlobs;
pub use self::transfer::{Attachments, DownloadStart, UploadStart, Uploaded};

/// Characters of a digest: lowercase hex SHA-256, as RxDB's default `hashFunction`
/// (`defaultHashSha256`) writes `_attachments.<name>.digest`.
pub const DIGEST_CHARS: usize = 64;

/// Why `digest` is not a digest this server stores blobs under, if it is not.
pub fn digest_problem(digest: &str) -> Option<&'static str> {
    if digest.len() != DIGEST_CHARS {
        Some("must be 64 lowercase hex characters (the SHA-256 of the bytes)")
    } else if !digest
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Some("must be lowercase hex (the SHA-256 of the bytes)")
    } else {
        None
    }
}

/// The digest of `bytes` as this server and RxDB write it.
pub fn digest_hex(hash: &[u8]) -> String {
    use std::fmt::Write;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What a verified upload records about its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// The collection the blob belongs to.
    pub collection: String,
    /// Its digest (lowercase hex SHA-256).
    pub digest: String,
    /// Its length in bytes.
    pub length: u64,
    /// The content type the first upload declared.
    pub content_type: String,
}

/// A stored blob as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Length in bytes.
    pub length: u64,
    /// Declared content type.
    pub content_type: String,
    /// Where the back end keeps the bytes.
    pub location: String,
}

/// Bytes read back from a back end, in chunks of at most the requested size.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// Where the bytes of blobs live. Nothing is visible under a digest until [`Blobs::commit`]
/// verified it: writes go to a staging area (chunk rows of an upload id, a temporary object)
/// that [`Blobs::abort`] or, after a crash, the GC removes.
pub trait Blobs: Clone + Send + Sync + 'static {
    /// An upload in progress.
    type Staging: Send + 'static;

    /// Which back end this is (the `store` label of its metrics).
    fn kind(&self) -> BlobStoreKind;

    /// The blob index it records blobs in.
    fn index(&self) -> &index::BlobIndex;

    /// Starts staging an upload of `collection`'s blob `digest`.
    fn begin(
        &self,
        collection: &str,
        digest: &str,
    ) -> impl Future<Output = Result<Self::Staging, StoreError>> + Send;

    /// Appends the next chunk. Memory held is bounded by the chunk (and, for object storage,
    /// the multipart part size), never by the blob.
    fn write(
        &self,
        staging: &mut Self::Staging,
        chunk: Bytes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes the staged bytes the blob `meta` (verified by the caller) and records that
    /// `owner` proved it holds them. Returns false when the blob was already stored (another
    /// upload won): the staged bytes are dropped, the grant still recorded.
    fn commit(
        &self,
        staging: Self::Staging,
        meta: &BlobMeta,
        owner: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Drops a staged upload (refused, failed or cancelled).
    fn abort(&self, staging: Self::Staging) -> impl Future<Output = ()> + Send;

    /// Streams `range` of the blob stored at `location`, in chunks of at most `chunk` bytes.
    fn read(
        &self,
        location: &str,
        range: Range<u64>,
        chunk: usize,
    ) -> impl Future<Output = Result<ByteStream, StoreError>> + Send;

    /// Which of `digests` `collection` holds (in the order given).
    fn exists_many(
        &self,
        collection: &str,
        digests: &[String],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;

    /// Deletes unreferenced blobs older than `grace` and stale staged uploads, at most
    /// `batch` blobs, under the GC lock (one replica at a time). `None` when another replica
    /// holds the lock.
    fn collect_garbage(
        &self,
        grace: std::time::Duration,
        batch: u32,
    ) -> impl Future<Output = Result<Option<gc::GcBatch>, StoreError>> + Send;
}

/// The back end chosen by `[attachments] store`.
#[derive(Clone)]
pub enum AnyBlobs {
    /// Chunks in PostgreSQL.
    Postgres(PostgresBlobs),
    /// S3-compatible object storage.
    ObjectStore(ObjectStoreBlobs),
}

/// An upload staged in either back end.
pub enum AnyStaging {
    /// See [`PostgresBlobs`].
    Postgres(<PostgresBlobs as Blobs>::Staging),
    /// See [`ObjectStoreBlobs`].
    ObjectStore(<ObjectStoreBlobs as Blobs>::Staging),
}

impl Blobs for AnyBlobs {
    type Staging = AnyStaging;

    fn kind(&self) -> BlobStoreKind {
        match self {
            AnyBlobs::Postgres(b) => b.kind(),
            AnyBlobs::ObjectStore(b) => b.kind(),
        }
    }

    fn index(&self) -> &index::BlobIndex {
        match self {
            AnyBlobs::Postgres(b) => b.index(),
            AnyBlobs::ObjectStore(b) => b.index(),
        }
    }

    async fn begin(&self, collection: &str, digest: &str) -> Result<AnyStaging, StoreError> {
        Ok(match self {
            AnyBlobs::Postgres(b) => AnyStaging::Postgres(b.begin(collection, digest).await?),
            AnyBlobs::ObjectStore(b) => AnyStaging::ObjectStore(b.begin(collection, digest).await?),
        })
    }

    async fn write(&self, staging: &mut AnyStaging, chunk: Bytes) -> Result<(), StoreError> {
        match (self, staging) {
            (AnyBlobs::Postgres(b), AnyStaging::Postgres(s)) => b.write(s, chunk).await,
            (AnyBlobs::ObjectStore(b), AnyStaging::ObjectStore(s)) => b.write(s, chunk).await,
            _ => Err(StoreError::Internal("staging of another back end".into())),
        }
    }

    async fn commit(
        &self,
        staging: AnyStaging,
        meta: &BlobMeta,
        owner: &str,
    ) -> Result<bool, StoreError> {
        match (self, staging) {
            (AnyBlobs::Postgres(b), AnyStaging::Postgres(s)) => b.commit(s, meta, owner).await,
            (AnyBlobs::ObjectStore(b), AnyStaging::ObjectStore(s)) => {
                b.commit(s, meta, owner).await
            }
            _ => Err(StoreError::Internal("staging of another back end".into())),
        }
    }

    async fn abort(&self, staging: AnyStaging) {
        match (self, staging) {
            (AnyBlobs::Postgres(b), AnyStaging::Postgres(s)) => b.abort(s).await,
            (AnyBlobs::ObjectStore(b), AnyStaging::ObjectStore(s)) => b.abort(s).await,
            _ => {}
        }
    }

    async fn read(
        &self,
        location: &str,
        range: Range<u64>,
        chunk: usize,
    ) -> Result<ByteStream, StoreError> {
        match self {
            AnyBlobs::Postgres(b) => b.read(location, range, chunk).await,
            AnyBlobs::ObjectStore(b) => b.read(location, range, chunk).await,
        }
    }

    async fn exists_many(
        &self,
        collection: &str,
        digests: &[String],
    ) -> Result<Vec<bool>, StoreError> {
        match self {
            AnyBlobs::Postgres(b) => b.exists_many(collection, digests).await,
            AnyBlobs::ObjectStore(b) => b.exists_many(collection, digests).await,
        }
    }

    async fn collect_garbage(
        &self,
        grace: std::time::Duration,
        batch: u32,
    ) -> Result<Option<gc::GcBatch>, StoreError> {
        match self {
            AnyBlobs::Postgres(b) => b.collect_garbage(grace, batch).await,
            AnyBlobs::ObjectStore(b) => b.collect_garbage(grace, batch).await,
        }
    }
}

/// Opens the back end `config` chooses, on `pool` (which holds the index in every case).
pub fn open(config: &AttachmentsConfig, pool: sqlx::PgPool) -> Result<AnyBlobs, String> {
    Ok(match config.store {
        BlobStoreKind::Postgres => AnyBlobs::Postgres(PostgresBlobs::new(pool)),
        BlobStoreKind::S3 => AnyBlobs::ObjectStore(ObjectStoreBlobs::s3(config, pool)?),
    })
}

/// A database error as the store reports it: connection trouble is retryable, the rest
/// internal (logged, never sent).
pub(crate) fn db_error(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db)
            if db.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "53000"
            }) =>
        {
            StoreError::Unavailable(err.to_string())
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "40001" || c == "40P01") => {
            StoreError::Contention(err.to_string())
        }
        _ => StoreError::Internal(err.to_string()),
    }
}

/// A random id for a staged upload (128 bits, hex).
pub(crate) fn upload_id() -> String {
    digest_hex(&rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_hex_sha256() {
        use sha2::Digest;
        // RxDB: defaultHashSha256(new Blob(["hello"])).
        let d = digest_hex(&sha2::Sha256::digest(b"hello"));
        assert_eq!(
            d,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(digest_problem(&d), None);
        assert!(digest_problem(&d.to_uppercase()).is_some());
        assert!(digest_problem(&d[1..]).is_some());
        assert!(digest_problem("sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=").is_some());
    }
}
