//! "A retried push is not applied twice" and "the losing side of a resolution is kept": the
//! PostgreSQL store's idempotency keys and overwritten versions (migrations/0010), driven
//! through `Store::apply_push` with a decision and a response of the test's own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use syncline::purge::purge_expired;
use syncline::store::postgres::{PgStore, PoolSettings};
use syncline::store::{
    DocumentWrite, Idempotency, OverwrittenVersion, PushApplied, PushError, PushOutcome, PushPlan,
    PushTarget, Store, StoredDocument,
};

use crate::common::fresh_database;

const DAY: Duration = Duration::from_secs(86_400);
const RACERS: usize = 8;
const ROUNDS: usize = 10;

/// A migrated store on a fresh database, with room for every racer's transaction.
async fn store() -> PgStore {
    store_at(&fresh_database().await, 12).await
}

/// A migrated store on the database at `url`, with a pool of `size` connections and no
/// read-ahead.
pub(crate) async fn store_at(url: &str, size: u32) -> PgStore {
    let store = PgStore::connect_lazy(
        url,
        &PoolSettings {
            size,
            acquire_timeout: Duration::from_secs(30),
            statement_cache_capacity: 100,
            read_ahead_pages: 0,
        },
    )
    .expect("store");
    store.migrate().await.expect("migrate");
    store
}

fn targets(id: &str) -> Vec<PushTarget> {
    vec![PushTarget {
        id: id.to_owned(),
        skip_body_at: None,
        new: false,
    }]
}

/// The counter `n` of `id`'s current state (0 when absent).
pub(crate) fn counter(current: &HashMap<String, StoredDocument>, id: &str) -> i64 {
    current
        .get(id)
        .and_then(|d| serde_json::from_str::<Value>(&d.body).ok())
        .and_then(|b| b["n"].as_i64())
        .unwrap_or(0)
}

/// A decision that adds one to `id`'s counter, owned by `alice`.
pub(crate) fn increment(id: &str, current: &HashMap<String, StoredDocument>) -> PushPlan {
    let n = counter(current, id) + 1;
    PushPlan {
        writes: vec![DocumentWrite {
            id: id.to_owned(),
            owner: "alice".into(),
            body: json!({ "n": n }).to_string(),
            deleted: false,
            revision: format!("{n}-{:016x}", rand::random::<u64>()),
            is_new: !current.contains_key(id),
        }],
        ..PushPlan::default()
    }
}

/// The response remembered for a push: what a server would encode, distinct per applied push.
fn respond(outcome: &PushOutcome) -> Vec<u8> {
    format!(
        "written={} tx={:?} at={:?}",
        outcome.written, outcome.tx, outcome.written_at
    )
    .into_bytes()
}

fn key<'a>(principal: &'a str, key: &'a str, hash: u8) -> Idempotency<'a, ()> {
    Idempotency {
        principal,
        key,
        request_hash: [hash; 32],
        retention: DAY,
        respond: &respond,
    }
}

/// Pushes one increment of `id` under `idempotency`, counting the decisions made in `calls`.
async fn push_increment(
    store: &PgStore,
    id: &str,
    idempotency: Option<&Idempotency<'_, ()>>,
    calls: &AtomicUsize,
) -> Result<PushApplied<()>, PushError<String>> {
    store
        .apply_push(
            "tasks",
            &targets(id),
            |current| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(increment(id, current))
            },
            idempotency,
        )
        .await
}

fn applied(result: Result<PushApplied<()>, PushError<String>>) -> PushOutcome {
    match result {
        Ok(PushApplied::Applied(outcome)) => outcome,
        Ok(PushApplied::Replayed(bytes)) => panic!(
            "expected an applied push, got a replay of {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => panic!("expected an applied push, got {}", describe(&e)),
    }
}

fn replayed(result: Result<PushApplied<()>, PushError<String>>) -> Vec<u8> {
    match result {
        Ok(PushApplied::Replayed(bytes)) => bytes,
        Ok(PushApplied::Applied(o)) => panic!("expected a replay, the push was applied: {o:?}"),
        Err(e) => panic!("expected a replay, got {}", describe(&e)),
    }
}

fn describe(e: &PushError<String>) -> String {
    match e {
        PushError::Refused(why) => format!("refused: {why}"),
        PushError::KeyReused => "key reused".into(),
        PushError::Store(e) => format!("store error: {e}"),
    }
}

/// `id`'s counter, revision and change position as stored.
async fn stored(store: &PgStore, id: &str) -> (i64, String, i64, i64) {
    let (body, revision, xid, seq): (Value, String, i64, i64) = sqlx::query_as(
        "SELECT body, revision, change_xid, change_seq FROM syncline_documents
         WHERE collection = 'tasks' AND id = $1",
    )
    .bind(id)
    .fetch_one(store.pool())
    .await
    .expect("read the document");
    (body["n"].as_i64().unwrap_or(-1), revision, xid, seq)
}

async fn count(store: &PgStore, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

/// Makes every remembered key (or only `key`'s, when given) expired.
async fn expire_keys(store: &PgStore, key: Option<&str>) {
    sqlx::query(
        "UPDATE syncline_push_keys SET expires_at = now() - interval '1 second'
         WHERE $1::bytea IS NULL OR key = $1::bytea",
    )
    .bind(key.map(str::as_bytes))
    .execute(store.pool())
    .await
    .expect("expire keys");
}

#[tokio::test]
async fn a_key_replayed_after_commit_returns_the_first_response_and_writes_nothing() {
    let store = store().await;
    let calls = AtomicUsize::new(0);
    let k = key("alice", "k-1", 1);
    let first = applied(push_increment(&store, "c", Some(&k), &calls).await);
    let before = stored(&store, "c").await;
    assert_eq!(before.0, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    for _ in 0..3 {
        let bytes = replayed(push_increment(&store, "c", Some(&k), &calls).await);
        assert_eq!(
            bytes,
            respond(&first),
            "the first push's response, byte for byte"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a replay decides nothing");
    assert_eq!(
        stored(&store, "c").await,
        before,
        "a replay writes nothing: same counter, revision and change position"
    );

    // Without a key, the same push applies again (keys are what make retries safe).
    applied(push_increment(&store, "c", None, &calls).await);
    assert_eq!(stored(&store, "c").await.0, 2);
    store.close().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_and_keys_are_per_principal() {
    let store = store().await;
    let calls = AtomicUsize::new(0);
    applied(push_increment(&store, "c", Some(&key("alice", "k", 1)), &calls).await);
    let before = stored(&store, "c").await;

    let reused = push_increment(&store, "c", Some(&key("alice", "k", 2)), &calls).await;
    assert!(
        matches!(reused, Err(PushError::KeyReused)),
        "another request hash under the same key: {:?}",
        reused.map_err(|e| describe(&e))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a reused key decides nothing"
    );
    assert_eq!(stored(&store, "c").await, before, "and writes nothing");

    // The same key and request from another principal is another key.
    applied(push_increment(&store, "c", Some(&key("bob", "k", 1)), &calls).await);
    assert_eq!(stored(&store, "c").await.0, 2);
    // Each principal's key replays its own first response.
    replayed(push_increment(&store, "c", Some(&key("bob", "k", 1)), &calls).await);
    replayed(push_increment(&store, "c", Some(&key("alice", "k", 1)), &calls).await);
    assert_eq!(stored(&store, "c").await.0, 2);
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        2
    );
    store.close().await;
}

#[tokio::test]
async fn a_refused_push_stores_no_key_and_its_retry_runs_afresh() {
    let store = store().await;
    let k = key("alice", "k", 1);
    let refused = store
        .apply_push(
            "tasks",
            &targets("c"),
            |_| Err::<PushPlan, _>("refused by the decision".to_owned()),
            Some(&k),
        )
        .await;
    assert!(matches!(refused, Err(PushError::Refused(_))));
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        0,
        "a push that failed leaves no key"
    );

    let calls = AtomicUsize::new(0);
    let outcome = applied(push_increment(&store, "c", Some(&k), &calls).await);
    assert_eq!(outcome.written, 1);
    assert_eq!(stored(&store, "c").await.0, 1);
    assert_eq!(
        replayed(push_increment(&store, "c", Some(&k), &calls).await),
        respond(&outcome)
    );
    store.close().await;
}

/// A keyed push whose first (optimistic) attempt collides: a write lands between its read and
/// its write. The attempt rolls back, key included, and the retry applies and remembers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_push_retried_after_a_collision_is_remembered_once() {
    let store = store().await;
    let calls = AtomicUsize::new(0);
    applied(push_increment(&store, "c", None, &calls).await);

    // The first decision waits (on its worker thread) for another writer to change the row.
    let (read_tx, read_rx) = std::sync::mpsc::channel::<()>();
    let (written_tx, written_rx) = std::sync::mpsc::channel::<()>();
    let read_tx = std::sync::Mutex::new(Some(read_tx));
    let written_rx = std::sync::Mutex::new(written_rx);
    let writer = {
        let pool = store.pool().clone();
        tokio::spawn(async move {
            tokio::task::spawn_blocking(move || read_rx.recv_timeout(Duration::from_secs(30)))
                .await
                .expect("join")
                .expect("the push read the row");
            sqlx::query("SELECT syncline_put('tasks', 'c', '{\"n\": 10}', 'alice')")
                .execute(&pool)
                .await
                .expect("concurrent write");
            written_tx.send(()).expect("signal");
        })
    };
    let k = key("alice", "k", 1);
    let decisions = AtomicUsize::new(0);
    let result = store
        .apply_push(
            "tasks",
            &targets("c"),
            |current| {
                decisions.fetch_add(1, Ordering::SeqCst);
                if let Some(tx) = read_tx.lock().expect("lock").take() {
                    tx.send(()).expect("signal");
                    written_rx
                        .lock()
                        .expect("lock")
                        .recv_timeout(Duration::from_secs(30))
                        .expect("the concurrent write ran");
                }
                Ok::<_, String>(increment("c", current))
            },
            Some(&k),
        )
        .await;
    writer.await.expect("writer");
    let outcome = applied(result);
    assert_eq!(
        decisions.load(Ordering::SeqCst),
        2,
        "decided again after the collision"
    );
    assert_eq!(
        stored(&store, "c").await.0,
        11,
        "applied once, on the newer state"
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        1
    );
    assert_eq!(
        replayed(push_increment(&store, "c", Some(&k), &calls).await),
        respond(&outcome),
        "the retry's response is the one remembered"
    );
    assert_eq!(stored(&store, "c").await.0, 11);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_apply_once_and_all_others_replay_the_same_response() {
    let store = store().await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let name = format!("round-{round}");
                    let k = key("alice", &name, 7);
                    let calls = AtomicUsize::new(0);
                    barrier.wait().await;
                    push_increment(&store, "counter", Some(&k), &calls)
                        .await
                        .map(|r| match r {
                            PushApplied::Applied(o) => (true, respond(&o)),
                            PushApplied::Replayed(bytes) => (false, bytes),
                        })
                        .map_err(|e| describe(&e))
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for racer in racers {
            let outcome = tokio::time::timeout(Duration::from_secs(60), racer)
                .await
                .expect("a racer finishes")
                .expect("join");
            outcomes.push(outcome.expect("every duplicate succeeds"));
        }
        let applied: Vec<&Vec<u8>> = outcomes.iter().filter(|o| o.0).map(|o| &o.1).collect();
        assert_eq!(
            applied.len(),
            1,
            "round {round}: exactly one duplicate applies"
        );
        assert!(
            outcomes.iter().all(|o| &o.1 == applied[0]),
            "round {round}: every other duplicate replays the first response"
        );
        assert_eq!(stored(&store, "counter").await.0, round as i64 + 1);
    }
    assert_eq!(stored(&store, "counter").await.0, ROUNDS as i64);
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        ROUNDS as i64
    );
    store.close().await;
}

/// Keyed pushes with different keys on one document collide like any pushes: each applies
/// exactly once (through the retries and the locking path), and each key replays its own
/// response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_with_different_keys_each_apply_once() {
    let store = store().await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|racer| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let name = format!("round-{round}-racer-{racer}");
                    let k = key("alice", &name, 7);
                    let calls = AtomicUsize::new(0);
                    barrier.wait().await;
                    let first = push_increment(&store, "counter", Some(&k), &calls)
                        .await
                        .map_err(|e| describe(&e))?;
                    let again = push_increment(&store, "counter", Some(&k), &calls)
                        .await
                        .map_err(|e| describe(&e))?;
                    Ok::<_, String>((first, again))
                })
            })
            .collect();
        for racer in racers {
            let (first, again) = tokio::time::timeout(Duration::from_secs(60), racer)
                .await
                .expect("a racer finishes")
                .expect("join")
                .expect("every push succeeds");
            let first = applied(Ok(first));
            assert_eq!(replayed(Ok(again)), respond(&first));
        }
        assert_eq!(
            stored(&store, "counter").await.0,
            ((round + 1) * RACERS) as i64
        );
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        (ROUNDS * RACERS) as i64
    );
    store.close().await;
}

#[tokio::test]
async fn expired_keys_are_purged_and_a_replay_after_expiry_runs_afresh() {
    let store = store().await;
    let calls = AtomicUsize::new(0);
    let kept = key("alice", "kept", 1);
    applied(push_increment(&store, "c", Some(&kept), &calls).await);
    for i in 0..5 {
        let name = format!("old-{i}");
        applied(push_increment(&store, "c", Some(&key("alice", &name, 1)), &calls).await);
    }
    let old = key("alice", "old-0", 1);
    expire_keys(&store, Some("old-0")).await;
    // An expired key not yet purged is replaced: the push runs afresh, and is remembered anew.
    let again = applied(push_increment(&store, "c", Some(&old), &calls).await);
    assert_eq!(stored(&store, "c").await.0, 7);
    assert_eq!(
        replayed(push_increment(&store, "c", Some(&old), &calls).await),
        respond(&again)
    );

    for i in 1..5 {
        expire_keys(&store, Some(&format!("old-{i}"))).await;
    }
    // Batches of 3: the 4 expired keys take two batches; the other keys stay.
    let report = purge_expired(&store, 3).await.expect("purge");
    assert_eq!((report.keys, report.versions), (4, 0));
    assert_eq!(report.batches, 2);
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        2
    );
    let nothing = purge_expired(&store, 3).await.expect("purge again");
    assert_eq!((nothing.keys, nothing.batches), (0, 1));

    // A purged key runs afresh; a kept one still replays.
    applied(push_increment(&store, "c", Some(&key("alice", "old-1", 1)), &calls).await);
    replayed(push_increment(&store, "c", Some(&kept), &calls).await);
    assert_eq!(stored(&store, "c").await.0, 8);
    store.close().await;
}

/// A version losing a resolution of `id` (owned by `owner`) in a push by `bob`.
fn version(
    id: &str,
    owner: &str,
    n: i64,
    source: &'static str,
    keep: Duration,
) -> OverwrittenVersion {
    OverwrittenVersion {
        id: id.to_owned(),
        owner: owner.to_owned(),
        body: json!({ "n": n, "lost": source }).to_string(),
        deleted: source == "client",
        revision: format!("{n}-lost"),
        source,
        strategy: "last-write-wins",
        resolved_revision: format!("{n}-resolved"),
        pushed_by: "bob".into(),
        keep,
    }
}

/// Pushes `id` (owned by alice) with `versions` to keep; no write when `write` is false.
async fn push_resolved(
    store: &PgStore,
    id: &str,
    versions: Vec<OverwrittenVersion>,
    write: bool,
    idempotency: Option<&Idempotency<'_, ()>>,
) -> Result<PushApplied<()>, PushError<String>> {
    store
        .apply_push(
            "tasks",
            &targets(id),
            |current| {
                let mut plan = if write {
                    increment(id, current)
                } else {
                    PushPlan::default()
                };
                plan.overwritten = versions.clone();
                Ok::<_, String>(plan)
            },
            idempotency,
        )
        .await
}

#[tokio::test]
async fn overwritten_versions_are_kept_with_the_push_newest_first_for_their_owner() {
    let store = store().await;
    applied(
        push_resolved(
            &store,
            "d",
            vec![version("d", "alice", 1, "server", DAY)],
            true,
            None,
        )
        .await,
    );
    // One push may keep several (listed in reverse order of the decision, newest first) and
    // may keep versions without writing anything (a losing row).
    applied(
        push_resolved(
            &store,
            "d",
            vec![
                version("d", "alice", 2, "server", DAY),
                version("d", "alice", 3, "client", DAY),
            ],
            true,
            Some(&key("bob", "k", 1)),
        )
        .await,
    );
    applied(
        push_resolved(
            &store,
            "d",
            vec![version("d", "alice", 4, "client", DAY)],
            false,
            None,
        )
        .await,
    );
    applied(
        push_resolved(
            &store,
            "e",
            vec![version("e", "carol", 5, "server", DAY)],
            true,
            None,
        )
        .await,
    );

    let listed = store
        .overwritten_versions("tasks", "d", Some("alice"), 10)
        .await
        .expect("list");
    let ns: Vec<i64> = listed
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.version.body).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, [4, 3, 2, 1], "newest first");
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].overwritten_at >= w[1].overwritten_at)
    );
    // As pushed (the body as jsonb prints it).
    let mut first = listed[1].version.clone();
    let body: Value = serde_json::from_str(&first.body).expect("JSON");
    assert_eq!(body, json!({"n": 3, "lost": "client"}));
    first.body = version("d", "alice", 3, "client", DAY).body;
    assert_eq!(first, version("d", "alice", 3, "client", first.keep));
    assert!(first.keep > DAY - Duration::from_secs(60) && first.keep <= DAY);

    let service = store
        .overwritten_versions("tasks", "d", None, 10)
        .await
        .expect("list");
    assert_eq!(service.len(), 4, "no owner filter: every version");
    let limited = store
        .overwritten_versions("tasks", "d", None, 2)
        .await
        .expect("list");
    assert_eq!(limited, listed[..2]);
    for (id, owner) in [("d", "bob"), ("d", "carol"), ("e", "alice")] {
        assert!(
            store
                .overwritten_versions("tasks", id, Some(owner), 10)
                .await
                .expect("list")
                .is_empty(),
            "{owner} does not own {id}"
        );
    }
    assert_eq!(
        store
            .overwritten_versions("tasks", "e", Some("carol"), 10)
            .await
            .expect("list")
            .len(),
        1
    );
    assert!(
        store
            .overwritten_versions("notes", "d", None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    store.close().await;
}

#[tokio::test]
async fn overwritten_versions_commit_with_the_writes_or_not_at_all() {
    let store = store().await;
    let calls = AtomicUsize::new(0);
    applied(push_increment(&store, "d", None, &calls).await);
    let before = stored(&store, "d").await;
    // A version the database refuses (its body is not JSON) fails the whole push: the
    // document write it came with is not committed either, with or without a key.
    let mut bad = version("d", "alice", 2, "server", DAY);
    bad.body = "not json".into();
    for k in [None, Some(key("alice", "k", 1))] {
        let result = push_resolved(&store, "d", vec![bad.clone()], true, k.as_ref()).await;
        assert!(
            matches!(result, Err(PushError::Store(_))),
            "{:?}",
            result.map_err(|e| describe(&e))
        );
        assert_eq!(
            stored(&store, "d").await,
            before,
            "the write rolled back with the version"
        );
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_overwritten").await,
        0
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_push_keys").await,
        0
    );
    store.close().await;
}

#[tokio::test]
async fn expired_overwritten_versions_are_not_listed_and_are_purged() {
    let store = store().await;
    for n in 0..5 {
        applied(
            push_resolved(
                &store,
                "d",
                vec![version("d", "alice", n, "server", DAY)],
                true,
                None,
            )
            .await,
        );
    }
    // A second's keep, for real: listed until it passes (bounded wait), then not.
    applied(
        push_resolved(
            &store,
            "d",
            vec![version("d", "alice", 9, "server", Duration::from_secs(1))],
            true,
            None,
        )
        .await,
    );
    let listed = |store: PgStore| async move {
        store
            .overwritten_versions("tasks", "d", Some("alice"), 100)
            .await
            .expect("list")
            .len()
    };
    let mut gone = false;
    for _ in 0..100 {
        if listed(store.clone()).await == 5 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "an expired version is not listed");
    sqlx::query("UPDATE syncline_overwritten SET expires_at = now() - interval '1 second' WHERE body->>'n' IN ('0', '1')")
        .execute(store.pool())
        .await
        .expect("expire");
    assert_eq!(listed(store.clone()).await, 3);

    let report = purge_expired(&store, 2).await.expect("purge");
    assert_eq!((report.keys, report.versions), (0, 3));
    assert_eq!(
        count(&store, "SELECT count(*) FROM syncline_overwritten").await,
        3
    );
    assert_eq!(listed(store.clone()).await, 3);
    store.close().await;
}
