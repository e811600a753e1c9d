//! Push: conflict rules, in-batch ordering, atomicity, idempotent retries, concurrent races.

use std::sync::Arc;

use serde_json::json;
use tonic::Code;

use crate::common::*;
use syncline::proto::{Document, PushRequest};

#[tokio::test]
async fn conflict_rules_over_the_wire() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    assert!(
        push(
            &mut c,
            "tasks",
            vec![insert(doc("a", json!({"v": 1, "w": "x"})))]
        )
        .await
        .is_empty()
    );
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    let v1 = docs[0].clone();

    // Assumed new, server has it: conflict carrying the server's state; nothing written.
    let conflicts = push(&mut c, "tasks", vec![insert(doc("a", json!({"v": 2})))]).await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].revision, v1.revision);
    assert_eq!(body(&conflicts[0]), json!({"v": 1, "w": "x"}));
    assert!(conflicts[0].updated_at.is_some());

    // Same revision decides alone, whatever the assumed body says.
    let mut assumed = doc("a", json!({"something": "else"}));
    assumed.revision = v1.revision.clone();
    assert!(
        push(
            &mut c,
            "tasks",
            vec![update(doc("a", json!({"v": 2})), assumed.clone())]
        )
        .await
        .is_empty()
    );

    // The same assumed revision again is now stale: conflict with the v2 state.
    let conflicts = push(
        &mut c,
        "tasks",
        vec![update(doc("a", json!({"v": 3})), assumed)],
    )
    .await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(body(&conflicts[0]), json!({"v": 2}));
    assert!(conflicts[0].revision.starts_with("2-"));

    // Without a revision: bodies compare by value (key order, 2 vs 2.0) plus `deleted`.
    let by_value = Document {
        id: "a".into(),
        json: br#"{ "v" : 2.0 }"#.to_vec(),
        ..Default::default()
    };
    assert!(
        push(
            &mut c,
            "tasks",
            vec![update(doc("a", json!({"v": 4, "k": 1})), by_value)]
        )
        .await
        .is_empty()
    );
    let reordered = Document {
        id: "a".into(),
        json: br#"{"k":1,"v":4}"#.to_vec(),
        ..Default::default()
    };
    assert!(
        push(
            &mut c,
            "tasks",
            vec![update(doc("a", json!({"v": 5})), reordered)]
        )
        .await
        .is_empty()
    );
    let wrong_deleted = Document {
        id: "a".into(),
        json: br#"{"v":5}"#.to_vec(),
        deleted: true,
        ..Default::default()
    };
    assert_eq!(
        push(
            &mut c,
            "tasks",
            vec![update(doc("a", json!({"v": 6})), wrong_deleted)]
        )
        .await
        .len(),
        1
    );
    let different = doc("a", json!({"v": 4}));
    assert_eq!(
        push(
            &mut c,
            "tasks",
            vec![update(doc("a", json!({"v": 6})), different)]
        )
        .await
        .len(),
        1
    );

    // A tombstone counts as "the server has it".
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    assert!(
        push(
            &mut c,
            "tasks",
            vec![update(tombstone("a"), docs[0].clone())]
        )
        .await
        .is_empty()
    );
    let conflicts = push(
        &mut c,
        "tasks",
        vec![insert(doc("a", json!({"again": true})))],
    )
    .await;
    assert_eq!(conflicts.len(), 1);
    assert!(conflicts[0].deleted);

    // An assumed state for a document the server lacks is not a conflict.
    let mut ghost = doc("new", json!({"old": true}));
    ghost.revision = "5-whatever".into();
    assert!(
        push(
            &mut c,
            "tasks",
            vec![update(doc("new", json!({"n": 1})), ghost)]
        )
        .await
        .is_empty()
    );

    let mut db = server.db().await;
    let rows = table(&mut db, "tasks").await;
    assert_eq!(rows.len(), 2);
    assert!(rows[0].2, "a is a tombstone");
    assert_eq!(rows[1].3, json!({"n": 1}));
}

#[tokio::test]
async fn rows_for_one_id_in_a_batch_apply_in_order() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    // Two inserts of one new id: the second conflicts and returns the first.
    let conflicts = push(
        &mut c,
        "tasks",
        vec![
            insert(doc("n", json!({"first": true}))),
            insert(doc("n", json!({"second": true}))),
        ],
    )
    .await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(body(&conflicts[0]), json!({"first": true}));
    assert!(
        conflicts[0].updated_at.is_some(),
        "the push's own write time is filled in"
    );
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    assert_eq!(body(&docs[0]), json!({"first": true}));
    assert_eq!(docs[0].revision, conflicts[0].revision);

    // A chain: update, then update again assuming the state the first row wrote.
    let mut by_state = doc("n", json!({"step": 1}));
    by_state.revision.clear();
    let conflicts = push(
        &mut c,
        "tasks",
        vec![
            update(doc("n", json!({"step": 1})), docs[0].clone()),
            update(doc("n", json!({"step": 2})), by_state),
        ],
    )
    .await;
    assert!(conflicts.is_empty());
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    assert_eq!(body(&docs[0]), json!({"step": 2}));
    assert!(docs[0].revision.starts_with("3-"), "{}", docs[0].revision);
}

#[tokio::test]
async fn an_invalid_row_applies_nothing() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            mode: 0,
            idempotency_key: String::new(),
            rows: vec![
                insert(doc("ok1", json!({}))),
                insert(doc("ok2", json!({}))),
                insert(Document {
                    id: "bad".into(),
                    json: b"{not json".to_vec(),
                    ..Default::default()
                }),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("rows[2] (id \"bad\")"),
        "{}",
        err.message()
    );
    let mut db = server.db().await;
    assert!(table(&mut db, "tasks").await.is_empty());
}

#[tokio::test]
async fn a_database_failure_mid_batch_applies_nothing_and_leaks_no_detail() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("existing", json!({"v": 1})))],
    )
    .await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    let mut db = server.db().await;
    sqlx::raw_sql(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.id = 'boom' THEN RAISE EXCEPTION 'secret internal detail'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER boom BEFORE INSERT ON syncline_documents FOR EACH ROW EXECUTE FUNCTION boom();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let err = c
        .push(PushRequest {
            collection: "tasks".into(),
            rows: vec![
                update(doc("existing", json!({"v": 2})), docs[0].clone()),
                insert(doc("fine", json!({}))),
                insert(doc("boom", json!({}))),
            ],
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(
        !err.message().contains("secret"),
        "database text leaked: {}",
        err.message()
    );
    let rows = table(&mut db, "tasks").await;
    assert_eq!(rows.len(), 1, "nothing inserted");
    assert_eq!(rows[0].3, json!({"v": 1}), "nothing updated");
}

#[tokio::test]
async fn a_retried_push_that_already_applied_returns_what_was_sent() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![insert(doc("r", json!({"v": 1})))]).await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    let row = update(doc("r", json!({"v": 2})), docs[0].clone());
    assert!(push(&mut c, "tasks", vec![row.clone()]).await.is_empty());
    // The acknowledgement was "lost": the client sends the same push again.
    let conflicts = push(&mut c, "tasks", vec![row]).await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        body(&conflicts[0]),
        json!({"v": 2}),
        "the conflict equals what was sent"
    );
    // Same for an insert.
    let ins = insert(doc("s", json!({"x": 1})));
    push(&mut c, "tasks", vec![ins.clone()]).await;
    let conflicts = push(&mut c, "tasks", vec![ins]).await;
    assert_eq!(body(&conflicts[0]), json!({"x": 1}));
}

#[tokio::test]
async fn concurrent_inserts_of_the_same_new_ids_let_exactly_one_win() {
    let server = Arc::new(TestServer::start().await);
    const TASKS: usize = 12;
    const IDS: usize = 25;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let server = server.clone();
        handles.push(tokio::spawn(async move {
            let mut c = server.client().await;
            let mut conflicts = 0;
            for round in 0..IDS {
                // Each push touches the contested id plus one of its own, in varying order.
                let contested = insert(doc(&format!("race-{round}"), json!({"winner": t})));
                let own = insert(doc(&format!("own-{t}-{round}"), json!({})));
                let rows = if t % 2 == 0 {
                    vec![contested, own]
                } else {
                    vec![own, contested]
                };
                conflicts += push(&mut c, "tasks", rows).await.len();
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.expect("no push failed");
    }
    assert_eq!(
        conflicts,
        (TASKS - 1) * IDS,
        "every contested id but one write conflicts"
    );
    let mut db = server.db().await;
    let rows = table(&mut db, "tasks").await;
    assert_eq!(rows.len(), IDS + TASKS * IDS);
    for (id, rev, _, _) in rows {
        assert!(rev.starts_with("1-"), "{id} was overwritten: {rev}");
    }
}

#[tokio::test]
async fn concurrent_updates_on_overlapping_ids_never_fail_or_lose_a_write() {
    let server = Arc::new(TestServer::start().await);
    let mut c = server.client().await;
    let ids: Vec<String> = (0..6).map(|i| format!("hot{i}")).collect();
    push(
        &mut c,
        "tasks",
        ids.iter()
            .map(|id| insert(doc(id, json!({"n": 0}))))
            .collect(),
    )
    .await;
    const TASKS: usize = 8;
    const ROUNDS: usize = 20;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let server = server.clone();
        let mut ids = ids.clone();
        if t % 2 == 1 {
            ids.reverse(); // opposite lock order in half the tasks
        }
        handles.push(tokio::spawn(async move {
            let mut c = server.client().await;
            // The RxDB client loop: keep a local copy fed by incremental pulls; push, take the
            // server state of each conflict, retry those rows only. (A document written by a
            // transaction that the visibility horizon does not cover yet is briefly absent from
            // a pull, so the copy is merged, never replaced.)
            let mut state: std::collections::HashMap<String, Document> = Default::default();
            let mut checkpoint = String::new();
            for _ in 0..ROUNDS {
                for wait in 0.. {
                    assert!(wait < 500, "documents never became visible");
                    let (docs, next) = pull_all(&mut c, "tasks", &checkpoint, 100).await;
                    checkpoint = next;
                    state.extend(docs.into_iter().map(|d| (d.id.clone(), d)));
                    if ids.iter().all(|id| state.contains_key(id)) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                let mut pending = ids.clone();
                for attempt in 0.. {
                    assert!(attempt < 1000, "no progress");
                    let rows = pending
                        .iter()
                        .map(|id| {
                            let cur = &state[id];
                            let n = body(cur)["n"].as_u64().unwrap();
                            update(doc(id, json!({"n": n + 1})), cur.clone())
                        })
                        .collect();
                    let conflicts = push(&mut c, "tasks", rows).await;
                    if conflicts.is_empty() {
                        break;
                    }
                    pending = conflicts.iter().map(|d| d.id.clone()).collect();
                    for d in conflicts {
                        state.insert(d.id.clone(), d);
                    }
                }
            }
            ROUNDS
        }));
    }
    for h in handles {
        assert_eq!(h.await.expect("no push failed"), ROUNDS);
    }
    let mut db = server.db().await;
    let rows = table(&mut db, "tasks").await;
    for (id, rev, _, b) in &rows {
        let n = b["n"].as_u64().unwrap();
        assert_eq!(
            n,
            (TASKS * ROUNDS) as u64,
            "{id}: every increment applied exactly once"
        );
        assert_eq!(generation(rev), n + 1, "{id}: one revision per write");
    }
}

#[tokio::test]
async fn an_expired_deadline_is_deadline_exceeded_and_all_or_nothing() {
    use sqlx::Connection;
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![insert(doc("slow", json!({"v": 0})))]).await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    // Hold the row so the push cannot finish within its deadline.
    let mut blocker = server.db().await;
    let mut held = blocker.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM syncline_documents WHERE id = 'slow' FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let mut request = tonic::Request::new(PushRequest {
        collection: "tasks".into(),
        rows: vec![
            insert(doc("fresh", json!({}))),
            update(doc("slow", json!({"v": 1})), docs[0].clone()),
        ],
        mode: 0,
        idempotency_key: String::new(),
    });
    // The server answers shortly before the deadline, so its DEADLINE_EXCEEDED reaches the
    // client before the client's own timer would report CANCELLED.
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let err = c.push(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    held.commit().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // As with any deadline, the client cannot know whether the push applied (a statement
    // already running may still commit); it must be all or nothing.
    let mut db = server.db().await;
    let rows = table(&mut db, "tasks").await;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let slow = &rows.iter().find(|r| r.0 == "slow").unwrap().3;
    let none = ids == ["slow"] && *slow == json!({"v": 0});
    let all = ids == ["fresh", "slow"] && *slow == json!({"v": 1});
    assert!(none || all, "half-applied: {rows:?}");
}
