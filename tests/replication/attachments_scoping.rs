//! Attachments scoped like their documents (JWT owners, collection scopes), the limits, and a
//! 200 MiB upload and download through the real binary whose memory stays flat.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::Digest;
use tonic::Code;

use crate::attachments::*;
use crate::common::*;
use syncline::config::{AuthConfig, AuthMode, Config};
use syncline::proto::{PushRequest, UploadRequest, UploadStart, upload_request};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

fn token(sub: &str, scope: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "scope": scope, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt(mut c: Config) -> Config {
    c.auth = Some(AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        jwks_file: None,
        issuer: None,
        audience: None,
        service_scope: "syncline:service".into(),
        leeway_seconds: 0,
        subject_bytes_max: 256,
    });
    c.attachments.chunk_bytes_max = CHUNK;
    c
}

async fn push_as(
    server: &TestServer,
    token: &str,
    collection: &str,
    id: &str,
    body: serde_json::Value,
    deleted: bool,
) {
    let mut rc = server.client().await;
    let assumed = if deleted {
        let r = rc
            .fetch(with_token(
                syncline::proto::FetchRequest {
                    collection: collection.into(),
                    ids: vec![id.into()],
                    selector: Vec::new(),
                },
                Some(token),
            ))
            .await
            .unwrap()
            .into_inner();
        Some(
            r.documents
                .into_iter()
                .next()
                .expect("the document to delete"),
        )
    } else {
        None
    };
    let mut d = doc(id, body);
    d.deleted = deleted;
    let r = rc
        .push(with_token(
            PushRequest {
                collection: collection.into(),
                rows: vec![syncline::proto::ChangeRow {
                    new_document_state: Some(d),
                    assumed_master_state: assumed,
                }],
                mode: 0,
                idempotency_key: String::new(),
            },
            Some(token),
        ))
        .await
        .expect("push");
    assert!(r.into_inner().conflicts.is_empty());
}

#[tokio::test]
async fn a_blob_is_readable_only_through_a_live_document_the_caller_may_read() {
    let db = fresh_database().await;
    let server = TestServer::start_with(jwt(config(&db))).await;
    let mut c = blobs_client(&server).await;
    let (alice, bob, service) = (
        token("alice", ""),
        token("bob", ""),
        token("svc", "syncline:service"),
    );
    let bytes = random_bytes(CHUNK * 2 + 5);
    let d = digest(&bytes);
    let n = bytes.len();
    let absent = digest(b"never uploaded");

    upload(&mut c, Some(&alice), "tasks", &bytes).await.unwrap();
    push_as(
        &server,
        &alice,
        "tasks",
        "a1",
        with_attachment("p", &d, n),
        false,
    )
    .await;
    assert_eq!(
        download(&mut c, Some(&alice), "tasks", &d, 0, 0)
            .await
            .unwrap(),
        bytes
    );
    assert_eq!(
        download(&mut c, Some(&service), "tasks", &d, 0, 0)
            .await
            .unwrap(),
        bytes
    );

    // Bob: exactly the answer for a digest that does not exist.
    let theirs = download(&mut c, Some(&bob), "tasks", &d, 0, 0)
        .await
        .unwrap_err();
    let nothing = download(&mut c, Some(&bob), "tasks", &absent, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(
        (theirs.code(), nothing.code()),
        (Code::NotFound, Code::NotFound)
    );
    assert_eq!(
        theirs.message().replace(&d, "D"),
        nothing.message().replace(&absent, "D")
    );
    assert_eq!(field(&theirs), field(&nothing));
    // Knowing the digest is no proof of holding the bytes: Bob must upload them, and an
    // upload without them is refused.
    assert_eq!(
        missing(&mut c, Some(&bob), "tasks", &[&d]).await.unwrap(),
        vec![d.clone()]
    );
    let s = upload_as(&mut c, Some(&bob), "tasks", (&d, n as u64), b"", CHUNK)
        .await
        .unwrap_err();
    assert_eq!(field(&s), "start.length");
    let r = upload(&mut c, Some(&bob), "tasks", &bytes).await.unwrap();
    assert!(!r.already_stored, "bob had to send the bytes");
    assert_eq!(blob_rows(&server).await.0, 1, "still stored once");
    assert!(
        missing(&mut c, Some(&bob), "tasks", &[&d])
            .await
            .unwrap()
            .is_empty()
    );
    // Uploading does not make it readable: only a document does.
    assert_hidden(&mut c, &bob, &d).await;
    push_as(
        &server,
        &bob,
        "tasks",
        "b1",
        with_attachment("q", &d, n),
        false,
    )
    .await;
    assert_eq!(
        download(&mut c, Some(&bob), "tasks", &d, 0, 0)
            .await
            .unwrap(),
        bytes
    );
    // Alice's tombstone leaves Bob's reference; Bob's tombstone ends his access, not Alice's
    // (she has none left either: her document is gone), and the service's only with the last.
    push_as(&server, &alice, "tasks", "a1", json!({}), true).await;
    assert_hidden(&mut c, &alice, &d).await;
    assert_eq!(
        download(&mut c, Some(&bob), "tasks", &d, 10, 0)
            .await
            .unwrap(),
        bytes[10..]
    );
    push_as(&server, &bob, "tasks", "b1", json!({}), true).await;
    assert_hidden(&mut c, &bob, &d).await;
    assert_hidden(&mut c, &service, &d).await;
    // Without a token nothing is answered.
    let s = missing(&mut c, None, "tasks", &[&d]).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn uploads_need_write_scopes_and_downloads_read_scopes() {
    let db = fresh_database().await;
    let mut cfg = Config::from_toml(
        r#"
        listen = "127.0.0.1:0"
        metrics_enabled = false
        keepalive_seconds = 0
        [auth]
        mode = "none"
        [[collections]]
        name = "tasks"
        [[collections]]
        name = "vault"
        read_scopes = ["vault:read"]
        write_scopes = ["vault:write"]
        "#,
    )
    .unwrap();
    cfg.database_url = Some(db);
    let server = TestServer::start_with(jwt(cfg)).await;
    let mut c = blobs_client(&server).await;
    let bytes = random_bytes(100);
    let d = digest(&bytes);
    let reader = token("r", "vault:read");
    let writer = token("w", "vault:write vault:read");
    let s = upload(&mut c, Some(&reader), "vault", &bytes)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = missing(&mut c, Some(&reader), "vault", &[&d])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    upload(&mut c, Some(&writer), "vault", &bytes)
        .await
        .unwrap();
    push_as(
        &server,
        &writer,
        "vault",
        "v",
        with_attachment("x", &d, 100),
        false,
    )
    .await;
    assert_eq!(
        download(&mut c, Some(&writer), "vault", &d, 0, 0)
            .await
            .unwrap(),
        bytes
    );
    let s = download(&mut c, Some(&token("w", "vault:write")), "vault", &d, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn limits_refuse_with_the_field_named() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.attachments.chunk_bytes_max = CHUNK;
    cfg.attachments.attachment_bytes_max = 4 * CHUNK as u64;
    cfg.attachments.uploads_per_principal_max = 2;
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let big = random_bytes(4 * CHUNK + 1);
    let s = upload(&mut c, None, "tasks", &big).await.unwrap_err();
    assert_eq!(
        (s.code(), field(&s).as_str()),
        (Code::ResourceExhausted, "start.length")
    );
    // Chunks over the limit: just over (our check) and far over (the message size limit).
    for size in [CHUNK + 1, 3 * CHUNK] {
        let bytes = random_bytes(size);
        let s = upload_as(
            &mut c,
            None,
            "tasks",
            (&digest(&bytes), size as u64),
            &bytes,
            size,
        )
        .await
        .unwrap_err();
        assert_eq!(
            (s.code(), field(&s).as_str()),
            (Code::InvalidArgument, "chunk"),
            "{size}: {s:?}"
        );
    }
    assert_eq!(blob_rows(&server).await.0, 0);
    let s = c
        .upload(tokio_stream::iter(vec![UploadRequest {
            part: Some(upload_request::Part::Chunk(vec![1])),
        }]))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), field(&s).as_str()),
        (Code::InvalidArgument, "start")
    );

    // Two uploads in flight (their bytes held back): a third is refused until one ends.
    let bytes = random_bytes(CHUNK);
    let d = digest(&bytes);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(UploadRequest {
            part: Some(upload_request::Part::Start(UploadStart {
                collection: "tasks".into(),
                digest: d.clone(),
                length: CHUNK as u64,
                content_type: String::new(),
            })),
        })
        .await
        .unwrap();
        let mut client = c.clone();
        let call = tokio::spawn(async move {
            client
                .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        held.push((tx, call));
    }
    // Both are staged (each holds its slot from `start` on) before the third comes.
    for _ in 0..500 {
        if blob_rows(&server).await.2 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(blob_rows(&server).await.2, 2, "two uploads staged");
    let mut refused = false;
    for _ in 0..200 {
        match upload(&mut c, None, "tasks", &random_bytes(10)).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(refused, "a third upload in flight is RESOURCE_EXHAUSTED");
    // Finishing them frees the slots.
    for (tx, call) in held {
        tx.send(UploadRequest {
            part: Some(upload_request::Part::Chunk(bytes.clone())),
        })
        .await
        .unwrap();
        drop(tx);
        call.await.unwrap().unwrap();
    }
    upload(&mut c, None, "tasks", &random_bytes(10))
        .await
        .unwrap();
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Chunk `i` of the large blob: a random block made distinct per chunk.
fn large_chunk(base: &[u8], i: u64) -> Vec<u8> {
    let mut c = base.to_vec();
    c[..8].copy_from_slice(&i.to_le_bytes());
    c
}

#[tokio::test]
async fn a_200_mib_blob_goes_up_and_down_with_the_server_memory_flat() {
    const MIB: usize = 1024 * 1024;
    const CHUNKS: u64 = 200;
    let db = fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("syncline.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nmetrics_enabled = false\n[auth]\nmode = \"none\"\n\
             [[collections]]\nname = \"tasks\"\n[attachments]\nchunk_bytes_max = {MIB}\n"
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncline"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("DATABASE_URL", &db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SYNCLINE_")) {
        command.env_remove(key);
    }
    let child = command.spawn().expect("start syncline");
    let pid = child.id().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut c = None;
    for _ in 0..400 {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            let mut client =
                syncline::proto::attachment_service_client::AttachmentServiceClient::new(ch)
                    .max_decoding_message_size(4 * MIB);
            if missing(&mut client, None, "tasks", &[]).await.is_ok() {
                c = Some(client);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = c.expect("server up");
    // Warm up every path with a small blob, then take the baseline.
    let small = random_bytes(3 * MIB);
    upload_as(
        &mut c,
        None,
        "tasks",
        (&digest(&small), small.len() as u64),
        &small,
        MIB,
    )
    .await
    .unwrap();
    let mut rc = syncline::proto::replication_service_client::ReplicationServiceClient::connect(
        endpoint.clone(),
    )
    .await
    .unwrap();
    push(
        &mut rc,
        "tasks",
        vec![insert(doc(
            "small",
            with_attachment("s", &digest(&small), small.len()),
        ))],
    )
    .await;
    let mut warm = c
        .download(syncline::proto::DownloadRequest {
            collection: "tasks".into(),
            digest: digest(&small),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while warm.message().await.unwrap().is_some() {}
    let baseline = peak_rss_kib(pid);

    let base = random_bytes(MIB);
    let mut hash = sha2::Sha256::new();
    for i in 0..CHUNKS {
        hash.update(large_chunk(&base, i));
    }
    let d: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let total = CHUNKS * MIB as u64;
    let first = UploadRequest {
        part: Some(upload_request::Part::Start(UploadStart {
            collection: "tasks".into(),
            digest: d.clone(),
            length: total,
            content_type: "video/mp4".into(),
        })),
    };
    let base2 = base.clone();
    let messages = futures::stream::iter(std::iter::once(first).chain((0..CHUNKS).map(move |i| {
        UploadRequest {
            part: Some(upload_request::Part::Chunk(large_chunk(&base2, i))),
        }
    })));
    let r = c
        .upload(messages)
        .await
        .expect("200 MiB upload")
        .into_inner();
    assert_eq!((r.length, r.already_stored), (total, false));
    push(
        &mut rc,
        "tasks",
        vec![insert(doc("big", with_attachment("v", &d, total as usize)))],
    )
    .await;

    let mut stream = c
        .download(syncline::proto::DownloadRequest {
            collection: "tasks".into(),
            digest: d.clone(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut check = sha2::Sha256::new();
    let mut received = 0u64;
    while let Some(m) = stream.message().await.unwrap() {
        received += m.chunk.len() as u64;
        check.update(&m.chunk);
    }
    assert_eq!(received, total);
    let back: String = check
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(back, d);

    let grown_mib = peak_rss_kib(pid).saturating_sub(baseline) / 1024;
    eprintln!(
        "server peak RSS: {} MiB before, +{grown_mib} MiB after 200 MiB up and down",
        baseline / 1024
    );
    assert!(
        grown_mib < 48,
        "the server's peak RSS grew by {grown_mib} MiB for a 200 MiB upload and download"
    );
    drop(child);
}

/// A push may reference only blobs the pusher holds: uploaded by it, or referenced by a
/// document it can read. Knowing another owner's digest is not enough, also when the key is
/// spelled with an escape, and the bytes never travel inline.
#[tokio::test]
async fn a_push_references_only_blobs_the_pusher_holds() {
    let db = fresh_database().await;
    let server = TestServer::start_with(jwt(config(&db))).await;
    let mut c = blobs_client(&server).await;
    let (alice, bob) = (token("alice", ""), token("bob", ""));
    let bytes = random_bytes(CHUNK + 3);
    let (d, n) = (digest(&bytes), bytes.len());
    upload(&mut c, Some(&alice), "tasks", &bytes).await.unwrap();
    push_as(
        &server,
        &alice,
        "tasks",
        "a1",
        with_attachment("p", &d, n),
        false,
    )
    .await;
    let try_push = |token: String, mode: i32, json: Vec<u8>| {
        let server_addr = server.addr;
        async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{server_addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut rc =
                syncline::proto::replication_service_client::ReplicationServiceClient::new(channel);
            rc.push(with_token(
                PushRequest {
                    collection: "tasks".into(),
                    rows: vec![syncline::proto::ChangeRow {
                        new_document_state: Some(syncline::proto::Document {
                            id: "b1".into(),
                            json,
                            ..Default::default()
                        }),
                        assumed_master_state: None,
                    }],
                    mode,
                    idempotency_key: String::new(),
                },
                Some(&token),
            ))
            .await
        }
    };
    let plain = with_attachment("q", &d, n).to_string().into_bytes();
    let escaped = String::from_utf8(plain.clone())
        .unwrap()
        .replace("_attachments", "\\u005fattachments")
        .into_bytes();
    let inline = json!({"_attachments": {"q": {"digest": d, "length": n, "data": "AAAA"}}})
        .to_string()
        .into_bytes();
    for (what, json) in [
        ("plain", &plain),
        ("escaped", &escaped),
        ("inline", &inline),
    ] {
        let err = try_push(bob.clone(), 0, json.clone())
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            field(&err).starts_with("rows[0].new_document_state.json._attachments"),
            "{what}: {err:?}"
        );
        // Per row: refused alone, with the same reason.
        let r = try_push(bob.clone(), 2, json.clone())
            .await
            .expect(what)
            .into_inner();
        assert_eq!(r.refused.len(), 1, "{what}: {r:?}");
        assert_eq!(r.refused[0].reason, "INVALID_DOCUMENT");
    }
    // Nothing of Bob's was written, so he still cannot read the bytes.
    assert_hidden(&mut c, &bob, &d).await;
    // A wrong length is refused even for the uploader; the right one is accepted.
    let wrong = with_attachment("p", &d, n + 1).to_string().into_bytes();
    let err = try_push(alice.clone(), 0, wrong)
        .await
        .expect_err("wrong length");
    assert_eq!(err.code(), Code::InvalidArgument);
    try_push(alice.clone(), 0, plain.clone())
        .await
        .expect("alice holds the blob");
}

/// `token`'s caller cannot download blob `d` of "tasks": NOT_FOUND, as for an absent digest.
async fn assert_hidden(c: &mut Blobs, token: &str, d: &str) {
    let s = download(c, Some(token), "tasks", d, 0, 0)
        .await
        .expect_err("the blob is not the caller's to read");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
}
