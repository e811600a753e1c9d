//! Checkpoint tokens are bound and sealed: a token is refused on another collection, to another
//! principal, forged or altered (Pull and Subscribe alike); it stays valid on every replica of
//! one database and across restarts; and it shows nothing of the position it stands for.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::common::*;
use crate::subscribe::next_batch;
use syncline::config::{AuthConfig, AuthMode, Config};
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{Checkpoint, Document, PullRequest, SubscribeRequest};
use syncline::store::Store;
use syncline::store::postgres::{PgStore, PoolSettings};

type Client = ReplicationServiceClient<Channel>;

const SECRET: &str = "a-checkpoint-test-secret-long-enough-0123456789";

fn jwt(sub: &str, scope: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "scope": scope, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn jwt_config(db: &str) -> Config {
    let mut cfg = config(db);
    cfg.auth = Some(AuthConfig {
        subject_bytes_max: 256,
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        jwks_file: None,
        issuer: None,
        audience: None,
        service_scope: "syncline:service".into(),
        leeway_seconds: 0,
    });
    cfg
}

fn authed<T>(message: T, bearer: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(bearer) = bearer {
        let value = format!("Bearer {bearer}").parse().expect("header value");
        r.metadata_mut().insert("authorization", value);
    }
    r
}

/// One pull as `bearer` (none: an unauthenticated server).
async fn try_pull(
    c: &mut Client,
    bearer: Option<&str>,
    collection: &str,
    token: &str,
    limit: u32,
) -> Result<(Vec<Document>, String), Status> {
    let r = c
        .pull(authed(
            PullRequest {
                collection: collection.into(),
                checkpoint: Some(Checkpoint {
                    token: token.into(),
                }),
                limit,
                selector: Vec::new(),
            },
            bearer,
        ))
        .await?
        .into_inner();
    Ok((
        r.documents,
        r.checkpoint.map(|c| c.token).unwrap_or_default(),
    ))
}

async fn try_subscribe(
    c: &mut Client,
    bearer: Option<&str>,
    collection: &str,
    token: &str,
) -> Result<tonic::Streaming<syncline::proto::SubscribeResponse>, Status> {
    c.subscribe(authed(
        SubscribeRequest {
            collection: collection.into(),
            checkpoint: Some(Checkpoint {
                token: token.into(),
            }),
            selector: Vec::new(),
        },
        bearer,
    ))
    .await
    .map(|r| r.into_inner())
}

/// Asserts that both Pull and Subscribe refuse `token` with INVALID_ARGUMENT saying `why`.
async fn refused(c: &mut Client, bearer: Option<&str>, collection: &str, token: &str, why: &str) {
    let err = try_pull(c, bearer, collection, token, 10)
        .await
        .expect_err("pull refuses the checkpoint");
    assert_eq!(err.code(), Code::InvalidArgument, "pull: {err:?}");
    assert!(err.message().starts_with("checkpoint.token: "), "{err:?}");
    assert!(err.message().contains(why), "pull: {err:?}");
    let err = try_subscribe(c, bearer, collection, token)
        .await
        .expect_err("subscribe refuses the checkpoint");
    assert_eq!(err.code(), Code::InvalidArgument, "subscribe: {err:?}");
    assert!(err.message().contains(why), "subscribe: {err:?}");
}

fn owned(id: &str, body: Value, owner: &str) -> Document {
    Document {
        owner: owner.into(),
        ..doc(id, body)
    }
}

async fn push_as(c: &mut Client, bearer: Option<&str>, collection: &str, docs: Vec<Document>) {
    let rows = docs.into_iter().map(insert).collect();
    let conflicts = c
        .push(authed(
            syncline::proto::PushRequest {
                collection: collection.into(),
                rows,
                mode: 0,
                idempotency_key: String::new(),
            },
            bearer,
        ))
        .await
        .expect("push succeeds")
        .into_inner()
        .conflicts;
    assert!(conflicts.is_empty(), "{conflicts:?}");
}

fn docs(prefix: &str, n: usize) -> Vec<Document> {
    (0..n)
        .map(|i| doc(&format!("{prefix}{i:02}"), json!({"i": i})))
        .collect()
}

#[tokio::test]
async fn a_checkpoint_of_one_collection_is_refused_on_another() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push_as(&mut c, None, "tasks", docs("t", 3)).await;
    push_as(&mut c, None, "notes", docs("n", 3)).await;
    let (_, on_tasks) = try_pull(&mut c, None, "tasks", "", 2).await.unwrap();
    // The notes written before it would be skipped if the token were read as a position.
    refused(
        &mut c,
        None,
        "notes",
        &on_tasks,
        "issued for another collection",
    )
    .await;
    let (rest, _) = try_pull(&mut c, None, "tasks", &on_tasks, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "the token still works where it was issued");

    // A stream's checkpoints are bound the same way.
    let mut stream = try_subscribe(&mut c, None, "notes", "").await.unwrap();
    let batch = next_batch(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(batch.documents.len(), 3);
    let from_stream = batch.checkpoint.expect("a checkpoint").token;
    let (more, _) = try_pull(&mut c, None, "notes", &from_stream, 10)
        .await
        .unwrap();
    assert!(more.is_empty());
    refused(
        &mut c,
        None,
        "tasks",
        &from_stream,
        "issued for another collection",
    )
    .await;
}

#[tokio::test]
async fn a_checkpoint_of_one_principal_is_refused_to_another() {
    let server = TestServer::start_with(jwt_config(&fresh_database().await)).await;
    let mut c = server.client().await;
    let (alice, bob, service) = (
        jwt("alice", ""),
        jwt("bob", ""),
        jwt("ops", "syncline:service"),
    );
    push_as(&mut c, Some(&alice), "tasks", docs("a", 4)).await;
    push_as(&mut c, Some(&bob), "tasks", docs("b", 4)).await;

    let (page, of_alice) = try_pull(&mut c, Some(&alice), "tasks", "", 2)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    for other in [&bob, &service] {
        refused(
            &mut c,
            Some(other),
            "tasks",
            &of_alice,
            "not issued to this caller",
        )
        .await;
    }
    let (of_service_docs, of_service) = try_pull(&mut c, Some(&service), "tasks", "", 2)
        .await
        .unwrap();
    assert_eq!(of_service_docs.len(), 2);
    refused(
        &mut c,
        Some(&alice),
        "tasks",
        &of_service,
        "not issued to this caller",
    )
    .await;
    // Each goes on from its own.
    let (rest, _) = try_pull(&mut c, Some(&alice), "tasks", &of_alice, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|d| d.owner == "alice"));
    let (rest, _) = try_pull(&mut c, Some(&service), "tasks", &of_service, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 6);
}

#[tokio::test]
async fn tokens_for_one_position_differ_per_principal_and_show_no_position() {
    let server = TestServer::start_with(jwt_config(&fresh_database().await)).await;
    let mut c = server.client().await;
    let (alice, service) = (jwt("alice", ""), jwt("ops", "syncline:service"));
    // One document per transaction: consecutive positions.
    for i in 0..16 {
        push_as(
            &mut c,
            Some(&service),
            "tasks",
            vec![owned(&format!("d{i:02}"), json!({"i": i}), "alice")],
        )
        .await;
    }
    let positions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT change_xid, change_seq FROM syncline_documents ORDER BY change_xid, change_seq",
    )
    .fetch_all(&mut server.db().await)
    .await
    .unwrap();
    assert_eq!(positions.len(), 16);

    let mut raw = Vec::new();
    for bearer in [&alice, &service] {
        let mut token = String::new();
        for _ in 0..16 {
            let (page, next) = try_pull(&mut c, Some(bearer), "tasks", &token, 1)
                .await
                .unwrap();
            assert_eq!(page.len(), 1);
            token = next;
            raw.push(URL_SAFE_NO_PAD.decode(&token).expect("URL-safe base64"));
            assert!(token.len() < 80, "{token}");
        }
    }
    // Alice's and the service's tokens for the same positions have nothing in common.
    for i in 0..16 {
        assert_ne!(raw[i], raw[16 + i]);
    }
    // No token holds a transaction id or sequence in clear, and the 32 tokens for 16
    // consecutive positions share nothing but the format byte.
    for r in &raw {
        for (tx, seq) in &positions {
            for word in [tx.to_be_bytes(), seq.to_be_bytes()] {
                let low = &word[4..];
                assert!(!r.windows(4).any(|w| w == low), "a position shows: {r:?}");
            }
        }
    }
    for at in 1..raw[0].len() {
        let values: std::collections::HashSet<u8> = raw.iter().map(|r| r[at]).collect();
        assert!(values.len() > 1, "byte {at} is the same in every token");
    }
}

/// A token in the format main issued: `1 ‖ tx ‖ seq ‖ sha256(label ‖ those)[..6]`. Anyone
/// could compute it; it must not be accepted.
fn forged_v1(tx: i64, seq: i64) -> String {
    let mut raw = vec![1u8];
    raw.extend_from_slice(&tx.to_be_bytes());
    raw.extend_from_slice(&seq.to_be_bytes());
    let digest = Sha256::new()
        .chain_update(b"syncline checkpoint v1")
        .chain_update(&raw)
        .finalize();
    raw.extend_from_slice(&digest[..6]);
    URL_SAFE_NO_PAD.encode(raw)
}

#[tokio::test]
async fn forged_and_altered_checkpoints_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push_as(&mut c, None, "tasks", docs("f", 4)).await;
    let (_, token) = try_pull(&mut c, None, "tasks", "", 2).await.unwrap();

    // A position past everything: accepted, it would silently skip every document.
    let forged = forged_v1(i64::MAX / 2, 0);
    refused(
        &mut c,
        None,
        "tasks",
        &forged,
        "not a checkpoint issued by this server",
    )
    .await;
    // Any change to a real token, in any character.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    for round in 0..24 {
        let mut altered = token.clone().into_bytes();
        let at = if round < altered.len() {
            round
        } else {
            rand::Rng::random_range(&mut rng, 0..altered.len())
        };
        let original = altered[at];
        while altered[at] == original {
            altered[at] = alphabet[rand::Rng::random_range(&mut rng, 0..alphabet.len())];
        }
        let altered = String::from_utf8(altered).unwrap();
        let err = try_pull(&mut c, None, "tasks", &altered, 10)
            .await
            .expect_err("an altered token is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{altered}: {err:?}");
    }
    let mut altered = token.clone().into_bytes();
    altered[30] = if altered[30] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    refused(&mut c, None, "tasks", &altered, "altered").await;
    let (rest, _) = try_pull(&mut c, None, "tasks", &token, 10).await.unwrap();
    assert_eq!(rest.len(), 2, "the real token still works");
}

#[tokio::test]
async fn checkpoints_are_valid_on_every_replica_and_after_a_restart() {
    let db = fresh_database().await;
    let a = TestServer::start_with(config(&db)).await;
    let b = TestServer::start_with(config(&db)).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // Both replicas issue their first tokens at once: they must agree on one key.
    push_as(&mut ca, None, "tasks", docs("r", 6)).await;
    // The cluster is shared: another test's open transaction can hold the visibility horizon
    // below the push for a moment. Wait (bounded) until all six are readable.
    for round in 0.. {
        let (all, _) = pull_all(&mut ca, "tasks", "", 100).await;
        if all.len() == 6 {
            break;
        }
        assert!(round < 200, "the push never became visible");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (from_a, from_b) = tokio::join!(
        try_pull(&mut ca, None, "tasks", "", 2),
        try_pull(&mut cb, None, "tasks", "", 4),
    );
    let (from_a, from_b) = (from_a.unwrap().1, from_b.unwrap().1);
    assert_eq!(
        try_pull(&mut cb, None, "tasks", &from_a, 10)
            .await
            .unwrap()
            .0
            .len(),
        4
    );
    assert_eq!(
        try_pull(&mut ca, None, "tasks", &from_b, 10)
            .await
            .unwrap()
            .0
            .len(),
        2
    );
    let mut stream = try_subscribe(&mut cb, None, "tasks", &from_a)
        .await
        .unwrap();
    assert_eq!(
        next_batch(&mut stream, Duration::from_secs(10))
            .await
            .documents
            .len(),
        4
    );
    drop(stream);

    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
    let again = TestServer::start_with(config(&db)).await;
    let mut c = again.client().await;
    let (rest, _) = try_pull(&mut c, None, "tasks", &from_a, 10).await.unwrap();
    assert_eq!(rest.len(), 4, "valid after a restart");
}

#[tokio::test]
async fn racing_first_starts_agree_on_one_key() {
    let db = fresh_database().await;
    let settings = PoolSettings {
        size: 2,
        acquire_timeout: Duration::from_secs(10),
        statement_cache_capacity: 100,
        read_ahead_pages: 0,
    };
    let stores: Vec<Arc<PgStore>> = (0..8)
        .map(|_| Arc::new(PgStore::connect_lazy(&db, &settings).expect("store")))
        .collect();
    stores[0].migrate().await.expect("migrate");
    let mut db_conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .expect("connect");
    let mut keys_seen = std::collections::HashSet::new();
    for round in 0..20 {
        sqlx::query("DELETE FROM syncline_checkpoint_key")
            .execute(&mut db_conn)
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
        let tasks: Vec<_> = stores
            .iter()
            .map(|s| {
                let (s, barrier) = (s.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.checkpoint_key().await
                })
            })
            .collect();
        let mut keys = Vec::new();
        for t in tasks {
            let key = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("in time")
                .expect("no panic")
                .expect("a key");
            keys.push(key);
        }
        assert!(
            keys.iter().all(|k| *k == keys[0]),
            "round {round}: the stores disagree"
        );
        assert_ne!(keys[0], [0u8; 32]);
        keys_seen.insert(keys[0]);
    }
    assert_eq!(keys_seen.len(), 20, "each round made a fresh random key");
}

#[tokio::test]
async fn a_configured_key_wins_over_the_stored_one() {
    let db = fresh_database().await;
    let mut with_key = config(&db);
    with_key.checkpoint_key = Some(URL_SAFE_NO_PAD.encode([5u8; 32]));
    let a = TestServer::start_with(with_key).await;
    let mut ca = a.client().await;
    push_as(&mut ca, None, "tasks", docs("k", 3)).await;
    let (_, token) = try_pull(&mut ca, None, "tasks", "", 1).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM syncline_checkpoint_key")
        .fetch_one(&mut a.db().await)
        .await
        .unwrap();
    assert_eq!(count, 0, "a configured key leaves the table alone");

    // A replica without the configured key uses the database's: the token is not its own.
    let stored = TestServer::start_with(config(&db)).await;
    let mut cs = stored.client().await;
    refused(&mut cs, None, "tasks", &token, "altered").await;
    // Another replica with the same key, given in standard padded base64, accepts it.
    let mut same = config(&db);
    same.checkpoint_key = Some(base64::engine::general_purpose::STANDARD.encode([5u8; 32]));
    let b = TestServer::start_with(same).await;
    let (rest, _) = try_pull(&mut b.client().await, None, "tasks", &token, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);

    // A key that is not 32 bytes of base64 stops the server before it serves.
    let mut bad = config(&db);
    bad.checkpoint_key = Some(URL_SAFE_NO_PAD.encode([5u8; 16]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = syncline::server::serve(bad, listener, std::future::pending())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("checkpoint_key"), "{err}");
}

#[tokio::test]
async fn before_its_migration_the_key_is_unavailable_not_an_internal_error() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.migrate_on_start = false;
    let server = TestServer::start_unready(cfg.clone()).await;
    let mut c = server.client().await;
    let err = try_pull(&mut c, None, "tasks", "", 10)
        .await
        .expect_err("no migrations yet");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    syncline::server::migrate(&cfg).await.expect("migrate");
    push_as(&mut c, None, "tasks", docs("m", 2)).await;
    let (page, token) = try_pull(&mut c, None, "tasks", "", 1).await.unwrap();
    assert_eq!(page.len(), 1);
    let (rest, _) = try_pull(&mut c, None, "tasks", &token, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
}
