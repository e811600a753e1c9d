//! Notifications are hints: a forged or stale one may wake readers, never make them wait; and a
//! position a reader already waited for in vain keeps no later reader waiting.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use syncline::protocol::fanout::{Hub, listener};
use syncline::protocol::{DocumentInput, Principal, Replicator, ReplicatorParts, RowInput};
use syncline::store::postgres::PgStore;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const FORGED_TX: i64 = 9_000_000_000_000_000_000;

/// A replicator on `db` with its own hub, like one server process; no listener yet.
async fn replicator(db: &str, wait: Duration) -> (Hub, Replicator<PgStore>) {
    let store = Arc::new(migrated_store(db, 4).await);
    let parts = replicator_parts(store, &config(db));
    let hub = parts.hub.clone();
    let replicator = Replicator::new(ReplicatorParts {
        streams_max: 10,
        streams_per_principal_max: 10,
        stream_buffer_documents: 50,
        visibility_wait: wait,
        ..parts
    });
    (hub, replicator)
}

fn new_row(id: &str) -> RowInput {
    RowInput {
        new_state: Some(DocumentInput {
            id: id.into(),
            json: br#"{"v":1}"#.to_vec(),
            ..Default::default()
        }),
        assumed: None,
    }
}

/// Waits (bounded) until `hub` has heard of a transaction for `collection`.
async fn heard(hub: &Hub, collection: &str) -> i64 {
    for _ in 0..400 {
        let latest = hub.latest(collection);
        if latest > 0 {
            return latest;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the listener never delivered a notification for {collection}");
}

#[tokio::test]
async fn a_forged_notification_is_ignored_and_makes_no_pull_wait() {
    let db = fresh_database().await;
    // Other tests may hold the shared cluster's horizon back for a while: a genuine wait must
    // end readable, not run out.
    let (hub, reader) = replicator(&db, Duration::from_secs(10)).await;
    let (_, writer) = replicator(&db, Duration::from_secs(10)).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(listener::run(db.clone(), hub.clone(), stop.clone(), |_| {}));
    // Connected once the hub forgets what it cannot have: wait for a first (own) signal.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Any role may NOTIFY. Notifications arrive in order, so once the genuine push that
    // follows is heard, the forged one has been handled.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "NOTIFY syncline_changes, '{FORGED_TX}:tasks'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    writer
        .push(&Principal::anonymous_service(), "tasks", vec![new_row("a")])
        .await
        .unwrap();
    let latest = heard(&hub, "tasks").await;
    assert!(latest < FORGED_TX, "the forged position was kept: {latest}");

    for _ in 0..5 {
        let page = reader
            .pull(&Principal::anonymous_service(), "tasks", "", 10, b"")
            .await
            .unwrap();
        assert_eq!(page.documents.len(), 1);
    }
    assert_eq!(reader.visibility_waits_out(), 0);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn positions_the_cluster_cannot_have_are_forgotten_on_connect() {
    let db = fresh_database().await;
    let (hub, reader) = replicator(&db, Duration::from_millis(300)).await;
    // As if remembered from a cluster we failed over from, whose counter was far ahead.
    hub.notify("tasks", FORGED_TX);
    let stop = CancellationToken::new();
    let task = tokio::spawn(listener::run(db.clone(), hub.clone(), stop.clone(), |_| {}));
    for _ in 0..400 {
        if hub.latest("tasks") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(hub.latest("tasks"), 0);
    reader
        .pull(&Principal::anonymous_service(), "tasks", "", 10, b"")
        .await
        .unwrap();
    assert_eq!(reader.visibility_waits_out(), 0);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_position_held_back_by_a_long_transaction_is_waited_for_once() {
    let db = fresh_database().await;
    let (hub, reader) = replicator(&db, Duration::from_millis(200)).await;
    // A running transaction with an id: the horizon stays at or below it.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let mut long = conn.begin().await.unwrap();
    let tx: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *long)
        .await
        .unwrap();
    hub.notify("tasks", tx);
    for round in 0..5 {
        reader
            .pull(&Principal::anonymous_service(), "tasks", "", 10, b"")
            .await
            .unwrap();
        assert_eq!(reader.visibility_waits_out(), 1, "round {round}");
    }
    // A newer position is waited for again.
    hub.notify("tasks", tx + 1);
    reader
        .pull(&Principal::anonymous_service(), "tasks", "", 10, b"")
        .await
        .unwrap();
    assert_eq!(reader.visibility_waits_out(), 2);
    long.rollback().await.unwrap();
}
