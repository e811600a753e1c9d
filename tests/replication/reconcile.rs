//! Reconcile (issue 13 part 3): a client holding a stale copy (changed, deleted, purged, new and
//! another owner's documents) compares hash-bucket digests, lists and fetches what differs,
//! drops what the server no longer has, pulls from the first round's checkpoint, and ends with
//! exactly the server's live set in its scope, also while writes continue; another owner's ids
//! never show; oversized requests are refused naming the field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::Connection;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::common::*;
use syncline::config::{AuthConfig, AuthMode};
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{
    BucketDigests, Checkpoint, Document, FetchRequest, PullRequest, ReconcileListRequest,
    ReconcileRequest,
};
use syncline::protocol::reconcile::{bucket_of, digests};

type Client = ReplicationServiceClient<Channel>;
/// A client's local copy: its live documents by id.
pub(crate) type Copy = BTreeMap<String, Document>;

pub(crate) const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
/// Bucket levels of the two digest rounds (small collections here).
const L1: u32 = 6;
const L2: u32 = 10;

pub(crate) fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    r
}

async fn jwt_server() -> TestServer {
    jwt_server_with(|_| {}).await
}

async fn jwt_server_with(tweak: impl FnOnce(&mut syncline::config::Config)) -> TestServer {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    tweak(&mut cfg);
    cfg.auth = Some(AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        jwks_file: None,
        issuer: None,
        audience: None,
        service_scope: "syncline:service".into(),
        leeway_seconds: 0,
        subject_bytes_max: 256,
    });
    TestServer::start_with(cfg).await
}

fn wire(d: &BTreeMap<u32, syncline::protocol::reconcile::Digest>) -> BucketDigests {
    BucketDigests {
        buckets: d.keys().copied().collect(),
        counts: d.values().map(|d| d.count as u32).collect(),
        sums: d.values().map(|d| d.sum).collect(),
    }
}

/// The reference client: brings `local` in line with the server's live set as of the first
/// round's snapshot (plus whatever it fetched later) and returns that round's checkpoint, C0.
pub(crate) async fn reconcile(
    c: &mut Client,
    tok: &str,
    collection: &str,
    local: &mut Copy,
) -> String {
    let pairs = |l: &Copy| -> Vec<(String, String)> {
        l.iter()
            .map(|(id, d)| (id.clone(), d.revision.clone()))
            .collect()
    };
    let held = pairs(local);
    let items = || held.iter().map(|(i, r)| (i.as_str(), r.as_str()));
    let r1 = c
        .reconcile(authed(
            ReconcileRequest {
                collection: collection.into(),
                bucket_bits: L1,
                within_bits: 0,
                within: vec![],
                digests: Some(wire(&digests(items(), L1, 0, &[]))),
                selector: Vec::new(),
            },
            tok,
        ))
        .await
        .expect("reconcile round 1")
        .into_inner();
    let c0 = r1.checkpoint.expect("round 1 has a checkpoint").token;
    let differ1 = r1.differing.unwrap_or_default().buckets;
    let mut differ2: Vec<(u32, u32)> = Vec::new();
    for within in differ1.chunks(16) {
        let r2 = c
            .reconcile(authed(
                ReconcileRequest {
                    collection: collection.into(),
                    bucket_bits: L2,
                    within_bits: L1,
                    within: within.to_vec(),
                    digests: Some(wire(&digests(items(), L2, L1, within))),
                    selector: Vec::new(),
                },
                tok,
            ))
            .await
            .expect("reconcile round 2")
            .into_inner()
            .differing
            .unwrap_or_default();
        differ2.extend(r2.buckets.into_iter().zip(r2.counts));
    }
    let mut to_fetch: Vec<String> = Vec::new();
    for chunk in differ2.chunks(32) {
        let buckets: HashSet<u32> = chunk.iter().map(|(b, _)| *b).collect();
        let listed = c
            .reconcile_list(authed(
                ReconcileListRequest {
                    collection: collection.into(),
                    bucket_bits: L2,
                    buckets: chunk.iter().map(|(b, _)| *b).collect(),
                    selector: Vec::new(),
                },
                tok,
            ))
            .await
            .expect("reconcile list")
            .into_inner()
            .documents;
        let server: HashMap<String, String> =
            listed.into_iter().map(|e| (e.id, e.revision)).collect();
        // Ids of these buckets the server does not list are not live for this caller: drop.
        local.retain(|id, _| !buckets.contains(&bucket_of(id, L2)) || server.contains_key(id));
        for (id, revision) in server {
            if local.get(&id).map(|d| &d.revision) != Some(&revision) {
                to_fetch.push(id);
            }
        }
    }
    let mut rest = &to_fetch[..];
    for _ in 0..10_000 {
        if rest.is_empty() {
            break;
        }
        let ask = &rest[..rest.len().min(7)];
        let r = c
            .fetch(authed(
                FetchRequest {
                    collection: collection.into(),
                    ids: ask.to_vec(),
                    selector: Vec::new(),
                },
                tok,
            ))
            .await
            .expect("fetch")
            .into_inner();
        let answered = r.answered as usize;
        assert!(answered >= 1 && answered <= ask.len(), "{answered}");
        let got: HashSet<&str> = r.documents.iter().map(|d| d.id.as_str()).collect();
        for id in &ask[..answered] {
            if !got.contains(id.as_str()) {
                local.remove(id);
            }
        }
        for d in r.documents {
            assert!(!d.deleted, "Fetch returns live documents only");
            local.insert(d.id.clone(), d);
        }
        rest = &rest[answered..];
    }
    assert!(rest.is_empty(), "fetch finished");
    c0
}

/// Pulls from `checkpoint` to the end, applying every document to `local`; returns the last
/// checkpoint.
pub(crate) async fn pull_into(
    c: &mut Client,
    tok: &str,
    collection: &str,
    checkpoint: &str,
    local: &mut Copy,
) -> String {
    let mut checkpoint = checkpoint.to_owned();
    for _ in 0..100_000 {
        let r = c
            .pull(authed(
                PullRequest {
                    collection: collection.into(),
                    checkpoint: Some(Checkpoint {
                        token: checkpoint.clone(),
                    }),
                    limit: 100,
                    selector: Vec::new(),
                },
                tok,
            ))
            .await
            .expect("pull")
            .into_inner();
        if r.documents.is_empty() {
            return checkpoint;
        }
        for d in r.documents {
            if d.deleted {
                local.remove(&d.id);
            } else {
                local.insert(d.id.clone(), d);
            }
        }
        checkpoint = r.checkpoint.expect("checkpoint").token;
    }
    panic!("pull did not finish");
}

/// The server's live set of `owner` as (id, revision, body).
pub(crate) async fn live(db: &mut sqlx::PgConnection, owner: &str) -> Vec<(String, String, Value)> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, revision, body::text FROM syncline_documents
         WHERE collection = 'tasks' AND owner = $1 AND NOT deleted ORDER BY id",
    )
    .bind(owner)
    .fetch_all(db)
    .await
    .expect("read live set");
    rows.into_iter()
        .map(|(i, r, b)| (i, r, serde_json::from_str(&b).expect("json")))
        .collect()
}

pub(crate) fn seen(local: &Copy) -> Vec<(String, String, Value)> {
    local
        .values()
        .map(|d| (d.id.clone(), d.revision.clone(), body(d)))
        .collect()
}

pub(crate) async fn put(db: &mut sqlx::PgConnection, id: &str, owner: &str, v: i64) {
    sqlx::query("SELECT syncline_put('tasks', $1, $2, $3)")
        .bind(id)
        .bind(json!({"id": id, "v": v}))
        .bind(owner)
        .execute(db)
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_copy_comes_back_exact_and_never_sees_another_owner() {
    let server = jwt_server().await;
    let mut db = server.db().await;
    let mut c = server.client().await;
    let alice = token("alice");
    for i in 0..200 {
        put(&mut db, &format!("a{i:03}"), "alice", 0).await;
    }
    for i in 0..50 {
        put(&mut db, &format!("b{i:03}"), "bob", 0).await;
    }
    let mut local = Copy::new();
    pull_into(&mut c, &alice, "tasks", "", &mut local).await;
    assert_eq!(local.len(), 200);

    // While the client is away: 20 changed, 20 deleted of which 10 purged, 20 new, bob moves on.
    for i in 0..20 {
        put(&mut db, &format!("a{i:03}"), "alice", 1).await;
    }
    sqlx::query("DELETE FROM syncline_documents WHERE collection = 'tasks' AND id >= 'a100' AND id < 'a120'")
        .execute(&mut db)
        .await
        .expect("delete");
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("SET LOCAL syncline.purge = on")
        .execute(&mut *tx)
        .await
        .expect("purge on");
    let purged = sqlx::query(
        "DELETE FROM syncline_documents WHERE collection = 'tasks' AND deleted AND id < 'a110'",
    )
    .execute(&mut *tx)
    .await
    .expect("purge")
    .rows_affected();
    tx.commit().await.expect("commit purge");
    assert_eq!(purged, 10);
    for i in 200..220 {
        put(&mut db, &format!("a{i:03}"), "alice", 0).await;
    }
    for i in 0..50 {
        put(&mut db, &format!("b{i:03}"), "bob", 1).await;
    }
    // The copy also holds one of bob's ids at bob's real revision (as if guessed), and an id
    // that never existed: both must go, and bob's must not be confirmed.
    let (bob_rev,): (String,) =
        sqlx::query_as("SELECT revision FROM syncline_documents WHERE id = 'b007'")
            .fetch_one(&mut db)
            .await
            .expect("bob's revision");
    let mut forged = doc("b007", json!({"id": "b007"}));
    forged.revision = bob_rev.clone();
    local.insert("b007".into(), forged);
    local.insert("zz-never".into(), doc("zz-never", json!({})));

    let c0 = reconcile(&mut c, &alice, "tasks", &mut local).await;
    pull_into(&mut c, &alice, "tasks", &c0, &mut local).await;
    assert_eq!(seen(&local), live(&mut db, "alice").await);
    assert_eq!(local.len(), 200 - 20 + 20);

    // Another owner's documents count nowhere: not in the digests, not in any list, not in
    // a fetch (absent looks the same as missing).
    let whole = c
        .reconcile(authed(
            ReconcileRequest {
                collection: "tasks".into(),
                bucket_bits: 0,
                within_bits: 0,
                within: vec![],
                digests: None,
                selector: Vec::new(),
            },
            &alice,
        ))
        .await
        .expect("level-0 digest")
        .into_inner()
        .differing
        .unwrap_or_default();
    assert_eq!(whole.counts, vec![200]);
    let everything = c
        .reconcile_list(authed(
            ReconcileListRequest {
                collection: "tasks".into(),
                bucket_bits: 0,
                buckets: vec![0],
                selector: Vec::new(),
            },
            &alice,
        ))
        .await
        .expect("list everything")
        .into_inner()
        .documents;
    assert_eq!(everything.len(), 200);
    assert!(everything.iter().all(|e| e.id.starts_with('a')));
    let fetched = c
        .fetch(authed(
            FetchRequest {
                collection: "tasks".into(),
                ids: vec!["b007".into(), "a150".into()],
                selector: Vec::new(),
            },
            &alice,
        ))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(fetched.answered, 2);
    let ids: Vec<&str> = fetched.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["a150"]);
    // Bob sees his own.
    let bob = token("bob");
    let bobs = c
        .fetch(authed(
            FetchRequest {
                collection: "tasks".into(),
                ids: vec!["b007".into(), "a150".into()],
                selector: Vec::new(),
            },
            &bob,
        ))
        .await
        .expect("fetch")
        .into_inner();
    let ids: Vec<&str> = bobs.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["b007"]);
    let _ = db.close().await;
}

/// Writers that keep their transactions open a little while, so that the reconcile's snapshot
/// regularly has transactions in flight that commit between its rounds.
async fn write_until(db_url: String, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let mut db = sqlx::PgConnection::connect(&db_url)
        .await
        .expect("writer connects");
    let mut n = 0u64;
    let mut x = seed;
    while !stop.load(Ordering::Relaxed) && n < 100_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let id = format!("a{:03}", (x >> 33) % 260);
        let mut tx = db.begin().await.expect("begin");
        if (x >> 20).is_multiple_of(4) {
            sqlx::query("DELETE FROM syncline_documents WHERE collection = 'tasks' AND id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .expect("delete");
        } else {
            sqlx::query("SELECT syncline_put('tasks', $1, $2, 'alice')")
                .bind(&id)
                .bind(json!({"id": id, "n": n}))
                .execute(&mut *tx)
                .await
                .expect("put");
        }
        tokio::time::sleep(Duration::from_millis((x >> 40) % 8)).await;
        tx.commit().await.expect("commit");
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_the_reconcile_are_never_missed() {
    let server = jwt_server().await;
    let mut db = server.db().await;
    let mut c = server.client().await;
    let alice = token("alice");
    for i in 0..200 {
        put(&mut db, &format!("a{i:03}"), "alice", 0).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write_until(server.db_url.clone(), stop.clone(), w + 1)))
        .collect();
    // Many reconciles while the writers run, each from a copy that is nearly current (so
    // that most buckets match and a write committing after the first round's snapshot lands
    // in a bucket already found equal) with a few local losses; each continues with an
    // ordinary Pull from its C0, as a client would, the writers still going.
    let mut outcomes = Vec::new();
    for round in 0..30 {
        let mut local = Copy::new();
        pull_into(&mut c, &alice, "tasks", "", &mut local).await;
        let drop: Vec<String> = local.keys().skip(round).step_by(40).cloned().collect();
        for id in drop {
            local.remove(&id);
        }
        let c0 = reconcile(&mut c, &alice, "tasks", &mut local).await;
        let last = pull_into(&mut c, &alice, "tasks", &c0, &mut local).await;
        outcomes.push((local, last));
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("writer stops")
            .expect("writer ok");
    }
    assert!(
        written >= 30,
        "the writers wrote during the reconciles ({written})"
    );
    // Once the writes stop, every client that kept pulling from where it was is exact.
    let expected = live(&mut db, "alice").await;
    for (i, (mut local, last)) in outcomes.into_iter().enumerate() {
        pull_into(&mut c, &alice, "tasks", &last, &mut local).await;
        let got = seen(&local);
        let wrong: Vec<&String> = expected
            .iter()
            .filter(|e| !got.contains(e))
            .chain(got.iter().filter(|g| !expected.contains(g)))
            .map(|(id, _, _)| id)
            .collect();
        assert!(
            wrong.is_empty(),
            "reconcile #{i} missed changes of {wrong:?}"
        );
    }
    let _ = db.close().await;
}

/// The reason and field of a status's `ErrorInfo`.
pub(crate) fn reason_and_field(s: &Status) -> (String, Option<String>) {
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    (info.reason, info.metadata.get("field").cloned())
}

fn refused<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, reason: &str, field: &str) {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), code, "{s:?}");
    let (got_reason, got_field) = reason_and_field(&s);
    assert_eq!(
        (got_reason.as_str(), got_field.as_deref()),
        (reason, Some(field)),
        "{s:?}"
    );
    assert!(s.message().contains(field), "{s:?}");
}

#[tokio::test]
async fn oversized_or_malformed_requests_are_refused_naming_the_field() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.reconcile_digests_max = 8;
    cfg.reconcile_list_max = 5;
    cfg.fetch_ids_max = 3;
    let server = TestServer::start_with(cfg).await;
    let mut conn = server.db().await;
    for i in 0..10 {
        put(&mut conn, &format!("a{i:03}"), "", 0).await;
    }
    let mut c = server.client().await;
    let digest_req =
        |bits: u32, within_bits: u32, within: Vec<u32>, n: u32, counts: usize| ReconcileRequest {
            collection: "tasks".into(),
            bucket_bits: bits,
            within_bits,
            within,
            digests: Some(BucketDigests {
                buckets: (0..n).collect(),
                counts: vec![1; counts],
                sums: vec![1; n as usize],
            }),
            selector: Vec::new(),
        };
    let inv = Code::InvalidArgument;
    refused(
        c.reconcile(digest_req(25, 0, vec![], 0, 0)).await,
        inv,
        "INVALID_REQUEST",
        "bucket_bits",
    );
    refused(
        c.reconcile(digest_req(8, 0, vec![], 9, 9)).await,
        inv,
        "LIMIT_EXCEEDED",
        "digests.buckets",
    );
    refused(
        c.reconcile(digest_req(8, 0, vec![], 3, 2)).await,
        inv,
        "INVALID_REQUEST",
        "digests.counts",
    );
    refused(
        c.reconcile(digest_req(4, 5, vec![], 0, 0)).await,
        inv,
        "INVALID_REQUEST",
        "within_bits",
    );
    refused(
        c.reconcile(digest_req(8, 4, (0..9).collect(), 0, 0)).await,
        inv,
        "LIMIT_EXCEEDED",
        "within",
    );
    refused(
        c.reconcile(digest_req(8, 4, vec![16], 0, 0)).await,
        inv,
        "INVALID_REQUEST",
        "within[0]",
    );
    refused(
        c.reconcile(digest_req(2, 0, vec![], 5, 5)).await,
        inv,
        "INVALID_REQUEST",
        "digests.buckets[4]",
    );
    // A round may not compare more buckets than a request may carry digests for: its reply
    // would list up to all of them.
    refused(
        c.reconcile(digest_req(4, 0, vec![], 0, 0)).await,
        inv,
        "LIMIT_EXCEEDED",
        "bucket_bits",
    );
    refused(
        c.reconcile(digest_req(8, 6, vec![0, 1, 2], 0, 0)).await,
        inv,
        "LIMIT_EXCEEDED",
        "bucket_bits",
    );
    let ok = c
        .reconcile(digest_req(3, 0, vec![], 0, 0))
        .await
        .expect("8 buckets compared")
        .into_inner();
    let differing = ok.differing.unwrap_or_default();
    assert_eq!(differing.counts.iter().sum::<u32>(), 10);
    let list = |bits: u32, buckets: Vec<u32>| ReconcileListRequest {
        collection: "tasks".into(),
        bucket_bits: bits,
        buckets,
        selector: Vec::new(),
    };
    refused(
        c.reconcile_list(list(8, (0..9).collect())).await,
        inv,
        "LIMIT_EXCEEDED",
        "buckets",
    );
    refused(
        c.reconcile_list(list(1, vec![2])).await,
        inv,
        "INVALID_REQUEST",
        "buckets[0]",
    );
    // Ten documents in one bucket, at most five listed: the client must ask for less.
    refused(
        c.reconcile_list(list(0, vec![0])).await,
        Code::ResourceExhausted,
        "LIMIT_EXCEEDED",
        "buckets",
    );
    let fetch = |ids: &[&str]| FetchRequest {
        collection: "tasks".into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        selector: Vec::new(),
    };
    refused(
        c.fetch(fetch(&["a", "b", "c", "d"])).await,
        inv,
        "LIMIT_EXCEEDED",
        "ids",
    );
    refused(
        c.fetch(fetch(&[""])).await,
        inv,
        "INVALID_REQUEST",
        "ids[0]",
    );
    refused(
        c.fetch(fetch(&["a000", "a000"])).await,
        inv,
        "INVALID_REQUEST",
        "ids[1]",
    );
    let unknown = c
        .fetch(FetchRequest {
            collection: "nope".into(),
            ids: vec![],
            selector: Vec::new(),
        })
        .await
        .expect_err("unknown collection");
    assert_eq!(unknown.code(), Code::NotFound);
    // Within the limits, everything answers.
    let ok = c
        .fetch(fetch(&["a000", "zz", "a001"]))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(ok.answered, 3);
    assert_eq!(ok.documents.len(), 2);
    let _ = conn.close().await;
}

#[tokio::test]
async fn fetch_is_cut_at_the_page_byte_budget_and_says_how_far_it_answered() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.page_bytes_max = 65_536;
    cfg.document_bytes_max = 16_384;
    cfg.message_bytes_max = Some(100_000);
    let server = TestServer::start_with(cfg).await;
    let mut conn = server.db().await;
    let big = "x".repeat(15_000);
    let ids: Vec<String> = (0..10).map(|i| format!("big{i}")).collect();
    for id in &ids {
        sqlx::query("SELECT syncline_put('tasks', $1, $2, '')")
            .bind(id)
            .bind(json!({"id": id, "pad": big}))
            .execute(&mut conn)
            .await
            .expect("put");
    }
    let mut c = server.client().await;
    // Ask for all ten (and one that does not exist) until every id is answered.
    let mut ask: Vec<String> = ids.clone();
    ask.insert(3, "missing".into());
    let (mut got, mut replies) = (Vec::new(), 0);
    while !ask.is_empty() && replies < 20 {
        let r = c
            .fetch(FetchRequest {
                collection: "tasks".into(),
                ids: ask.clone(),
                selector: Vec::new(),
            })
            .await
            .expect("fetch")
            .into_inner();
        let answered = r.answered as usize;
        assert!(answered >= 1 && answered <= ask.len());
        let bytes: usize = r.documents.iter().map(|d| d.json.len()).sum();
        assert!(
            r.documents.len() <= 1 || bytes <= 65_536,
            "a reply holds one document, or stays within the budget ({bytes})"
        );
        got.extend(r.documents.into_iter().map(|d| d.id));
        ask.drain(..answered);
        replies += 1;
    }
    assert!(ask.is_empty());
    assert!(replies >= 3, "the budget cut the replies ({replies})");
    assert_eq!(got, ids, "every live document once, in request order");
    let _ = conn.close().await;
}

/// One gRPC-Web call over HTTP/1.1, as a browser sends it; the whole response as text.
async fn grpc_web(server: &TestServer, method: &str, message: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let mut request = format!(
        "POST /syncline.v1.ReplicationService/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Origin: http://app.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(&request).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn browsers_can_reconcile_through_grpc_web() {
    use prost::Message;
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.grpc_web = true;
    cfg.cors_allowed_origins = vec!["http://app.test".into()];
    let server = TestServer::start_with(cfg).await;
    let mut conn = server.db().await;
    put(&mut conn, "web-1", "", 0).await;
    let round = ReconcileRequest {
        collection: "tasks".into(),
        bucket_bits: 0,
        within_bits: 0,
        within: vec![],
        digests: None,
        selector: Vec::new(),
    };
    let list = ReconcileListRequest {
        collection: "tasks".into(),
        bucket_bits: 0,
        buckets: vec![0],
        selector: Vec::new(),
    };
    let fetch = FetchRequest {
        collection: "tasks".into(),
        ids: vec!["web-1".into()],
        selector: Vec::new(),
    };
    for (method, message) in [
        ("Reconcile", round.encode_to_vec()),
        ("ReconcileList", list.encode_to_vec()),
        ("Fetch", fetch.encode_to_vec()),
    ] {
        let response = grpc_web(&server, method, message).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{method}: {response}");
        assert!(response.contains("grpc-status:0"), "{method}: {response}");
        if method != "Reconcile" {
            assert!(response.contains("web-1"), "{method}: {response}");
        }
    }
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_expired_by_the_purge_reconciles_and_pulls_on_from_c0() {
    let server = jwt_server_with(|c| {
        for col in &mut c.collections {
            col.tombstone_retention = Some("30d".into());
        }
    })
    .await;
    let mut db = server.db().await;
    let mut c = server.client().await;
    let alice = token("alice");
    for i in 0..50 {
        put(&mut db, &format!("a{i:03}"), "alice", 0).await;
    }
    let mut local = Copy::new();
    let old = pull_into(&mut c, &alice, "tasks", "", &mut local).await;
    // Away: ten deleted and, 40 days later, purged by the retention purge (which raises the
    // purge horizon); five changed; five new.
    sqlx::query("DELETE FROM syncline_documents WHERE collection = 'tasks' AND id < 'a010'")
        .execute(&mut db)
        .await
        .expect("delete");
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("SELECT set_config('syncline.writer', 'push', true)")
        .execute(&mut *tx)
        .await
        .expect("writer marker");
    sqlx::query(
        "UPDATE syncline_documents SET updated_at = now() - interval '40 days' WHERE deleted",
    )
    .execute(&mut *tx)
    .await
    .expect("age tombstones");
    tx.commit().await.expect("commit");
    let store = syncline::store::postgres::PgStore::connect_lazy(
        &server.db_url,
        &syncline::store::postgres::PoolSettings {
            size: 2,
            acquire_timeout: Duration::from_secs(10),
            statement_cache_capacity: 10,
            read_ahead_pages: 0,
        },
    )
    .expect("store");
    let purged =
        syncline::purge::purge_collection(&store, "tasks", Duration::from_secs(30 * 86_400), 4)
            .await
            .expect("purge");
    assert_eq!(purged.purged, 10);
    store.close().await;
    for i in 20..25 {
        put(&mut db, &format!("a{i:03}"), "alice", 2).await;
    }
    for i in 50..55 {
        put(&mut db, &format!("a{i:03}"), "alice", 0).await;
    }
    // The old checkpoint is expired: the deletes it missed are gone.
    let expired = c
        .pull(authed(
            PullRequest {
                collection: "tasks".into(),
                checkpoint: Some(Checkpoint { token: old }),
                limit: 100,
                selector: Vec::new(),
            },
            &alice,
        ))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::FailedPrecondition, "{expired:?}");
    // Reconcile, then Pull from C0: accepted (C0 is above the horizon) and exact.
    let c0 = reconcile(&mut c, &alice, "tasks", &mut local).await;
    pull_into(&mut c, &alice, "tasks", &c0, &mut local).await;
    assert_eq!(seen(&local), live(&mut db, "alice").await);
    assert_eq!(local.len(), 45);
    let _ = db.close().await;
}
