//! Errors programs can read (issue 12, item 7): every refusal carries `google.rpc` details,
//! decoded here as a client would with tonic-types: `ErrorInfo` (domain "syncline", a stable
//! reason, the field), `BadRequest` on INVALID_ARGUMENT, `RetryInfo` on UNAVAILABLE and
//! RESOURCE_EXHAUSTED. One case per reason reachable over the wire; messages are unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::Connection;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::common::*;
use syncline::config::{AuthConfig, Config};
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{Checkpoint, Document, PullRequest, PushRequest, SubscribeRequest};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

pub type Client = ReplicationServiceClient<Channel>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `sub` (no scopes).
pub fn token(sub: &str) -> String {
    hs256(&json!({"sub": sub, "exp": now() + 600}), SECRET)
}

/// `message` with `token` as its bearer credential.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A server on a fresh database with HS256 JWT auth; `tweak` edits the configuration.
pub async fn jwt_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    let auth = json!({"mode": "jwt", "hs256_secret": SECRET, "leeway_seconds": 0});
    cfg.auth = Some(serde_json::from_value::<AuthConfig>(auth).unwrap());
    tweak(&mut cfg);
    cfg.validate().unwrap();
    TestServer::start_with(cfg).await
}

/// Stops the server and drops its database.
pub async fn drop_database(server: TestServer) {
    let url = server.db_url.clone();
    server.stop().await.expect("server stops cleanly");
    let name = url.rsplit_once('/').expect("database in URL").1.to_owned();
    let mut admin = sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("connect to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the test database");
}

/// The reason and field of a status's `ErrorInfo`, checking its domain.
fn reason_and_field(s: &Status) -> (String, Option<String>) {
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(info.domain, "syncline", "{s:?}");
    (info.reason, info.metadata.get("field").cloned())
}

/// Asserts code, reason and field, a `BadRequest` exactly when INVALID_ARGUMENT (its one
/// violation naming the field, described by the message), and a `RetryInfo` with a delay
/// exactly when the call may be retried as is.
fn assert_details(s: &Status, code: Code, reason: &str, field: Option<&str>) {
    assert_eq!(s.code(), code, "{s:?}");
    let (got_reason, got_field) = reason_and_field(s);
    assert_eq!(got_reason, reason, "{s:?}");
    assert_eq!(got_field.as_deref(), field, "{s:?}");
    let bad = s.get_details_bad_request();
    if code == Code::InvalidArgument {
        let bad = bad.unwrap_or_else(|| panic!("no BadRequest in {s:?}"));
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, field.unwrap_or_default());
        assert_eq!(bad.field_violations[0].description, s.message());
    } else {
        assert!(bad.is_none(), "{s:?}");
    }
    let retry = s.get_details_retry_info();
    if matches!(code, Code::Unavailable | Code::ResourceExhausted) {
        let delay = retry
            .and_then(|r| r.retry_delay)
            .unwrap_or_else(|| panic!("no RetryInfo delay in {s:?}"));
        assert!(delay > Duration::ZERO && delay <= Duration::from_secs(60));
    } else {
        assert!(retry.is_none(), "{s:?}");
    }
}

fn push_request(collection: &str, rows: Vec<syncline::proto::ChangeRow>) -> PushRequest {
    PushRequest {
        collection: collection.into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    }
}

fn pull_request(collection: &str, checkpoint: &str) -> PullRequest {
    PullRequest {
        collection: collection.into(),
        checkpoint: Some(Checkpoint {
            token: checkpoint.into(),
        }),
        limit: 10,
        selector: Vec::new(),
    }
}

#[tokio::test]
async fn request_and_document_errors_name_their_reason_and_field() {
    let server = jwt_server(|cfg| {
        cfg.push_rows_max = 5;
        cfg.collections[1].read_scopes = vec!["notes:read".into()];
    })
    .await;
    let mut c = server.client().await;
    let alice = token("alice");

    // A bad document at rows[3]: the message is the one validation has always sent.
    let mut rows: Vec<_> = (0..3)
        .map(|i| insert(doc(&format!("ok{i}"), json!({}))))
        .collect();
    rows.push(insert(Document {
        id: "bad".into(),
        json: b"[1]".to_vec(),
        ..Default::default()
    }));
    let err = c
        .push(authed(push_request("tasks", rows), &alice))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "rows[3] (id \"bad\"): new_document_state.json: must be a JSON object"
    );
    assert_details(
        &err,
        Code::InvalidArgument,
        "INVALID_DOCUMENT",
        Some("rows[3].new_document_state.json"),
    );

    // Too many rows: refused by the wire scan, before decoding.
    let rows = vec![insert(doc("r", json!({}))); 6];
    let err = c
        .push(authed(push_request("tasks", rows), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "rows: 6 rows exceed the limit of 5 per push");
    assert_details(&err, Code::InvalidArgument, "LIMIT_EXCEEDED", Some("rows"));

    // A checkpoint this server did not issue.
    let err = c
        .pull(authed(pull_request("tasks", "forged"), &alice))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("checkpoint.token: "), "{err:?}");
    assert_details(
        &err,
        Code::InvalidArgument,
        "CHECKPOINT_INVALID",
        Some("checkpoint.token"),
    );

    // An empty collection name is a malformed request; an unknown one is NOT_FOUND.
    let err = c
        .pull(authed(pull_request("", ""), &alice))
        .await
        .unwrap_err();
    assert_details(
        &err,
        Code::InvalidArgument,
        "INVALID_REQUEST",
        Some("collection"),
    );
    let err = c
        .pull(authed(pull_request("nope", ""), &alice))
        .await
        .unwrap_err();
    assert_details(
        &err,
        Code::NotFound,
        "COLLECTION_NOT_FOUND",
        Some("collection"),
    );

    // Another owner's id, and a scope alice lacks.
    c.push(authed(
        push_request("tasks", vec![insert(doc("bobs", json!({})))]),
        &token("bob"),
    ))
    .await
    .unwrap();
    let err = c
        .push(authed(
            push_request("tasks", vec![insert(doc("bobs", json!({})))]),
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "rows[0] (id \"bobs\"): this id is taken by another owner"
    );
    assert_details(
        &err,
        Code::PermissionDenied,
        "NOT_OWNER",
        Some("rows[0].new_document_state.id"),
    );
    let err = c
        .pull(authed(pull_request("notes", ""), &alice))
        .await
        .unwrap_err();
    assert_details(&err, Code::PermissionDenied, "SCOPE_MISSING", None);
    drop(c);
    drop_database(server).await;
}

#[tokio::test]
async fn an_expired_token_is_told_apart_from_a_bad_one_by_its_reason_only() {
    let server = jwt_server(|cfg| cfg.streams_per_principal_max = 1).await;
    let mut c = server.client().await;
    let expired = hs256(&json!({"sub": "alice", "exp": now() - 60}), SECRET);
    let expired_and_forged = hs256(
        &json!({"sub": "alice", "exp": now() - 60}),
        "another-secret-that-is-long-enough-xxxxxxxxx",
    );
    let forged = hs256(
        &json!({"sub": "alice", "exp": now() + 600}),
        "another-secret-that-is-long-enough-xxxxxxxxx",
    );
    let pull = |t: &str| authed(pull_request("tasks", ""), t);
    let expired_err = c.pull(pull(&expired)).await.unwrap_err();
    assert_details(&expired_err, Code::Unauthenticated, "TOKEN_EXPIRED", None);
    let mut messages = vec![expired_err.message().to_owned()];
    for bad in [&expired_and_forged, &forged, &"not.a.jwt".to_owned()] {
        let err = c.pull(pull(bad)).await.unwrap_err();
        assert_details(&err, Code::Unauthenticated, "TOKEN_INVALID", None);
        messages.push(err.message().to_owned());
    }
    let err = c
        .pull(Request::new(pull_request("tasks", "")))
        .await
        .unwrap_err();
    assert_details(&err, Code::Unauthenticated, "TOKEN_INVALID", None);
    messages.push(err.message().to_owned());
    messages.dedup();
    assert_eq!(
        messages,
        vec!["missing, invalid or expired bearer token"],
        "one message for every refusal"
    );

    // Streams exhausted: RESOURCE_EXHAUSTED, retryable later.
    let subscribe = || {
        authed(
            SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: None,
                selector: Vec::new(),
            },
            &token("alice"),
        )
    };
    let _first = c.subscribe(subscribe()).await.unwrap();
    let err = c.subscribe(subscribe()).await.unwrap_err();
    assert_details(&err, Code::ResourceExhausted, "LIMIT_EXCEEDED", None);
    drop(_first);
    drop(c);
    drop_database(server).await;
}

#[tokio::test]
async fn unavailable_says_why_and_when_to_retry() {
    // No database behind the server: DATABASE_UNAVAILABLE.
    let db = fresh_database().await;
    let unreachable = {
        let mut cfg = config("postgres://postgres@127.0.0.1:1/nowhere");
        cfg.migrate_on_start = false;
        cfg
    };
    let server = TestServer::start_unready(unreachable).await;
    let mut c = server.client().await;
    let err = tokio::time::timeout(Duration::from_secs(30), c.pull(pull_request("tasks", "")))
        .await
        .expect("answered in time")
        .unwrap_err();
    assert_details(&err, Code::Unavailable, "DATABASE_UNAVAILABLE", None);
    drop(c);
    server.stop().await.ok();

    // Draining: an open stream ends with SHUTTING_DOWN.
    let mut cfg = config(&db);
    cfg.drain_seconds = 0;
    let mut server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let mut stream = c
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    server.begin_stop();
    let status = stream_end_status(&mut stream, Duration::from_secs(30)).await;
    assert_details(&status, Code::Unavailable, "SHUTTING_DOWN", None);
    drop(stream);
    drop(c);
    drop_database(server).await;
}
