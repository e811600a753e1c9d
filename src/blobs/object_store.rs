//! Blob bytes in S3-compatible object storage, through the `object_store` crate. An upload
//! streams into a multipart upload of `<prefix>/tmp/<upload id>` and is copied to
//! `<prefix>/blobs/<collection>/<digest>` only once verified, so the digest's name never
//! holds other bytes. The copy runs inside the transaction that inserts the blob row (whose
//! row lock orders it against the GC, which deletes the object inside its own).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::gc::GcBatch;
use super::index::{self, BlobIndex};
use super::{AttachmentsConfig, BlobMeta, BlobStoreKind, Blobs, ByteStream, db_error};
use crate::store::StoreError;

/// Multipart part size: S3's minimum for every part but the last, so that is what a staged
/// upload holds in memory (twice at most: one part being sent while the next fills).
const PART_BYTES: usize = 5 * 1024 * 1024;

/// Blob bytes in an object store.
#[derive(Clone)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: Vec<String>,
    index: BlobIndex,
}

impl std::fmt::Debug for ObjectStoreBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBlobs")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// An upload being staged in a temporary object.
pub struct ObjectStaging {
    upload_id: String,
    tmp: Path,
    writer: WriteMultipart,
}

impl ObjectStoreBlobs {
    /// The S3 bucket of `config` (credentials, and what `config` leaves unset, from the
    /// usual `AWS_*` environment).
    pub fn s3(config: &AttachmentsConfig, pool: sqlx::PgPool) -> Result<ObjectStoreBlobs, String> {
        let bucket = config
            .s3_bucket
            .as_deref()
            .filter(|b| !b.is_empty())
            .ok_or("attachments.store = \"s3\" needs attachments.s3_bucket")?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(config.s3_allow_http);
        if let Some(endpoint) = &config.s3_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.s3_region {
            builder = builder.with_region(region);
        }
        let store = builder
            .build()
            .map_err(|e| format!("attachments: S3: {e}"))?;
        Ok(ObjectStoreBlobs::new(
            Arc::new(store),
            &config.s3_prefix,
            pool,
        ))
    }

    /// Blobs in `store` under `prefix` (`a/b/`), indexed in `pool`'s database.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, pool: sqlx::PgPool) -> ObjectStoreBlobs {
        ObjectStoreBlobs {
            store,
            prefix: prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            index: BlobIndex::new(pool),
        }
    }

    fn path<'a>(&'a self, rest: impl IntoIterator<Item = &'a str>) -> Path {
        // Parts are percent-encoded as needed: a collection name never escapes its folder.
        Path::from_iter(self.prefix.iter().map(String::as_str).chain(rest))
    }
}

fn object_error(err: object_store::Error) -> StoreError {
    match err {
        object_store::Error::Generic { .. } => StoreError::Unavailable(err.to_string()),
        other => StoreError::Internal(other.to_string()),
    }
}

/// Deletes `path`; an object already gone is fine.
async fn delete_object(store: &dyn ObjectStore, path: &Path) -> Result<(), StoreError> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(object_error(e)),
    }
}

impl Blobs for ObjectStoreBlobs {
    type Staging = ObjectStaging;

    fn kind(&self) -> BlobStoreKind {
        BlobStoreKind::S3
    }

    fn index(&self) -> &BlobIndex {
        &self.index
    }

    async fn begin(&self, _collection: &str, _digest: &str) -> Result<ObjectStaging, StoreError> {
        let upload_id = super::upload_id();
        let tmp = self.path(["tmp", upload_id.as_str()]);
        self.index.start_upload(&upload_id, tmp.as_ref()).await?;
        let upload = self.store.put_multipart(&tmp).await.map_err(object_error)?;
        Ok(ObjectStaging {
            upload_id,
            tmp,
            writer: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
        })
    }

    async fn write(&self, staging: &mut ObjectStaging, chunk: Bytes) -> Result<(), StoreError> {
        // At most one part in flight while the next one fills: memory stays at two parts.
        staging
            .writer
            .wait_for_capacity(1)
            .await
            .map_err(object_error)?;
        staging.writer.write(&chunk);
        Ok(())
    }

    async fn commit(
        &self,
        staging: ObjectStaging,
        meta: &BlobMeta,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let ObjectStaging {
            upload_id,
            tmp,
            writer,
        } = staging;
        writer.finish().await.map_err(object_error)?;
        let target = self.path(["blobs", meta.collection.as_str(), meta.digest.as_str()]);
        let outcome = async {
            let mut tx = self.index.pool().begin().await.map_err(db_error)?;
            let (inserted, _) = index::record(&mut tx, meta, target.as_ref(), owner).await?;
            if inserted {
                self.store.copy(&tmp, &target).await.map_err(object_error)?;
            }
            sqlx::query("DELETE FROM syncline_blob_uploads WHERE upload_id = $1")
                .bind(&upload_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(inserted)
        }
        .await;
        if let Err(e) = delete_object(self.store.as_ref(), &tmp).await {
            tracing::warn!(error = %e, "could not delete a temporary upload object");
        }
        outcome
    }

    async fn abort(&self, staging: ObjectStaging) {
        if let Err(e) = staging.writer.abort().await {
            tracing::warn!(error = %e, "could not abort a refused upload's multipart upload");
        }
        if let Err(e) = self.index.end_upload(&staging.upload_id).await {
            tracing::warn!(error = %e, "could not forget a refused upload");
        }
    }

    async fn read(
        &self,
        location: &str,
        range: Range<u64>,
        chunk: usize,
    ) -> Result<ByteStream, StoreError> {
        let path = Path::from(location);
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(object_error)?;
        Ok(rechunk(got.into_stream(), chunk.max(1)))
    }

    async fn exists_many(
        &self,
        collection: &str,
        digests: &[String],
    ) -> Result<Vec<bool>, StoreError> {
        self.index.exists_many(collection, digests).await
    }

    async fn collect_garbage(
        &self,
        grace: Duration,
        batch: u32,
    ) -> Result<Option<GcBatch>, StoreError> {
        let Some(gc) = self.index.gc_candidates(grace, batch).await? else {
            return Ok(None);
        };
        // Inside the transaction: a failed delete rolls the rows back, and an upload of the
        // same digest waits on their locks until the objects are gone.
        for location in gc
            .victims
            .iter()
            .map(|(l, _)| l)
            .chain(gc.stale.iter().map(|(_, l)| l))
        {
            delete_object(self.store.as_ref(), &Path::from(location.as_str())).await?;
        }
        let done = gc.batch();
        gc.tx.commit().await.map_err(db_error)?;
        Ok(Some(done))
    }
}

/// Regroups a byte stream's pieces (however the HTTP client cut them) into chunks of exactly
/// `chunk` bytes but the last.
fn rechunk(
    inner: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    chunk: usize,
) -> ByteStream {
    let stream = futures::stream::unfold(
        (inner, BytesMut::new(), false),
        move |(mut inner, mut buf, mut done)| async move {
            loop {
                if buf.len() >= chunk {
                    let out = buf.split_to(chunk).freeze();
                    return Some((Ok(out), (inner, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let out = buf.split().freeze();
                    return Some((Ok(out), (inner, buf, done)));
                }
                match inner.next().await {
                    Some(Ok(piece)) => buf.extend_from_slice(&piece),
                    Some(Err(e)) => {
                        done = true;
                        buf.clear();
                        return Some((Err(object_error(e)), (inner, buf, done)));
                    }
                    None => done = true,
                }
            }
        },
    );
    Box::pin(stream)
}
