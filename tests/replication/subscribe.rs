//! Subscribe: catch-up then live, gapless and in order under concurrent writes, heartbeats,
//! limits, bounded memory for slow readers, shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tonic::{Code, Streaming};

use crate::common::*;
use syncline::proto::{
    ChangeBatch, Checkpoint, Document, SubscribeRequest, SubscribeResponse,
    subscribe_response::Event,
};

pub async fn subscribe(
    server: &TestServer,
    collection: &str,
    token: &str,
) -> Streaming<SubscribeResponse> {
    let mut c = server.client().await;
    c.subscribe(SubscribeRequest {
        collection: collection.into(),
        checkpoint: Some(Checkpoint {
            token: token.into(),
        }),
        selector: Vec::new(),
    })
    .await
    .expect("subscribe")
    .into_inner()
}

/// The next change batch, skipping heartbeats; panics after `wait`.
pub async fn next_batch(stream: &mut Streaming<SubscribeResponse>, wait: Duration) -> ChangeBatch {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("a change batch arrives in time")
            .expect("stream ok")
            .expect("stream open");
        match msg.event {
            Some(Event::Changes(batch)) => return batch,
            Some(Event::Heartbeat(_)) => continue,
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test]
async fn catch_up_in_pages_then_live_changes() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.pull_limit_max = 10;
    cfg.pull_limit_default = 10;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let rows = (0..25)
        .map(|i| insert(doc(&format!("c{i:02}"), json!({"i": i}))))
        .collect();
    push(&mut c, "tasks", rows).await;

    let mut stream = subscribe(&server, "tasks", "").await;
    let mut got: Vec<Document> = Vec::new();
    let mut last = String::new();
    while got.len() < 25 {
        let batch = next_batch(&mut stream, Duration::from_secs(5)).await;
        assert!(batch.documents.len() <= 10, "catch-up comes in pages");
        got.extend(batch.documents);
        last = batch.checkpoint.unwrap().token;
    }
    assert_eq!(got.len(), 25);
    // The stream's checkpoint is a real pull checkpoint: nothing is new after it.
    assert!(pull(&mut c, "tasks", &last, 10).await.0.is_empty());

    // Live: a push arrives, with the checkpoint after it.
    push(
        &mut c,
        "tasks",
        vec![insert(doc("live", json!({"live": true})))],
    )
    .await;
    let batch = next_batch(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(batch.documents.len(), 1);
    assert_eq!(batch.documents[0].id, "live");
    let token = batch.checkpoint.unwrap().token;
    assert!(pull(&mut c, "tasks", &token, 10).await.0.is_empty());
    assert!(!pull(&mut c, "tasks", &last, 10).await.0.is_empty());

    // Resuming from a checkpoint streams only what came after it.
    push(&mut c, "tasks", vec![insert(doc("after", json!({})))]).await;
    let mut resumed = subscribe(&server, "tasks", &token).await;
    let batch = next_batch(&mut resumed, Duration::from_secs(5)).await;
    assert_eq!(
        batch
            .documents
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        ["after"]
    );
}

#[tokio::test]
async fn streams_are_gapless_ordered_and_duplicate_free_under_concurrent_pushes() {
    let server = Arc::new(TestServer::start().await);
    let mut stream = subscribe(&server, "tasks", "").await;
    const PUSHERS: usize = 6;
    const PUSHES: usize = 60;
    let mut handles = Vec::new();
    for p in 0..PUSHERS {
        let server = server.clone();
        handles.push(tokio::spawn(async move {
            let mut c = server.client().await;
            for i in 0..PUSHES {
                // New documents and updates of a shared one, by body comparison.
                let id = format!("s{p}-{i}");
                push(
                    &mut c,
                    "tasks",
                    vec![insert(doc(&id, json!({"p": p, "i": i})))],
                )
                .await;
                let own = format!("s{p}-0");
                let prev = if i == 0 {
                    json!({"p": p, "i": 0})
                } else {
                    json!({"p": p, "i": 0, "u": i - 1})
                };
                let conflicts = push(
                    &mut c,
                    "tasks",
                    vec![update(
                        doc(&own, json!({"p": p, "i": 0, "u": i})),
                        doc(&own, prev),
                    )],
                )
                .await;
                assert!(conflicts.is_empty());
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut db = server.db().await;
    let table = table(&mut db, "tasks").await;
    let mut seen: Vec<Document> = Vec::new();
    let mut last_rev: HashMap<(String, String), ()> = HashMap::new();
    let mut generations: HashMap<String, u64> = HashMap::new();
    while view(&seen) != table {
        let batch = next_batch(&mut stream, Duration::from_secs(20)).await;
        for d in &batch.documents {
            assert!(
                last_rev
                    .insert((d.id.clone(), d.revision.clone()), ())
                    .is_none(),
                "duplicate {d:?}"
            );
            let g = generation(&d.revision);
            let prev = generations.insert(d.id.clone(), g).unwrap_or(0);
            assert!(g > prev, "reordered: {} generation {g} after {prev}", d.id);
        }
        seen.extend(batch.documents);
    }
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.heartbeat_seconds = 1;
    let server = TestServer::start_with(cfg).await;
    let mut stream = subscribe(&server, "tasks", "").await;
    let started = tokio::time::Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a heartbeat within 5 s")
        .unwrap()
        .unwrap();
    assert!(matches!(msg.event, Some(Event::Heartbeat(_))), "{msg:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the interval"
    );
}

#[tokio::test]
async fn unknown_collections_and_bad_checkpoints_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let err = c
        .subscribe(SubscribeRequest {
            collection: "nope".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: Some(Checkpoint {
                token: "zzz".into(),
            }),
            selector: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_stream_limit_is_resource_exhausted_and_frees_up() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.streams_max = 2;
    let server = TestServer::start_with(cfg).await;
    let a = subscribe(&server, "tasks", "").await;
    let _b = subscribe(&server, "tasks", "").await;
    let mut c = server.client().await;
    let err = c
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    drop(a);
    // The slot frees once the server notices the client left.
    for _ in 0..200 {
        if c.subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the stream slot was never released");
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_retryable_status() {
    let server = TestServer::start().await;
    let mut stream = subscribe(&server, "tasks", "").await;
    let stopping = tokio::spawn(server.stop());
    let status = stream_end_status(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping.await.unwrap().expect("clean stop");
}

#[tokio::test]
async fn catch_up_sends_documents_at_their_latest_state_even_when_the_tail_lags() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    // Another stream keeps the shared tail following the collection.
    let _watcher = subscribe(&server, "tasks", "").await;
    // A checkpoint inside the tail's window (written after the tail started).
    push(&mut c, "tasks", vec![insert(doc("before", json!({})))]).await;
    let (_, start) = pull_all(&mut c, "tasks", "", 10).await;
    push(&mut c, "tasks", vec![insert(doc("x", json!({"v": 1})))]).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the shared tail buffers x@v1
    // An open transaction holds the horizon: the tail cannot read x's next write yet, so its
    // buffer says x is at v1 while the table already has the tombstone.
    let mut blocker = server.db().await;
    sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id();")
        .execute(&mut blocker)
        .await
        .unwrap();
    push(
        &mut c,
        "tasks",
        vec![update(tombstone("x"), doc("x", json!({"v": 1})))],
    )
    .await;
    let mut stream = subscribe(&server, "tasks", &start).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    });
    let first = loop {
        let batch = next_batch(&mut stream, Duration::from_secs(10)).await;
        if let Some(d) = batch.documents.into_iter().find(|d| d.id == "x") {
            break d;
        }
    };
    assert!(
        first.deleted,
        "catch-up sent an older state of x: {first:?}"
    );
    release.await.unwrap();
}
