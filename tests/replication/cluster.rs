//! Several processes on one database behave as one; a lost listener connection loses nothing.

use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::subscribe::{next_batch, subscribe};

#[tokio::test]
async fn a_push_through_one_process_reaches_subscribers_of_another() {
    let db = fresh_database().await;
    let a = TestServer::start_with(config(&db)).await;
    let b = TestServer::start_with(config(&db)).await;
    let mut stream = subscribe(&b, "tasks", "").await;
    let mut ca = a.client().await;
    for i in 0..5 {
        push(
            &mut ca,
            "tasks",
            vec![insert(doc(&format!("x{i}"), json!({"i": i})))],
        )
        .await;
        // Heartbeats are 60 s apart: only the NOTIFY wake-up can deliver this in time.
        let batch = next_batch(&mut stream, Duration::from_secs(2)).await;
        assert_eq!(batch.documents[0].id, format!("x{i}"));
    }
}

#[tokio::test]
async fn subscribers_re_read_after_the_listener_reconnects() {
    let db = fresh_database().await;
    let role = format!("listener_{:08x}", rand::random::<u32>());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(&mut admin)
        .await
        .unwrap();
    let a = TestServer::start_with(config(&db)).await;
    let mut cfg = config(&db);
    let (base, dbname) = db.rsplit_once('/').unwrap();
    let base = base.replacen("postgres@", &format!("{role}@"), 1);
    cfg.listen_database_url = Some(format!("{base}/{dbname}"));
    let b = TestServer::start_with(cfg).await;
    let mut stream = subscribe(&b, "tasks", "").await;
    let mut ca = a.client().await;
    push(&mut ca, "tasks", vec![insert(doc("before", json!({})))]).await;
    assert_eq!(
        next_batch(&mut stream, Duration::from_secs(2))
            .await
            .documents[0]
            .id,
        "before"
    );

    // Cut B's listener off and keep it off while A pushes: that notification is lost.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} NOLOGIN")))
        .execute(&mut admin)
        .await
        .unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
    )
    .bind(&role)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, [true], "exactly B's listener connection was cut");
    push(&mut ca, "tasks", vec![insert(doc("while-away", json!({})))]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Once the listener is back, the subscriber re-reads and gets the missed document.
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} LOGIN")))
        .execute(&mut admin)
        .await
        .unwrap();
    let batch = next_batch(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(batch.documents[0].id, "while-away");
}

#[tokio::test]
async fn streams_keep_receiving_other_processes_changes_while_draining() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.drain_seconds = 4;
    let mut a = TestServer::start_with(cfg).await;
    let b = TestServer::start_with(config(&db)).await;
    let mut stream = subscribe(&a, "tasks", "").await;
    let mut cb = b.client().await;

    a.begin_stop();
    // A is draining (NOT_SERVING) but its stream is open: changes pushed through B must keep
    // arriving, through A's listener, until the stream is ended.
    for i in 0..3 {
        push(
            &mut cb,
            "tasks",
            vec![insert(doc(&format!("d{i}"), json!({"i": i})))],
        )
        .await;
        let batch = next_batch(&mut stream, Duration::from_secs(2)).await;
        assert_eq!(batch.documents[0].id, format!("d{i}"));
    }
    let status = stream_end_status(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    a.stop().await.unwrap();
}
