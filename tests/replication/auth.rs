//! Authentication and per-owner scoping through the real server: bad tokens, owners that never
//! see each other's documents (pull, stream, conflicts, mixed batches), service principals,
//! token expiry on streams, JWKS rotation, collection scopes, per-principal stream limits.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::common::*;
use syncline::config::{AuthConfig, AuthMode, Config};
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{
    ChangeRow, Checkpoint, Document, ListOverwrittenRequest, PullRequest, PushRequest,
    SubscribeRequest,
};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "syncline";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
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

fn token(sub: &str) -> String {
    hs256(&claims(sub, ""))
}

fn service_token() -> String {
    hs256(&claims("backend", "syncline:service other"))
}

/// An ES256 key: (encoding key, its public JWK with key id `kid`).
fn es256_key(kid: &str) -> (EncodingKey, Jwk) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, jwk)
}

fn write_jwks(path: &Path, keys: &[&Jwk]) {
    let set = JwkSet {
        keys: keys.iter().map(|k| (*k).clone()).collect(),
    };
    // Write-then-rename, as Kubernetes updates mounted ConfigMaps.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&set).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn jwt_config(db: &str, jwks: &Path) -> Config {
    let mut cfg = config(db);
    cfg.auth = Some(AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        jwks_file: Some(jwks.to_path_buf()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        service_scope: "syncline:service".into(),
        leeway_seconds: 0,
        subject_bytes_max: 256,
    });
    cfg
}

/// A server with JWT auth and an (initially empty) JWKS file.
async fn jwt_server(tweak: impl FnOnce(&mut Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[]);
    let db = fresh_database().await;
    let mut cfg = jwt_config(&db, &jwks);
    tweak(&mut cfg);
    (TestServer::start_with(cfg).await, dir)
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

type Client = ReplicationServiceClient<Channel>;

async fn try_pull_all(
    c: &mut Client,
    token: &str,
    collection: &str,
) -> Result<Vec<Document>, Status> {
    let mut checkpoint = String::new();
    let mut all = Vec::new();
    loop {
        let r = c
            .pull(authed(
                PullRequest {
                    collection: collection.into(),
                    checkpoint: Some(Checkpoint {
                        token: checkpoint.clone(),
                    }),
                    limit: 500,
                    selector: Vec::new(),
                },
                token,
            ))
            .await?
            .into_inner();
        if r.documents.is_empty() {
            return Ok(all);
        }
        all.extend(r.documents);
        checkpoint = r.checkpoint.unwrap().token;
    }
}

async fn pull_ids(c: &mut Client, token: &str) -> Vec<String> {
    let mut ids: Vec<String> = try_pull_all(c, token, "tasks")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    ids.sort();
    ids
}

async fn try_push(
    c: &mut Client,
    token: &str,
    rows: Vec<ChangeRow>,
) -> Result<Vec<Document>, Status> {
    c.push(authed(
        PushRequest {
            collection: "tasks".into(),
            rows,
            mode: 0,
            idempotency_key: String::new(),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner().conflicts)
}

/// Pushes rows that must be written without conflicts.
async fn push_ok(c: &mut Client, token: &str, rows: Vec<ChangeRow>) {
    let conflicts = try_push(c, token, rows).await.expect("push succeeds");
    assert!(conflicts.is_empty(), "unexpected conflicts: {conflicts:?}");
}

fn owned(id: &str, body: Value, owner: &str) -> Document {
    Document {
        owner: owner.into(),
        ..doc(id, body)
    }
}

#[tokio::test]
async fn every_bad_token_is_unauthenticated_and_health_needs_none() {
    let (server, _dir) = jwt_server(|_| {}).await;
    let mut c = server.client().await;
    let pull = || PullRequest {
        collection: "tasks".into(),
        checkpoint: None,
        limit: 1,
        selector: Vec::new(),
    };
    let ok = c.pull(authed(pull(), &token("alice"))).await;
    assert!(ok.is_ok(), "a valid token passes: {ok:?}");

    let mut expired = claims("alice", "");
    expired["exp"] = json!(now() - 60);
    let mut not_yet = claims("alice", "");
    not_yet["nbf"] = json!(now() + 600);
    let mut wrong_issuer = claims("alice", "");
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut wrong_audience = claims("alice", "");
    wrong_audience["aud"] = json!("someone-else");
    let mut no_sub = claims("alice", "");
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut no_exp = claims("alice", "");
    no_exp.as_object_mut().unwrap().remove("exp");
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", ""),
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-xxxxxxx"),
    )
    .unwrap();
    let (stranger_key, _) = es256_key("unknown");
    let unknown_key = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("alice", ""),
        &stranger_key,
    )
    .unwrap();
    let alg_none =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("basic scheme", Some("Basic YWxpY2U6cHc=".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("malformed", Some("Bearer not.a.jwt".into())),
        ("expired", Some(format!("Bearer {}", hs256(&expired)))),
        ("not yet valid", Some(format!("Bearer {}", hs256(&not_yet)))),
        (
            "wrong issuer",
            Some(format!("Bearer {}", hs256(&wrong_issuer))),
        ),
        (
            "wrong audience",
            Some(format!("Bearer {}", hs256(&wrong_audience))),
        ),
        ("no sub", Some(format!("Bearer {}", hs256(&no_sub)))),
        ("no exp", Some(format!("Bearer {}", hs256(&no_exp)))),
        ("bad signature", Some(format!("Bearer {other_secret}"))),
        ("unknown key", Some(format!("Bearer {unknown_key}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
    ];
    for (what, header) in cases {
        let mut request = Request::new(pull());
        if let Some(h) = &header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let err = c.pull(request).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        if let Some(h) = &header {
            let secret_part = h.trim_start_matches("Bearer ").trim_start_matches("Basic ");
            assert!(
                secret_part.is_empty() || !err.message().contains(secret_part),
                "{what}: token echoed"
            );
        }
        // Every RPC is guarded, Subscribe included.
        let mut request = Request::new(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        });
        if let Some(h) = &header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        assert_eq!(
            c.subscribe(request).await.unwrap_err().code(),
            Code::Unauthenticated,
            "{what}"
        );
    }
    let err = c
        .push(Request::new(PushRequest {
            collection: "tasks".into(),
            rows: vec![],
            mode: 0,
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Health (Kubernetes probes) needs no token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
}

#[tokio::test]
async fn owners_never_see_each_others_documents() {
    let (server, _dir) = jwt_server(|_| {}).await;
    let (alice, bob, service) = (token("alice"), token("bob"), service_token());
    let mut c = server.client().await;

    // Alice's stream is open before anything is written, including a mixed batch.
    let mut stream = c
        .subscribe(authed(
            SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: None,
                selector: Vec::new(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();

    push_ok(
        &mut c,
        &alice,
        vec![insert(doc("a1", json!({"mine": "alice"})))],
    )
    .await;
    push_ok(
        &mut c,
        &bob,
        vec![insert(doc("b1", json!({"secret": "bob's"})))],
    )
    .await;
    // One service push commits documents of both owners (and one of its own) together.
    let mixed = vec![
        insert(owned("m-a", json!({"for": "alice"}), "alice")),
        insert(owned("m-b", json!({"secret": "bob's too"}), "bob")),
        insert(doc("m-s", json!({"for": "nobody"}))),
    ];
    assert!(try_push(&mut c, &service, mixed).await.unwrap().is_empty());
    push_ok(&mut c, &alice, vec![insert(doc("a-last", json!({})))]).await;

    // The stream delivers exactly alice's documents, filtered per document.
    let mut streamed = Vec::new();
    while !streamed.iter().any(|id: &String| id == "a-last") {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Event::Changes(batch)) = msg.event {
            for d in batch.documents {
                assert_eq!(d.owner, "alice", "alice's stream carried {d:?}");
                streamed.push(d.id);
            }
        }
    }
    streamed.sort();
    assert_eq!(streamed, ["a-last", "a1", "m-a"]);

    assert_eq!(pull_ids(&mut c, &alice).await, ["a-last", "a1", "m-a"]);
    assert_eq!(pull_ids(&mut c, &bob).await, ["b1", "m-b"]);
    assert_eq!(
        pull_ids(&mut c, &service).await,
        ["a-last", "a1", "b1", "m-a", "m-b", "m-s"]
    );
    let all = try_pull_all(&mut c, &service, "tasks").await.unwrap();
    let owners: BTreeMap<_, _> = all
        .iter()
        .map(|d| (d.id.as_str(), d.owner.as_str()))
        .collect();
    assert_eq!(
        owners["m-s"], "backend",
        "a service's own new document is its own"
    );

    // Alice writing over bob's id: PERMISSION_DENIED, nothing applied, nothing revealed.
    let err = try_push(
        &mut c,
        &alice,
        vec![
            insert(doc("a2", json!({}))),
            insert(doc("b1", json!({"stolen": true}))),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("taken") && !err.message().contains("bob"),
        "{}",
        err.message()
    );
    let mut db = server.db().await;
    let rows = table(&mut db, "tasks").await;
    assert!(
        !rows.iter().any(|r| r.0 == "a2"),
        "the batch applied nothing"
    );
    assert_eq!(
        rows.iter().find(|r| r.0 == "b1").unwrap().3,
        json!({"secret": "bob's"})
    );

    // Naming another owner is refused to ordinary principals.
    let err = try_push(&mut c, &alice, vec![insert(owned("a3", json!({}), "bob"))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Conflicts show only one's own documents.
    let conflicts = try_push(&mut c, &alice, vec![insert(doc("a1", json!({"again": 1})))])
        .await
        .unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        (conflicts[0].owner.as_str(), body(&conflicts[0])),
        ("alice", json!({"mine": "alice"}))
    );
    // A service update keeps the owner.
    let b1 = all.iter().find(|d| d.id == "b1").unwrap().clone();
    push_ok(
        &mut c,
        &service,
        vec![update(owned("b1", json!({"v": 2}), "alice"), b1)],
    )
    .await;
    assert_eq!(pull_ids(&mut c, &bob).await, ["b1", "m-b"]);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let (server, _dir) = jwt_server(|_| {}).await;
    let mut short = claims("alice", "");
    short["exp"] = json!(now() + 2);
    let mut c = server.client().await;
    let mut stream = c
        .subscribe(authed(
            SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: None,
                selector: Vec::new(),
            },
            &hs256(&short),
        ))
        .await
        .unwrap()
        .into_inner();
    let status = stream_end_status(&mut stream, Duration::from_secs(8)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// Polls (bounded) until a pull with `token` succeeds: the JWKS file is re-read every 2 s.
async fn eventually_accepted(c: &mut Client, token: &str) -> bool {
    for _ in 0..100 {
        let pull = PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 1,
            selector: Vec::new(),
        };
        if c.pull(authed(pull, token)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn jwks_keys_rotate_without_a_restart() {
    let (server, dir) = jwt_server(|_| {}).await;
    let jwks = dir.path().join("jwks.json");
    let (k1, jwk1) = es256_key("k1");
    let (k2, jwk2) = es256_key("k2");
    write_jwks(&jwks, &[&jwk1]);
    let sign = |key: &EncodingKey, kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims("carol", ""), key).unwrap()
    };
    let mut c = server.client().await;
    let pull = || PullRequest {
        collection: "tasks".into(),
        checkpoint: None,
        limit: 1,
        selector: Vec::new(),
    };
    assert!(
        eventually_accepted(&mut c, &sign(&k1, "k1")).await,
        "a key added to the JWKS file is picked up"
    );
    assert_eq!(
        c.pull(authed(pull(), &sign(&k2, "k2")))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    write_jwks(&jwks, &[&jwk2]);
    assert!(
        eventually_accepted(&mut c, &sign(&k2, "k2")).await,
        "the new key is accepted after rotation"
    );
    assert_eq!(
        c.pull(authed(pull(), &sign(&k1, "k1")))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated,
        "the old key is gone"
    );
}

#[tokio::test]
async fn collection_scopes_and_per_principal_stream_limits() {
    let (server, _dir) = jwt_server(|cfg| {
        cfg.collections[1].read_scopes = vec!["notes:read".into()];
        cfg.collections[1].write_scopes = vec!["notes:write".into()];
        cfg.streams_per_principal_max = 1;
    })
    .await;
    let mut c = server.client().await;
    let pull = |t: &str| {
        authed(
            PullRequest {
                collection: "notes".into(),
                checkpoint: None,
                limit: 1,
                selector: Vec::new(),
            },
            t,
        )
    };
    let push = |t: &str| {
        authed(
            PushRequest {
                collection: "notes".into(),
                rows: vec![insert(doc("n", json!({})))],
                mode: 0,
                idempotency_key: String::new(),
            },
            t,
        )
    };
    let plain = token("alice");
    let reader = hs256(&claims("alice", "notes:read"));
    let writer = hs256(&claims("alice", "notes:read notes:write"));
    assert_eq!(
        c.pull(pull(&plain)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(c.pull(pull(&reader)).await.is_ok());
    assert_eq!(
        c.push(push(&reader)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(c.push(push(&writer)).await.is_ok());
    assert!(
        c.push(push(&service_token())).await.is_ok(),
        "the service scope passes"
    );

    let sub = |t: &str| {
        authed(
            SubscribeRequest {
                collection: "tasks".into(),
                checkpoint: None,
                selector: Vec::new(),
            },
            t,
        )
    };
    let _first = c.subscribe(sub(&plain)).await.unwrap();
    assert_eq!(
        c.subscribe(sub(&plain)).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert!(
        c.subscribe(sub(&token("bob"))).await.is_ok(),
        "the limit is per principal"
    );
}

#[tokio::test]
async fn random_interleavings_of_owners_each_pull_exactly_their_own_documents() {
    let (server, _dir) = jwt_server(|_| {}).await;
    let server = Arc::new(server);
    const OWNERS: usize = 4;
    let mut c = server.client().await;
    for o in 0..OWNERS {
        let base = insert(doc(&format!("base-owner{o}"), json!({})));
        try_push(&mut c, &token(&format!("owner{o}")), vec![base])
            .await
            .unwrap();
    }
    for seed in 0..3u64 {
        let mut tasks = Vec::new();
        for o in 0..OWNERS {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + o as u64);
                let me = format!("owner{o}");
                let tok = token(&me);
                let mut c = server.client().await;
                let mut mine: Vec<(String, Value)> = Vec::new();
                for i in 0..30 {
                    let choice = rng.random_range(0..10);
                    if choice < 5 || mine.is_empty() {
                        let id = format!("s{seed}-{me}-{i}");
                        let b = json!({"o": o, "i": i});
                        push_ok(&mut c, &tok, vec![insert(doc(&id, b.clone()))]).await;
                        mine.push((id, b));
                    } else if choice < 8 {
                        let k = rng.random_range(0..mine.len());
                        let (id, old) = mine[k].clone();
                        let new = json!({"o": o, "i": i, "u": true});
                        let conflicts = try_push(
                            &mut c,
                            &tok,
                            vec![update(doc(&id, new.clone()), doc(&id, old))],
                        )
                        .await
                        .unwrap();
                        assert!(conflicts.is_empty());
                        mine[k].1 = new;
                    } else {
                        // Someone else's document: refused, whole batch, nothing applied.
                        let other = (o + 1 + rng.random_range(0..OWNERS - 1)) % OWNERS;
                        let rows = vec![
                            insert(doc(&format!("s{seed}-{me}-{i}-lost"), json!({}))),
                            insert(doc(&format!("base-owner{other}"), json!({"intruder": o}))),
                        ];
                        let err = try_push(&mut c, &tok, rows).await.unwrap_err();
                        assert_eq!(err.code(), Code::PermissionDenied);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let mut db = server.db().await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, owner FROM syncline_documents WHERE collection = 'tasks' ORDER BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
    for (id, owner) in rows {
        by_owner.entry(owner).or_default().push(id);
    }
    for o in 0..OWNERS {
        let me = format!("owner{o}");
        let expected = by_owner.remove(&me).unwrap_or_default();
        assert!(!expected.is_empty());
        assert_eq!(
            pull_ids(&mut c, &token(&me)).await,
            expected,
            "{me} pulled exactly its own documents"
        );
    }
    assert!(
        by_owner.is_empty(),
        "no document without a known owner: {by_owner:?}"
    );
}

/// Losing versions are the document's owner's (and service principals') to read: anyone
/// else gets the same empty list as for an id that never lost anything.
#[tokio::test]
async fn overwritten_versions_are_listed_to_their_owner_only() {
    let (server, _dir) = jwt_server(|cfg| {
        let mut lww = cfg.collections[0].clone();
        lww.name = "lww".into();
        lww.conflict = Some("last-write-wins".into());
        lww.keep_overwritten = Some("1h".into());
        cfg.collections.push(lww);
    })
    .await;
    let mut c = server.client().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let push = |rows: Vec<ChangeRow>| PushRequest {
        collection: "lww".into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    };
    c.push(authed(
        push(vec![insert(doc("a", json!({"v": 1})))]),
        &alice,
    ))
    .await
    .expect("create");
    // A stale write of alice's (she believed it new): the later push wins, the old state
    // is kept.
    let r = c
        .push(authed(
            push(vec![insert(doc("a", json!({"v": 2})))]),
            &alice,
        ))
        .await
        .expect("push")
        .into_inner();
    assert_eq!(r.resolved.len(), 1, "{r:?}");
    let list = |token: &str, collection: &str| {
        authed(
            ListOverwrittenRequest {
                collection: collection.into(),
                id: "a".into(),
                limit: 0,
            },
            token,
        )
    };
    let mine = c
        .list_overwritten(list(&alice, "lww"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(mine.versions.len(), 1);
    let v = &mine.versions[0];
    assert_eq!(
        (v.source.as_str(), v.pushed_by.as_str()),
        ("server", "alice")
    );
    assert_eq!(
        body(v.document.as_ref().expect("document")),
        json!({"v": 1})
    );
    let theirs = c
        .list_overwritten(list(&bob, "lww"))
        .await
        .expect("list")
        .into_inner();
    assert!(
        theirs.versions.is_empty(),
        "bob sees alice's versions: {theirs:?}"
    );
    let service = c
        .list_overwritten(list(&service_token(), "lww"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(service.versions, mine.versions);
    let err = c
        .list_overwritten(list(&alice, "tasks"))
        .await
        .expect_err("tasks keeps no versions");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.get_details_error_info().expect("ErrorInfo").reason,
        "OVERWRITTEN_NOT_KEPT"
    );
}
