//! Fan-out encoded once: the streams of one view share each batch (one take from the tail, one
//! encoding), and sharing never lets a batch reach a stream of another view.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use syncline::protocol::fanout::shared::Batch;
use syncline::protocol::{
    DocumentInput, Principal, Replicator, ReplicatorParts, RowInput, StreamEvent,
};
use syncline::store::postgres::PgStore;

use crate::common::*;

async fn replicator() -> Arc<Replicator<PgStore>> {
    let db = fresh_database().await;
    let store = Arc::new(migrated_store(&db, 8).await);
    let replicator = Replicator::new(ReplicatorParts {
        streams_max: 200,
        streams_per_principal_max: 200,
        page_bytes_max: 4 << 20,
        stream_buffer_bytes: 64 << 20,
        stream_bytes_per_principal_max: 4 << 30,
        ..replicator_parts(store, &config(&db))
    });
    replicator.start(&tokio_util::task::TaskTracker::new());
    Arc::new(replicator)
}

fn owner(subject: &str) -> Principal {
    Principal {
        subject: subject.into(),
        scopes: HashSet::new(),
        service: false,
        expires_at: None,
        claims: Default::default(),
    }
}

/// What one stream received: every document id in order, and every batch.
struct Received {
    ids: Vec<String>,
    batches: Vec<Batch>,
}

/// Reads `events` until `expected` documents came (bounded: 30 s without one fails).
async fn receive(
    mut events: tokio::sync::mpsc::Receiver<syncline::protocol::StreamItem>,
    expected: usize,
) -> Received {
    let mut got = Received {
        ids: Vec::new(),
        batches: Vec::new(),
    };
    let mut last = None;
    while got.ids.len() < expected {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("a batch within 30 s")
            .expect("the stream is open")
            .expect("no stream error");
        match event {
            StreamEvent::Changes { documents, .. } => {
                for d in documents.clone() {
                    assert!(Some(d.position) > last, "in change order");
                    last = Some(d.position);
                    got.ids.push(d.id);
                }
                got.batches.push(documents);
            }
            StreamEvent::Heartbeat => {}
            StreamEvent::Resync { reason } => panic!("unexpected resync: {reason}"),
        }
    }
    got
}

/// How many distinct shared batches `batches` holds.
fn distinct(batches: &[&Batch]) -> usize {
    let mut seen: Vec<&Batch> = Vec::new();
    for b in batches {
        if !seen.iter().any(|s| s.ptr_eq(b)) {
            seen.push(b);
        }
    }
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_of_one_view_share_each_batch_and_no_batch_crosses_views() {
    const SERVICE_STREAMS: usize = 24;
    const OWNER_STREAMS: usize = 12;
    const WRITES: usize = 40;
    let replicator = replicator().await;
    let service = Principal::anonymous_service();
    let mut readers = Vec::new();
    let open = |principal: Principal| {
        let replicator = replicator.clone();
        async move {
            replicator
                .subscribe(&principal, "tasks", "", b"")
                .await
                .expect("subscribe")
        }
    };
    for _ in 0..SERVICE_STREAMS {
        readers.push((
            "",
            tokio::spawn(receive(open(service.clone()).await, 2 * WRITES)),
        ));
    }
    for who in ["alice", "bob"] {
        for _ in 0..OWNER_STREAMS {
            readers.push((who, tokio::spawn(receive(open(owner(who)).await, WRITES))));
        }
    }
    // Two owners write concurrently, one document per push, so that streams race the tail.
    let writers: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|who| {
            let replicator = replicator.clone();
            tokio::spawn(async move {
                for i in 0..WRITES {
                    let row = RowInput {
                        new_state: Some(DocumentInput {
                            id: format!("{who}-{i}"),
                            json: br#"{"n":1}"#.to_vec(),
                            ..Default::default()
                        }),
                        assumed: None,
                    };
                    let conflicts = replicator.push(&owner(who), "tasks", vec![row]).await;
                    assert!(conflicts.expect("push").is_empty());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let mut by_view: Vec<(&str, Received)> = Vec::new();
    for (who, reader) in readers {
        by_view.push((who, reader.await.expect("reader")));
    }
    for (who, got) in &by_view {
        let unique: HashSet<&String> = got.ids.iter().collect();
        assert_eq!(unique.len(), got.ids.len(), "no duplicates ({who:?})");
        if who.is_empty() {
            assert_eq!(got.ids.len(), 2 * WRITES, "every document");
        } else {
            assert_eq!(got.ids.len(), WRITES, "every document of {who}");
            assert!(
                got.ids.iter().all(|id| id.starts_with(&format!("{who}-"))),
                "only {who}'s documents: {:?}",
                got.ids
            );
        }
    }
    // No batch is shared between views; within a view, batches are shared.
    let batches = |view: &str| -> Vec<&Batch> {
        by_view
            .iter()
            .filter(|(who, _)| *who == view)
            .flat_map(|(_, got)| got.batches.iter())
            .collect()
    };
    let (all, alice, bob) = (batches(""), batches("alice"), batches("bob"));
    for (a, b) in [(&all, &alice), (&all, &bob), (&alice, &bob)] {
        assert!(
            !a.iter().any(|x| b.iter().any(|y| x.ptr_eq(y))),
            "a batch reached streams of two views"
        );
    }
    for (view, batches, streams) in [
        ("every owner", &all, SERVICE_STREAMS),
        ("alice", &alice, OWNER_STREAMS),
        ("bob", &bob, OWNER_STREAMS),
    ] {
        let distinct = distinct(batches);
        // Unshared, every stream's every batch would be its own. Streams that saw another
        // head or stand elsewhere take their own; most share.
        assert!(
            distinct * 4 <= batches.len(),
            "{view}: {} batches sent to {streams} streams, {distinct} of them distinct",
            batches.len()
        );
    }
}

/// Over gRPC, with selectors: several streams per selector (and unfiltered ones) follow
/// racing writers that move documents in and out of the selectors. Every document a filtered
/// stream receives matches its selector when sent, and every stream's copy ends equal to the
/// matches of the final state: streams of different selectors never share a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_and_unfiltered_streams_over_grpc_get_exactly_their_own_changes() {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use syncline::config::Config;
    use syncline::proto::{Checkpoint, SubscribeRequest, subscribe_response};

    const DOCS: usize = 30;
    const STREAMS_PER_VIEW: usize = 4;
    const WRITERS: usize = 3;
    const ROUNDS: usize = 30;
    let db = fresh_database().await;
    let mut config = Config::from_toml(
        r#"
        listen = "127.0.0.1:0"
        metrics_enabled = false
        [auth]
        mode = "none"
        [[collections]]
        name = "tasks"
        filter_fields = { done = "boolean" }
        "#,
    )
    .expect("config parses");
    config.database_url = Some(db);
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let rows = (0..DOCS)
        .map(|i| {
            insert(doc(
                &format!("d{i:02}"),
                serde_json::json!({"done": i % 2 == 0}),
            ))
        })
        .collect();
    assert!(push(&mut c, "tasks", rows).await.is_empty());

    // None: unfiltered; Some(done): {"done": done}.
    let views = [None, Some(false), Some(true)];
    let mut streams = Vec::new();
    for view in views {
        for _ in 0..STREAMS_PER_VIEW {
            let selector = view
                .map(|done| serde_json::json!({ "done": done }).to_string().into_bytes())
                .unwrap_or_default();
            let mut stream = c
                .subscribe(SubscribeRequest {
                    collection: "tasks".into(),
                    checkpoint: Some(Checkpoint::default()),
                    selector,
                })
                .await
                .expect("subscribe")
                .into_inner();
            let copy = Arc::new(std::sync::Mutex::new(BTreeMap::<String, bool>::new()));
            let into = copy.clone();
            let task = tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    let Some(subscribe_response::Event::Changes(batch)) = message.event else {
                        continue;
                    };
                    let mut copy = into.lock().expect("copy");
                    for d in batch.documents {
                        if d.deleted {
                            copy.remove(&d.id);
                            continue;
                        }
                        let body: serde_json::Value =
                            serde_json::from_slice(&d.json).expect("a JSON body");
                        let done = body["done"].as_bool().expect("done");
                        if let Some(wanted) = view {
                            assert_eq!(done, wanted, "{} sent to a stream of done={wanted}", d.id);
                        }
                        copy.insert(d.id, done);
                    }
                }
            });
            streams.push((view, copy, task));
        }
    }

    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(server.client().await);
    }
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(0xfa7 + w as u64);
                for _ in 0..ROUNDS {
                    let id = format!("d{:02}", rng.random_range(0..DOCS));
                    let (docs, _) = pull_all(&mut c, "tasks", "", 1000).await;
                    let current = docs.into_iter().find(|d| d.id == id).expect("seeded");
                    let body: serde_json::Value =
                        serde_json::from_slice(&current.json).expect("a JSON body");
                    let done = !body["done"].as_bool().expect("done");
                    let row = update(doc(&id, serde_json::json!({ "done": done })), current);
                    // A conflict is another writer's win: fine.
                    let _ = push(&mut c, "tasks", vec![row]).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let (all, _) = pull_all(&mut c, "tasks", "", 1000).await;
    let state: BTreeMap<String, bool> = all
        .iter()
        .map(|d| {
            let body: serde_json::Value = serde_json::from_slice(&d.json).expect("a JSON body");
            (d.id.clone(), body["done"].as_bool().expect("done"))
        })
        .collect();
    for (view, copy, task) in &streams {
        let expected: BTreeMap<String, bool> = state
            .iter()
            .filter(|(_, done)| view.is_none_or(|wanted| **done == wanted))
            .map(|(id, done)| (id.clone(), *done))
            .collect();
        let mut same = false;
        for _ in 0..300 {
            assert!(!task.is_finished(), "a stream ended (or its check failed)");
            if *copy.lock().expect("copy") == expected {
                same = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            same,
            "view {view:?}: the stream's copy {:?} differs from {expected:?}",
            copy.lock().expect("copy")
        );
    }
    for (_, _, task) in streams {
        task.abort();
    }
}
