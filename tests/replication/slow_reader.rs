//! A client that stops reading costs a bounded amount: the stream reads the next page only
//! after the previous one was taken, so writes pile up in the table, not in server memory.
//! The shared tail never skips a change (even when a stream wakes it in the instant it decided
//! to sleep), and a slow reader stops receiving as soon as its token expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use syncline::protocol::{
    DocumentInput, Principal, Replicator, ReplicatorParts, RowInput, StreamEvent,
};
use syncline::store::postgres::{PgStore, PoolSettings};
use syncline::store::{
    ChangePage, Idempotency, PageLimit, Position, PushApplied, PushError, PushPlan, PushTarget,
    Resume, Store, StoreError, StoredDocument,
};

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
        after: Resume,
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

    async fn apply_push<F, E, R>(
        &self,
        c: &str,
        targets: &[PushTarget],
        decide: F,
        idempotency: Option<&Idempotency<'_, R>>,
    ) -> Result<PushApplied<R>, PushError<E>>
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync,
    {
        self.inner.apply_push(c, targets, decide, idempotency).await
    }

    async fn checkpoint_key(&self) -> Result<[u8; 32], StoreError> {
        self.inner.checkpoint_key().await
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
    let replicator = Replicator::new(ReplicatorParts {
        streams_max: 10,
        streams_per_principal_max: 10,
        stream_buffer_documents: 50,
        page_bytes_max: 4 << 20,
        stream_buffer_bytes: 64 << 20,
        stream_bytes_per_principal_max: 512 << 20,
        ..replicator_parts(store.clone(), &cfg)
    });
    replicator.start(&tokio_util::task::TaskTracker::new());
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
            StreamEvent::Resync { reason } => panic!("unexpected resync: {reason}"),
        }
    }
    got
}

/// Polls `done` every 20 ms for up to 10 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    eventually_within(what, 10, done).await;
}

/// Polls `done` every 20 ms for up to `seconds` s: long enough, where it waits for the
/// visibility horizon, to outlast a transaction that another test holds open in the shared
/// cluster.
async fn eventually_within(what: &str, seconds: u64, done: impl Fn() -> bool) {
    for _ in 0..seconds * 50 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {seconds} s: {what}");
}

#[tokio::test]
async fn stalled_subscribers_hold_at_most_two_pages_and_catch_up_from_the_table() {
    let (store, replicator) = counting_replicator().await;
    let service = Principal::anonymous_service();
    let _second_stalled = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
    let mut events = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
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
    let mut events = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
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

/// Receives one batch of documents (heartbeats skipped).
async fn receive_batch(
    events: &mut tokio::sync::mpsc::Receiver<syncline::protocol::StreamItem>,
) -> Vec<StoredDocument> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a batch within 10 s")
            .expect("the stream is open")
            .expect("no stream error")
        {
            StreamEvent::Changes { documents, .. } => return documents.into_iter().collect(),
            StreamEvent::Heartbeat => {}
            StreamEvent::Resync { reason } => panic!("unexpected resync: {reason}"),
        }
    }
}

/// Issue 11 item 7. A stream subscribes in the instant the tail, its last stream gone, decided
/// to sleep: the tail follows again at once, from the newest position. Changes written while
/// it stood still are never in its buffer; if it kept its old entries, evicting them would
/// move the start of the covered range back across those changes, and a stream positioned
/// among them would be served from the buffer and skip them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_wakes_the_tail_as_it_goes_to_sleep_skips_nothing() {
    let (store, replicator) = counting_replicator().await;
    let service = Principal::anonymous_service();
    let tail = replicator.tail("tasks").expect("a tail per collection");

    // A watches while 50 documents are written: the tail buffers them (its capacity is 50).
    // A's stream wakes the tail, which starts following from the horizon of that moment; a
    // write committed before then is read by the streams that need it, never by the tail. So
    // the writes start once the tail follows, or it may hold fewer than 50 (and then the late
    // writes below would evict nothing, and the test would prove nothing).
    let mut a = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
    let mut following = tail.watch();
    tokio::time::timeout(Duration::from_secs(10), async {
        while *following.borrow_and_update() == Position::START {
            following.changed().await.expect("the tail is alive");
        }
    })
    .await
    .expect("the tail follows");
    push_batches(&replicator, "x", 5).await;
    assert_eq!(receive(&mut a, 50).await.len(), 50);
    eventually_within("the tail buffers the 50 documents", 60, || {
        replicator.buffered("tasks") == 50
    })
    .await;

    // A leaves; the tail stops right before it re-checks whether anyone watches.
    let pause = tail.pause_before_recheck();
    drop(following);
    drop(a);
    tokio::time::timeout(Duration::from_secs(10), pause.reached())
        .await
        .expect("the tail reaches its re-check");

    // B subscribes in that window and catches up from the table in pages of 20, 20 and 10;
    // the last one (not full: B is now caught up) stays queued, so B reads nothing more until
    // it is taken.
    let mut b = replicator
        .subscribe(&service, "tasks", "", b"")
        .await
        .unwrap();
    assert_eq!(receive_batch(&mut b).await.len(), 20);
    assert_eq!(receive_batch(&mut b).await.len(), 20);
    eventually("B queues its last catch-up page", || b.len() == 1).await;

    // Written while the tail stands still, after B's position: the gap. The tail resumes only
    // once the horizon covers it, so that it starts following past the gap and never reads it
    // (a transaction held elsewhere in the cluster would otherwise let it read the gap itself).
    push_batches(&replicator, "gap", 1).await;
    let everything = PageLimit::new(1000, usize::MAX);
    for round in 0.. {
        let page = store
            .inner
            .read_changes("tasks", None, Resume::default(), everything)
            .await
            .unwrap();
        let gap = page.documents.iter().filter(|d| d.id.starts_with("gap-"));
        if gap.count() == 10 {
            break;
        }
        assert!(round < 3000, "the gap is not readable within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut head = tail.watch();
    let before = *head.borrow_and_update();
    pause.resume();
    // The tail follows again: its head moves past the gap at once.
    tokio::time::timeout(Duration::from_secs(20), async {
        while *head.borrow_and_update() <= before {
            head.changed().await.expect("the tail is alive");
        }
    })
    .await
    .expect("the tail follows again");

    // Written after the tail resumed: it reads them, and (with its old entries kept) would
    // evict the 10 oldest.
    let read = store.documents.load(Ordering::SeqCst);
    push_batches(&replicator, "late", 1).await;
    eventually_within("the tail reads the late writes", 60, || {
        store.documents.load(Ordering::SeqCst) >= read + 10
    })
    .await;

    // B goes on: every document once, the gap included.
    let mut got: Vec<String> = Vec::new();
    for _ in 0..10 {
        if got.iter().filter(|id| id.starts_with("late-")).count() == 10 {
            break;
        }
        got.extend(receive_batch(&mut b).await.into_iter().map(|d| d.id));
    }
    let gap: Vec<&String> = got.iter().filter(|id| id.starts_with("gap-")).collect();
    assert_eq!(gap.len(), 10, "B skipped the writes of the gap: {got:?}");
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "each document once: {got:?}");
    // The tail resumed with an empty buffer: it holds only the late writes, none of the entries
    // it kept from before it stood still.
    eventually("the tail holds only what it read since it resumed", || {
        replicator.buffered("tasks") == 10
    })
    .await;
}

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// An HS256 token for `sub` expiring at `exp` (seconds since the epoch).
fn token_expiring(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Issue 10 item 6. A stream catching up is never idle, and expiry was checked only while it
/// was: a slow reader kept receiving for as long as it had documents to catch up on. Now a
/// stream checks before every send. Batches already on their way when the token expires may
/// still arrive (the stream's one queued batch, what HTTP/2 has buffered); nothing sent later.
#[tokio::test]
async fn a_slow_reader_stops_receiving_when_its_token_expires() {
    use std::time::{SystemTime, UNIX_EPOCH};
    use syncline::config::{AuthConfig, AuthMode};
    use syncline::proto::SubscribeRequest;
    use syncline::proto::replication_service_client::ReplicationServiceClient;
    use syncline::proto::subscribe_response::Event;

    const LEEWAY_SECONDS: u64 = 0;
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.pull_limit_default = 20;
    cfg.pull_limit_max = 20;
    cfg.auth = Some(AuthConfig {
        subject_bytes_max: 256,
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        jwks_file: None,
        issuer: None,
        audience: None,
        service_scope: "syncline:service".into(),
        leeway_seconds: LEEWAY_SECONDS,
    });
    let server = TestServer::start_with(cfg).await;
    // 40 batches of 20 documents of 8 KiB (160 KiB each) for alice to catch up on.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let long = token_expiring("alice", now + 600);
    let mut client = server.client().await;
    for b in 0..8 {
        let rows = (0..100)
            .map(|i| {
                insert(doc(
                    &format!("d-{b}-{i:03}"),
                    serde_json::json!({ "pad": "x".repeat(8 * 1024) }),
                ))
            })
            .collect();
        let mut request = tonic::Request::new(syncline::proto::PushRequest {
            collection: "tasks".into(),
            rows,
            mode: 0,
            idempotency_key: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {long}").parse().unwrap());
        client.push(request).await.expect("push succeeds");
    }

    // Every document readable before the stream starts (a transaction elsewhere in the cluster
    // may hold the horizon back for a while; Pull waits it out).
    let mut token = String::new();
    let mut readable = 0;
    for _ in 0..100 {
        let mut request = tonic::Request::new(syncline::proto::PullRequest {
            collection: "tasks".into(),
            checkpoint: Some(syncline::proto::Checkpoint {
                token: token.clone(),
            }),
            limit: 20,
            selector: Vec::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {long}").parse().unwrap());
        let page = client
            .pull(request)
            .await
            .expect("pull succeeds")
            .into_inner();
        if page.documents.is_empty() {
            break;
        }
        readable += page.documents.len();
        token = page.checkpoint.expect("a checkpoint").token;
    }
    assert_eq!(readable, 800);

    // A client with small HTTP/2 windows, so that little can wait in its buffers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .unwrap();
    let mut client = ReplicationServiceClient::new(channel);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3;
    let expires = UNIX_EPOCH + Duration::from_secs(exp + LEEWAY_SECONDS);
    let mut request = tonic::Request::new(SubscribeRequest {
        collection: "tasks".into(),
        checkpoint: None,
        selector: Vec::new(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token_expiring("alice", exp))
            .parse()
            .unwrap(),
    );
    let mut stream = client.subscribe(request).await.unwrap().into_inner();

    // Read one batch every 150 ms: 40 batches would take 6 s, the token lasts 2 to 3 s.
    let (mut before, mut after) = (0, 0);
    let status = loop {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the stream moves within 20 s");
        match message {
            Ok(Some(m)) => {
                if let Some(Event::Changes(_)) = m.event {
                    if SystemTime::now() > expires {
                        after += 1;
                    } else {
                        before += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(before > 0, "the stream sent before the token expired");
    // In flight at expiry: the queued batch, the one being encoded, up to 400 KiB in the
    // server's HTTP/2 send buffer (two or three batches) and 64 KiB in the client's.
    assert!(
        after <= 6,
        "{after} batches arrived after the token expired ({before} before)"
    );
    server.stop().await.unwrap();
}
