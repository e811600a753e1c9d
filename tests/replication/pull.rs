//! Pull: change order, each document once at its latest state, limits, checkpoints, tombstones,
//! server-owned metadata, index use.

use serde_json::json;
use tonic::Code;

use crate::common::*;
use syncline::proto::{Checkpoint, PullRequest};

#[tokio::test]
async fn pull_pages_in_change_order_each_document_once_at_latest_state() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for i in 0..25 {
        push(
            &mut c,
            "tasks",
            vec![insert(doc(&format!("d{i:02}"), json!({"n": i})))],
        )
        .await;
    }
    // Update five early documents: they move to the end of the change order.
    let (first, _) = pull_all(&mut c, "tasks", "", 100).await;
    for d in first.iter().take(5) {
        let mut new = doc(&d.id, json!({"n": 100}));
        new.revision = "999-client-made-up".into(); // ignored: the server assigns revisions
        assert!(
            push(&mut c, "tasks", vec![update(new, d.clone())])
                .await
                .is_empty()
        );
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let (page, next) = pull(&mut c, "tasks", &token, 7).await;
        assert!(page.len() <= 7);
        if page.is_empty() {
            assert_eq!(
                next, token,
                "nothing new: the identical checkpoint comes back"
            );
            break;
        }
        assert_ne!(next, token);
        seen.extend(page);
        token = next;
    }
    let ids: Vec<&str> = seen.iter().map(|d| d.id.as_str()).collect();
    let mut expected: Vec<String> = (5..25).map(|i| format!("d{i:02}")).collect();
    expected.extend((0..5).map(|i| format!("d{i:02}")));
    assert_eq!(ids, expected, "change order, each document once");
    for d in &seen[20..] {
        assert_eq!(body(d), json!({"n": 100}), "latest state");
        assert!(
            d.revision.starts_with("2-"),
            "server revision, not the client's: {}",
            d.revision
        );
    }
    // The final view equals the table.
    let mut db = server.db().await;
    assert_eq!(view(&seen), table(&mut db, "tasks").await);
    // From the last checkpoint nothing is new, and a fresh pull from it stays put.
    let (none, same) = pull(&mut c, "tasks", &token, 0).await;
    assert!(none.is_empty());
    assert_eq!(same, token);
}

/// Within one push, documents take positions in the order of the request (rows lock in id
/// order, but positions are drawn before that sort), whether new or updated.
#[tokio::test]
async fn a_push_is_pulled_in_the_order_of_its_rows() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ids = ["m", "z", "a", "q", "b"];
    let rows = ids.iter().map(|id| insert(doc(id, json!({})))).collect();
    push(&mut c, "tasks", rows).await;
    let (docs, token) = pull_all(&mut c, "tasks", "", 2).await;
    assert_eq!(docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ids);
    // Updates too (existing rows take the same one-statement path).
    let order = ["b", "q", "z", "m", "a"];
    let rows = order
        .iter()
        .map(|id| {
            let current = docs.iter().find(|d| d.id == *id).cloned().unwrap();
            update(doc(id, json!({"v": 2})), current)
        })
        .collect();
    assert!(push(&mut c, "tasks", rows).await.is_empty());
    let (docs, _) = pull_all(&mut c, "tasks", &token, 2).await;
    assert_eq!(
        docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        order
    );
}

#[tokio::test]
async fn limit_zero_uses_the_default_and_large_limits_are_clamped() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.pull_limit_default = 4;
    cfg.pull_limit_max = 9;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let rows = (0..30)
        .map(|i| insert(doc(&format!("x{i}"), json!({}))))
        .collect();
    push(&mut c, "tasks", rows).await;
    assert_eq!(pull(&mut c, "tasks", "", 0).await.0.len(), 4);
    assert_eq!(pull(&mut c, "tasks", "", 5).await.0.len(), 5);
    assert_eq!(pull(&mut c, "tasks", "", 1_000_000).await.0.len(), 9);
    assert_eq!(pull_all(&mut c, "tasks", "", 0).await.0.len(), 30);
}

#[tokio::test]
async fn tombstones_replicate_and_are_never_removed() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("t1", json!({"title": "x"})))],
    )
    .await;
    let (docs, token) = pull_all(&mut c, "tasks", "", 10).await;
    let conflicts = push(
        &mut c,
        "tasks",
        vec![update(tombstone("t1"), docs[0].clone())],
    )
    .await;
    assert!(conflicts.is_empty());
    let (docs, _) = pull_all(&mut c, "tasks", &token, 10).await;
    assert_eq!(docs.len(), 1);
    assert!(docs[0].deleted, "the delete arrives as a tombstone");
    assert_eq!(body(&docs[0]), json!({}));
    let mut db = server.db().await;
    let rows = table(&mut db, "tasks").await;
    assert_eq!(rows.len(), 1, "the row stays");
    assert!(rows[0].2);
}

#[tokio::test]
async fn server_assigns_revision_and_time() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut d = doc("m", json!({"a": 1}));
    d.revision = "77-client".into();
    d.updated_at = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });
    push(&mut c, "tasks", vec![insert(d)]).await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    assert!(docs[0].revision.starts_with("1-"), "{}", docs[0].revision);
    let ts = docs[0].updated_at.expect("updated_at set");
    assert!(
        ts.seconds > before.timestamp(),
        "server time, not the client's"
    );
}

#[tokio::test]
async fn collections_are_separate_and_unknown_ones_are_not_found() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("same-id", json!({"in": "tasks"})))],
    )
    .await;
    push(
        &mut c,
        "notes",
        vec![insert(doc("same-id", json!({"in": "notes"})))],
    )
    .await;
    assert_eq!(
        body(&pull_all(&mut c, "notes", "", 10).await.0[0]),
        json!({"in": "notes"})
    );
    let err = c
        .pull(PullRequest {
            collection: "nope".into(),
            checkpoint: None,
            limit: 0,
            selector: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"));
}

#[tokio::test]
async fn foreign_checkpoint_tokens_are_invalid_argument() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![insert(doc("a", json!({})))]).await;
    let (_, token) = pull_all(&mut c, "tasks", "", 10).await;
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    for bad in [
        "garbage",
        "2023-01-01T00:00:00Z|abc",
        std::str::from_utf8(&forged).unwrap(),
    ] {
        let err = c
            .pull(PullRequest {
                collection: "tasks".into(),
                checkpoint: Some(Checkpoint { token: bad.into() }),
                limit: 0,
                selector: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains("checkpoint.token"),
            "{}",
            err.message()
        );
    }
}

#[tokio::test]
async fn pull_and_push_lock_queries_are_served_by_indexes() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for chunk in 0..4 {
        let rows = (0..500)
            .map(|i| insert(doc(&format!("i{chunk}-{i}"), json!({"i": i}))))
            .collect();
        push(&mut c, "tasks", rows).await;
    }
    let store = syncline::store::postgres::PgStore::from_pool(
        sqlx::PgPool::connect(&server.db_url).await.unwrap(),
    );
    let plans = store.explain_queries("tasks").await.unwrap();
    assert!(
        plans[1].contains("syncline_documents_owner_changes"),
        "one owner's pull uses the owner index:\n{}",
        plans[1]
    );
    for plan in plans {
        assert!(
            !plan.contains("Seq Scan"),
            "a query scans the table:\n{plan}"
        );
        assert!(
            plan.contains("syncline_documents_"),
            "a query does not use our index:\n{plan}"
        );
    }
}

#[tokio::test]
async fn a_page_read_ahead_is_never_served_once_one_of_its_documents_changed() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut start = String::new();
    for round in 0..5 {
        let ids: Vec<String> = (0..4).map(|i| format!("r{round}-d{i}")).collect();
        let rows = ids
            .iter()
            .map(|id| insert(doc(id, json!({"v": 0}))))
            .collect();
        push(&mut c, "tasks", rows).await;
        // A full first page of 2 starts reading the next 2 ahead.
        let (first, cp) = pull(&mut c, "tasks", &start, 2).await;
        let first: Vec<&str> = first.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(first, [ids[0].as_str(), ids[1].as_str()]);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // ids[2] changes: read now, the next page is ids[3], then ids[2] at its new state.
        let stale = doc(&ids[2], json!({"v": 0}));
        push(
            &mut c,
            "tasks",
            vec![update(doc(&ids[2], json!({"v": 1})), stale)],
        )
        .await;
        let (second, _) = pull(&mut c, "tasks", &cp, 2).await;
        let second: Vec<(&str, serde_json::Value)> =
            second.iter().map(|d| (d.id.as_str(), body(d))).collect();
        assert_eq!(
            second,
            [
                (ids[3].as_str(), json!({"v": 0})),
                (ids[2].as_str(), json!({"v": 1}))
            ],
            "round {round}: a page read before the write was served"
        );
        (_, start) = pull_all(&mut c, "tasks", &cp, 100).await;
    }
}
