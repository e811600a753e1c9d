//! The real binary under SIGTERM: an in-flight push completes and is durable, an open stream
//! ends with a retryable status, and the process exits 0 within the drain period.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;
use tonic::Code;

use crate::common::*;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{PullRequest, SubscribeRequest};

#[tokio::test]
async fn sigterm_finishes_the_push_ends_the_stream_and_exits_zero() {
    let db = fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("syncline.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nmetrics_enabled = false\ndrain_seconds = 1\n\
             [auth]\nmode = \"none\"\n[[collections]]\nname = \"tasks\"\n"
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncline"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("DATABASE_URL", &db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SYNCLINE_")) {
        command.env_remove(key);
    }
    let mut child = command.spawn().expect("start syncline");
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut c = None;
    for _ in 0..400 {
        if let Ok(mut client) = ReplicationServiceClient::connect(endpoint.clone()).await
            && client
                .pull(PullRequest {
                    collection: "tasks".into(),
                    checkpoint: None,
                    limit: 1,
                    selector: Vec::new(),
                })
                .await
                .is_ok()
        {
            c = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = c.expect("server up");
    push(&mut c, "tasks", vec![insert(doc("held", json!({"v": 0})))]).await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;

    let mut stream = c
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Hold the row so the push is in flight when SIGTERM arrives.
    let mut blocker = sqlx::PgConnection::connect(&db).await.unwrap();
    let mut held = blocker.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM syncline_documents WHERE id = 'held' FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let in_flight = {
        let mut c = c.clone();
        let row = update(doc("held", json!({"v": 1})), docs[0].clone());
        tokio::spawn(async move {
            c.push(syncline::proto::PushRequest {
                collection: "tasks".into(),
                rows: vec![row],
                mode: 0,
                idempotency_key: String::new(),
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.commit().await.unwrap();

    let pushed = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(
        pushed
            .expect("the in-flight push completes")
            .into_inner()
            .conflicts
            .is_empty()
    );
    let status = stream_end_status(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::Unavailable, "retryable: {status:?}");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut check = sqlx::PgConnection::connect(&db).await.unwrap();
    assert_eq!(
        table(&mut check, "tasks").await[0].3,
        json!({"v": 1}),
        "the push is durable"
    );
}
