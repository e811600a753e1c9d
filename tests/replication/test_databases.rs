//! The harness drops each test's database when the test is done with it, panics included
//! (the development cluster grew to 11 GB before).

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::common::*;

/// Whether the test cluster has a database of this name.
async fn exists(name: &str) -> bool {
    let mut admin = sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("connect to the test cluster");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("read pg_database")
}

#[tokio::test]
async fn a_database_lives_while_the_test_or_a_server_holds_it_then_is_dropped() {
    let db = fresh_database().await;
    let name = db.name().to_owned();
    assert!(exists(&name).await);
    let server = TestServer::start_with(config(&db)).await;
    // The test lets go first: the running server still holds it.
    drop(db);
    assert!(exists(&name).await, "dropped under a running server");
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![insert(doc("a", json!({"n": 1})))]).await;
    let (docs, _) = pull(&mut c, "tasks", "", 10).await;
    assert_eq!(docs.len(), 1);
    drop(c);
    drop(server);
    assert!(!exists(&name).await, "{name} outlived its test");
}

#[tokio::test]
async fn a_server_started_on_a_temporary_database_keeps_it() {
    let server = TestServer::start_with(config(&fresh_database().await)).await;
    let name = server
        .db_url
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .expect("a database path");
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![insert(doc("a", json!({"n": 1})))]).await;
    assert!(exists(&name).await);
    drop(c);
    server.stop().await.expect("clean stop");
    assert!(!exists(&name).await, "{name} outlived its server");
}

#[tokio::test]
async fn a_panicking_test_drops_its_database_too() {
    // Several failing "tests" (threads with their own runtime, as #[tokio::test] makes), each
    // with a server on its database, panicking mid-way.
    let mut names = Vec::new();
    for round in 0..3 {
        let (sent, received) = std::sync::mpsc::channel();
        let failed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let db = fresh_database().await;
                let server = TestServer::start_with(config(&db)).await;
                let mut c = server.client().await;
                push(&mut c, "tasks", vec![insert(doc("a", json!({"n": 1})))]).await;
                sent.send(db.name().to_owned()).expect("send the name");
                panic!("failing on purpose (round {round})");
            })
        })
        .join();
        assert!(failed.is_err(), "the thread panicked");
        names.push(
            received
                .recv_timeout(Duration::from_secs(30))
                .expect("the name"),
        );
    }
    let keep = std::env::var_os("SYNCLINE_KEEP_TEST_DB").is_some();
    for name in names {
        assert_eq!(exists(&name).await, keep, "{name} after its test panicked");
    }
}
