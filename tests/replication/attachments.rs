//! Attachments through the real server: one suite run against both blob back ends
//! (PostgreSQL chunks, and S3 on the `moto_server` that scripts/test.sh starts), then scoping
//! by owner, limits, and a 200 MiB transfer whose server memory stays flat.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::common::*;
use syncline::config::Config;
use syncline::proto::attachment_service_client::AttachmentServiceClient;
use syncline::proto::{
    DownloadRequest, MissingRequest, UploadRequest, UploadResponse, UploadStart, upload_request,
};

pub type Blobs = AttachmentServiceClient<Channel>;

/// The chunk limit of the suite's servers: small, so that blobs span many chunks.
pub const CHUNK: usize = 64 * 1024;

/// The digest RxDB's default hashFunction gives `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), v.as_mut_slice());
    v
}

/// An attachment client of `server`.
pub async fn blobs_client(server: &TestServer) -> Blobs {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    AttachmentServiceClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024)
}

pub fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(token) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
}

fn start(collection: &str, digest: &str, length: u64) -> UploadRequest {
    UploadRequest {
        part: Some(upload_request::Part::Start(UploadStart {
            collection: collection.into(),
            digest: digest.into(),
            length,
            content_type: "application/octet-stream".into(),
        })),
    }
}

fn chunk(bytes: &[u8]) -> UploadRequest {
    UploadRequest {
        part: Some(upload_request::Part::Chunk(bytes.to_vec())),
    }
}

/// Uploads `bytes` declared as (`digest`, `length`), in chunks of `size`.
pub async fn upload_as(
    c: &mut Blobs,
    token: Option<&str>,
    collection: &str,
    (digest, length): (&str, u64),
    bytes: &[u8],
    size: usize,
) -> Result<UploadResponse, Status> {
    let mut messages = vec![start(collection, digest, length)];
    messages.extend(bytes.chunks(size).map(chunk));
    c.upload(with_token(tokio_stream::iter(messages), token))
        .await
        .map(|r| r.into_inner())
}

/// Uploads `bytes` under their true digest and length.
pub async fn upload(
    c: &mut Blobs,
    token: Option<&str>,
    collection: &str,
    bytes: &[u8],
) -> Result<UploadResponse, Status> {
    let d = digest(bytes);
    upload_as(c, token, collection, (&d, bytes.len() as u64), bytes, CHUNK).await
}

/// Downloads a range; returns the bytes and checks every message's offset and size.
pub async fn download(
    c: &mut Blobs,
    token: Option<&str>,
    collection: &str,
    digest: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, Status> {
    let mut stream = c
        .download(with_token(
            DownloadRequest {
                collection: collection.into(),
                digest: digest.into(),
                offset,
                length,
            },
            token,
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        assert_eq!(message.offset, offset + out.len() as u64, "chunk offsets");
        assert!(message.chunk.len() <= CHUNK, "a chunk over the limit");
        out.extend_from_slice(&message.chunk);
    }
    Ok(out)
}

pub async fn missing(
    c: &mut Blobs,
    token: Option<&str>,
    collection: &str,
    digests: &[&str],
) -> Result<Vec<String>, Status> {
    c.missing(with_token(
        MissingRequest {
            collection: collection.into(),
            digests: digests.iter().map(|d| d.to_string()).collect(),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner().digests)
}

/// A body that references `digest` as RxDB describes an attachment.
pub fn with_attachment(name: &str, digest: &str, length: usize) -> Value {
    json!({"title": name, "_attachments": {name: {"digest": digest, "length": length, "type": "image/png"}}})
}

/// The field the status names (ErrorInfo metadata).
pub fn field(s: &Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .and_then(|i| i.metadata.get("field").cloned())
        .unwrap_or_default()
}

/// Row counts of the blob tables: (blobs, chunks, uploads in progress, grants).
pub async fn blob_rows(server: &TestServer) -> (i64, i64, i64, i64) {
    let mut db = server.db().await;
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM syncline_blobs), (SELECT count(*) FROM syncline_blob_chunks), \
         (SELECT count(*) FROM syncline_blob_uploads), (SELECT count(*) FROM syncline_blob_grants)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap()
}

/// The two back ends the suite runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    S3,
}

/// The S3 endpoint and bucket scripts/test.sh provides; `None` (the test returns) outside
/// CI when there is none. Under CI a missing endpoint fails the test: it is never skipped.
pub fn s3_target() -> Option<(String, String)> {
    let endpoint = std::env::var("TEST_S3_ENDPOINT").ok();
    let bucket = std::env::var("TEST_S3_BUCKET").ok();
    match (endpoint, bucket) {
        (Some(e), Some(b)) if !e.is_empty() && !b.is_empty() => Some((e, b)),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") => panic!(
            "TEST_S3_ENDPOINT / TEST_S3_BUCKET are not set: the S3 back end \
             must be tested (scripts/test.sh starts moto_server)"
        ),
        _ => {
            eprintln!("no S3 endpoint (TEST_S3_ENDPOINT): S3 case not run outside CI");
            None
        }
    }
}

/// A test configuration on `backend` (S3: a fresh prefix of the test bucket); `None` when
/// the back end is not available here (see [`s3_target`]).
pub fn backend_config(db: &str, backend: Backend) -> Option<Config> {
    let mut c = config(db);
    c.attachments.chunk_bytes_max = CHUNK;
    if let Backend::S3 = backend {
        let (endpoint, bucket) = s3_target()?;
        c.attachments.store = syncline::blobs::BlobStoreKind::S3;
        c.attachments.s3_bucket = Some(bucket);
        c.attachments.s3_endpoint = Some(endpoint);
        c.attachments.s3_region = Some("us-east-1".into());
        c.attachments.s3_allow_http = true;
        c.attachments.s3_prefix = format!("t{:016x}/", rand::random::<u64>());
    }
    Some(c)
}

/// The objects under the S3 prefix of `attachments` (none for the PostgreSQL back end).
pub async fn s3_objects(attachments: &syncline::blobs::AttachmentsConfig) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let (Some(bucket), Some(endpoint)) = (&attachments.s3_bucket, &attachments.s3_endpoint) else {
        return Vec::new();
    };
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    let prefix = object_store::path::Path::from(attachments.s3_prefix.trim_end_matches('/'));
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    let mut names: Vec<String> = listed.into_iter().map(|m| m.location.to_string()).collect();
    names.sort();
    names
}

/// The suite, instantiated once per back end.
macro_rules! suite {
    ($($backend:ident),*) => {$(
        #[allow(non_snake_case)]
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn chunked_upload_downloads_whole_and_resumes_from_an_offset() {
                chunked_upload_downloads_whole_and_resumes(Backend::$backend).await;
            }

            #[tokio::test]
            async fn wrong_digest_or_length_is_refused_and_nothing_is_stored() {
                wrong_digest_or_length_stores_nothing(Backend::$backend).await;
            }

            #[tokio::test]
            async fn a_second_upload_finishes_at_once_and_the_blob_is_stored_once() {
                dedup(Backend::$backend).await;
            }

            #[tokio::test]
            async fn missing_lists_what_to_upload() {
                missing_lists(Backend::$backend).await;
            }

            #[tokio::test]
            async fn gc_keeps_referenced_and_recent_blobs_and_removes_the_rest() {
                gc(Backend::$backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_uploads_and_gc_store_each_blob_once_and_never_lose_bytes() {
                racing_uploads_and_gc(Backend::$backend).await;
            }
        }
    )*};
}

suite!(Postgres, S3);

async fn chunked_upload_downloads_whole_and_resumes(backend: Backend) {
    let db = fresh_database().await;
    let Some(cfg) = backend_config(&db, backend) else {
        return;
    };
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let bytes = random_bytes(3 * CHUNK + 12_345);
    let d = digest(&bytes);
    let r = upload(&mut c, None, "tasks", &bytes).await.unwrap();
    assert_eq!(
        (r.digest.as_str(), r.length, r.already_stored),
        (d.as_str(), bytes.len() as u64, false)
    );

    // No document references it yet: not downloadable, as if absent.
    let s = download(&mut c, None, "tasks", &d, 0, 0).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");

    let mut rc = server.client().await;
    push(
        &mut rc,
        "tasks",
        vec![insert(doc("t1", with_attachment("photo", &d, bytes.len())))],
    )
    .await;
    assert_eq!(
        download(&mut c, None, "tasks", &d, 0, 0).await.unwrap(),
        bytes
    );
    // Resume after an interruption at an arbitrary byte, and a bounded range.
    let from = 100_003;
    assert_eq!(
        download(&mut c, None, "tasks", &d, from, 0).await.unwrap(),
        bytes[from as usize..]
    );
    assert_eq!(
        download(&mut c, None, "tasks", &d, 70_000, 5_000)
            .await
            .unwrap(),
        bytes[70_000..75_000]
    );
    assert_eq!(
        download(&mut c, None, "tasks", &d, bytes.len() as u64 - 10, 1_000)
            .await
            .unwrap(),
        bytes[bytes.len() - 10..]
    );
    assert!(
        download(&mut c, None, "tasks", &d, bytes.len() as u64, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let s = download(&mut c, None, "tasks", &d, bytes.len() as u64 + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), field(&s).as_str()),
        (Code::InvalidArgument, "offset")
    );
    // The other collection holds nothing under that digest.
    let s = download(&mut c, None, "notes", &d, 0, 0).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    // An empty blob is a blob too.
    let r = upload(&mut c, None, "tasks", b"").await.unwrap();
    push(
        &mut rc,
        "tasks",
        vec![insert(doc("t2", with_attachment("empty", &r.digest, 0)))],
    )
    .await;
    assert!(
        download(&mut c, None, "tasks", &r.digest, 0, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn wrong_digest_or_length_stores_nothing(backend: Backend) {
    let db = fresh_database().await;
    let Some(cfg) = backend_config(&db, backend) else {
        return;
    };
    let attachments = cfg.attachments.clone();
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let bytes = random_bytes(2 * CHUNK + 7);
    let d = digest(&bytes);
    let n = bytes.len() as u64;
    let other = digest(b"something else");
    for (declared, sent, want_field) in [
        ((other.as_str(), n), &bytes[..], "start.digest"),
        ((d.as_str(), n - 1), &bytes[..], "start.length"),
        ((d.as_str(), n + 1), &bytes[..], "start.length"),
        ((d.as_str(), n), &bytes[..bytes.len() - 1], "start.length"),
        (("not-a-digest", n), &bytes[..], "start.digest"),
        ((d.to_uppercase().as_str(), n), &bytes[..], "start.digest"),
    ] {
        let s = upload_as(&mut c, None, "tasks", declared, sent, CHUNK)
            .await
            .unwrap_err();
        assert_eq!(
            (s.code(), field(&s).as_str()),
            (Code::InvalidArgument, want_field),
            "{s:?}"
        );
        assert!(
            s.message().len() < 400,
            "the message echoes too much: {}",
            s.message()
        );
    }
    let s = upload_as(&mut c, None, "nope", (&d, n), &bytes, CHUNK)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    // A refused upload leaves nothing: no blob, no staged chunks, no upload in progress.
    assert_eq!(blob_rows(&server).await, (0, 0, 0, 0));
    assert_eq!(s3_objects(&attachments).await, Vec::<String>::new());
    // The same bytes under their true digest are then stored, under the digest's name only.
    upload(&mut c, None, "tasks", &bytes).await.unwrap();
    let (blobs, _, uploads, _) = blob_rows(&server).await;
    assert_eq!((blobs, uploads), (1, 0));
    if let Backend::S3 = backend {
        assert_eq!(
            s3_objects(&attachments).await,
            vec![format!("{}blobs/tasks/{d}", attachments.s3_prefix)]
        );
    }
    let stored = blob_rows(&server).await;

    // A call cut off mid-upload leaves nothing either.
    let other = random_bytes(3 * CHUNK);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start("tasks", &digest(&other), other.len() as u64))
        .await
        .unwrap();
    tx.send(chunk(&other[..CHUNK])).await.unwrap();
    let mut cut = c.clone();
    let call = tokio::spawn(async move {
        cut.upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let mut staged = false;
    for _ in 0..3000 {
        if blob_rows(&server).await.2 == 1 {
            staged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(staged, "the upload was staged");
    call.abort();
    drop(tx);
    let mut cleaned = false;
    for _ in 0..3000 {
        if blob_rows(&server).await == stored {
            cleaned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cleaned,
        "a cut-off upload is dropped: {:?}",
        blob_rows(&server).await
    );
    if let Backend::S3 = backend {
        assert_eq!(s3_objects(&attachments).await.len(), 1);
    }
}

async fn dedup(backend: Backend) {
    let db = fresh_database().await;
    let Some(cfg) = backend_config(&db, backend) else {
        return;
    };
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let bytes = random_bytes(CHUNK + 1);
    let d = digest(&bytes);
    assert!(
        !upload(&mut c, None, "tasks", &bytes)
            .await
            .unwrap()
            .already_stored
    );
    let after_first = blob_rows(&server).await;

    // The second upload sends `start` and then nothing: the answer must come without the
    // bytes (the stream stays open until the answer is in).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start("tasks", &d, bytes.len() as u64))
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        c.upload(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("answered without the bytes")
    .unwrap()
    .into_inner();
    assert!(r.already_stored);
    drop(tx);
    // The same file on 100 documents is stored once.
    let mut rc = server.client().await;
    let rows = (0..100)
        .map(|i| insert(doc(&format!("d{i}"), with_attachment("f", &d, bytes.len()))))
        .collect();
    push(&mut rc, "tasks", rows).await;
    for _ in 0..3 {
        assert!(
            upload(&mut c, None, "tasks", &bytes)
                .await
                .unwrap()
                .already_stored
        );
    }
    assert_eq!(blob_rows(&server).await, after_first);
    assert_eq!(after_first.0, 1);
    // A declared length that contradicts the stored blob is refused.
    let s = upload_as(&mut c, None, "tasks", (&d, 3), b"abc", CHUNK)
        .await
        .unwrap_err();
    assert_eq!(field(&s), "start.length");
}

async fn missing_lists(backend: Backend) {
    let db = fresh_database().await;
    let Some(mut cfg) = backend_config(&db, backend) else {
        return;
    };
    cfg.attachments.missing_digests_max = 3;
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let a = random_bytes(10);
    let b = random_bytes(20);
    let (da, db_) = (digest(&a), digest(&b));
    assert_eq!(
        missing(&mut c, None, "tasks", &[&da, &db_, &da])
            .await
            .unwrap(),
        vec![da.clone(), db_.clone()]
    );
    upload(&mut c, None, "tasks", &a).await.unwrap();
    assert_eq!(
        missing(&mut c, None, "tasks", &[&da, &db_]).await.unwrap(),
        vec![db_.clone()]
    );
    // Per collection.
    assert_eq!(
        missing(&mut c, None, "notes", &[&da]).await.unwrap(),
        vec![da.clone()]
    );
    let s = missing(&mut c, None, "tasks", &[&da, "x"])
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), field(&s).as_str()),
        (Code::InvalidArgument, "digests[1]")
    );
    let s = missing(&mut c, None, "tasks", &[&da, &da, &da, &da])
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), field(&s).as_str()),
        (Code::InvalidArgument, "digests")
    );
}

async fn gc(backend: Backend) {
    let db = fresh_database().await;
    let Some(cfg) = backend_config(&db, backend) else {
        return;
    };
    let attachments = cfg.attachments.clone();
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let mut rc = server.client().await;
    // referenced + old, unreferenced + old, unreferenced + recent, referenced by a tombstone
    // only + old, referenced in another collection only + old.
    let blobs: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(CHUNK + i)).collect();
    let ds: Vec<String> = blobs.iter().map(|b| digest(b)).collect();
    for b in &blobs {
        upload(&mut c, None, "tasks", b).await.unwrap();
    }
    push(
        &mut rc,
        "tasks",
        vec![
            insert(doc("keep", with_attachment("a", &ds[0], blobs[0].len()))),
            insert(doc("gone", with_attachment("d", &ds[3], blobs[3].len()))),
        ],
    )
    .await;
    let (stored, _) = pull_all(&mut rc, "tasks", "", 100).await;
    let gone = stored.iter().find(|d| d.id == "gone").unwrap().clone();
    // A tombstone keeping its body (as RxDB sends them) references nothing.
    let mut dead = doc("gone", with_attachment("d", &ds[3], blobs[3].len()));
    dead.deleted = true;
    push(&mut rc, "tasks", vec![update(dead, gone)]).await;
    // The same bytes in another collection are another blob: referenced there, not here.
    upload(&mut c, None, "notes", &blobs[4]).await.unwrap();
    push(
        &mut rc,
        "notes",
        vec![insert(doc(
            "n",
            with_attachment("e", &ds[4], blobs[4].len()),
        ))],
    )
    .await;

    let mut conn = server.db().await;
    sqlx::query(
        "UPDATE syncline_blobs SET created_at = now() - interval '2 days', \
         touched_at = now() - interval '2 days' WHERE digest <> $1",
    )
    .bind(&ds[2])
    .execute(&mut conn)
    .await
    .unwrap();
    let pool = sqlx::PgPool::connect(&server.db_url).await.unwrap();
    let store = syncline::blobs::open(&attachments, pool.clone()).unwrap();
    let grace = Duration::from_secs(24 * 3600);

    // Another replica holds the GC lock: this one does nothing.
    {
        use sqlx::Connection;
        let mut other = server.db().await;
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('syncline.blob_gc'), 0)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let r = syncline::blobs::gc::collect(&store, grace, 1)
            .await
            .unwrap();
        assert!(r.locked_out && r.deleted.blobs == 0, "{r:?}");
    }

    // Batches of one: the round goes on until a batch comes back short.
    let r = syncline::blobs::gc::collect(&store, grace, 1)
        .await
        .unwrap();
    assert_eq!(r.deleted.blobs, 3, "{r:?}");
    assert!(r.batches >= 4, "{r:?}");
    use syncline::blobs::Blobs as _;
    let left = store.exists_many("tasks", &ds).await.unwrap();
    assert_eq!(left, vec![true, false, true, false, false]);
    // The kept blobs still download whole.
    assert_eq!(
        download(&mut c, None, "tasks", &ds[0], 0, 0).await.unwrap(),
        blobs[0]
    );
    if let Backend::Postgres = backend {
        let chunks: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT upload_id) FROM syncline_blob_chunks")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        // Kept: tasks' referenced and recent blobs, and notes' copy of the fifth.
        assert_eq!(chunks, 3, "chunks of deleted blobs are deleted with them");
    }
    // A deleted blob can be uploaded again and is then stored anew.
    assert!(
        !upload(&mut c, None, "tasks", &blobs[1])
            .await
            .unwrap()
            .already_stored
    );

    // A crash mid-upload leaves a staged upload: the GC removes it after the grace period.
    sqlx::query("INSERT INTO syncline_blob_uploads (upload_id, location, started_at) VALUES ('x', 'x', now() - interval '2 days')")
        .execute(&mut conn)
        .await
        .unwrap();
    let r = syncline::blobs::gc::collect(&store, grace, 10)
        .await
        .unwrap();
    assert_eq!((r.deleted.blobs, r.deleted.stale_uploads), (0, 1), "{r:?}");
    pool.close().await;
}

#[tokio::test]
async fn reference_lookups_are_served_by_the_digest_index() {
    let server = TestServer::start().await;
    let pool = sqlx::PgPool::connect(&server.db_url).await.unwrap();
    // A collection of some size, each document with its own attachment, so that the planner
    // weighs the choices as it would in production.
    sqlx::query(
        "INSERT INTO syncline_documents (collection, id, body, deleted, revision, updated_at, \
         change_xid, change_seq, owner) \
         SELECT 'tasks', 'd' || i, jsonb_build_object('_attachments', jsonb_build_object('p', \
         jsonb_build_object('digest', encode(sha256(i::text::bytea), 'hex'), 'length', 1))), \
         false, '1-a', now(), 1, i, 'o' || (i % 10) FROM generate_series(1, 5000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE syncline_documents")
        .execute(&pool)
        .await
        .unwrap();
    let plans = syncline::blobs::index::BlobIndex::new(pool.clone())
        .explain_reference_queries()
        .await
        .unwrap();
    for plan in &plans {
        assert!(
            !plan.contains("Seq Scan on syncline_documents"),
            "a reference lookup scans the documents:\n{plan}"
        );
    }
    // Without an owner to narrow them, only the digest index finds the references.
    for plan in &plans[2..] {
        assert!(
            plan.contains("syncline_documents_attachments"),
            "a reference lookup does not use the digest index:\n{plan}"
        );
    }
    pool.close().await;
}

/// Rounds of 8 callers uploading the same new blob at once, while the GC (grace 1 s, its
/// blobs aged by hand) deletes the previous rounds' unreferenced blobs: every upload succeeds,
/// each blob is stored once, and every blob a document references downloads whole.
async fn racing_uploads_and_gc(backend: Backend) {
    let db = fresh_database().await;
    let Some(mut cfg) = backend_config(&db, backend) else {
        return;
    };
    cfg.attachments.uploads_per_principal_max = 16;
    let attachments = cfg.attachments.clone();
    let server = TestServer::start_with(cfg).await;
    let pool = sqlx::PgPool::connect(&server.db_url).await.unwrap();
    let store = syncline::blobs::open(&attachments, pool.clone()).unwrap();
    let mut rc = server.client().await;
    let mut kept = Vec::new();
    for round in 0..6 {
        let bytes = std::sync::Arc::new(random_bytes(CHUNK * 2 + round));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let bytes = bytes.clone();
            let mut c = blobs_client(&server).await;
            tasks.push(tokio::spawn(async move {
                upload(&mut c, None, "tasks", &bytes).await
            }));
        }
        // Meanwhile: earlier rounds' unreferenced blobs become old and are collected.
        sqlx::query("UPDATE syncline_blobs SET created_at = now() - interval '1 hour', touched_at = now() - interval '1 hour' WHERE digest <> ALL($1)")
            .bind(&kept)
            .execute(&pool)
            .await
            .unwrap();
        let gc = syncline::blobs::gc::collect(&store, Duration::from_secs(1), 2);
        let (gc, results) = tokio::join!(gc, futures::future::join_all(tasks));
        gc.unwrap();
        let fresh = results
            .into_iter()
            .map(|r| r.unwrap().expect("every racing upload succeeds"))
            .filter(|r| !r.already_stored)
            .count();
        assert!(fresh >= 1);
        let d = digest(&bytes);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM syncline_blobs WHERE digest = $1")
            .bind(&d)
            .fetch_one(&pool)
            .await
            .unwrap();
        // Stored once (or, if this round's GC took it right away, not at all: upload again).
        if rows == 0 {
            let mut c = blobs_client(&server).await;
            upload(&mut c, None, "tasks", &bytes).await.unwrap();
        }
        if round % 2 == 0 {
            push(
                &mut rc,
                "tasks",
                vec![insert(doc(
                    &format!("r{round}"),
                    with_attachment("f", &d, bytes.len()),
                ))],
            )
            .await;
            kept.push(d.clone());
            let mut c = blobs_client(&server).await;
            assert_eq!(
                download(&mut c, None, "tasks", &d, 0, 0).await.unwrap(),
                *bytes
            );
        }
    }
    // No staged leftovers, and only referenced blobs remain once the GC has run again.
    sqlx::query("UPDATE syncline_blobs SET created_at = now() - interval '1 hour', touched_at = now() - interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    syncline::blobs::gc::collect(&store, Duration::from_secs(1), 2)
        .await
        .unwrap();
    let (blobs, _, uploads, _) = blob_rows(&server).await;
    assert_eq!((blobs, uploads), (kept.len() as i64, 0));
    let mut c = blobs_client(&server).await;
    for d in &kept {
        assert!(
            !download(&mut c, None, "tasks", d, 0, 0)
                .await
                .unwrap()
                .is_empty()
        );
    }
    if let Backend::Postgres = backend {
        let ids: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT upload_id) FROM syncline_blob_chunks")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(ids, kept.len() as i64, "chunks only of the kept blobs");
    } else {
        let objects = s3_objects(&attachments).await;
        assert_eq!(objects.len(), kept.len(), "{objects:?}");
    }
    // The per-collection totals behind the stored-blob gauges (kept by a trigger through every
    // racing insert, dedup and GC delete) agree with the blobs.
    let totals: (i64, i64) =
        sqlx::query_as("SELECT blobs, bytes FROM syncline_blob_totals WHERE collection = 'tasks'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let actual: (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(length), 0)::bigint FROM syncline_blobs \
         WHERE collection = 'tasks'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(totals, actual, "syncline_blob_totals drifted");
    pool.close().await;
}
