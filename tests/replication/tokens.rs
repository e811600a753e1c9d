//! Hostile tokens through the real server (issue 10, items 4, 5, 7, 8): claims that must be
//! present, scopes that look like the service scope but are not, times that do not fit a
//! clock, and subjects that cannot be owners. Every refusal is UNAUTHENTICATED with the one
//! generic message, on every RPC, and the server keeps serving afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::common::*;
use syncline::config::{AuthConfig, Config};
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{PullRequest, PushRequest, SubscribeRequest};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "syncline";
const SERVICE_SCOPE: &str = "syncline:service";

type Client = ReplicationServiceClient<Channel>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token for `sub`; tests edit them to break one thing at a time.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"sub": sub, "scope": scope, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A server with HS256 JWT auth; `auth` overrides keys of the `[auth]` table.
async fn jwt_server(auth: Value) -> TestServer {
    let mut table = json!({
        "mode": "jwt",
        "hs256_secret": SECRET,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "service_scope": SERVICE_SCOPE,
        "leeway_seconds": 0,
    });
    for (k, v) in auth.as_object().unwrap() {
        if v.is_null() {
            table.as_object_mut().unwrap().remove(k);
        } else {
            table[k] = v.clone();
        }
    }
    let db = fresh_database().await;
    let mut cfg: Config = config(&db);
    cfg.auth = Some(serde_json::from_value::<AuthConfig>(table).unwrap());
    cfg.validate().unwrap();
    TestServer::start_with(cfg).await
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn pull_request() -> PullRequest {
    PullRequest {
        collection: "tasks".into(),
        checkpoint: None,
        limit: 100,
        selector: Vec::new(),
    }
}

/// The message of a refusal that has nothing to do with the token's content.
async fn generic_refusal(c: &mut Client) -> String {
    let err = c.pull(Request::new(pull_request())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    err.message().to_owned()
}

/// Asserts that Pull, Push and Subscribe all refuse `token` as UNAUTHENTICATED with the
/// generic message.
async fn assert_refused(c: &mut Client, token: &str, what: &str) {
    let generic = generic_refusal(c).await;
    let check = |r: Result<(), Status>, rpc: &str| {
        let err = r.expect_err(&format!("{what}: {rpc} is refused"));
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {rpc}: {err:?}");
        assert_eq!(err.message(), generic, "{what}: {rpc}: the generic message");
    };
    check(
        c.pull(authed(pull_request(), token)).await.map(drop),
        "pull",
    );
    let push = PushRequest {
        collection: "tasks".into(),
        rows: vec![insert(doc(&format!("by-{}", what.len()), json!({})))],
        mode: 0,
        idempotency_key: String::new(),
    };
    check(c.push(authed(push, token)).await.map(drop), "push");
    let subscribe = SubscribeRequest {
        collection: "tasks".into(),
        checkpoint: None,
        selector: Vec::new(),
    };
    check(
        c.subscribe(authed(subscribe, token)).await.map(drop),
        "subscribe",
    );
}

/// The ids a pull with `token` returns (one page is enough here).
async fn pulled_ids(c: &mut Client, token: &str, what: &str) -> Vec<String> {
    let response = c
        .pull(authed(pull_request(), token))
        .await
        .unwrap_or_else(|e| panic!("{what}: the token is accepted: {e:?}"));
    let mut ids: Vec<String> = response
        .into_inner()
        .documents
        .into_iter()
        .map(|d| d.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn configured_issuer_and_audience_are_required() {
    let server = jwt_server(json!({})).await;
    let mut c = server.client().await;
    let without = |claim: &str| {
        let mut v = claims("alice", "");
        v.as_object_mut().unwrap().remove(claim);
        hs256(&v)
    };
    let with = |claim: &str, value: Value| {
        let mut v = claims("alice", "");
        v[claim] = value;
        hs256(&v)
    };
    let cases = [
        ("no iss", without("iss")),
        ("no aud", without("aud")),
        ("no iss nor aud", {
            let mut v = claims("alice", "");
            v.as_object_mut().unwrap().remove("iss");
            v.as_object_mut().unwrap().remove("aud");
            hs256(&v)
        }),
        ("iss null", with("iss", Value::Null)),
        ("aud null", with("aud", Value::Null)),
        ("iss a number", with("iss", json!(7))),
        ("aud a number", with("aud", json!(7))),
        ("aud an empty list", with("aud", json!([]))),
        ("aud another's list", with("aud", json!(["someone-else"]))),
    ];
    for (what, token) in &cases {
        assert_refused(&mut c, token, what).await;
    }
    // The complete token passes, also with `aud` as a list that names this server.
    pulled_ids(&mut c, &hs256(&claims("alice", "")), "complete").await;
    pulled_ids(
        &mut c,
        &with("aud", json!(["other", AUDIENCE])),
        "aud list naming us",
    )
    .await;

    // Unconfigured, neither claim is needed.
    let open = jwt_server(json!({"issuer": null, "audience": null})).await;
    let mut c = open.client().await;
    for (what, token) in &cases[..3] {
        pulled_ids(&mut c, token, what).await;
    }
}

#[tokio::test]
async fn scopes_split_on_the_ascii_space_only() {
    let server = jwt_server(json!({})).await;
    let mut c = server.client().await;
    // Bob owns one document; only a service principal sees it from another subject.
    let bob = hs256(&claims("bob", ""));
    let push = PushRequest {
        collection: "tasks".into(),
        rows: vec![insert(doc("bobs", json!({"secret": true})))],
        mode: 0,
        idempotency_key: String::new(),
    };
    c.push(authed(push, &bob)).await.unwrap();
    // ASCII spaces, single or repeated, separate scopes. (Bounded wait: other tests' open
    // transactions can hold the visibility horizon back for a while.)
    for scope in [
        format!("tenant:x {SERVICE_SCOPE}"),
        format!("  {SERVICE_SCOPE}   other "),
        SERVICE_SCOPE.to_owned(),
    ] {
        let token = hs256(&claims("backend", &scope));
        let mut ids = Vec::new();
        for _ in 0..60 {
            ids = pulled_ids(&mut c, &token, &scope).await;
            if !ids.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(ids, ["bobs"], "{scope:?}");
    }

    // So bob's document is visible now; no other separator makes a service scope.
    let separators = [
        "\u{a0}", "\u{3000}", "\u{2028}", "\u{2029}", "\u{85}", "\u{2003}", "\u{1680}", "\u{feff}",
        "\t", "\n", "\r", "\u{b}", "\u{c}", ",", ";", "+",
    ];
    for sep in separators {
        for scope in [
            format!("tenant:x{sep}{SERVICE_SCOPE}"),
            format!("{SERVICE_SCOPE}{sep}tenant:x"),
            format!("{sep}{SERVICE_SCOPE}"),
            format!("{SERVICE_SCOPE}{sep}"),
        ] {
            let what = format!("scope {scope:?}");
            let token = hs256(&claims("mallory", &scope));
            assert_eq!(
                pulled_ids(&mut c, &token, &what).await,
                Vec::<String>::new(),
                "{what} must not grant the service scope"
            );
            // Nor may it write as another owner.
            let push = PushRequest {
                collection: "tasks".into(),
                rows: vec![insert(doc("bobs", json!({"stolen": true})))],
                mode: 0,
                idempotency_key: String::new(),
            };
            let conflicts = c
                .push(authed(push, &token))
                .await
                .map(|r| r.into_inner().conflicts);
            assert_eq!(
                conflicts.map_err(|e| e.code()).err(),
                Some(Code::PermissionDenied),
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn out_of_range_times_are_unauthenticated() {
    let server = jwt_server(json!({})).await;
    let mut c = server.client().await;
    let with = |edits: Value| {
        let mut v = claims("alice", "");
        for (k, x) in edits.as_object().unwrap() {
            v[k] = x.clone();
        }
        hs256(&v)
    };
    let cases = [
        ("exp 2^63", with(json!({"exp": 1u64 << 63}))),
        ("exp 2^63 + 1", with(json!({"exp": (1u64 << 63) + 1}))),
        ("exp u64::MAX", with(json!({"exp": u64::MAX}))),
        ("exp 2^64", with(json!({"exp": 18446744073709551616.0}))),
        ("exp 1e300", with(json!({"exp": 1e300}))),
        ("exp negative", with(json!({"exp": -1}))),
        ("exp a string", with(json!({"exp": "9999999999"}))),
        (
            "nbf u64::MAX",
            with(json!({"nbf": u64::MAX, "exp": u64::MAX})),
        ),
        ("nbf 2^63", with(json!({"nbf": 1u64 << 63}))),
        ("nbf negative", with(json!({"nbf": -5}))),
    ];
    for (what, token) in &cases {
        assert_refused(&mut c, token, what).await;
    }

    // The largest representable expiry is valid: streams treat it as "never" and stay open.
    let far = with(json!({"exp": i64::MAX as u64, "iat": u64::MAX}));
    pulled_ids(&mut c, &far, "exp i64::MAX").await;
    let mut stream = c
        .subscribe(authed(
            SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: None,
                selector: Vec::new(),
            },
            &far,
        ))
        .await
        .unwrap()
        .into_inner();
    let push = PushRequest {
        collection: "tasks".into(),
        rows: vec![insert(doc("after", json!({})))],
        mode: 0,
        idempotency_key: String::new(),
    };
    c.push(authed(push, &far)).await.unwrap();
    // Bounded: other tests' open transactions can hold the visibility horizon back a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while !seen {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the stream delivers in time")
            .expect("the stream stays open")
            .expect("the stream stays open");
        if let Some(Event::Changes(batch)) = msg.event
            && batch.documents.iter().any(|d| d.id == "after")
        {
            seen = true;
        }
    }
}

#[tokio::test]
async fn subjects_that_cannot_be_owners_are_unauthenticated() {
    let server = jwt_server(json!({})).await;
    let mut c = server.client().await;
    let cases = [
        ("NUL inside", "al\u{0}ice".to_owned()),
        ("NUL only", "\u{0}".to_owned()),
        ("trailing NUL", "alice\u{0}".to_owned()),
        ("newline", "alice\nadmin".to_owned()),
        ("carriage return", "alice\r".to_owned()),
        ("tab", "alice\tx".to_owned()),
        ("escape", "\u{1b}[31malice".to_owned()),
        ("DEL", "alice\u{7f}".to_owned()),
        ("C1 NEL", "alice\u{85}".to_owned()),
        ("C1 CSI", "\u{9b}alice".to_owned()),
        ("257 bytes (default limit 256)", "a".repeat(257)),
        ("10 KB", "s".repeat(10_000)),
        ("long multibyte", "é".repeat(129)),
    ];
    for (what, sub) in &cases {
        assert_refused(&mut c, &hs256(&claims(sub, "")), what).await;
        // Also with the service scope: a service's own documents get its subject as owner.
        assert_refused(&mut c, &hs256(&claims(sub, SERVICE_SCOPE)), what).await;
    }
    // At the limit, and non-ASCII but printable, is fine; such a subject really owns.
    let mut db = server.db().await;
    for (i, sub) in ["b".repeat(256), "é".repeat(128), "ユーザー 1".to_owned()]
        .into_iter()
        .enumerate()
    {
        let token = hs256(&claims(&sub, ""));
        let push = PushRequest {
            collection: "tasks".into(),
            rows: vec![insert(doc(&format!("d-{i}"), json!({})))],
            mode: 0,
            idempotency_key: String::new(),
        };
        c.push(authed(push, &token)).await.unwrap();
        // Read the table itself: a pull may wait on other tests' open transactions.
        let owner: String =
            sqlx::query_scalar("SELECT owner FROM syncline_documents WHERE id = $1")
                .bind(format!("d-{i}"))
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert_eq!(owner, sub);
    }

    // The limit is configurable.
    let small = jwt_server(json!({"subject_bytes_max": 8})).await;
    let mut c = small.client().await;
    pulled_ids(&mut c, &hs256(&claims("12345678", "")), "8 bytes").await;
    assert_refused(&mut c, &hs256(&claims("123456789", "")), "9 bytes").await;
}
