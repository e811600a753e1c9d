//! Wire limits: a Push is checked on the wire (rows, body bytes, per-row bytes) before it is
//! decoded, the default message limit follows the configured limits, and malformed protobuf is
//! INVALID_ARGUMENT with a generic message.

use bytes::{Buf, BufMut};
use prost::Message;
use serde_json::json;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::common::*;
use syncline::api::push_scan::MALFORMED;
use syncline::proto::{ChangeRow, Document, PullRequest, PushRequest};

/// Sends request bytes as they are and returns the response bytes.
#[derive(Clone, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One unary call of `method` (e.g. "Push") with raw request bytes.
pub async fn raw_call(
    server: &TestServer,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path =
        http::uri::PathAndQuery::try_from(format!("/syncline.v1.ReplicationService/{method}"))
            .expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

fn push_bytes(rows: Vec<ChangeRow>) -> Vec<u8> {
    PushRequest {
        collection: "tasks".into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_million_empty_rows_are_refused_naming_rows() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.push_rows_max = 5;
    let server = TestServer::start_with(cfg).await;
    let err = raw_call(
        &server,
        "Push",
        push_bytes(vec![ChangeRow::default(); 1_000_000]),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "rows: 1000000 rows exceed the limit of 5 per push"
    );
    // The server is fine afterwards.
    let mut c = server.client().await;
    assert!(
        push(&mut c, "tasks", vec![insert(doc("a", json!({})))])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn body_bytes_per_push_are_bounded() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.document_bytes_max = 4_000;
    cfg.push_bytes_max = 10_000;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let big = |id: &str| doc(id, json!({ "s": "x".repeat(3_000) }));
    // 3 bodies of ~3 KB: within.
    assert!(
        push(
            &mut c,
            "tasks",
            vec![insert(big("a")), insert(big("b")), insert(big("c"))]
        )
        .await
        .is_empty()
    );
    // New and assumed states count together: 4 bodies of ~3 KB are over 10,000 bytes.
    let rows = vec![update(big("d"), big("d")), update(big("e"), big("e"))];
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows,
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("rows: the bodies total 12")
            && err.message().contains("over the limit of 10000 per push"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn the_default_message_limit_follows_the_limits() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.push_rows_max = 4;
    cfg.document_bytes_max = 2_000;
    cfg.id_bytes_max = 16;
    cfg.owner_bytes_max = 16;
    let server = TestServer::start_with(cfg.clone()).await;
    let mut c = server.client().await;

    // The largest push the limits allow passes the transport: every row at every limit, in
    // both states (a service principal may name owners; `auth.mode = "none"` is one).
    let body = |i: usize| {
        let mut text = format!(r#"{{"i":{i},"pad":""#);
        text.push_str(&"p".repeat(2_000 - text.len() - 2));
        text.push_str("\"}");
        assert_eq!(text.len(), 2_000);
        text.into_bytes()
    };
    let full = |i: usize, revision: String| Document {
        id: format!("{i:016}"),
        json: body(i),
        deleted: false,
        revision,
        updated_at: Some(prost_types::Timestamp {
            seconds: i64::MIN,
            nanos: i32::MIN,
        }),
        owner: "o".repeat(16),
        left_scope: false,
    };
    let rows: Vec<ChangeRow> = (0..4)
        .map(|i| ChangeRow {
            new_document_state: Some(full(i, "r".repeat(128))),
            assumed_master_state: Some(full(i, String::new())),
        })
        .collect();
    let request = PushRequest {
        collection: "tasks".into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    };
    assert!(request.encoded_len() > 16_000);
    let r = c
        .push(request)
        .await
        .expect("the largest valid push is served");
    assert!(r.into_inner().conflicts.is_empty());

    // A request far beyond what the limits allow is refused by the transport before it is
    // buffered whole: 1 MB in a field the server ignores (64 MiB used to be the default).
    let mut r = insert(doc("x", json!({})));
    r.new_document_state.as_mut().unwrap().revision = "r".repeat(1_000_000);
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows: vec![r.clone()],
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::OutOfRange, "tonic's code: {err:?}");

    // An explicit message_bytes_max wins; the row bound still holds.
    server.stop().await.expect("stops");
    cfg.message_bytes_max = Some(2_000_000);
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows: vec![r],
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("rows[0]: ") && err.message().contains("for one row"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_with_a_generic_message() {
    let server = TestServer::start().await;
    let valid = push_bytes(vec![insert(doc("a", json!({})))]);
    let mut truncated = valid.clone();
    truncated.pop();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("Push", "truncated", truncated),
        ("Push", "truncated varint", vec![0x08, 0xff]),
        ("Push", "field number 0", vec![0x00, 0x01]),
        ("Push", "wire type 7", vec![0x0f]),
        ("Push", "rows as a varint", vec![0x10, 0x01]),
        ("Push", "collection as a varint", vec![0x08, 0x01]),
        ("Push", "length past the end", vec![0x12, 0x7f, 0x00]),
        ("Push", "collection not UTF-8", vec![0x0a, 0x02, 0xc3, 0x28]),
        (
            "Push",
            "id not UTF-8",
            vec![0x12, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe],
        ),
        ("Push", "unmatched end group", vec![0x1c]),
        ("Push", "group ended by another field", vec![0x1b, 0x24]),
        (
            "Push",
            "varint of 11 bytes",
            vec![
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        ("Pull", "collection not UTF-8", vec![0x0a, 0x01, 0xff]),
        ("Pull", "limit as bytes", vec![0x1a, 0x01, 0x00]),
        ("Subscribe", "checkpoint truncated", vec![0x12, 0x03, 0x0a]),
    ];
    for (method, what, bytes) in cases {
        let err = raw_call(&server, method, bytes).await.expect_err(what);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{method} {what}: {err:?}"
        );
        assert_eq!(err.message(), MALFORMED, "{method} {what}");
    }
    // Still serving, and a valid request in raw form is answered.
    assert!(raw_call(&server, "Push", valid).await.is_ok());
    let pull = PullRequest {
        collection: "tasks".into(),
        ..Default::default()
    };
    assert!(
        raw_call(&server, "Pull", pull.encode_to_vec())
            .await
            .is_ok()
    );
}
