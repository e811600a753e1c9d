//! A client that stops reading costs a bounded amount: the stream reads the next page only
//! after the previous one was taken, so writes pile up in the table, not in server memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use syncline::fanout::Hub;
use syncline::protocol::{
    Collections, DocumentInput, Limits, Principal, Replicator, ReplicatorParts, RowInput,
    StreamEvent,
};
use syncline::store::postgres::{PgStore, PoolSettings};
use syncline::store::{
    ChangePage, PageLimit, Position, PushOutcome, PushPlan, PushTarget, Store, StoreError,
    StoredDocument,
};
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// The real PostgreSQL store, counting page reads and documents read.
struct Counting {
    inner: PgStore,
    reads: AtomicUsize,
    documents: AtomicUsize,
}

impl Store for Counting {
    async fn read_changes(
        &self,
        c: &str,
        owner: Option<&str>,
        after: Position,
        limit: PageLimit,
    ) -> Result<ChangePage, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let page = self.inner.read_changes(c, owner, after, limit).await?;
        self.documents
            .fetch_add(page.documents.len(), Ordering::SeqCst);
        Ok(page)
    }

    async fn horizon(&self) -> Result<i64, StoreError> {
        self.inner.horizon().await
    }

    async fn apply_push<F>(
        &self,
        c: &str,
        targets: &[PushTarget],
        decide: F,
    ) -> Result<PushOutcome, StoreError>
    where
        F: Fn(
                &HashMap<String, StoredDocument>,
            ) -> Result<PushPlan, syncline::protocol::ProtocolError>
            + Send
            + Sync,
    {
        self.inner.apply_push(c, targets, decide).await
    }
}

/// A replicator on the counting store: pages of 20, a shared buffer of 50 documents.
async fn counting_replicator() -> (Arc<Counting>, Replicator<Counting>) {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.pull_limit_max = 20;
    let inner = PgStore::connect_lazy(
        &db,
        &PoolSettings {
            size: 4,
            acquire_timeout: Duration::from_secs(5),
            statement_cache_capacity: 100,
            read_ahead_pages: 16,
        },
    )
    .unwrap();
    inner.migrate().await.unwrap();
    let store = Arc::new(Counting {
        inner,
        reads: AtomicUsize::new(0),
        documents: AtomicUsize::new(0),
    });
    let collections = Collections::from_config(&cfg).unwrap();
    let hub = Hub::new(collections.names());
    let replicator = Replicator::new(ReplicatorParts {
        store: store.clone(),
        collections,
        limits: Limits::from_config(&cfg),
        hub,
        streams_max: 10,
        streams_per_principal_max: 10,
        stream_buffer_documents: 50,
        page_bytes_max: 4 << 20,
        stream_buffer_bytes: 64 << 20,
        stream_bytes_per_principal_max: 512 << 20,
        heartbeat: Duration::from_secs(60),
        visibility_wait: Duration::from_millis(100),
        shutdown: CancellationToken::new(),
    });
    (store, replicator)
}

/// Pushes `batches` batches of 10 new documents named `<prefix>-<batch>-<i>`.
async fn push_batches(replicator: &Replicator<Counting>, prefix: &str, batches: usize) {
    let service = Principal::anonymous_service();
    for b in 0..batches {
        let rows = (0..10)
            .map(|i| RowInput {
                new_state: Some(DocumentInput {
                    id: format!("{prefix}-{b}-{i}"),
                    json:
                        br#"{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#
                            .to_vec(),
                    ..Default::default()
                }),
                assumed: None,
            })
            .collect();
        replicator.push(&service, "tasks", rows).await.unwrap();
    }
}

/// Receives until `n` documents came; heartbeats are skipped.
async fn receive(
    events: &mut tokio::sync::mpsc::Receiver<syncline::protocol::StreamItem>,
    n: usize,
) -> Vec<StoredDocument> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("documents within 10 s")
            .expect("the stream is open")
            .expect("no stream error")
        {
            StreamEvent::Changes { documents, .. } => got.extend(documents),
            StreamEvent::Heartbeat => {}
        }
    }
    got
}

/// Polls `done` every 20 ms for up to 10 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test]
async fn stalled_subscribers_hold_at_most_two_pages_and_catch_up_from_the_table() {
    let (store, replicator) = counting_replicator().await;
    let service = Principal::anonymous_service();
    let _second_stalled = replicator.subscribe(&service, "tasks", "").unwrap();
    let mut events = replicator.subscribe(&service, "tasks", "").unwrap();
    // 100 pushes of 10 documents while nobody reads the stream.
    push_batches(&replicator, "slow", 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The shared tail read the 1,000 changes once and keeps only its window; each stalled
    // stream holds at most one page in its channel and one being read.
    assert!(
        replicator.buffered("tasks") <= 50,
        "the shared buffer is bounded"
    );
    let read = store.documents.load(Ordering::SeqCst);
    assert!(
        read <= 1000 + 2 * 2 * 20,
        "stalled streams read {read} documents: more than the tail's one pass plus two pages each"
    );
    // Reading resumes and delivers everything, in order, once each.
    let got = receive(&mut events, 1000).await;
    assert_eq!(got.len(), 1000);
    let positions: Vec<Position> = got.iter().map(|d| d.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in change order");
}

#[tokio::test]
async fn the_shared_tail_reads_nothing_while_no_stream_watches() {
    let (store, replicator) = counting_replicator().await;
    push_batches(&replicator, "unwatched", 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.documents.load(Ordering::SeqCst),
        0,
        "with no stream open, writes are not read back"
    );
    assert_eq!(replicator.buffered("tasks"), 0);

    // A stream wakes the tail: it gets the 50 older documents from the table, then live ones.
    let service = Principal::anonymous_service();
    let mut events = replicator.subscribe(&service, "tasks", "").unwrap();
    assert_eq!(receive(&mut events, 50).await.len(), 50);
    push_batches(&replicator, "watched", 3).await;
    let live = receive(&mut events, 30).await;
    assert!(
        live.iter().all(|d| d.id.starts_with("watched-")),
        "{live:?}"
    );
    eventually("the tail buffers the live writes", || {
        replicator.buffered("tasks") >= 30
    })
    .await;

    // The last stream goes away: the tail forgets its buffer and stops reading.
    drop(events);
    eventually("the tail empties once unwatched", || {
        replicator.buffered("tasks") == 0
    })
    .await;
    let read = store.documents.load(Ordering::SeqCst);
    push_batches(&replicator, "unwatched-again", 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.documents.load(Ordering::SeqCst), read);
}
