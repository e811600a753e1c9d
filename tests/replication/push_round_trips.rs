//! "A single write costs the fewest round trips", counted by a proxy that parses the store's
//! messages to PostgreSQL: a push of new documents, keyed or not, is one statement (the
//! guarded write, which checks that they are new and stores the key); an update is two (the
//! read, then that write); no BEGIN, key claim, response update or COMMIT of their own. And
//! these paths keep the idempotency contract when duplicates race on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use syncline::store::postgres::PgStore;
use syncline::store::{Idempotency, PushApplied, PushError, PushOutcome, PushTarget, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::fresh_database;
use crate::idempotency::{increment, store_at};

const DAY: Duration = Duration::from_secs(86_400);
const RACERS: usize = 8;
const ROUNDS: usize = 20;

/// The SSLRequest and GSSENCRequest codes: startup-phase messages after which another
/// untyped startup message follows.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

/// Forwards 127.0.0.1:<port> to PostgreSQL and counts the statements its clients run, each a
/// round trip: every `Execute` (of a prepared statement) and every simple `Query` (BEGIN,
/// COMMIT). Not counted: the lone `Sync` with which sqlx tests a connection it takes back
/// into the pool, after the push has its answer.
struct CountingProxy {
    port: u16,
    round_trips: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(target: String) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let round_trips = Arc::new(AtomicUsize::new(0));
        let counter = round_trips.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target.clone()).await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let _ = forward_counting(&mut from_client, &mut to_server, &counter).await;
                    back.abort();
                });
            }
        });
        CountingProxy { port, round_trips }
    }

    fn count(&self) -> usize {
        self.round_trips.load(Ordering::SeqCst)
    }
}

/// Copies the client's messages one by one, counting `E` (Execute) and `Q` (Query).
async fn forward_counting(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
    // Startup: untyped messages (length, then code) until the startup message proper.
    loop {
        let len = from.read_u32().await?;
        let mut rest = vec![0; (len as usize).saturating_sub(4)];
        from.read_exact(&mut rest).await?;
        to.write_u32(len).await?;
        to.write_all(&rest).await?;
        let code = rest
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if !code.is_some_and(|c| ENCRYPTION_REQUESTS.contains(&c)) {
            break;
        }
    }
    loop {
        let kind = from.read_u8().await?;
        let len = from.read_u32().await?;
        let mut rest = vec![0; (len as usize).saturating_sub(4)];
        from.read_exact(&mut rest).await?;
        if kind == b'E' || kind == b'Q' {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        to.write_u8(kind).await?;
        to.write_u32(len).await?;
        to.write_all(&rest).await?;
    }
}

/// `url` with its port replaced and TLS off (the proxy reads the messages).
fn through(url: &str, port: u16) -> String {
    let at = url.rfind('@').expect("user@host");
    let colon = at + url[at..].find(':').expect("host:port");
    let slash = colon + url[colon..].find('/').expect("/db");
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{}{port}{}{sep}sslmode=disable",
        &url[..=colon],
        &url[slash..]
    )
}

fn port_of(url: &str) -> u16 {
    let at = url.rfind('@').expect("user@host");
    let colon = at + url[at..].find(':').expect("host:port");
    let slash = colon + url[colon..].find('/').expect("/db");
    url[colon + 1..slash].parse().expect("port")
}

/// `id`, pushed as a new document when `new` (the store may then skip the read).
fn targets(id: &str, new: bool) -> Vec<PushTarget> {
    vec![PushTarget {
        id: id.to_owned(),
        skip_body_at: None,
        new,
    }]
}

/// A response that, like the server's for a push without conflicts, shows no commit time.
fn respond(outcome: &PushOutcome) -> Vec<u8> {
    format!("written={}", outcome.written).into_bytes()
}

fn key<'a>(principal: &'a str, key: &'a str) -> Idempotency<'a, ()> {
    Idempotency {
        principal,
        key,
        request_hash: [7; 32],
        retention: DAY,
        respond: &respond,
    }
}

async fn push_increment(
    store: &PgStore,
    (id, new): (&str, bool),
    idempotency: Option<&Idempotency<'_, ()>>,
    calls: &AtomicUsize,
) -> Result<PushApplied<()>, PushError<String>> {
    store
        .apply_push(
            "tasks",
            &targets(id, new),
            |current| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(increment(id, current))
            },
            idempotency,
        )
        .await
}

async fn stored_counter(store: &PgStore, id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT (body->>'n')::bigint FROM syncline_documents WHERE collection = 'tasks' AND id = $1",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .expect("read counter")
    .unwrap_or(0)
}

#[tokio::test]
async fn a_push_is_one_statement_for_new_documents_and_two_for_updates_keyed_or_not() {
    let db = fresh_database().await;
    let proxy = CountingProxy::start(format!("127.0.0.1:{}", port_of(&db))).await;
    // One connection: its statements are prepared once, and no other work shares it.
    let store = store_at(&through(&db, proxy.port), 1).await;
    let calls = AtomicUsize::new(0);
    // Warm up: the first execution of each statement also prepares it (one more Sync).
    for i in 0..3 {
        for (id, new) in [(format!("warm-{i}"), true), ("warm".to_owned(), false)] {
            let k = format!("{id}-{i}");
            let warm = push_increment(&store, (&id, new), Some(&key("alice", &k)), &calls).await;
            assert!(matches!(warm, Ok(PushApplied::Applied(_))), "warm-up push");
            let warm = push_increment(&store, (&id, new), None, &calls).await;
            assert!(matches!(warm, Ok(PushApplied::Applied(_))), "warm-up push");
        }
    }

    let mut trips = Vec::new();
    for (what, target, k, replayed) in [
        ("keyed insert", ("a", true), Some("k-insert"), false),
        ("keyed update", ("a", false), Some("k-update"), false),
        ("insert without key", ("b", true), None, false),
        ("update without key", ("b", false), None, false),
        (
            "keyed replay of the update",
            ("a", false),
            Some("k-update"),
            true,
        ),
        (
            "keyed replay of the insert",
            ("a", true),
            Some("k-insert"),
            true,
        ),
        ("insert of an existing id", ("b", true), None, false),
    ] {
        let idempotency = k.map(|k| key("alice", k));
        let before = proxy.count();
        let result = push_increment(&store, target, idempotency.as_ref(), &calls).await;
        match result {
            Ok(PushApplied::Replayed(_)) if replayed => {}
            Ok(PushApplied::Applied(_)) if !replayed => {}
            other => panic!("{what}: {:?}", other.map_err(|e| describe(&e))),
        }
        trips.push((what, proxy.count() - before));
    }

    assert_eq!(
        trips,
        vec![
            ("keyed insert", 1),
            ("keyed update", 2),
            ("insert without key", 1),
            ("update without key", 2),
            ("keyed replay of the update", 1),
            // The write finds the key taken; the read finds its response.
            ("keyed replay of the insert", 2),
            // The write finds the id taken; the push is decided again on the read.
            ("insert of an existing id", 3),
        ],
        "statements sent to PostgreSQL per push"
    );
    assert_eq!(
        stored_counter(&store, "a").await,
        2,
        "replays write nothing"
    );
    assert_eq!(
        stored_counter(&store, "b").await,
        3,
        "an insert of an existing id is decided on its stored state"
    );
    store.close().await;
}

#[tokio::test]
async fn racing_duplicates_on_the_two_statement_path_apply_once_and_replay_the_same_response() {
    let db = fresh_database().await;
    let store = Arc::new(store_at(&db, RACERS as u32 + 2).await);
    let calls = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let id = format!("doc-{}", round % 3);
        let before = stored_counter(&store, &id).await;
        // Absent: every racer writes without reading first, and all but one find the key.
        let new = before == 0;
        let k = format!("round-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for _ in 0..RACERS {
            let (store, calls, start) = (store.clone(), calls.clone(), start.clone());
            let (id, k) = (id.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let idempotency = key("alice", &k);
                let result = tokio::time::timeout(
                    Duration::from_secs(30),
                    push_increment(&store, (&id, new), Some(&idempotency), &calls),
                )
                .await
                .expect("a racing push ends");
                match result {
                    Ok(PushApplied::Applied(outcome)) => (true, respond(&outcome)),
                    Ok(PushApplied::Replayed(bytes)) => (false, bytes),
                    Err(e) => panic!("round {round}: a duplicate failed: {}", describe(&e)),
                }
            }));
        }
        let mut applied = 0;
        for task in tasks {
            let (was_applied, bytes) = task.await.expect("racer");
            applied += usize::from(was_applied);
            assert_eq!(bytes, b"written=1", "round {round}: the first response");
        }
        assert_eq!(applied, 1, "round {round}: exactly one duplicate applies");
        assert_eq!(
            stored_counter(&store, &id).await,
            before + 1,
            "round {round}: written once"
        );
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM syncline_push_keys")
        .fetch_one(store.pool())
        .await
        .expect("count keys");
    assert_eq!(
        keys, ROUNDS as i64,
        "one key per round, each with its response"
    );
    let unanswered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM syncline_push_keys WHERE response IS NULL")
            .fetch_one(store.pool())
            .await
            .expect("count keys");
    assert_eq!(unanswered, 0, "every stored key has its response");
    store.close().await;
}

fn describe(e: &PushError<String>) -> String {
    match e {
        PushError::Store(e) => format!("store: {e}"),
        PushError::Refused(e) => format!("refused: {e}"),
        PushError::KeyReused => "key reused".into(),
    }
}
