//! Per-row pushes (issue 12, item 5): refused rows (invalid, another owner's id, over a per-row
//! limit) are listed with reason, field and the state to revert to, while every other row is
//! written or conflicts as in an atomic push. Request-level errors still fail the whole push;
//! the atomic default is unchanged. Two owners racing to create the same ids never both write
//! one, and never get an error for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::common::*;
use crate::error_details::{Client, authed, drop_database, jwt_server, token};
use syncline::proto::{ChangeRow, Document, PushMode, PushRequest, PushResponse, RefusedRow};

fn request(rows: Vec<ChangeRow>, mode: PushMode) -> PushRequest {
    PushRequest {
        collection: "tasks".into(),
        rows,
        mode: mode as i32,
        idempotency_key: String::new(),
    }
}

async fn push_as(
    c: &mut Client,
    who: &str,
    rows: Vec<ChangeRow>,
    mode: PushMode,
) -> Result<PushResponse, tonic::Status> {
    c.push(authed(request(rows, mode), &token(who)))
        .await
        .map(|r| r.into_inner())
}

/// A row whose body is not a JSON object.
fn not_an_object(id: &str) -> Document {
    Document {
        id: id.into(),
        json: b"[1]".to_vec(),
        ..Default::default()
    }
}

/// Every document `who` can pull, by id.
async fn pulled(c: &mut Client, who: &str) -> HashMap<String, Document> {
    let mut all = HashMap::new();
    let mut checkpoint = String::new();
    for _ in 0..1000 {
        let r = c
            .pull(authed(
                syncline::proto::PullRequest {
                    collection: "tasks".into(),
                    checkpoint: Some(syncline::proto::Checkpoint {
                        token: checkpoint.clone(),
                    }),
                    limit: 500,
                    selector: Vec::new(),
                },
                &token(who),
            ))
            .await
            .expect("pull")
            .into_inner();
        if r.documents.is_empty() {
            return all;
        }
        all.extend(r.documents.into_iter().map(|d| (d.id.clone(), d)));
        checkpoint = r.checkpoint.expect("checkpoint").token;
    }
    panic!("pull did not end");
}

fn refused_summary(r: &[RefusedRow]) -> Vec<(u32, &str, &str, &str)> {
    r.iter()
        .map(|r| (r.index, r.id.as_str(), r.reason.as_str(), r.field.as_str()))
        .collect()
}

#[tokio::test]
async fn a_mixed_batch_writes_the_valid_rows_and_lists_the_refused_ones() {
    let server = jwt_server(|_| {}).await;
    let mut c = server.client().await;
    push_as(
        &mut c,
        "bob",
        vec![insert(doc("b1", json!({"v": "bob"})))],
        PushMode::Atomic,
    )
    .await
    .unwrap();
    let seeded = push_as(
        &mut c,
        "alice",
        vec![
            insert(doc("own", json!({"v": 1}))),
            insert(doc("conf", json!({"v": 1}))),
        ],
        PushMode::Atomic,
    )
    .await
    .unwrap();
    assert!(seeded.conflicts.is_empty() && seeded.refused.is_empty());
    let before = pulled(&mut c, "alice").await;
    let own = before["own"].clone();

    let batch = || {
        vec![
            insert(doc("n1", json!({"v": 1}))),
            insert(not_an_object("bad-new")),
            insert(doc("b1", json!({"v": "mine now"}))),
            update(doc("conf", json!({"v": 2})), doc("conf", json!({"v": 0}))),
            update(doc("own", json!({"id": "not-own"})), own.clone()),
            insert(doc("n2", json!({"v": 2}))),
            insert(Document {
                owner: "bob".into(),
                ..doc("n3", json!({}))
            }),
        ]
    };

    // The atomic default (unset and explicit) refuses the whole batch for its first bad row,
    // with the reason and field a per-row push reports for it, and writes nothing.
    let mut atomic_error = None;
    for mode in [PushMode::Unspecified, PushMode::Atomic] {
        let err = push_as(&mut c, "alice", batch(), mode).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let info = err.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "INVALID_DOCUMENT");
        assert_eq!(info.metadata["field"], "rows[1].new_document_state.json");
        atomic_error = Some(err);
    }
    assert_eq!(pulled(&mut c, "alice").await, before, "nothing written");

    let r = push_as(&mut c, "alice", batch(), PushMode::PerRow)
        .await
        .expect("a per-row push with refused rows succeeds");
    assert_eq!(
        refused_summary(&r.refused),
        vec![
            (
                1,
                "bad-new",
                "INVALID_DOCUMENT",
                "rows[1].new_document_state.json"
            ),
            (2, "b1", "NOT_OWNER", "rows[2].new_document_state.id"),
            (
                4,
                "own",
                "INVALID_DOCUMENT",
                "rows[4].new_document_state.json"
            ),
            (6, "n3", "NOT_OWNER", "rows[6].new_document_state.owner"),
        ]
    );
    let atomic_error = atomic_error.unwrap();
    assert_eq!(
        r.refused[0].message,
        atomic_error.message(),
        "the same words as the atomic error"
    );
    assert!(
        r.refused[1].message.contains("taken by another owner"),
        "{:?}",
        r.refused[1]
    );
    // The state to revert to: present for alice's own document, absent for a new one and
    // for bob's (never revealed).
    assert_eq!(r.refused[0].current, None);
    assert_eq!(r.refused[1].current, None, "bob's document stays hidden");
    assert_eq!(r.refused[2].current.as_ref(), Some(&own));
    assert_eq!(r.refused[3].current, None);
    // The conflict is reported as in an atomic push.
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].id, "conf");
    assert_eq!(body(&r.conflicts[0]), json!({"v": 1}));

    let after = pulled(&mut c, "alice").await;
    let ids: HashSet<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(ids, HashSet::from(["own", "conf", "n1", "n2"]));
    assert_eq!(after["own"], own, "the refused update changed nothing");
    assert_eq!(body(&after["conf"]), json!({"v": 1}));
    assert_eq!(body(&after["n1"]), json!({"v": 1}));
    assert_eq!(after["n1"].owner, "alice");
    let bobs = pulled(&mut c, "bob").await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(body(&bobs["b1"]), json!({"v": "bob"}));
    drop(c);
    drop_database(server).await;
}

#[tokio::test]
async fn a_later_row_for_a_refused_id_is_decided_as_if_the_refused_row_were_absent() {
    let server = jwt_server(|_| {}).await;
    let mut c = server.client().await;
    push_as(
        &mut c,
        "alice",
        vec![insert(doc("x", json!({"v": 1})))],
        PushMode::Atomic,
    )
    .await
    .unwrap();
    let x = pulled(&mut c, "alice").await["x"].clone();
    let r = push_as(
        &mut c,
        "alice",
        vec![
            // Refused; the next row for x still finds the stored state it assumes.
            update(not_an_object("x"), x.clone()),
            update(doc("x", json!({"v": 2})), x.clone()),
            // Refused; the next row for y still creates it.
            insert(not_an_object("y")),
            insert(doc("y", json!({"v": 1}))),
            // Written, then refused: the refused row reports the state just written.
            insert(doc("z", json!({"v": 1}))),
            update(not_an_object("z"), doc("z", json!({"v": 1}))),
        ],
        PushMode::PerRow,
    )
    .await
    .unwrap();
    assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
    let indices: Vec<u32> = r.refused.iter().map(|r| r.index).collect();
    assert_eq!(indices, vec![0, 2, 5]);
    assert_eq!(r.refused[0].current.as_ref(), Some(&x), "the state before");
    assert_eq!(r.refused[1].current, None);
    let z = r.refused[2]
        .current
        .clone()
        .expect("z's state, written by row 4");
    let after = pulled(&mut c, "alice").await;
    assert_eq!(body(&after["x"]), json!({"v": 2}));
    assert_eq!(generation(&after["x"].revision), 2);
    assert_eq!(body(&after["y"]), json!({"v": 1}));
    // The reported state is the stored one, commit time included (the body as sent: its
    // text may differ from PostgreSQL's).
    let stored = &after["z"];
    assert_eq!(
        (&z.revision, &z.owner, z.deleted, &z.updated_at),
        (
            &stored.revision,
            &stored.owner,
            stored.deleted,
            &stored.updated_at
        )
    );
    assert_eq!(body(&z), body(stored));
    drop(c);
    drop_database(server).await;
}

#[tokio::test]
async fn per_row_limits_refuse_rows_and_request_errors_fail_the_whole_push() {
    let server = jwt_server(|cfg| {
        cfg.document_bytes_max = 64;
        cfg.push_rows_max = 5;
        cfg.collections[1].write_scopes = vec!["notes:write".into()];
    })
    .await;
    let mut c = server.client().await;
    let big = doc("big", json!({"s": "x".repeat(100)}));
    let long_id = "i".repeat(600);
    let rows = || {
        vec![
            insert(doc("ok", json!({}))),
            insert(big.clone()),
            insert(doc(&long_id, json!({}))),
        ]
    };
    // Atomic: the wire scan refuses the request.
    let err = push_as(&mut c, "alice", rows(), PushMode::Atomic)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "LIMIT_EXCEEDED"
    );
    // Per-row: each oversized row is refused on its own.
    let r = push_as(&mut c, "alice", rows(), PushMode::PerRow)
        .await
        .unwrap();
    let refused: Vec<(u32, &str, &str)> = r
        .refused
        .iter()
        .map(|r| (r.index, r.reason.as_str(), r.field.as_str()))
        .collect();
    assert_eq!(
        refused,
        vec![
            (1, "LIMIT_EXCEEDED", "rows[1].new_document_state.json"),
            (2, "LIMIT_EXCEEDED", "rows[2].new_document_state.id"),
        ]
    );
    assert!(
        r.refused[0].message.contains("over the limit of 64"),
        "{:?}",
        r.refused[0]
    );
    assert!(r.refused[1].id.len() < long_id.len(), "a long id is cut");
    assert!(pulled(&mut c, "alice").await.contains_key("ok"));
    // Nothing to read or write: every row refused, none with a storable id.
    let r = push_as(
        &mut c,
        "alice",
        vec![insert(doc(&long_id, json!({}))), insert(doc("", json!({})))],
        PushMode::PerRow,
    )
    .await
    .unwrap();
    let reasons: Vec<&str> = r.refused.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, ["LIMIT_EXCEEDED", "INVALID_DOCUMENT"]);

    // Whole-request failures, in both modes.
    for mode in [PushMode::Atomic, PushMode::PerRow] {
        let mut unknown = request(vec![insert(doc("u", json!({})))], mode);
        unknown.collection = "nope".into();
        let err = c.push(authed(unknown, &token("alice"))).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{mode:?}");
        assert_eq!(
            err.get_details_error_info().unwrap().reason,
            "COLLECTION_NOT_FOUND"
        );
        let mut notes = request(vec![insert(doc("n", json!({})))], mode);
        notes.collection = "notes".into();
        let err = c.push(authed(notes, &token("alice"))).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{mode:?}");
        assert_eq!(
            err.get_details_error_info().unwrap().reason,
            "SCOPE_MISSING"
        );
        let too_many = vec![insert(doc("m", json!({}))); 6];
        let err = push_as(&mut c, "alice", too_many, mode).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{mode:?}");
        assert_eq!(
            err.get_details_error_info().unwrap().metadata["field"],
            "rows"
        );
        let err = c
            .push(Request::new(request(
                vec![insert(doc("u", json!({})))],
                mode,
            )))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{mode:?}");
    }
    // A mode this server does not know is refused, not taken as atomic.
    let mut future = request(vec![insert(doc("f", json!({})))], PushMode::PerRow);
    future.mode = 9;
    let err = c.push(authed(future, &token("alice"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_details_error_info().unwrap().metadata["field"],
        "mode"
    );
    drop(c);
    drop_database(server).await;
}

/// Rounds of the race; ids per round.
const ROUNDS: usize = 12;
const IDS: usize = 8;
/// Concurrent pushers per owner.
const PUSHERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_owners_racing_to_create_the_same_ids_never_both_write_one() {
    let server = jwt_server(|_| {}).await;
    let server = Arc::new(server);
    let mut not_owner = 0;
    for round in 0..ROUNDS {
        let ids: Vec<String> = (0..IDS).map(|i| format!("r{round}-{i}")).collect();
        let mut tasks = Vec::new();
        for p in 0..2 * PUSHERS {
            let who = if p % 2 == 0 { "alice" } else { "bob" };
            let mut order = ids.clone();
            // Different orders per pusher: rows meet each other's locks in every order.
            order.rotate_left(p % IDS);
            if p % 3 == 0 {
                order.reverse();
            }
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = server.client().await;
                // Plus an invalid row for an id every pusher names: read (and, after a
                // collision, claimed) by every push, never written.
                let rows = order
                    .iter()
                    .map(|id| insert(doc(id, json!({"by": who}))))
                    .chain([insert(not_an_object(&format!("bad-{round}")))])
                    .collect();
                let r = tokio::time::timeout(
                    Duration::from_secs(60),
                    push_as(&mut c, who, rows, PushMode::PerRow),
                )
                .await
                .expect("push in time")
                .unwrap_or_else(|e| panic!("{who}: a racing per-row push fails: {e:?}"));
                (who, order, r)
            }));
        }
        // id -> (writes by alice, writes by bob)
        let mut written: HashMap<String, [usize; 2]> = HashMap::new();
        let mut outcomes = Vec::new();
        for t in tasks {
            let (who, order, r) = t.await.expect("task");
            let conflicted: HashSet<&str> = r.conflicts.iter().map(|d| d.id.as_str()).collect();
            let refused: HashMap<usize, &RefusedRow> =
                r.refused.iter().map(|x| (x.index as usize, x)).collect();
            for x in &r.refused {
                if x.index as usize == IDS {
                    assert_eq!(x.reason, "INVALID_DOCUMENT", "{x:?}");
                } else {
                    assert_eq!(x.reason, "NOT_OWNER", "{x:?}");
                }
                assert_eq!(x.current, None, "the other owner's document stays hidden");
            }
            for d in &r.conflicts {
                assert_eq!(
                    d.owner, who,
                    "a conflict only ever shows one's own document"
                );
            }
            for (i, id) in order.iter().enumerate() {
                if !conflicted.contains(id.as_str()) && !refused.contains_key(&i) {
                    written.entry(id.clone()).or_default()[usize::from(who == "bob")] += 1;
                }
            }
            not_owner += r.refused.iter().filter(|x| x.reason == "NOT_OWNER").count();
            outcomes.push((who, order, r));
        }
        let mut c = server.client().await;
        let alice = pulled(&mut c, "alice").await;
        let bob = pulled(&mut c, "bob").await;
        for id in &ids {
            let counts = written.get(id).copied().unwrap_or_default();
            assert_eq!(
                counts.iter().sum::<usize>(),
                1,
                "{id} written exactly once: {counts:?}"
            );
            let winner = if counts[0] == 1 { "alice" } else { "bob" };
            let (mine, theirs) = if winner == "alice" {
                (&alice, &bob)
            } else {
                (&bob, &alice)
            };
            assert_eq!(mine[id].owner, winner);
            assert_eq!(body(&mine[id]), json!({"by": winner}));
            assert!(
                !theirs.contains_key(id),
                "{id} is visible to one owner only"
            );
            // Every other row for it: a conflict for the winner, NOT_OWNER for the loser.
            for (who, order, r) in &outcomes {
                let i = order.iter().position(|x| x == id).unwrap();
                let is_refused = r.refused.iter().any(|x| x.index as usize == i);
                if *who != winner {
                    assert!(is_refused, "{who}'s row for {winner}'s {id} is refused");
                }
            }
        }
    }
    // Each id: every one of the loser's pushers was refused for it.
    assert_eq!(not_owner, ROUNDS * IDS * PUSHERS);
    // No claim of a refused id outlived its push (the locking path claims every target).
    let mut db = server.db().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM syncline_documents WHERE id LIKE 'bad-%' OR revision = ''",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(left, 0);
    drop(db);
    let server = Arc::into_inner(server).expect("tasks done");
    drop_database(server).await;
}
