//! "An acknowledged push is durable whatever the database's defaults": with a database default
//! of `synchronous_commit = off`, every acknowledged push survives an immediate stop (a crash)
//! of PostgreSQL. Runs its own throwaway cluster (with fsync on), never the shared one.

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::common::*;

/// The private cluster's port (the shared test cluster is elsewhere).
const PORT: u16 = 55471;
/// Single-document pushes acknowledged just before the crash.
const PUSHES: usize = 60;

#[tokio::test]
async fn acknowledged_pushes_survive_a_crash_with_synchronous_commit_off_by_default() {
    // fsync on: a crash of PostgreSQL, not of the machine, must not lose an acknowledged push.
    let cluster = PrivateCluster::start(PORT, false);
    let admin = cluster.url.clone();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the private cluster");
    for statement in [
        "CREATE DATABASE durability",
        "ALTER DATABASE durability SET synchronous_commit = off",
        // The WAL writer flushes asynchronous commits at most every 10 s: a commit that does
        // not flush its own WAL is then reliably lost by an immediate stop.
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    drop(conn);
    let db = with_database(&admin, "durability");
    let server = TestServer::start_with(config(&db)).await;
    let mut c = server.client().await;
    for i in 0..PUSHES {
        let conflicts = push(
            &mut c,
            "tasks",
            vec![insert(doc(&format!("d{i:03}"), json!({"i": i})))],
        )
        .await;
        assert!(conflicts.is_empty());
    }
    cluster.stop("immediate");
    drop(c);
    drop(server);

    cluster.start_again();
    let mut conn = None;
    for _ in 0..200 {
        if let Ok(c) = sqlx::PgConnection::connect(&db).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = conn.expect("the cluster accepts connections after recovery");
    let present: i64 =
        sqlx::query_scalar("SELECT count(*) FROM syncline_documents WHERE collection = 'tasks'")
            .fetch_one(&mut conn)
            .await
            .expect("count documents");
    assert_eq!(
        present, PUSHES as i64,
        "every acknowledged push survives the crash"
    );
}
