//! Retention (issue 13, parts 1 and 2): the purge deletes only tombstones older than the
//! retention, in batches, on one replica at a time, and raises the purge horizon in the same
//! transaction; a checkpoint at or below the horizon (or of another dataset generation) is
//! refused with FAILED_PRECONDITION / CHECKPOINT_EXPIRED on Pull and with `Resync` on
//! Subscribe, never served with a deleted document silently missing.
//!
//! Tombstones are made old by setting their `updated_at` back under the push writer marker
//! (so the stamping trigger leaves their position and revision alone).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::common::*;
use crate::error_details::drop_database;
use syncline::config::Config;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{Checkpoint, PullRequest, SubscribeRequest, subscribe_response::Event};
use syncline::protocol::checkpoint::Sealer;
use syncline::protocol::{
    DocumentInput, Principal, Replicator, ReplicatorParts, RowInput, StreamEvent,
};
use syncline::purge::{purge_collection, purge_expired};
use syncline::store::postgres::{PgStore, PoolSettings};
use syncline::store::{PageLimit, Position, Resume, Store};

type Client = ReplicationServiceClient<tonic::transport::Channel>;

const MONTH: Duration = Duration::from_secs(30 * 86_400);

/// The test configuration with a 30-day retention on both collections; `tweak` edits it.
fn retention_config(db: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = config(db);
    for c in &mut cfg.collections {
        c.tombstone_retention = Some("30d".into());
    }
    tweak(&mut cfg);
    cfg.validate().expect("valid configuration");
    cfg
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let db = fresh_database().await;
    TestServer::start_with(retention_config(&db, tweak)).await
}

/// A store of its own on the server's database (the purge's side).
fn store_on(url: &str) -> PgStore {
    PgStore::connect_lazy(
        url,
        &PoolSettings {
            size: 6,
            acquire_timeout: Duration::from_secs(10),
            statement_cache_capacity: 100,
            read_ahead_pages: 0,
        },
    )
    .expect("store")
}

/// Pushes live documents `ids` (one push).
async fn create(client: &mut Client, collection: &str, ids: &[String]) {
    let rows = ids
        .iter()
        .map(|id| insert(doc(id, json!({"id": id, "v": 1}))))
        .collect();
    assert!(push(client, collection, rows).await.is_empty());
}

/// Deletes `ids` (one push of tombstones; the assumed states compared by value).
async fn delete(client: &mut Client, collection: &str, ids: &[String]) {
    let rows = ids
        .iter()
        .map(|id| update(tombstone(id), doc(id, json!({"id": id, "v": 1}))))
        .collect();
    let conflicts = push(client, collection, rows).await;
    assert!(conflicts.is_empty(), "deletes conflicted: {conflicts:?}");
}

/// Sets the `updated_at` of `collection`'s rows `ids` (every row when `None`) 40 days back,
/// under the push writer marker so that nothing else about them changes.
async fn age(url: &str, collection: &str, ids: Option<&[String]>) {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("SELECT set_config('syncline.writer', 'push', true)")
        .execute(&mut *tx)
        .await
        .expect("writer marker");
    let q = match ids {
        Some(ids) => sqlx::query(
            "UPDATE syncline_documents SET updated_at = now() - interval '40 days' \
             WHERE collection = $1 AND id = ANY($2)",
        )
        .bind(collection)
        .bind(ids.to_vec()),
        None => sqlx::query(
            "UPDATE syncline_documents SET updated_at = now() - interval '40 days' \
             WHERE collection = $1",
        )
        .bind(collection),
    };
    q.execute(&mut *tx).await.expect("age rows");
    tx.commit().await.expect("commit");
}

/// (id, deleted, change_xid, change_seq) of every row of `collection`, in change order.
async fn rows(url: &str, collection: &str) -> Vec<(String, bool, i64, i64)> {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_as(
        "SELECT id, deleted, change_xid, change_seq FROM syncline_documents \
         WHERE collection = $1 ORDER BY change_xid, change_seq",
    )
    .bind(collection)
    .fetch_all(&mut db)
    .await
    .expect("read rows")
}

async fn horizon(url: &str, collection: &str) -> Option<(i64, i64)> {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_as(
        "SELECT change_xid, change_seq FROM syncline_purge_horizon WHERE collection = $1",
    )
    .bind(collection)
    .fetch_optional(&mut db)
    .await
    .expect("read horizon")
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// One pull, returning the status on failure.
async fn try_pull(
    client: &mut Client,
    collection: &str,
    token: &str,
    limit: u32,
) -> Result<(Vec<syncline::proto::Document>, String), Status> {
    let r = client
        .pull(PullRequest {
            collection: collection.into(),
            checkpoint: Some(Checkpoint {
                token: token.into(),
            }),
            limit,
            selector: Vec::new(),
        })
        .await?
        .into_inner();
    Ok((
        r.documents,
        r.checkpoint.map(|c| c.token).unwrap_or_default(),
    ))
}

/// FAILED_PRECONDITION with ErrorInfo reason CHECKPOINT_EXPIRED about `checkpoint.token`.
fn assert_expired(s: &Status) {
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("CHECKPOINT_EXPIRED", "syncline"),
        "{s:?}"
    );
    assert_eq!(
        info.metadata.get("field").map(String::as_str),
        Some("checkpoint.token")
    );
    assert!(s.message().contains("empty checkpoint"), "{s:?}");
}

/// Pulls one document at a time from `token` until nothing is new: (id, deleted, the token
/// after it) for each, and the last token.
async fn one_by_one(
    client: &mut Client,
    collection: &str,
    token: &str,
) -> (Vec<(String, bool, String)>, String) {
    let mut out = Vec::new();
    let mut token = token.to_owned();
    for _ in 0..10_000 {
        let (docs, next) = pull(client, collection, &token, 1).await;
        let Some(d) = docs.first() else {
            return (out, token);
        };
        out.push((d.id.clone(), d.deleted, next.clone()));
        token = next;
    }
    panic!("too many documents");
}

#[tokio::test]
async fn purge_removes_only_old_tombstones_in_batches() {
    let server = server_with(|_| {}).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let tasks = names("t", 0..30);
    create(&mut c, "tasks", &tasks).await;
    create(&mut c, "notes", &names("n", 0..10)).await;
    // 25 tombstones made old, 3 recent ones, 2 old live documents; old tombstones in notes.
    delete(&mut c, "tasks", &tasks[..28]).await;
    delete(&mut c, "notes", &names("n", 0..10)).await;
    let mut old: Vec<String> = tasks[..25].to_vec();
    old.extend(tasks[28..].iter().cloned());
    age(&url, "tasks", Some(&old)).await;
    age(&url, "notes", None).await;
    let before = rows(&url, "tasks").await;
    let highest_old_tombstone = before
        .iter()
        .filter(|(id, deleted, ..)| *deleted && tasks[..25].contains(id))
        .map(|(_, _, x, s)| (*x, *s))
        .max()
        .unwrap();

    let store = store_on(&url);
    let preview = store.purge_preview("tasks", MONTH).await.unwrap();
    assert_eq!(preview.count, 25);
    assert!(preview.oldest.is_some() && preview.newest.is_some());

    let report = purge_collection(&store, "tasks", MONTH, 10).await.unwrap();
    assert_eq!((report.purged, report.batches), (25, 3), "{report:?}");
    assert!(!report.locked_out);

    let after = rows(&url, "tasks").await;
    let kept: Vec<(&str, bool)> = after.iter().map(|(i, d, ..)| (i.as_str(), *d)).collect();
    let expected: HashSet<(&str, bool)> = [
        ("t25", true),
        ("t26", true),
        ("t27", true),
        ("t28", false),
        ("t29", false),
    ]
    .into_iter()
    .collect();
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert_eq!(kept.into_iter().collect::<HashSet<_>>(), expected);
    // The untouched rows kept their positions.
    for row in &after {
        assert!(before.contains(row), "{row:?} changed");
    }
    // Another collection's old tombstones are not this purge's.
    assert_eq!(rows(&url, "notes").await.len(), 10);
    assert_eq!(horizon(&url, "tasks").await, Some(highest_old_tombstone));
    assert_eq!(horizon(&url, "notes").await, None);

    // Nothing older is left: one short batch, nothing purged, the horizon unchanged.
    let again = purge_collection(&store, "tasks", MONTH, 10).await.unwrap();
    assert_eq!((again.purged, again.batches), (0, 1));
    assert_eq!(horizon(&url, "tasks").await, Some(highest_old_tombstone));

    // The command does the same for notes, and its dry run says what would go first.
    let cfg = retention_config(&url, |_| {});
    let dry = syncline::purge::command(&cfg, "notes", true).await.unwrap();
    assert!(
        dry.starts_with("notes: 10 tombstone(s) older than 30d"),
        "{dry}"
    );
    assert_eq!(
        rows(&url, "notes").await.len(),
        10,
        "a dry run deletes nothing"
    );
    let done = syncline::purge::command(&cfg, "notes", false)
        .await
        .unwrap();
    assert!(
        done.starts_with("notes: purged 10 tombstone(s) in 1 batch(es)"),
        "{done}"
    );
    assert!(rows(&url, "notes").await.is_empty());
    let mut no_retention = cfg.clone();
    no_retention.collections[0].tombstone_retention = None;
    let err = syncline::purge::command(&no_retention, "tasks", true)
        .await
        .unwrap_err();
    assert!(err.contains("kept forever"), "{err}");
    store.close().await;
    drop_database(server).await;
}

#[tokio::test]
async fn the_server_purges_in_the_background() {
    let server = server_with(|c| c.purge_interval_seconds = 1).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let ids = names("b", 0..12);
    create(&mut c, "tasks", &ids).await;
    delete(&mut c, "tasks", &ids[..8]).await;
    age(&url, "tasks", Some(&ids[..6])).await;
    let mut left = 0;
    for _ in 0..150 {
        left = rows(&url, "tasks").await.len();
        if left == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 6, "the purge task removed the 6 old tombstones only");
    assert!(horizon(&url, "tasks").await.is_some());
    drop_database(server).await;
}

#[tokio::test]
async fn one_replica_purges_a_collection_at_a_time() {
    let server = server_with(|_| {}).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let store = store_on(&url);

    // While another transaction holds the collection's purge lock, a round does nothing.
    let ids = names("l", 0..20);
    create(&mut c, "tasks", &ids).await;
    delete(&mut c, "tasks", &ids).await;
    age(&url, "tasks", None).await;
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut held = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('syncline.purge'), hashtext('tasks'))")
        .execute(&mut *held)
        .await
        .unwrap();
    let skipped = purge_collection(&store, "tasks", MONTH, 7).await.unwrap();
    assert!(skipped.locked_out, "{skipped:?}");
    assert_eq!((skipped.purged, skipped.batches), (0, 0));
    assert_eq!(rows(&url, "tasks").await.len(), 20);
    // Another collection's purge is not held up by it.
    let notes = purge_collection(&store, "notes", MONTH, 7).await.unwrap();
    assert!(!notes.locked_out);
    held.rollback().await.unwrap();
    let done = purge_collection(&store, "tasks", MONTH, 7).await.unwrap();
    assert_eq!((done.purged, done.batches), (20, 3));

    // Four purges racing, round after round: every old tombstone is deleted exactly once
    // (the counts add up), none fails, and none is left.
    let store = Arc::new(store);
    for round in 0..15 {
        let ids = names(&format!("r{round}-"), 0..15);
        create(&mut c, "tasks", &ids).await;
        delete(&mut c, "tasks", &ids).await;
        age(&url, "tasks", Some(&ids)).await;
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { purge_collection(&store, "tasks", MONTH, 4).await })
            })
            .collect();
        let mut purged = 0;
        for r in racers {
            let report = tokio::time::timeout(Duration::from_secs(30), r)
                .await
                .expect("purges finish")
                .expect("no panic")
                .expect("no purge fails");
            purged += report.purged;
        }
        assert_eq!(purged, 15, "round {round}: purged {purged} of 15");
        assert!(rows(&url, "tasks").await.is_empty(), "round {round}");
    }
    store.close().await;
    drop_database(server).await;
}

#[tokio::test]
async fn a_document_brought_back_while_a_purge_runs_is_never_purged() {
    let server = server_with(|_| {}).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let store = Arc::new(store_on(&url));
    for round in 0..10 {
        let ids = names(&format!("z{round}-"), 0..30);
        create(&mut c, "tasks", &ids).await;
        delete(&mut c, "tasks", &ids).await;
        age(&url, "tasks", Some(&ids)).await;
        let purge = {
            let store = store.clone();
            tokio::spawn(async move { purge_collection(&store, "tasks", MONTH, 3).await })
        };
        // Every tombstone is written again (live) from SQL, racing the purge's batches.
        let writer = {
            let url = url.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
                for id in ids.iter().rev() {
                    sqlx::query("SELECT syncline_put('tasks', $1, '{\"back\": true}'::jsonb)")
                        .bind(id)
                        .execute(&mut db)
                        .await
                        .expect("put");
                }
            })
        };
        writer.await.expect("writer");
        let report = purge.await.expect("no panic").expect("purge succeeds");
        let live: HashSet<String> = rows(&url, "tasks")
            .await
            .into_iter()
            .filter(|(_, deleted, ..)| !deleted)
            .map(|(id, ..)| id)
            .collect();
        for id in &ids {
            assert!(
                live.contains(id),
                "round {round}: {id} was written back, then purged"
            );
        }
        assert!(report.purged <= 30);
    }
    store.close().await;
    drop_database(server).await;
}

#[tokio::test]
async fn a_pull_at_or_below_the_horizon_is_expired_and_above_it_is_exact() {
    let server = server_with(|_| {}).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let a = names("a", 0..10);
    create(&mut c, "tasks", &a).await;
    // A client that holds a0..a9, then follows their deletes and three new documents.
    let (mut order, tip) = one_by_one(&mut c, "tasks", "").await;
    delete(&mut c, "tasks", &a[..5]).await;
    create(&mut c, "tasks", &names("b", 0..3)).await;
    order.extend(one_by_one(&mut c, "tasks", &tip).await.0);
    let ids: Vec<String> = order
        .iter()
        .map(|(id, deleted, _)| format!("{id}{}", if *deleted { "-" } else { "" }))
        .collect();
    let expected: Vec<String> = "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a0- a1- a2- a3- a4- b0 b1 b2"
        .split(' ')
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, expected);
    let token = |i: usize| order[i].2.clone();
    // Nothing is expired before a purge.
    assert!(try_pull(&mut c, "tasks", &token(2), 100).await.is_ok());

    age(&url, "tasks", None).await;
    let store = store_on(&url);
    let report = purge_collection(&store, "tasks", MONTH, 2).await.unwrap();
    assert_eq!(report.purged, 5);
    store.close().await;

    // Below the horizon (the last purged tombstone, a4's), and at it: expired. The client
    // holding a0..a4 would otherwise never learn of their deletes.
    for i in [0, 4, 5, 9, 10, 12, 14] {
        let err = try_pull(&mut c, "tasks", &token(i), 100)
            .await
            .expect_err("an expired checkpoint is refused");
        assert_expired(&err);
    }
    // Just above it: exactly the later changes.
    let (docs, _) = try_pull(&mut c, "tasks", &token(15), 100).await.unwrap();
    let got: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got, ["b1", "b2"]);
    let (docs, last) = try_pull(&mut c, "tasks", &token(17), 100).await.unwrap();
    assert!(docs.is_empty());
    assert_eq!(last, token(17));
    // Starting over is never expired, even page by page through positions below the horizon:
    // a reader that began after the purged deletes never held what they deleted.
    let (all, _) = pull_all(&mut c, "tasks", "", 2).await;
    let got: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got, ["a5", "a6", "a7", "a8", "a9", "b0", "b1", "b2"]);
    // The same over a stream that starts over.
    let mut stream = subscribe_from(&mut c, "").await;
    let mut streamed = Vec::new();
    while streamed.len() < 8 {
        match first_event(&mut stream).await {
            Event::Changes(batch) => streamed.extend(batch.documents.into_iter().map(|d| d.id)),
            Event::Heartbeat(_) => {}
            Event::Resync(r) => panic!("a stream starting over resynced: {r:?}"),
        }
    }
    assert_eq!(streamed, ["a5", "a6", "a7", "a8", "a9", "b0", "b1", "b2"]);
    drop(stream);
    drop_database(server).await;
}

#[tokio::test]
async fn pulls_racing_purges_are_refused_or_complete_never_silently_short() {
    let server = server_with(|_| {}).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let store = Arc::new(store_on(&url));
    let mut tip = String::new();
    let mut older: Vec<String> = Vec::new();
    let (mut refused, mut complete) = (0, 0);
    for round in 0..12 {
        let ids = names(&format!("p{round}-"), 0..16);
        create(&mut c, "tasks", &ids).await;
        // The checkpoint every puller resumes from: before this round's deletes.
        tip = pull_all(&mut c, "tasks", &tip, 100).await.1;
        let deleted: Vec<String> = ids.iter().step_by(2).cloned().collect();
        delete(&mut c, "tasks", &deleted).await;
        age(&url, "tasks", Some(&deleted)).await;
        // The deletes are readable in order before the race starts (another test may hold
        // the cluster's horizon back for a while).
        for attempt in 0.. {
            let (docs, _) = pull_all(&mut c, "tasks", &tip, 100).await;
            let seen: HashSet<&str> = docs
                .iter()
                .filter(|d| d.deleted)
                .map(|d| d.id.as_str())
                .collect();
            if deleted.iter().all(|id| seen.contains(id.as_str())) {
                break;
            }
            assert!(attempt < 600, "the deletes never became readable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let purge = {
            let store = store.clone();
            tokio::spawn(async move { purge_collection(&store, "tasks", MONTH, 2).await })
        };
        let pullers: Vec<_> = (0..4)
            .map(|_| {
                let addr = server.addr;
                let from = tip.clone();
                tokio::spawn(async move {
                    let mut c = ReplicationServiceClient::connect(format!("http://{addr}"))
                        .await
                        .expect("connect");
                    let mut token = from;
                    let mut tombstones = HashSet::new();
                    for _ in 0..1000 {
                        match try_pull(&mut c, "tasks", &token, 2).await {
                            Err(s) => {
                                assert_expired(&s);
                                return None;
                            }
                            Ok((docs, next)) if docs.is_empty() => {
                                assert_eq!(next, token);
                                return Some(tombstones);
                            }
                            Ok((docs, next)) => {
                                tombstones.extend(
                                    docs.iter().filter(|d| d.deleted).map(|d| d.id.clone()),
                                );
                                token = next;
                            }
                        }
                    }
                    panic!("the pull did not end");
                })
            })
            .collect();
        for p in pullers {
            match tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .expect("pullers finish")
                .expect("no panic")
            {
                None => refused += 1,
                Some(seen) => {
                    complete += 1;
                    for id in &deleted {
                        assert!(
                            seen.contains(id),
                            "round {round}: a pull completed without the delete of {id}"
                        );
                    }
                }
            }
        }
        let report = purge.await.expect("no panic").expect("purge succeeds");
        assert_eq!(report.purged, deleted.len() as u64);
        // Once purged, this round's checkpoint and every older one are expired for good.
        older.push(tip.clone());
        for old in &older {
            assert_expired(&try_pull(&mut c, "tasks", old, 2).await.unwrap_err());
        }
        // The tip moves past the purge: later rounds resume from above the horizon.
        tip = pull_all(&mut c, "tasks", "", 100).await.1;
    }
    assert_eq!(refused + complete, 12 * 4);
    eprintln!("racing pulls: {refused} refused, {complete} complete");
    store.close().await;
    drop_database(server).await;
}

/// The next item of a replicator's stream (`None`: it ended), within 10 s.
async fn next(
    events: &mut tokio::sync::mpsc::Receiver<syncline::protocol::StreamItem>,
) -> Option<syncline::protocol::StreamItem> {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event or the end in time")
}

/// The first event of a stream, within 10 s.
async fn first_event(stream: &mut tonic::Streaming<syncline::proto::SubscribeResponse>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open")
        .event
        .expect("an event")
}

async fn subscribe_from(
    c: &mut Client,
    token: &str,
) -> tonic::Streaming<syncline::proto::SubscribeResponse> {
    c.subscribe(SubscribeRequest {
        collection: "tasks".into(),
        checkpoint: Some(Checkpoint {
            token: token.into(),
        }),
        selector: Vec::new(),
    })
    .await
    .expect("subscribe is accepted")
    .into_inner()
}

#[tokio::test]
async fn subscribe_from_an_expired_checkpoint_resyncs_and_ends() {
    let server = server_with(|_| {}).await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let ids = names("s", 0..6);
    create(&mut c, "tasks", &ids).await;
    let (_, before_deletes) = pull_all(&mut c, "tasks", "", 100).await;
    delete(&mut c, "tasks", &ids[..3]).await;
    age(&url, "tasks", None).await;
    let store = store_on(&url);
    assert_eq!(
        purge_collection(&store, "tasks", MONTH, 100)
            .await
            .unwrap()
            .purged,
        3
    );
    store.close().await;

    let mut stream = subscribe_from(&mut c, &before_deletes).await;
    match first_event(&mut stream).await {
        Event::Resync(r) => assert!(r.reason.contains("purge horizon"), "{r:?}"),
        other => panic!("expected a resync, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends");
    assert!(
        matches!(end, Ok(None)),
        "the stream ends after the resync: {end:?}"
    );

    // From the start it streams what is left.
    let mut stream = subscribe_from(&mut c, "").await;
    match first_event(&mut stream).await {
        Event::Changes(batch) => {
            let got: Vec<&str> = batch.documents.iter().map(|d| d.id.as_str()).collect();
            assert_eq!(got, ["s3", "s4", "s5"]);
        }
        other => panic!("expected changes, got {other:?}"),
    }
    drop(stream);
    drop_database(server).await;
}

#[tokio::test]
async fn a_checkpoint_of_another_dataset_generation_is_expired() {
    let key = [9u8; 32];
    let server = server_with(|c| {
        use base64::Engine;
        c.checkpoint_key = Some(base64::engine::general_purpose::STANDARD.encode(key));
    })
    .await;
    let mut c = server.client().await;
    create(&mut c, "tasks", &names("g", 0..2)).await;
    let (_, current) = pull_all(&mut c, "tasks", "", 100).await;
    assert!(try_pull(&mut c, "tasks", &current, 10).await.is_ok());
    let old = Sealer::new(&key)
        .with_generation(7)
        .bind("tasks", &Principal::anonymous_service())
        .encode(Position { tx: 1, seq: 1 }, 0);
    let err = try_pull(&mut c, "tasks", &old, 10).await.unwrap_err();
    assert_expired(&err);
    assert!(err.message().contains("generation 7"), "{err:?}");
    let mut stream = subscribe_from(&mut c, &old).await;
    match first_event(&mut stream).await {
        Event::Resync(r) => assert!(r.reason.contains("generation 7"), "{r:?}"),
        other => panic!("expected a resync, got {other:?}"),
    }
    drop(stream);
    drop_database(server).await;
}

#[tokio::test]
async fn a_stream_overtaken_by_a_purge_while_open_resyncs() {
    let db = fresh_database().await;
    let mut cfg = retention_config(&db, |_| {});
    cfg.pull_limit_max = 20;
    let store = Arc::new(store_on(&db));
    store.migrate().await.unwrap();
    let replicator = Replicator::new(ReplicatorParts {
        streams_max: 10,
        streams_per_principal_max: 10,
        stream_buffer_documents: 50,
        page_bytes_max: 4 << 20,
        stream_buffer_bytes: 64 << 20,
        stream_bytes_per_principal_max: 512 << 20,
        ..replicator_parts(store.clone(), &cfg)
    });
    let tracker = tokio_util::task::TaskTracker::new();
    replicator.start(&tracker);
    let service = Principal::anonymous_service();
    let state = |id: &str, deleted: bool| DocumentInput {
        id: id.to_owned(),
        json: br#"{"v":1}"#.to_vec(),
        deleted,
        ..Default::default()
    };
    // A new document, or the delete of one holding `{"v":1}`.
    let row = |id: String, deleted: bool| RowInput {
        new_state: Some(state(&id, deleted)),
        assumed: deleted.then(|| state(&id, false)),
    };
    // 60 live documents; the stream's reader holds all of them.
    for b in 0..6 {
        let rows = (0..10).map(|i| row(format!("o{b}-{i}"), false)).collect();
        replicator.push(&service, "tasks", rows).await.unwrap();
    }
    // Wait until all 60 are readable in order, so the stream catches up in three full pages.
    for attempt in 0.. {
        let page = store
            .read_changes(
                "tasks",
                None,
                Resume::default(),
                PageLimit::new(100, 1 << 20),
            )
            .await
            .unwrap();
        if page.documents.len() == 60 {
            break;
        }
        assert!(attempt < 600, "the writes never became readable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut events = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
    // The reader takes the first page, then stalls while the last 10 documents are deleted
    // and their tombstones purged.
    match next(&mut events).await {
        Some(Ok(StreamEvent::Changes { documents, .. })) => assert_eq!(documents.len(), 20),
        other => panic!("expected the first page, got {other:?}"),
    }
    let rows = (0..10).map(|i| row(format!("o5-{i}"), true)).collect();
    let conflicts = replicator.push(&service, "tasks", rows).await.unwrap();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    age(&db, "tasks", None).await;
    let report = purge_collection(&store, "tasks", MONTH, 100).await.unwrap();
    assert_eq!(report.purged, 10);
    // At most the page already read ahead, then Resync, then the end: never "caught up"
    // without the purged deletes.
    let mut delivered = BTreeMap::new();
    let mut resynced = false;
    for _ in 0..10 {
        match next(&mut events).await {
            Some(Ok(StreamEvent::Changes { documents, .. })) => {
                assert!(!resynced, "nothing follows a resync");
                for d in documents {
                    delivered.insert(d.id, d.position);
                }
            }
            Some(Ok(StreamEvent::Resync { reason })) => {
                assert!(reason.contains("purge horizon"), "{reason}");
                resynced = true;
            }
            Some(Ok(StreamEvent::Heartbeat)) => {}
            Some(Err(e)) => panic!("stream error {e:?}"),
            None => break,
        }
    }
    assert!(resynced, "the overtaken stream resyncs");
    assert!(
        delivered.len() <= 20,
        "at most the page read before the purge"
    );
    assert!(
        delivered.keys().all(|id| !id.starts_with("o5-")),
        "{delivered:?}"
    );
    store.close().await;
    drop(replicator);
    let name = db.rsplit_once('/').unwrap().1.to_owned();
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn removal_records_go_with_the_tombstones_below_the_purge_horizon() {
    let server = server_with(|cfg| {
        let tasks = cfg
            .collections
            .iter_mut()
            .find(|c| c.name == "tasks")
            .expect("tasks");
        tasks.filter_fields.insert("v".into(), "number".into());
    })
    .await;
    let url = server.db_url.clone();
    let mut c = server.client().await;
    let ids = names("r", 0..10);
    create(&mut c, "tasks", &ids).await;
    // Six deletions (removal records at their positions), then four later edits of `v`.
    delete(&mut c, "tasks", &ids[..6]).await;
    let edits = ids[6..]
        .iter()
        .map(|id| {
            update(
                doc(id, json!({"id": id, "v": 2})),
                doc(id, json!({"id": id, "v": 1})),
            )
        })
        .collect();
    assert!(push(&mut c, "tasks", edits).await.is_empty());
    let moves = |url: String| async move {
        let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM syncline_moves WHERE collection = 'tasks'",
        )
        .fetch_one(&mut db)
        .await
        .expect("count moves")
    };
    assert_eq!(moves(url.clone()).await, 10);

    let store = store_on(&url);
    // Nothing below a horizon before the first purge.
    assert_eq!(purge_expired(&store, 100).await.unwrap().moves, 0);
    age(&url, "tasks", Some(&ids[..6])).await;
    let report = purge_collection(&store, "tasks", MONTH, 100).await.unwrap();
    assert_eq!(report.purged, 6);
    // Batches of two: the loop goes on while batches come back full.
    let expiry = purge_expired(&store, 2).await.unwrap();
    assert_eq!(expiry.moves, 6, "{expiry:?}");
    assert_eq!(
        moves(url.clone()).await,
        4,
        "the records above the horizon stay"
    );
}
