//! The harness drops each test's databases when the test ends, panics included (the
//! development cluster grew to 11 GB before).

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

fn database_name(url: &str) -> String {
    url.rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .expect("a database path")
}

/// Runs `test` as libtest runs a `#[tokio::test]`: on a thread of its own with a runtime of
/// its own. Returns the names of the databases it sent and whether it panicked.
fn run_as_a_test<F, Fut>(test: F) -> (Vec<String>, bool)
where
    F: FnOnce(std::sync::mpsc::Sender<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (sent, received) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test(sent));
    })
    .join();
    let names = received.try_iter().collect();
    (names, outcome.is_err())
}

#[tokio::test]
async fn a_tests_databases_live_until_it_ends_then_are_dropped() {
    // Servers started and stopped, a database used after its server stopped, a server on a
    // URL held nowhere else: all there until the test ends.
    let (names, panicked) = run_as_a_test(|sent| async move {
        let first = fresh_database().await;
        let server = TestServer::start_with(config(&first)).await;
        let mut c = server.client().await;
        push(&mut c, "tasks", vec![insert(doc("a", json!({"n": 1})))]).await;
        drop(c);
        server.stop().await.expect("clean stop");
        let mut db = sqlx::PgConnection::connect(&first)
            .await
            .expect("the database outlives its server");
        assert_eq!(table(&mut db, "tasks").await.len(), 1);
        let server = TestServer::start_with(config(&fresh_database().await)).await;
        assert!(exists(&database_name(&server.db_url)).await);
        sent.send(database_name(&first)).expect("send");
        sent.send(database_name(&server.db_url)).expect("send");
    });
    assert!(!panicked);
    assert_eq!(names.len(), 2);
    for name in names {
        assert!(!exists(&name).await, "{name} outlived its test");
    }
}

#[tokio::test]
async fn a_panicking_test_drops_its_databases_too() {
    let keep = std::env::var_os("SYNCLINE_KEEP_TEST_DB").is_some_and(|v| v != "0" && !v.is_empty());
    // Several failing "tests", each with a server on its database, panicking mid-way.
    for round in 0..3 {
        let (names, panicked) = run_as_a_test(move |sent| async move {
            let db = fresh_database().await;
            sent.send(database_name(&db)).expect("send");
            let server = TestServer::start_with(config(&db)).await;
            let mut c = server.client().await;
            push(&mut c, "tasks", vec![insert(doc("a", json!({"n": 1})))]).await;
            panic!("failing on purpose (round {round})");
        });
        assert!(panicked);
        assert_eq!(names.len(), 1);
        assert_eq!(
            exists(&names[0]).await,
            keep,
            "{} after its test panicked",
            names[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tests_drop_only_their_own_databases() {
    // 8 "tests" at once, each checking its database is there until its very end.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            tokio::task::spawn_blocking(|| {
                run_as_a_test(|sent| async move {
                    let db = fresh_database().await;
                    let server = TestServer::start_with(config(&db)).await;
                    let mut c = server.client().await;
                    for i in 0..20 {
                        push(
                            &mut c,
                            "tasks",
                            vec![insert(doc(&format!("d{i}"), json!({})))],
                        )
                        .await;
                    }
                    let (docs, _) = pull_all(&mut c, "tasks", "", 7).await;
                    assert_eq!(docs.len(), 20);
                    sent.send(database_name(&db)).expect("send");
                })
            })
        })
        .collect();
    let mut names = Vec::new();
    for run in runs {
        let (sent, panicked) = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("in time")
            .expect("joined");
        assert!(!panicked);
        names.extend(sent);
    }
    assert_eq!(names.len(), 8);
    for name in names {
        assert!(!exists(&name).await, "{name} outlived its test");
    }
}
