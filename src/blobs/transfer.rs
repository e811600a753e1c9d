//! The attachment RPCs' rules, without tonic: who may upload, download and ask what is
//! missing; the limits; hashing while receiving; nothing stored unless digest and length
//! match.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::Digest as _;

use super::index::BlobIndex;
use super::{AttachmentsConfig, BlobMeta, Blobs, ByteStream, digest_hex, digest_problem};
use crate::protocol::{Collections, Kind, Principal, ProtocolError, Reason, selective, shown};
use crate::telemetry::metrics::{
    ATTACHMENT_BYTES_DOWNLOADED, ATTACHMENT_BYTES_UPLOADED, ATTACHMENT_UPLOADS,
};

/// Longest content type accepted, in bytes.
const CONTENT_TYPE_BYTES_MAX: usize = 255;

/// The first message of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStart {
    /// The collection whose documents will reference the blob.
    pub collection: String,
    /// The blob's digest (lowercase hex SHA-256 of its bytes).
    pub digest: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its content type (RxDB's `type`).
    pub content_type: String,
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The digest, verified.
    pub digest: String,
    /// The length, verified.
    pub length: u64,
    /// The server already held the blob for this caller: answered after the first message,
    /// nothing more was read.
    pub already_stored: bool,
}

/// What a download starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadStart {
    /// The whole blob's length.
    pub length: u64,
    /// Its content type.
    pub content_type: String,
    /// The offset of the first byte sent.
    pub offset: u64,
    /// The offset after the last byte sent (`offset` for an empty range).
    pub end: u64,
}

/// Attachment transfers over a [`Blobs`] back end.
pub struct Attachments<B> {
    blobs: B,
    index: BlobIndex,
    collections: Collections,
    config: AttachmentsConfig,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// One principal's upload slot, given back on drop.
struct Slot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    subject: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock()
            && let Some(n) = map.get_mut(&self.subject)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.subject);
            }
        }
    }
}

/// A staged upload aborted when dropped unfinished (the call was cancelled mid-stream).
struct Staged<B: Blobs> {
    blobs: B,
    staging: Option<B::Staging>,
}

impl<B: Blobs> Drop for Staged<B> {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let blobs = self.blobs.clone();
            runtime.spawn(async move { blobs.abort(staging).await });
        }
    }
}

fn not_found(collection: &str, digest: &str) -> ProtocolError {
    ProtocolError::new(
        Kind::NotFound,
        Reason::AttachmentNotFound,
        format!(
            "collection {collection:?}: no attachment {} you may read",
            shown(digest)
        ),
    )
    .at("digest")
}

impl<B: Blobs> Attachments<B> {
    /// Transfers of `collections`' attachments, stored in `blobs`, indexed in `index`.
    pub fn new(
        blobs: B,
        index: BlobIndex,
        collections: Collections,
        config: AttachmentsConfig,
    ) -> Self {
        Attachments {
            blobs,
            index,
            collections,
            config,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &AttachmentsConfig {
        &self.config
    }

    fn slot(&self, subject: &str) -> Result<Slot, ProtocolError> {
        let mut map = self
            .in_flight
            .lock()
            .map_err(|_| ProtocolError::internal("upload slots poisoned"))?;
        let n = map.entry(subject.to_owned()).or_insert(0);
        if *n >= self.config.uploads_per_principal_max {
            return Err(ProtocolError::resource_exhausted(format!(
                "{} uploads in flight for this caller (attachments.uploads_per_principal_max); \
                 retry when one ends",
                self.config.uploads_per_principal_max
            )));
        }
        *n += 1;
        Ok(Slot {
            map: self.in_flight.clone(),
            subject: subject.to_owned(),
        })
    }

    /// What `principal` reads of `collection` (its blobs follow: see
    /// [`selective::ReadScope::blobs`]).
    fn scope(
        &self,
        principal: &Principal,
        collection: &str,
    ) -> Result<selective::ReadScope, ProtocolError> {
        let declared = self.collections.get(collection)?;
        selective::scope(&declared, principal, b"")
    }

    /// Checks the first message of an upload (collection, write scope, digest, length,
    /// content type).
    fn check_start(&self, principal: &Principal, start: &UploadStart) -> Result<(), ProtocolError> {
        let collection = self
            .collections
            .get(&start.collection)
            .map_err(|e| e.at("start.collection"))?;
        principal.check_write(&collection)?;
        if let Some(why) = digest_problem(&start.digest) {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "start.digest",
                format!("start.digest {}: {why}", shown(&start.digest)),
            ));
        }
        if start.length > self.config.attachment_bytes_max {
            return Err(ProtocolError::resource_exhausted(format!(
                "start.length {} is over attachments.attachment_bytes_max ({})",
                start.length, self.config.attachment_bytes_max
            ))
            .at("start.length"));
        }
        if start.content_type.len() > CONTENT_TYPE_BYTES_MAX
            || start.content_type.chars().any(char::is_control)
        {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "start.content_type",
                format!(
                    "start.content_type {}: at most {CONTENT_TYPE_BYTES_MAX} bytes, no control characters",
                    shown(&start.content_type)
                ),
            ));
        }
        Ok(())
    }

    /// Receives one blob: `chunks` are the messages after `start`. A blob this caller already
    /// holds finishes at once without reading them. Otherwise the bytes are hashed as they
    /// are staged, and stored only when their digest and length are the declared ones.
    pub async fn upload<S>(
        &self,
        principal: &Principal,
        start: UploadStart,
        mut chunks: S,
    ) -> Result<Uploaded, ProtocolError>
    where
        S: Stream<Item = Result<Bytes, ProtocolError>> + Unpin + Send,
    {
        self.check_start(principal, &start)?;
        let _slot = self.slot(&principal.subject)?;
        let collection = start.collection.as_str();
        let scope = self.scope(principal, collection)?;
        let held = self
            .index
            .available(
                collection,
                scope.blobs(principal),
                std::slice::from_ref(&start.digest),
            )
            .await?;
        if let Some((_, length)) = held.first() {
            if *length != start.length {
                return Err(ProtocolError::invalid(
                    Reason::InvalidRequest,
                    "start.length",
                    format!(
                        "start.length {} is not the stored blob's length {length}",
                        start.length
                    ),
                ));
            }
            metrics::counter!(ATTACHMENT_UPLOADS, "collection" => collection.to_owned(), "outcome" => "already_stored").increment(1);
            return Ok(Uploaded {
                digest: start.digest,
                length: start.length,
                already_stored: true,
            });
        }
        let mut staged = Staged {
            blobs: self.blobs.clone(),
            staging: Some(self.begin(collection, &start.digest).await?),
        };
        let received = self.receive(&start, &mut staged, &mut chunks).await;
        let staging = staged
            .staging
            .take()
            .ok_or_else(|| ProtocolError::internal("upload staging lost"))?;
        if let Err(e) = received {
            // Its own task: a client that goes away cancels this call, not the clean-up.
            let blobs = self.blobs.clone();
            let _ = tokio::spawn(async move { blobs.abort(staging).await }).await;
            metrics::counter!(ATTACHMENT_UPLOADS, "collection" => collection.to_owned(), "outcome" => "refused").increment(1);
            return Err(e);
        }
        let meta = BlobMeta {
            collection: start.collection.clone(),
            digest: start.digest.clone(),
            length: start.length,
            content_type: start.content_type.clone(),
        };
        // Its own task too: verified bytes are recorded even if the client leaves now.
        let (blobs, owner) = (self.blobs.clone(), principal.subject.clone());
        let inserted = tokio::spawn(async move { blobs.commit(staging, &meta, &owner).await })
            .await
            .map_err(|e| ProtocolError::internal(format!("upload commit task: {e}")))??;
        if inserted {
            super::stored::refresh(self.blobs.index(), self.blobs.kind().label()).await;
        }
        let outcome = if inserted { "stored" } else { "deduplicated" };
        metrics::counter!(ATTACHMENT_UPLOADS, "collection" => collection.to_owned(), "outcome" => outcome).increment(1);
        Ok(Uploaded {
            digest: start.digest,
            length: start.length,
            already_stored: false,
        })
    }

    /// Starts staging in a task of its own that hands the staging over, or drops it when this
    /// call was cancelled meanwhile (the client went away while the back end was starting).
    async fn begin(&self, collection: &str, digest: &str) -> Result<B::Staging, ProtocolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let blobs = self.blobs.clone();
        let (collection, digest) = (collection.to_owned(), digest.to_owned());
        tokio::spawn(async move {
            match blobs.begin(&collection, &digest).await {
                Ok(staging) => {
                    if let Err(Ok(staging)) = tx.send(Ok(staging)) {
                        blobs.abort(staging).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        Ok(rx
            .await
            .map_err(|_| ProtocolError::internal("upload staging task lost"))??)
    }

    /// Stages every chunk, hashing; refuses the upload unless the bytes are the declared ones.
    ///
    /// The back end's writes run in a task of their own, fed through a queue of one chunk:
    /// while it writes chunk N (the slow part: a database statement), this call receives and
    /// hashes chunk N+1 on another core, so the back end never waits for the network or the
    /// hash. Memory: the chunk being written, the one queued and the one being received.
    async fn receive<S>(
        &self,
        start: &UploadStart,
        staged: &mut Staged<B>,
        chunks: &mut S,
    ) -> Result<(), ProtocolError>
    where
        S: Stream<Item = Result<Bytes, ProtocolError>> + Unpin + Send,
    {
        let staging = staged
            .staging
            .take()
            .ok_or_else(|| ProtocolError::internal("upload staging lost"))?;
        let (queue, queued) = tokio::sync::mpsc::channel(1);
        // The writer holds the staging in a guard: if this call is cancelled, the finished
        // writer's output is dropped with it, and the guard aborts the upload.
        let writer = tokio::spawn(write_queued(
            Staged {
                blobs: self.blobs.clone(),
                staging: Some(staging),
            },
            queued,
        ));
        let received = self.hash_and_queue(start, chunks, queue).await;
        let (mut writer_staged, written) = writer
            .await
            .map_err(|e| ProtocolError::internal(format!("upload writer task: {e}")))?;
        staged.staging = writer_staged.staging.take();
        // A refused chunk stops the upload before the writer fails for want of it.
        received?;
        written?;
        Ok(())
    }

    /// Receives the chunks, checks their sizes, queues them for the writer and hashes them;
    /// then checks the length and the digest. Stops early when the writer has stopped (its
    /// error is the one reported).
    async fn hash_and_queue<S>(
        &self,
        start: &UploadStart,
        chunks: &mut S,
        queue: tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<(), ProtocolError>
    where
        S: Stream<Item = Result<Bytes, ProtocolError>> + Unpin + Send,
    {
        let mut hash = sha2::Sha256::new();
        let mut received: u64 = 0;
        let uploaded =
            metrics::counter!(ATTACHMENT_BYTES_UPLOADED, "collection" => start.collection.clone());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if chunk.len() > self.config.chunk_bytes_max {
                return Err(ProtocolError::invalid(
                    Reason::LimitExceeded,
                    "chunk",
                    format!(
                        "a chunk of {} bytes is over attachments.chunk_bytes_max ({})",
                        chunk.len(),
                        self.config.chunk_bytes_max
                    ),
                ));
            }
            received = received.saturating_add(chunk.len() as u64);
            if received > start.length {
                return Err(ProtocolError::invalid(
                    Reason::InvalidRequest,
                    "start.length",
                    format!(
                        "more bytes than start.length {} were sent: nothing stored",
                        start.length
                    ),
                ));
            }
            uploaded.increment(chunk.len() as u64);
            if chunk.is_empty() {
                continue;
            }
            if queue.send(chunk.clone()).await.is_err() {
                // The writer failed; the caller reports its error.
                return Ok(());
            }
            hash.update(&chunk);
        }
        if received != start.length {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "start.length",
                format!(
                    "{received} bytes were sent, start.length says {}: nothing stored",
                    start.length
                ),
            ));
        }
        let actual = digest_hex(&hash.finalize());
        if actual != start.digest {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "start.digest",
                format!(
                    "the bytes sent hash to {actual}, not start.digest {}: nothing stored",
                    shown(&start.digest)
                ),
            ));
        }
        Ok(())
    }

    /// Streams the blob `digest` of `collection` from `offset` (`length` bytes, or to the end
    /// when 0), if the caller may read a live document referencing it; NOT_FOUND otherwise,
    /// the same as for a blob that does not exist.
    pub async fn download(
        &self,
        principal: &Principal,
        collection: &str,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<(DownloadStart, ByteStream), ProtocolError> {
        let declared = self
            .collections
            .get(collection)
            .map_err(|e| e.at("collection"))?;
        principal.check_read(&declared)?;
        if digest_problem(digest).is_some() {
            return Err(not_found(collection, digest));
        }
        let scope = selective::scope(&declared, principal, b"")?;
        let blob = self
            .index
            .readable(collection, scope.blobs(principal), digest)
            .await?
            .ok_or_else(|| not_found(collection, digest))?;
        if offset > blob.length {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "offset",
                format!("offset {offset} is past the end ({} bytes)", blob.length),
            ));
        }
        let end = match length {
            0 => blob.length,
            n => offset.saturating_add(n).min(blob.length),
        };
        let start = DownloadStart {
            length: blob.length,
            content_type: blob.content_type,
            offset,
            end,
        };
        if offset == end {
            return Ok((start, Box::pin(futures::stream::empty())));
        }
        let stream = self
            .blobs
            .read(&blob.location, offset..end, self.config.chunk_bytes_max)
            .await?;
        let stream = read_ahead(stream);
        let sent =
            metrics::counter!(ATTACHMENT_BYTES_DOWNLOADED, "collection" => collection.to_owned());
        let stream = stream.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                sent.increment(bytes.len() as u64);
            }
        });
        Ok((start, Box::pin(stream)))
    }

    /// Which of `digests` the caller must upload before pushing documents that reference
    /// them: those not stored, or stored but neither uploaded by it nor referenced by a
    /// document it may read. In request order, each once.
    pub async fn missing(
        &self,
        principal: &Principal,
        collection: &str,
        digests: Vec<String>,
    ) -> Result<Vec<String>, ProtocolError> {
        let declared = self
            .collections
            .get(collection)
            .map_err(|e| e.at("collection"))?;
        principal.check_write(&declared)?;
        if digests.len() > self.config.missing_digests_max {
            return Err(ProtocolError::invalid(
                Reason::LimitExceeded,
                "digests",
                format!(
                    "{} digests, over attachments.missing_digests_max ({}): ask in parts",
                    digests.len(),
                    self.config.missing_digests_max
                ),
            ));
        }
        for (i, d) in digests.iter().enumerate() {
            if let Some(why) = digest_problem(d) {
                return Err(ProtocolError::invalid(
                    Reason::InvalidRequest,
                    format!("digests[{i}]"),
                    format!("digests[{i}] {}: {why}", shown(d)),
                ));
            }
        }
        let mut seen = HashSet::new();
        let unique: Vec<String> = digests
            .into_iter()
            .filter(|d| seen.insert(d.clone()))
            .collect();
        let scope = self.scope(principal, collection)?;
        let held: HashSet<String> = self
            .index
            .available(collection, scope.blobs(principal), &unique)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        Ok(unique.into_iter().filter(|d| !held.contains(d)).collect())
    }

    /// For the push check: the digests among `digests` the caller may reference, with their
    /// lengths (see [`crate::protocol::attachments::check_row`]).
    pub async fn held(
        &self,
        principal: &Principal,
        collection: &str,
        digests: &[String],
    ) -> Result<HashMap<String, u64>, ProtocolError> {
        let scope = self.scope(principal, collection)?;
        Ok(self
            .index
            .available(collection, scope.blobs(principal), digests)
            .await?
            .into_iter()
            .collect())
    }
}

/// The upload's writer: writes the queued chunks in order until the queue closes or a write
/// fails; hands the staging back with the outcome.
async fn write_queued<B: Blobs>(
    mut staged: Staged<B>,
    mut queued: tokio::sync::mpsc::Receiver<Bytes>,
) -> (Staged<B>, Result<(), ProtocolError>) {
    let Some(staging) = staged.staging.as_mut() else {
        return (staged, Err(ProtocolError::internal("upload staging lost")));
    };
    while let Some(chunk) = queued.recv().await {
        if let Err(e) = staged.blobs.write(staging, chunk).await {
            return (staged, Err(e.into()));
        }
    }
    (staged, Ok(()))
}

/// Reads the next chunk from the back end while the previous one is being sent: a task pulls
/// `stream` into a channel of one, so the database read of chunk N+1 overlaps the network
/// write of chunk N. Memory: the chunk sent, the one queued and the one being read. The task
/// ends when the stream does or when the receiver is dropped (the client went away).
fn read_ahead(mut stream: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::super::BlobStoreKind;
    use super::super::gc::GcBatch;
    use super::*;
    use crate::store::StoreError;

    /// A back end whose first write waits until released; counts the writes.
    #[derive(Clone)]
    struct Gated {
        index: BlobIndex,
        release: Arc<tokio::sync::Notify>,
        writes: Arc<AtomicUsize>,
    }

    impl Blobs for Gated {
        type Staging = ();

        fn kind(&self) -> BlobStoreKind {
            BlobStoreKind::Postgres
        }

        fn index(&self) -> &BlobIndex {
            &self.index
        }

        async fn begin(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }

        async fn write(&self, _: &mut (), _: Bytes) -> Result<(), StoreError> {
            if self.writes.fetch_add(1, Ordering::SeqCst) == 0 {
                self.release.notified().await;
            }
            Ok(())
        }

        async fn commit(&self, _: (), _: &BlobMeta, _: &str) -> Result<bool, StoreError> {
            Ok(true)
        }

        async fn abort(&self, _: ()) {}

        async fn read(&self, _: &str, _: Range<u64>, _: usize) -> Result<ByteStream, StoreError> {
            Ok(Box::pin(futures::stream::empty()))
        }

        async fn exists_many(&self, _: &str, d: &[String]) -> Result<Vec<bool>, StoreError> {
            Ok(vec![false; d.len()])
        }

        async fn collect_garbage(
            &self,
            _: Duration,
            _: u32,
        ) -> Result<Option<GcBatch>, StoreError> {
            Ok(None)
        }
    }

    /// While the back end is still writing the first chunk, the upload goes on receiving:
    /// the next chunk is queued for the writer and the one after it received (three chunks
    /// held, no more). Before the writer had its own task, the upload stopped after receiving
    /// the second chunk until the first write ended.
    #[tokio::test]
    async fn chunks_are_received_while_the_back_end_writes() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let blobs = Gated {
            index: BlobIndex::new(pool.clone()),
            release: Arc::new(tokio::sync::Notify::new()),
            writes: Arc::new(AtomicUsize::new(0)),
        };
        let attachments = Attachments::new(
            blobs.clone(),
            BlobIndex::new(pool),
            Collections::default(),
            AttachmentsConfig::default(),
        );
        let chunks: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let start = UploadStart {
            collection: "files".into(),
            digest: digest_hex(&sha2::Sha256::digest(&all)),
            length: all.len() as u64,
            content_type: String::new(),
        };
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let mut stream = futures::stream::iter(chunks)
            .inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .map(Ok);
        let mut staged = Staged {
            blobs: blobs.clone(),
            staging: Some(()),
        };
        let upload = tokio::spawn(async move {
            attachments
                .receive(&start, &mut staged, &mut stream)
                .await
                .map(|()| staged.staging.is_some())
        });
        // Bounded wait for the receiving side to get as far as it may.
        for _ in 0..500 {
            if pulled.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(blobs.writes.load(Ordering::SeqCst), 1, "one write started");
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            3,
            "chunks received while the first write is pending"
        );
        blobs.release.notify_one();
        let kept_staging = tokio::time::timeout(Duration::from_secs(30), upload)
            .await
            .expect("the upload ends once the write is released")
            .expect("the upload task")
            .expect("the upload is accepted");
        assert!(kept_staging, "the staging is handed back for the commit");
        assert_eq!(
            blobs.writes.load(Ordering::SeqCst),
            6,
            "every chunk written"
        );
        assert_eq!(pulled.load(Ordering::SeqCst), 6);
    }
}
