//! Compression: gzip and zstd negotiated per call on every RPC, small replies sent plain, the
//! decoding limit bounding the decompressed size, other encodings UNIMPLEMENTED, gRPC-Web.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::common::*;
use syncline::config::Compression;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{
    ChangeRow, Checkpoint, Document, PullRequest, PushRequest, SubscribeRequest,
};

const DOCS: usize = 200;

/// A client sending and accepting `encoding` (none: plain, as before compression existed).
async fn client(
    server: &TestServer,
    encoding: Option<CompressionEncoding>,
) -> ReplicationServiceClient<Channel> {
    let c = server.client().await;
    match encoding {
        Some(e) => c.send_compressed(e).accept_compressed(e),
        None => c,
    }
}

/// `DOCS` documents of ~300 bytes: pages far above `compression_min_bytes`.
fn rows() -> Vec<ChangeRow> {
    (0..DOCS)
        .map(|i| {
            let text = format!("document {i} ").repeat(20);
            insert(doc(&format!("d{i:03}"), json!({ "i": i, "text": text })))
        })
        .collect()
}

/// The `grpc-encoding` a reply announced.
fn encoding_of<T>(r: &tonic::Response<T>) -> Option<String> {
    r.metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().expect("ASCII").to_owned())
}

fn name(encoding: Option<CompressionEncoding>) -> Option<String> {
    encoding.map(|e| e.to_string())
}

/// Documents as (id, generation, deleted, body), sorted: revisions' hashes aside, what two
/// servers given the same writes must agree on.
fn summary(docs: &[Document]) -> Vec<(String, u64, bool, serde_json::Value)> {
    view(docs)
        .into_iter()
        .map(|(id, rev, deleted, body)| (id, generation(&rev), deleted, body))
        .collect()
}

fn pull_request(collection: &str, limit: u32) -> PullRequest {
    PullRequest {
        collection: collection.into(),
        checkpoint: None,
        limit,
        selector: Vec::new(),
    }
}

#[tokio::test]
async fn pull_push_and_subscribe_give_the_same_results_plain_gzip_and_zstd() {
    let mut results = Vec::new();
    for encoding in [
        None,
        Some(CompressionEncoding::Gzip),
        Some(CompressionEncoding::Zstd),
    ] {
        let server = TestServer::start().await;
        let mut c = client(&server, encoding).await;
        // A compressed request of ~70 KB, written.
        assert!(push(&mut c, "tasks", rows()).await.is_empty());
        // The same rows again all conflict: a large reply, compressed.
        let r = c
            .push(PushRequest {
                collection: "tasks".into(),
                rows: rows(),
                mode: 0,
                idempotency_key: String::new(),
            })
            .await
            .expect("push");
        assert_eq!(encoding_of(&r), name(encoding), "conflicts reply");
        let conflicts = r.into_inner().conflicts;
        assert_eq!(conflicts.len(), DOCS);

        let r = c.pull(pull_request("tasks", 50)).await.expect("pull");
        assert_eq!(encoding_of(&r), name(encoding), "pull reply");
        let (pulled, _) = pull_all(&mut c, "tasks", "", 50).await;
        assert_eq!(pulled.len(), DOCS);

        let mut stream = c
            .subscribe(SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: Some(Checkpoint::default()),
                selector: Vec::new(),
            })
            .await
            .expect("subscribe");
        assert_eq!(encoding_of(&stream), name(encoding), "stream");
        let stream = stream.get_mut();
        let mut streamed = Vec::new();
        for _ in 0..1000 {
            if streamed.len() >= DOCS {
                break;
            }
            let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .expect("a batch in time")
                .expect("stream ok")
                .expect("stream open");
            if let Some(Event::Changes(batch)) = message.event {
                streamed.extend(batch.documents);
            }
        }
        assert_eq!(streamed.len(), DOCS);
        results.push((summary(&pulled), summary(&conflicts), summary(&streamed)));
    }
    assert_eq!(
        results[0].0, results[0].1,
        "conflicts carry the server's state"
    );
    assert_eq!(
        results[0].0, results[0].2,
        "the stream carries the same documents"
    );
    assert_eq!(results[1], results[0], "gzip");
    assert_eq!(results[2], results[0], "zstd");
}

#[tokio::test]
async fn replies_under_the_minimum_size_go_plain_and_say_so() {
    let server = TestServer::start().await;
    let mut plain = client(&server, None).await;
    assert!(push(&mut plain, "tasks", rows()).await.is_empty());
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut c = client(&server, Some(encoding)).await;
        // An empty page and an acknowledged push: a few bytes each.
        let r = c.pull(pull_request("notes", 10)).await.expect("pull");
        assert!(r.get_ref().encoded_len() < 1024);
        assert_eq!(encoding_of(&r), None, "tiny pull reply, {encoding}");
        let r = c
            .push(PushRequest {
                collection: "notes".into(),
                rows: vec![insert(doc(&format!("n-{encoding}"), json!({"n": 1})))],
                mode: 0,
                idempotency_key: String::new(),
            })
            .await
            .expect("push");
        assert!(r.get_ref().conflicts.is_empty());
        assert_eq!(encoding_of(&r), None, "tiny push reply, {encoding}");
        // A page of 100 documents (~35 KB).
        let r = c.pull(pull_request("tasks", 100)).await.expect("pull");
        assert_eq!(r.get_ref().documents.len(), 100);
        assert_eq!(encoding_of(&r), Some(encoding.to_string()), "large reply");
    }
    // On the wire: the tiny reply's message is not flagged compressed, the large one's is.
    let accept = [("grpc-accept-encoding", "gzip")];
    let tiny = grpc_frame(false, &pull_request("notes", 10).encode_to_vec());
    let (headers, body, _) = raw_call(&server, "Pull", &accept, tiny).await;
    assert!(headers.get("grpc-encoding").is_none(), "{headers:?}");
    assert_eq!(body.first(), Some(&0), "tiny reply sent plain");
    let large = grpc_frame(false, &pull_request("tasks", 100).encode_to_vec());
    let (headers, body, _) = raw_call(&server, "Pull", &accept, large).await;
    assert_eq!(headers["grpc-encoding"], "gzip");
    assert_eq!(body.first(), Some(&1), "large reply compressed");

    // A client that accepts no compression gets plain replies whatever their size.
    let r = plain.pull(pull_request("tasks", 100)).await.expect("pull");
    assert_eq!(r.get_ref().documents.len(), 100);
    assert_eq!(encoding_of(&r), None);

    // The minimum is the configuration's: at 0 even an empty page is compressed.
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.compression_min_bytes = 0;
    let server = TestServer::start_with(cfg).await;
    let mut c = client(&server, Some(CompressionEncoding::Gzip)).await;
    let r = c.pull(pull_request("notes", 10)).await.expect("pull");
    assert_eq!(encoding_of(&r).as_deref(), Some("gzip"));
}

#[tokio::test]
async fn an_empty_list_turns_compression_off() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.compression = vec![];
    let server = TestServer::start_with(cfg).await;
    let mut plain = client(&server, None).await;
    assert!(push(&mut plain, "tasks", rows()).await.is_empty());
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        // Accepting only: served, plain.
        let mut c = server.client().await.accept_compressed(encoding);
        let r = c.pull(pull_request("tasks", 100)).await.expect("pull");
        assert_eq!(r.get_ref().documents.len(), 100);
        assert_eq!(encoding_of(&r), None, "{encoding}");
        // Sending compressed: UNIMPLEMENTED, the server says what it accepts.
        let mut c = client(&server, Some(encoding)).await;
        let err = c
            .pull(pull_request("tasks", 100))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
        assert_eq!(
            err.metadata()
                .get("grpc-accept-encoding")
                .and_then(|v| v.to_str().ok()),
            Some("identity")
        );
    }
}

/// A gRPC message frame: the compressed flag, the length, the bytes.
fn grpc_frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(u8::from(compressed));
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("fits").to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// One call of `method` with `frame` sent as it is: the reply's headers, body and trailers.
async fn raw_call(
    server: &TestServer,
    method: &str,
    headers: &[(&str, &str)],
    frame: Vec<u8>,
) -> (http::HeaderMap, Bytes, Option<http::HeaderMap>) {
    let mut channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/syncline.v1.ReplicationService/{method}",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(frame),
        )))
        .expect("request");
    let response = channel
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("an HTTP response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("the reply in time")
        .expect("the reply");
    let trailers = body.trailers().cloned();
    (parts.headers, body.to_bytes(), trailers)
}

/// Sends one Push frame, flagged compressed with `encoding`, as it is; the call's status.
async fn raw_compressed_push(
    server: &TestServer,
    encoding: &str,
    payload: Vec<u8>,
) -> tonic::Status {
    let (headers, _, trailers) = raw_call(
        server,
        "Push",
        &[("grpc-encoding", encoding)],
        grpc_frame(true, &payload),
    )
    .await;
    tonic::Status::from_header_map(&headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("a status")
}

#[tokio::test]
async fn an_encoding_the_server_does_not_speak_is_unimplemented() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.compression = vec![Compression::Gzip];
    let server = TestServer::start_with(cfg).await;
    let mut c = client(&server, Some(CompressionEncoding::Zstd)).await;
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows: rows(),
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_eq!(
        err.metadata()
            .get("grpc-accept-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip,identity")
    );
    // gzip works on that server; nothing was written by the refused call.
    let mut c = client(&server, Some(CompressionEncoding::Gzip)).await;
    assert!(push(&mut c, "tasks", rows()).await.is_empty());

    // An encoding no gRPC library here speaks, on a server with the defaults.
    let server = TestServer::start().await;
    let status = raw_compressed_push(&server, "br", vec![1, 2, 3]).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("`br`"), "{status:?}");
}

#[tokio::test]
async fn a_message_that_does_not_decompress_is_invalid_argument() {
    let server = TestServer::start().await;
    let valid = PushRequest {
        collection: "tasks".into(),
        rows: vec![insert(doc("a", json!({})))],
        mode: 0,
        idempotency_key: String::new(),
    }
    .encode_to_vec();
    for (encoding, garbage) in [
        ("gzip", vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff]),
        ("gzip", valid.clone()),
        ("zstd", vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff]),
        ("zstd", valid.clone()),
    ] {
        let status = raw_compressed_push(&server, encoding, garbage).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{encoding}: {status:?}"
        );
        assert_eq!(
            status.message(),
            format!("message: not valid {encoding} data (grpc-encoding)")
        );
    }
    // Uncompressed, the same bytes are a valid push.
    let (headers, _, trailers) = raw_call(&server, "Push", &[], grpc_frame(false, &valid)).await;
    let status = tonic::Status::from_header_map(&headers)
        .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
        .expect("a status");
    assert_eq!(status.code(), Code::Ok, "{status:?}");
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test]
async fn the_decoding_limit_bounds_the_decompressed_size() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.push_rows_max = 5;
    cfg.push_bytes_max = 1 << 20;
    let limit = cfg.decoding_message_bytes_max();
    assert!(limit < 8 << 20, "{limit}");
    let server = TestServer::start_with(cfg).await;

    // gzip from the generated client: 16 MiB of JSON that compresses to a few KB.
    let mut c = client(&server, Some(CompressionEncoding::Gzip)).await;
    let body = format!("{{\"s\":\"{}\"}}", " ".repeat(16 << 20));
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows: vec![insert(Document {
                id: "bomb".into(),
                json: body.into_bytes(),
                ..Default::default()
            })],
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // A zstd bomb: 1 GiB of zeros in about 50 KB (1,024 frames of 1 MiB each). The server
    // stops at its limit: the process's peak memory grows by far less than the bomb.
    let frame = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).expect("zstd");
    let bomb = frame.repeat(1024);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let before = peak_rss();
    let status = raw_compressed_push(&server, "zstd", bomb).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 256 << 20, "peak memory grew by {grown} bytes");

    // Within the size limit, a compressed Push is still checked on the wire after
    // decompression: 5,000 empty rows against push_rows_max = 5.
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows: vec![ChangeRow::default(); 5000],
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "rows: 5000 rows exceed the limit of 5 per push"
    );
    // And the server is fine.
    assert!(
        push(&mut c, "tasks", vec![insert(doc("ok", json!({})))])
            .await
            .is_empty()
    );
}

/// One raw HTTP/1.1 exchange; the whole response, bytes.
async fn http1(server: &TestServer, request: Vec<u8>) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(&request).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    response
}

fn grpc_web_pull(extra_header: &str) -> Vec<u8> {
    let message = pull_request("tasks", 100).encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("fits").to_be_bytes());
    body.extend_from_slice(&message);
    let mut request = format!(
        "POST /syncline.v1.ReplicationService/Pull HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Origin: http://app.test\r\n{extra_header}Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn grpc_web_works_with_compression_on() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.grpc_web = true;
    cfg.cors_allowed_origins = vec!["http://app.test".into()];
    assert!(!cfg.compression.is_empty(), "on by default");
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    assert!(push(&mut c, "tasks", rows()).await.is_empty());

    // Browsers send no grpc-accept-encoding: a large page comes back plain.
    let response = http1(&server, grpc_web_pull("")).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("grpc-encoding:")),
        "{text}"
    );
    assert!(contains(&response, b"d099"), "the last document, plain");
    assert!(text.contains("grpc-status:0"), "{text}");

    // A browser may say it accepts gzip (CORS lets it) and read which encoding came back.
    let preflight = "OPTIONS /syncline.v1.ReplicationService/Pull HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Origin: http://app.test\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,grpc-accept-encoding\r\n\
         Connection: close\r\n\r\n";
    let response = http1(&server, preflight.as_bytes().to_vec()).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let allowed = text
        .lines()
        .find(|l| l.starts_with("access-control-allow-headers:"))
        .unwrap_or_default();
    assert!(allowed.contains("grpc-accept-encoding"), "{text}");

    // A gRPC-Web client that says it accepts gzip gets gzip frames.
    let response = http1(&server, grpc_web_pull("grpc-accept-encoding: gzip\r\n")).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("grpc-encoding: gzip"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("access-control-expose-headers:")
            && l.contains("grpc-encoding")),
        "{text}"
    );
    assert!(!contains(&response, b"d099"), "compressed");
    assert!(text.contains("grpc-status:0"), "{text}");
}

/// Reads gRPC messages off a response body until `n` have come: (compressed flag, payload).
async fn read_messages(
    body: &mut tonic::body::Body,
    pending: &mut Vec<u8>,
    n: usize,
) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        while pending.len() >= 5 {
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < 5 + len {
                break;
            }
            let message: Vec<u8> = pending.drain(..5 + len).collect();
            out.push((message[0], message[5..].to_vec()));
        }
        if out.len() >= n {
            return out;
        }
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            pending.extend_from_slice(&data);
        }
    }
    panic!("no {n} messages");
}

fn gunzip(payload: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(payload)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

#[tokio::test]
async fn a_stream_compresses_its_large_messages_only() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.heartbeat_seconds = 1;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    assert!(push(&mut c, "tasks", rows()).await.is_empty());

    // On the wire: the catch-up batch (~70 KB) compressed, a one-document live batch and a
    // heartbeat plain, under one `grpc-encoding: gzip`.
    let mut channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let request = SubscribeRequest {
        collection: "tasks".into(),
        checkpoint: Some(Checkpoint::default()),
        selector: Vec::new(),
    };
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/syncline.v1.ReplicationService/Subscribe",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-accept-encoding", "br, gzip")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(grpc_frame(false, &request.encode_to_vec())),
        )))
        .expect("request");
    let response = channel
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("an HTTP response");
    assert_eq!(response.headers()["grpc-encoding"], "gzip");
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let catch_up = read_messages(&mut body, &mut pending, 1).await;
    assert_eq!(catch_up[0].0, 1, "the catch-up batch is compressed");
    let batch = syncline::proto::SubscribeResponse::decode(gunzip(&catch_up[0].1).as_slice())
        .expect("a SubscribeResponse");
    let Some(Event::Changes(batch)) = batch.event else {
        panic!("a change batch first")
    };
    assert_eq!(batch.documents.len(), DOCS);
    assert!(
        push(&mut c, "tasks", vec![insert(doc("live", json!({"n": 1})))])
            .await
            .is_empty()
    );
    let mut seen_live = false;
    let mut seen_heartbeat = false;
    for _ in 0..20 {
        if seen_live && seen_heartbeat {
            break;
        }
        let (flag, payload) = read_messages(&mut body, &mut pending, 1).await.remove(0);
        assert_eq!(flag, 0, "a small message is sent plain");
        match syncline::proto::SubscribeResponse::decode(payload.as_slice())
            .expect("a SubscribeResponse")
            .event
        {
            Some(Event::Changes(batch)) => {
                assert_eq!(batch.documents.len(), 1);
                assert_eq!(batch.documents[0].id, "live");
                seen_live = true;
            }
            Some(Event::Heartbeat(_)) => seen_heartbeat = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen_live && seen_heartbeat);

    // The generated client reads such a stream (flags mixed) as any other.
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut c = client(&server, Some(encoding)).await;
        let mut stream = c
            .subscribe(SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: Some(Checkpoint::default()),
                selector: Vec::new(),
            })
            .await
            .expect("subscribe");
        assert_eq!(encoding_of(&stream), Some(encoding.to_string()));
        let stream = stream.get_mut();
        let mut ids = Vec::new();
        let id = format!("live-{encoding}");
        let mut pushed = false;
        for _ in 0..100 {
            if ids.contains(&id) {
                break;
            }
            let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .expect("a message in time")
                .expect("stream ok")
                .expect("stream open");
            if let Some(Event::Changes(batch)) = message.event {
                ids.extend(batch.documents.into_iter().map(|d| d.id));
            }
            if !pushed && ids.len() > DOCS {
                assert!(
                    push(&mut c, "tasks", vec![insert(doc(&id, json!({})))])
                        .await
                        .is_empty()
                );
                pushed = true;
            }
        }
        assert!(ids.contains(&id), "{encoding}: the live document came");
    }
}
