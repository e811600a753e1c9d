//! Memory bounds in bytes (issue 10 item 2): pages and stream batches end at `page_bytes_max`
//! (always with one document at least, so paging progresses), the shared tail holds at most
//! `stream_buffer_bytes`, one principal's streams may pin at most
//! `stream_bytes_per_principal_max`, and no page of documents within the limits is larger than
//! the message size the server sends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{Checkpoint, Document, PullRequest, SubscribeRequest};
use syncline::protocol::{
    DocumentInput, Principal, ProtocolError, Replicator, ReplicatorParts, RowInput, StreamEvent,
};
use syncline::store::DOCUMENT_OVERHEAD_BYTES;
use syncline::store::postgres::PgStore;
use tonic::transport::Channel;

use crate::common::*;

const MIB: usize = 1024 * 1024;

/// A JSON body of exactly `bytes` bytes.
fn padded(bytes: usize) -> serde_json::Value {
    serde_json::json!({ "pad": "x".repeat(bytes - r#"{"pad":""}"#.len()) })
}

/// What a pulled document weighs in a page, as the server counts it.
fn weight(d: &Document) -> usize {
    d.json.len() + d.id.len() + d.owner.len() + d.revision.len() + DOCUMENT_OVERHEAD_BYTES
}

/// A client that accepts responses of any size: the server's own limits are under test.
async fn large_client(server: &TestServer) -> ReplicationServiceClient<Channel> {
    server.client().await.max_decoding_message_size(usize::MAX)
}

/// Pushes `n` documents `<prefix>-<i>` of `bytes` bytes each, `per_push` per push.
async fn push_large(
    client: &mut ReplicationServiceClient<Channel>,
    prefix: &str,
    n: usize,
    bytes: usize,
    per_push: usize,
) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    for chunk in ids.chunks(per_push) {
        let rows = chunk
            .iter()
            .map(|id| insert(doc(id, padded(bytes))))
            .collect();
        assert!(push(client, "tasks", rows).await.is_empty());
    }
}

/// Pulls every page from the start with `limit`; returns the pages.
async fn pull_pages(
    client: &mut ReplicationServiceClient<Channel>,
    limit: u32,
) -> Vec<Vec<Document>> {
    let mut token = String::new();
    let mut pages = Vec::new();
    for _ in 0..1000 {
        let r = client
            .pull(PullRequest {
                collection: "tasks".into(),
                checkpoint: Some(Checkpoint {
                    token: token.clone(),
                }),
                limit,
                selector: Vec::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("pull fails: {s:?}"))
            .into_inner();
        if r.documents.is_empty() {
            return pages;
        }
        token = r.checkpoint.expect("a checkpoint").token;
        pages.push(r.documents);
    }
    panic!("paging does not end");
}

#[tokio::test]
async fn pages_of_large_documents_end_at_the_byte_budget_and_progress() {
    let db = fresh_database().await;
    let server = TestServer::start_with(config(&db)).await;
    let mut client = large_client(&server).await;
    // 10 documents of 1 MiB (document_bytes_max): a 4 MiB page holds three of them.
    push_large(&mut client, "big", 10, MIB, 5).await;
    let pages = pull_pages(&mut client, 1000).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 3, 1], "pages end at the 4 MiB budget");
    for page in &pages {
        let bytes: usize = page.iter().map(weight).sum();
        assert!(bytes <= 4 * MIB, "a page of {bytes} bytes");
    }
    let ids: Vec<&str> = pages.iter().flatten().map(|d| d.id.as_str()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("big-{i:03}")).collect();
    assert_eq!(ids, expected, "every document once, in order");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_page_holds_one_document_when_one_exceeds_the_budget() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.page_bytes_max = 1;
    let server = TestServer::start_with(cfg).await;
    let mut client = large_client(&server).await;
    push_large(&mut client, "d", 5, 1000, 5).await;
    let pages = pull_pages(&mut client, 100).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [1; 5]);

    // A stream's batches too.
    let mut stream = client
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("batch {i} within 10 s"))
            .unwrap()
            .unwrap();
        let Some(Event::Changes(batch)) = message.event else {
            panic!("expected changes, got {message:?}");
        };
        assert_eq!(batch.documents.len(), 1);
        assert_eq!(batch.documents[0].id, format!("d-{i:03}"));
    }
    drop(stream);
    server.stop().await.unwrap();
}

/// Issue 10: a service principal's default Pull (100 documents) over documents near
/// `document_bytes_max` asked for a page larger than the message limit, and failed on every
/// retry: replication was wedged for good. Here 12 documents of 1 MiB exceed the 8 MiB message
/// limit; pages of 4 MiB never do, and Subscribe's batches neither.
#[tokio::test]
async fn a_service_principals_default_pull_and_subscribe_over_large_documents_never_fail() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.message_bytes_max = Some(8 * MIB);
    let server = TestServer::start_with(cfg).await;
    let mut client = large_client(&server).await;
    push_large(&mut client, "big", 12, MIB, 4).await;

    let pages = pull_pages(&mut client, 0).await;
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 12);

    let mut stream = client
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while got < 12 {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a batch within 20 s")
            .unwrap_or_else(|s| panic!("the stream fails: {s:?}"))
            .expect("the stream stays open");
        if let Some(Event::Changes(batch)) = message.event {
            let bytes: usize = batch.documents.iter().map(weight).sum();
            assert!(bytes <= 4 * MIB, "a batch of {bytes} bytes");
            got += batch.documents.len();
        }
    }
    assert_eq!(got, 12);
    drop(stream);
    server.stop().await.unwrap();
}

/// A replicator on PostgreSQL with the given byte limits and a roomy document count.
async fn replicator(
    page_bytes_max: usize,
    stream_buffer_bytes: usize,
    stream_bytes_per_principal_max: usize,
) -> Arc<Replicator<PgStore>> {
    let db = fresh_database().await;
    let store = Arc::new(migrated_store(&db, 4).await);
    let replicator = Arc::new(Replicator::new(ReplicatorParts {
        page_bytes_max,
        stream_buffer_bytes,
        stream_bytes_per_principal_max,
        ..replicator_parts(store, &config(&db))
    }));
    replicator.start(&tokio_util::task::TaskTracker::new());
    replicator
}

/// Issue 10: 1,500 documents of 1 MiB took the shared buffer to 1.8 GB. It now stays under
/// `stream_buffer_bytes` however much is written, and streams still get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_tail_stays_under_its_byte_bound() {
    const BOUND: usize = 2 * MIB;
    let replicator = replicator(MIB, BOUND, 512 * MIB).await;
    let service = Principal::anonymous_service();
    let mut events = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
    // Let the stream catch up (nothing yet) so that it follows the tail.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut max_bytes = 0;
    let mut max_documents = 0;
    let mut received = HashSet::new();
    for batch in 0..8 {
        let rows = (0..4)
            .map(|i| RowInput {
                new_state: Some(DocumentInput {
                    id: format!("b{batch}-{i}"),
                    json: padded(256 * 1024).to_string().into_bytes(),
                    ..Default::default()
                }),
                assumed: None,
            })
            .collect();
        replicator.push(&service, "tasks", rows).await.unwrap();
        // Read while writing, sampling the buffer between batches.
        while received.len() < (batch + 1) * 4 {
            max_bytes = max_bytes.max(replicator.buffered_bytes("tasks"));
            max_documents = max_documents.max(replicator.buffered("tasks"));
            let item = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("documents within 30 s")
                .expect("the stream is open")
                .expect("no stream error");
            if let StreamEvent::Changes { documents, .. } = item {
                received.extend(documents.into_iter().map(|d| d.id));
            }
        }
        max_bytes = max_bytes.max(replicator.buffered_bytes("tasks"));
        max_documents = max_documents.max(replicator.buffered("tasks"));
    }
    assert_eq!(received.len(), 32, "every document streamed once");
    assert!(max_documents > 0, "the tail served the stream");
    assert!(
        max_bytes <= BOUND,
        "the tail held {max_bytes} bytes, over its bound of {BOUND}"
    );
    // 8 MiB were written; at most 2 MiB of them (7 documents of 256 KiB) stay buffered.
    assert!(
        max_documents <= BOUND / (256 * 1024),
        "{max_documents} documents buffered"
    );
}

fn alice() -> Principal {
    Principal {
        subject: "alice".into(),
        ..Principal::anonymous_service()
    }
}

/// One principal's streams may pin two batches each; beyond `stream_bytes_per_principal_max`
/// a Subscribe is refused with RESOURCE_EXHAUSTED naming the limit, other principals unaffected.
#[tokio::test]
async fn a_principals_streams_may_pin_only_their_byte_budget() {
    // Pages of 1 MiB, documents of up to 1 MiB (1.5 MiB and more as text): a batch weighs up
    // to about 2.6 MiB and each stream may pin two, about 5.2 MiB; 11 MiB allow two streams.
    let replicator = replicator(MIB, 64 * MIB, 11 * MIB).await;
    let alice = alice();
    let first = replicator
        .subscribe(&alice, "tasks", "", b"")
        .await
        .unwrap();
    let _second = replicator
        .subscribe(&alice, "tasks", "", b"")
        .await
        .unwrap();
    match replicator.subscribe(&alice, "tasks", "", b"").await {
        Err(ProtocolError {
            kind: syncline::protocol::Kind::ResourceExhausted,
            message: m,
            ..
        }) => {
            assert!(m.contains("stream_bytes_per_principal_max"), "{m}")
        }
        other => panic!("a third stream: {other:?}"),
    }
    let bob = Principal {
        subject: "bob".into(),
        ..alice.clone()
    };
    let _bob = replicator.subscribe(&bob, "tasks", "", b"").await.unwrap();
    drop(first);
    // The slot comes back once the first stream's task has ended.
    for _ in 0..500 {
        if replicator.subscribe(&alice, "tasks", "", b"").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the slot never came back");
}
