//! "Pushes never deadlock each other": every push path takes row locks and insert waits in one
//! global order (by id), so overlapping batches in opposite orders only wait, never cycle.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// Pushers racing per round, rounds, and ids per round (even ids exist before the race).
const PUSHERS: usize = 8;
const ROUNDS: usize = 30;
const IDS: usize = 40;

fn id(round: usize, i: usize) -> String {
    format!("r{round:02}-{i:03}")
}

/// Waits (bounded) until every other backend of this database is gone: a backend flushes its
/// pending statistics when it exits, so nothing it counted is left unreported.
async fn wait_for_other_backends_to_exit(db: &mut sqlx::PgConnection) {
    for _ in 0..500 {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *db)
        .await
        .expect("count backends");
        if others == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server's connections did not close");
}

/// `deadlocks` of this database in `pg_stat_database`, read afresh.
async fn deadlocks(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *db)
        .await
        .expect("clear the statistics snapshot");
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&mut *db)
        .await
        .expect("read deadlocks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_batches_in_opposite_orders_never_deadlock() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    // Half of each round's ids exist before the race: every batch mixes inserts and updates,
    // interleaved by id.
    for round in 0..ROUNDS {
        let rows = (0..IDS)
            .step_by(2)
            .map(|i| insert(doc(&id(round, i), json!({"v": 0}))))
            .collect();
        assert!(push(&mut c, "tasks", rows).await.is_empty());
    }
    let mut db = server.db().await;
    let before = deadlocks(&mut db).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(PUSHERS));
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let mut c = server.client().await;
        let barrier = barrier.clone();
        pushers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for round in 0..ROUNDS {
                let mut rows: Vec<_> = (0..IDS)
                    .map(|i| {
                        let next = doc(&id(round, i), json!({"v": 1, "by": p}));
                        if i % 2 == 0 {
                            update(next, doc(&id(round, i), json!({"v": 0})))
                        } else {
                            insert(next)
                        }
                    })
                    .collect();
                if p % 2 == 1 {
                    rows.reverse();
                }
                barrier.wait().await;
                let request = syncline::proto::PushRequest {
                    collection: "tasks".into(),
                    rows,
                    mode: 0,
                    idempotency_key: String::new(),
                };
                match tokio::time::timeout(Duration::from_secs(60), c.push(request)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => errors.push(format!("round {round}: {status:?}")),
                    Err(_) => errors.push(format!("round {round}: no answer in 60 s")),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for p in pushers {
        errors.extend(p.await.expect("pusher did not panic"));
    }
    // Every id of every round was written exactly once by a winner; the losers got conflicts.
    let rows = table(&mut db, "tasks").await;
    assert_eq!(rows.len(), ROUNDS * IDS);
    assert!(
        rows.iter().all(|(_, _, _, b)| b["v"] == 1),
        "every id written"
    );

    server.stop().await.expect("server stops");
    wait_for_other_backends_to_exit(&mut db).await;
    let after = deadlocks(&mut db).await;
    assert!(errors.is_empty(), "pushes failed: {errors:?}");
    assert_eq!(after - before, 0, "deadlocks among pushes");
}

/// Without a barrier, so that a push retrying under locks overlaps fresh optimistic pushes:
/// every push updates the same existing documents (its assumed state always matches: the body
/// never changes) and inserts ids that sort before and after them, shared with other pushers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_retrying_under_locks_never_deadlock_with_fresh_pushes() {
    const ITERATIONS: usize = 60;
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let rows = (0..10)
        .map(|i| insert(doc(&format!("m{i}"), json!({"v": 0}))))
        .collect();
    assert!(push(&mut c, "tasks", rows).await.is_empty());
    let mut db = server.db().await;
    let before = deadlocks(&mut db).await;

    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let mut c = server.client().await;
        pushers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for it in 0..ITERATIONS {
                let mut rows = vec![insert(doc(&format!("a{it:03}"), json!({"by": p})))];
                rows.extend((0..10).map(|i| {
                    let d = doc(&format!("m{i}"), json!({"v": 0}));
                    update(d.clone(), d)
                }));
                rows.push(insert(doc(&format!("z{it:03}"), json!({"by": p}))));
                if p % 2 == 1 {
                    rows.reverse();
                }
                let request = syncline::proto::PushRequest {
                    collection: "tasks".into(),
                    rows,
                    mode: 0,
                    idempotency_key: String::new(),
                };
                match tokio::time::timeout(Duration::from_secs(60), c.push(request)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => errors.push(format!("iteration {it}: {status:?}")),
                    Err(_) => errors.push(format!("iteration {it}: no answer in 60 s")),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for p in pushers {
        errors.extend(p.await.expect("pusher did not panic"));
    }
    let rows = table(&mut db, "tasks").await;
    assert_eq!(rows.len(), 10 + 2 * ITERATIONS);

    server.stop().await.expect("server stops");
    wait_for_other_backends_to_exit(&mut db).await;
    let after = deadlocks(&mut db).await;
    assert!(errors.is_empty(), "pushes failed: {errors:?}");
    assert_eq!(after - before, 0, "deadlocks among pushes");
}
