//! "Nothing missed under concurrency": positions are visible in order even when transactions
//! commit in another order than they took their positions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::common::*;
use syncline::proto::Document;

/// Waits (bounded) until some backend of this database is blocked on a lock.
async fn wait_for_lock_waiter(db: &mut sqlx::PgConnection) {
    for _ in 0..400 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *db)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the push never blocked on the held lock");
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    // The pull in the middle must not wait for the held transaction.
    cfg.visibility_wait_ms = 200;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![
            insert(doc("a_free", json!({"v": 0}))),
            insert(doc("z_locked", json!({"v": 0}))),
        ],
    )
    .await;
    // This server waits only 200 ms for the horizon, and another test's open transaction in
    // the shared cluster may hold it back longer: read until both documents are readable.
    let mut read = None;
    for _ in 0..600 {
        let (before, t0) = pull_all(&mut c, "tasks", "", 100).await;
        if before.len() == 2 {
            read = Some((before, t0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (before, t0) = read.expect("both documents become readable");
    let state: HashMap<String, Document> = before.into_iter().map(|d| (d.id.clone(), d)).collect();

    // Hold a row lock so that push P1 takes its transaction id (locking a_free) and then waits.
    let mut blocker = server.db().await;
    let mut held = blocker.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM syncline_documents WHERE id = 'z_locked' FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let p1 = {
        let mut c = server.client().await;
        let rows = vec![
            update(doc("a_free", json!({"v": 1})), state["a_free"].clone()),
            update(doc("z_locked", json!({"v": 1})), state["z_locked"].clone()),
        ];
        tokio::spawn(async move { push(&mut c, "tasks", rows).await })
    };
    let mut probe = server.db().await;
    wait_for_lock_waiter(&mut probe).await;

    // P2 begins later and commits first.
    assert!(
        push(&mut c, "tasks", vec![insert(doc("b", json!({"v": 2})))])
            .await
            .is_empty()
    );
    let (mid, t1) = pull_all(&mut c, "tasks", &t0, 100).await;
    assert!(
        mid.iter().all(|d| d.id == "b"),
        "uncommitted writes cannot be visible: {mid:?}"
    );

    // P1 commits now, after the reader may have moved on.
    held.commit().await.unwrap();
    assert!(p1.await.unwrap().is_empty());
    let (after, _) = pull_all(&mut c, "tasks", &t1, 100).await;
    let late: Vec<&str> = after.iter().map(|d| d.id.as_str()).collect();
    assert!(
        late.contains(&"a_free") && late.contains(&"z_locked"),
        "the late commit was skipped: second pull returned {late:?}"
    );
    let mut all = mid;
    all.extend(after);
    let mut db = server.db().await;
    let table = table(&mut db, "tasks").await;
    let seen = view(&all);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen, table, "the reader's view equals the table");
}

#[tokio::test]
async fn many_concurrent_pushers_and_a_puller_see_every_write() {
    const PUSHERS: usize = 8;
    const BATCHES: usize = 125;
    const ROWS: usize = 10; // 8 * 125 * 10 = 10,000 writes
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.pool_size = 16;
    let server = Arc::new(TestServer::start_with(cfg).await);
    let done = Arc::new(AtomicBool::new(false));

    let puller = {
        let server = server.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut c = server.client().await;
            let mut token = String::new();
            let mut seen: Vec<Document> = Vec::new();
            let mut generations: HashMap<String, u64> = HashMap::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                let (page, next) = pull(&mut c, "tasks", &token, 50).await;
                for d in &page {
                    let g = generation(&d.revision);
                    let prev = generations.insert(d.id.clone(), g).unwrap_or(0);
                    assert!(g > prev, "{} went back from generation {prev} to {g}", d.id);
                }
                let empty = page.is_empty();
                seen.extend(page);
                token = next;
                if empty && finished {
                    return (seen, token, generations);
                }
                if empty {
                    tokio::task::yield_now().await;
                }
            }
        })
    };

    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let server = server.clone();
        pushers.push(tokio::spawn(async move {
            let mut c = server.client().await;
            let mut mine: Vec<(String, serde_json::Value)> = Vec::new();
            let mut writes = 0;
            for b in 0..BATCHES {
                let mut rows = Vec::new();
                let mut used = std::collections::HashSet::new();
                for r in 0..ROWS {
                    let updatable = mine.len() > 20 && rand::random::<u8>() % 5 < 2;
                    if updatable {
                        let k = rand::random_range(0..mine.len());
                        if used.insert(k) {
                            let (id, old) = mine[k].clone();
                            let new = json!({"p": p, "b": b, "r": r});
                            rows.push(update(doc(&id, new.clone()), doc(&id, old)));
                            mine[k].1 = new;
                            continue;
                        }
                    }
                    let id = format!("p{p}-{b}-{r}");
                    let body = json!({"p": p, "b": b, "r": r, "new": true});
                    rows.push(insert(doc(&id, body.clone())));
                    mine.push((id, body));
                }
                writes += rows.len();
                let conflicts = push(&mut c, "tasks", rows).await;
                assert!(
                    conflicts.is_empty(),
                    "own documents never conflict: {conflicts:?}"
                );
            }
            writes
        }));
    }
    let mut writes = 0;
    for p in pushers {
        writes += p.await.expect("pusher ok");
    }
    assert_eq!(writes, PUSHERS * BATCHES * ROWS);
    done.store(true, Ordering::Release);
    let (mut seen, mut token, mut generations) =
        tokio::time::timeout(Duration::from_secs(120), puller)
            .await
            .expect("puller finishes")
            .expect("puller ok");
    // Every write is acknowledged, so the table is final. Keep pulling from the same
    // checkpoint: writes still behind an older transaction (other tests share the cluster)
    // arrive; a skipped write never would, and the loop would time out.
    let mut db = server.db().await;
    let table = table(&mut db, "tasks").await;
    assert!(table.len() > PUSHERS * BATCHES * ROWS / 2);
    let mut c = server.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while view(&seen) != table {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the puller never caught up: a write was skipped"
        );
        let (page, next) = pull(&mut c, "tasks", &token, 500).await;
        for d in &page {
            let g = generation(&d.revision);
            let prev = generations.insert(d.id.clone(), g).unwrap_or(0);
            assert!(g > prev, "{} went back from generation {prev} to {g}", d.id);
        }
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen.extend(page);
        token = next;
    }
}
