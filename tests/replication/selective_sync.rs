//! Selective sync end to end: a Pull with a selector gets the documents matching it at their
//! latest state and a removal for each document it may hold that stopped matching, across any
//! number of edits and however they were written (push or SQL); checkpoints are bound to the
//! selector; bad selectors are INVALID_ARGUMENT naming the path; and a seeded race of writers
//! and readers ends with every reader holding exactly its matches, never having been sent a
//! document outside its selector.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use syncline::config::Config;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{
    Checkpoint, Document, PullRequest, SubscribeRequest, SubscribeResponse, subscribe_response,
};
use tonic::Code;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::common::{
    TestServer, body, doc, fresh_database, insert, pull_all, push, stream_documents, tombstone,
    update,
};

type Client = ReplicationServiceClient<Channel>;

async fn server() -> TestServer {
    let db = fresh_database().await;
    let mut c = Config::from_toml(
        r#"
        listen = "127.0.0.1:0"
        metrics_enabled = false
        visibility_wait_ms = 30000
        [auth]
        mode = "none"
        [[collections]]
        name = "tasks"
        filter_fields = { done = "boolean", team = "string", priority = "number", "meta.region" = "string", tags = "string[]" }
        [[collections]]
        name = "notes"
        "#,
    )
    .expect("config parses");
    c.database_url = Some(db);
    TestServer::start_with(c).await
}

/// One filtered pull; the status on refusal.
async fn try_pull(
    c: &mut Client,
    selector: &Value,
    token: &str,
    limit: u32,
) -> Result<(Vec<Document>, String), tonic::Status> {
    let r = c
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: Some(Checkpoint {
                token: token.into(),
            }),
            limit,
            selector: selector.to_string().into_bytes(),
        })
        .await?
        .into_inner();
    Ok((
        r.documents,
        r.checkpoint.map(|c| c.token).unwrap_or_default(),
    ))
}

/// Filtered pulls from `token` until an empty page.
async fn pull_filtered(
    c: &mut Client,
    selector: &Value,
    token: &str,
    limit: u32,
) -> (Vec<Document>, String) {
    let mut token = token.to_owned();
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let (docs, next) = try_pull(c, selector, &token, limit)
            .await
            .expect("filtered pull succeeds");
        if docs.is_empty() {
            assert_eq!(next, token, "an empty page returns the same checkpoint");
            return (all, token);
        }
        all.extend(docs);
        token = next;
    }
    panic!("pull_filtered did not finish");
}

/// Filtered pulls from `token` until at least `count` documents came (bounded): for writes
/// this server hears of only by NOTIFY (SQL, another replica), which a pull may precede.
async fn pull_at_least(
    c: &mut Client,
    selector: &Value,
    token: &str,
    count: usize,
) -> (Vec<Document>, String) {
    let (mut docs, mut token) = (Vec::new(), token.to_owned());
    for _ in 0..600 {
        let (more, next) = pull_filtered(c, selector, &token, 100).await;
        docs.extend(more);
        token = next;
        if docs.len() >= count {
            return (docs, token);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("only {} of {count} documents arrived: {docs:?}", docs.len());
}

/// The current state of `id`, read by an unfiltered pull.
async fn current(c: &mut Client, id: &str) -> Document {
    let (docs, _) = pull_all(c, "tasks", "", 1000).await;
    docs.into_iter()
        .find(|d| d.id == id)
        .expect("document exists")
}

/// Replaces `id`'s body, assuming its current state.
async fn edit(c: &mut Client, id: &str, new: Value) {
    let assumed = current(c, id).await;
    let conflicts = push(c, "tasks", vec![update(doc(id, new), assumed)]).await;
    assert!(conflicts.is_empty(), "{conflicts:?}");
}

fn is_removal(d: &Document) -> bool {
    d.deleted && d.left_scope && d.json == b"{}" && d.revision.is_empty()
}

#[tokio::test]
async fn a_document_edited_out_while_the_reader_was_away_arrives_as_one_removal() {
    let server = server().await;
    let mut c = server.client().await;
    let open = json!({"done": false});
    push(
        &mut c,
        "tasks",
        vec![
            insert(doc("a", json!({"done": false, "priority": 1}))),
            insert(doc("b", json!({"done": false, "priority": 2}))),
            insert(doc("c", json!({"done": true, "priority": 3}))),
        ],
    )
    .await;
    let (first, token) = pull_filtered(&mut c, &open, "", 100).await;
    let ids: Vec<&str> = first.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "only the matching documents");
    assert!(first.iter().all(|d| !d.deleted && !d.left_scope));

    // While the reader is away: a matches, then B (done) and C (another field) do not.
    edit(&mut c, "a", json!({"done": true, "priority": 1})).await;
    edit(&mut c, "a", json!({"done": true, "priority": 9})).await;
    // An edit of a document the reader holds that keeps it in scope.
    edit(&mut c, "b", json!({"done": false, "priority": 5})).await;
    // A document the reader never held: edited twice, never matching.
    edit(&mut c, "c", json!({"done": true, "priority": 4})).await;

    let (back, token) = pull_filtered(&mut c, &open, &token, 100).await;
    let by_id: BTreeMap<&str, &Document> = back.iter().map(|d| (d.id.as_str(), d)).collect();
    assert_eq!(back.len(), 2, "{back:?}");
    assert!(
        is_removal(by_id["a"]),
        "a left the selector: {:?}",
        by_id["a"]
    );
    assert_eq!(body(by_id["b"]), json!({"done": false, "priority": 5}));
    assert!(!by_id.contains_key("c"), "never in scope: never named");

    // Moved back in: the document itself comes again.
    edit(&mut c, "a", json!({"done": false, "priority": 1})).await;
    let (again, _) = pull_filtered(&mut c, &open, &token, 100).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, "a");
    assert!(!again[0].deleted && !again[0].left_scope);
    assert_eq!(body(&again[0]), json!({"done": false, "priority": 1}));
}

#[tokio::test]
async fn deleting_a_matching_document_is_a_tombstone_and_a_fresh_reader_gets_no_removals() {
    let server = server().await;
    let mut c = server.client().await;
    let team = json!({"team": "red"});
    push(
        &mut c,
        "tasks",
        vec![
            insert(doc("a", json!({"team": "red"}))),
            insert(doc("b", json!({"team": "red"}))),
        ],
    )
    .await;
    let (_, token) = pull_filtered(&mut c, &team, "", 100).await;
    let a = current(&mut c, "a").await;
    assert!(
        push(&mut c, "tasks", vec![update(tombstone("a"), a)])
            .await
            .is_empty()
    );
    edit(&mut c, "b", json!({"team": "blue"})).await;
    let (changes, _) = pull_filtered(&mut c, &team, &token, 100).await;
    let by_id: BTreeMap<&str, &Document> = changes.iter().map(|d| (d.id.as_str(), d)).collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        by_id["a"].deleted && !by_id["a"].left_scope,
        "a deletion is a deletion"
    );
    assert_eq!(by_id["a"].json, b"{}", "nothing of the deleted state");
    assert!(is_removal(by_id["b"]));

    // A reader starting now never held either: it gets nothing at all.
    let (fresh, _) = pull_filtered(&mut c, &team, "", 100).await;
    assert!(fresh.is_empty(), "{fresh:?}");
}

#[tokio::test]
async fn writes_from_sql_record_removals_too() {
    let server = server().await;
    let mut c = server.client().await;
    let eu = json!({"meta.region": "eu"});
    push(
        &mut c,
        "tasks",
        vec![insert(doc("a", json!({"meta": {"region": "eu"}})))],
    )
    .await;
    let (first, token) = pull_filtered(&mut c, &eu, "", 100).await;
    assert_eq!(first.len(), 1);
    let mut db = server.db().await;
    sqlx::query(r#"SELECT syncline_put('tasks', 'a', '{"meta": {"region": "us"}}')"#)
        .execute(&mut db)
        .await
        .expect("SQL write");
    let (changes, token) = pull_at_least(&mut c, &eu, &token, 1).await;
    assert_eq!(changes.len(), 1);
    assert!(is_removal(&changes[0]), "{changes:?}");
    sqlx::query("DELETE FROM syncline_documents WHERE collection = 'tasks' AND id = 'a'")
        .execute(&mut db)
        .await
        .expect("SQL delete");
    let (after_delete, _) = pull_filtered(&mut c, &eu, &token, 100).await;
    assert!(
        after_delete.is_empty(),
        "already out of scope when deleted: {after_delete:?}"
    );
}

#[tokio::test]
async fn checkpoints_are_bound_to_their_selector() {
    let server = server().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("a", json!({"done": false, "priority": 2})))],
    )
    .await;
    let s1 = json!({"done": false, "priority": {"$gte": 1}});
    let (_, token) = pull_filtered(&mut c, &s1, "", 100).await;
    assert!(!token.is_empty());
    // The same selector written differently is the same selector.
    let same = json!({"$and": [{"priority": {"$gte": 1.0}}, {"done": {"$eq": false}}]});
    try_pull(&mut c, &same, &token, 100)
        .await
        .expect("same canonical selector");
    for other in [json!({"done": false}), json!({}), json!({"done": true})] {
        let err = try_pull(&mut c, &other, &token, 100)
            .await
            .expect_err("another selector");
        assert_eq!(err.code(), Code::InvalidArgument, "{other}: {err:?}");
        let info = err.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "CHECKPOINT_INVALID", "{other}");
    }
    let unfiltered = try_pull(&mut c, &json!({}), &token, 100)
        .await
        .expect_err("unfiltered");
    assert!(
        unfiltered.message().contains("without a selector")
            || unfiltered.message().contains("selector"),
        "{}",
        unfiltered.message()
    );
    // And an unfiltered token does not open under a selector.
    let (_, plain) = pull_all(&mut c, "tasks", "", 100).await;
    let err = try_pull(&mut c, &s1, &plain, 100)
        .await
        .expect_err("unfiltered token under a selector");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn bad_selectors_are_invalid_argument_naming_the_path_and_values_are_inert() {
    let server = server().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![
            insert(doc("a", json!({"team": "red"}))),
            insert(doc("b", json!({"team": "1=1) OR (1=1"}))),
        ],
    )
    .await;
    for (selector, path) in [
        (json!({"secret": 1}), "selector.secret"),
        (json!({"priority": "high"}), "selector.priority"),
        (json!({"team": {"$regex": "r.*"}}), "selector.team.$regex"),
        (json!({"1=1) OR (1=1": true}), "selector"),
        (json!({"done": null}), "selector.done"),
    ] {
        let err = try_pull(&mut c, &selector, "", 100)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{selector}: {err:?}");
        assert!(
            err.message().contains(path),
            "{selector}: {}",
            err.message()
        );
        let field = err
            .get_details_bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
        assert!(
            field.as_deref().is_some_and(|f| f.starts_with("selector")),
            "{selector}: {field:?}"
        );
    }
    let not_json = c
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 10,
            selector: b"{not json".to_vec(),
        })
        .await
        .expect_err("not JSON");
    assert_eq!(not_json.code(), Code::InvalidArgument);
    // A collection declaring no fields accepts no selector but `{}`.
    let undeclared = c
        .pull(PullRequest {
            collection: "notes".into(),
            checkpoint: None,
            limit: 10,
            selector: br#"{"team": "red"}"#.to_vec(),
        })
        .await
        .expect_err("notes declares nothing");
    assert_eq!(undeclared.code(), Code::InvalidArgument);
    // An injection attempt as a value is a value: it matches only the document holding it.
    let (docs, _) = pull_filtered(&mut c, &json!({"team": "1=1) OR (1=1"}), "", 100).await;
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["b"]);
}

/// A filtered stream from `token`.
async fn subscribe(c: &mut Client, selector: &Value, token: &str) -> Streaming<SubscribeResponse> {
    c.subscribe(SubscribeRequest {
        collection: "tasks".into(),
        checkpoint: Some(Checkpoint {
            token: token.into(),
        }),
        selector: selector.to_string().into_bytes(),
    })
    .await
    .expect("subscribe")
    .into_inner()
}

#[tokio::test]
async fn a_filtered_stream_carries_matches_and_removals_live() {
    let server = server().await;
    let mut c = server.client().await;
    let open = json!({"done": false});
    push(
        &mut c,
        "tasks",
        vec![
            insert(doc("a", json!({"done": false}))),
            insert(doc("b", json!({"done": true}))),
            insert(doc("c", json!({"done": false}))),
        ],
    )
    .await;
    // Catch-up from the start: the matches only.
    let mut stream = subscribe(&mut c, &open, "").await;
    let (caught_up, _) = stream_documents(&mut stream, 2).await;
    let ids: Vec<&str> = caught_up.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "c"]);

    // Live: a leaves, b stays out (edited), d arrives, c is deleted.
    edit(&mut c, "a", json!({"done": true})).await;
    edit(&mut c, "b", json!({"done": true, "priority": 2})).await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("d", json!({"done": false})))],
    )
    .await;
    let c_state = current(&mut c, "c").await;
    assert!(
        push(&mut c, "tasks", vec![update(tombstone("c"), c_state)])
            .await
            .is_empty()
    );
    let (live, token) = stream_documents(&mut stream, 3).await;
    let by_id: BTreeMap<&str, &Document> = live.iter().map(|d| (d.id.as_str(), d)).collect();
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(is_removal(by_id["a"]), "{:?}", by_id["a"]);
    assert!(!by_id.contains_key("b"), "never in scope: never named");
    assert_eq!(body(by_id["d"]), json!({"done": false}));
    assert!(by_id["c"].deleted && !by_id["c"].left_scope);
    // The stream's checkpoint is a filtered Pull's under the same selector.
    let (after, _) = pull_filtered(&mut c, &open, &token, 100).await;
    assert!(after.is_empty(), "{after:?}");
}

/// The selectors of the race, each with the rule it states, written independently of the
/// server's matcher.
/// A selector's rule, stated in plain Rust.
type Rule = fn(&Value) -> bool;

fn race_selectors() -> Vec<(Value, Rule)> {
    vec![
        (json!({"done": false}), |b| b["done"] == json!(false)),
        (json!({"team": {"$in": ["red", "blue"]}}), |b| {
            b["team"] == json!("red") || b["team"] == json!("blue")
        }),
        (
            json!({"priority": {"$gte": 3}, "done": {"$ne": true}}),
            |b| b["priority"].as_f64().is_some_and(|p| p >= 3.0) && b["done"] != json!(true),
        ),
        (
            json!({"$or": [{"team": "green"}, {"priority": {"$lt": 1}}]}),
            |b| b["team"] == json!("green") || b["priority"].as_f64().is_some_and(|p| p < 1.0),
        ),
        (json!({"tags": "x"}), |b| {
            b["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("x")))
        }),
        (json!({"meta.region": {"$exists": true}}), |b| {
            b["meta"]
                .as_object()
                .is_some_and(|m| m.contains_key("region"))
        }),
    ]
}

fn random_body(rng: &mut StdRng) -> Value {
    let teams = ["red", "blue", "green", "gray"];
    let mut b = json!({
        "done": rng.random_bool(0.5),
        "team": teams[rng.random_range(0..teams.len())],
        "priority": rng.random_range(0..6),
    });
    if rng.random_bool(0.4) {
        b["tags"] = json!(if rng.random_bool(0.5) {
            vec!["x"]
        } else {
            vec!["y"]
        });
    }
    if rng.random_bool(0.3) {
        b["meta"] = json!({"region": "eu"});
    }
    b
}

/// The live documents of `all` that `matches` selects, by id.
fn matching(all: &[Document], matches: Rule) -> BTreeMap<String, Value> {
    all.iter()
        .filter(|d| !d.deleted)
        .map(|d| (d.id.clone(), body(d)))
        .filter(|(_, b)| matches(b))
        .collect()
}

/// A reader's local copy: documents it was sent, removals applied.
#[derive(Default)]
struct Replica {
    token: String,
    docs: BTreeMap<String, Value>,
}

impl Replica {
    /// Applies one page; checks that every document sent matches the selector.
    fn apply(&mut self, page: &[Document], matches: Rule, selector: &Value) {
        for d in page {
            if d.deleted {
                self.docs.remove(&d.id);
            } else {
                let b = body(d);
                assert!(matches(&b), "{selector}: sent a document outside it: {b}");
                self.docs.insert(d.id.clone(), b);
            }
        }
    }
}

/// Several writers edit random documents concurrently while several readers per selector pull
/// small pages from time to time; at the end every reader catches up and holds exactly the
/// documents matching its selector at their latest state.
#[tokio::test]
async fn a_seeded_race_of_writers_and_filtered_readers_ends_exact() {
    let server = server().await;
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5e1ec7);
    const DOCS: usize = 60;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 40;
    let mut c = server.client().await;
    let mut rng = StdRng::seed_from_u64(seed);
    let rows = (0..DOCS)
        .map(|i| insert(doc(&format!("d{i:03}"), random_body(&mut rng))))
        .collect();
    assert!(push(&mut c, "tasks", rows).await.is_empty());

    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(server.client().await);
    }
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1));
                for _ in 0..ROUNDS {
                    let id = format!("d{:03}", rng.random_range(0..DOCS));
                    let (docs, _) = pull_all(&mut c, "tasks", "", 1000).await;
                    let Some(assumed) = docs.into_iter().find(|d| d.id == id) else {
                        continue;
                    };
                    let row = if rng.random_bool(0.08) {
                        if assumed.deleted {
                            insert(doc(&id, random_body(&mut rng)))
                        } else {
                            update(tombstone(&id), assumed)
                        }
                    } else {
                        update(doc(&id, random_body(&mut rng)), assumed)
                    };
                    // Conflicts are fine: another writer got there first.
                    let _ = push(&mut c, "tasks", vec![row]).await;
                }
            })
        })
        .collect();

    let selectors = race_selectors();
    // One live stream per selector, applying what it is sent.
    let mut streamed = Vec::new();
    for (selector, matches) in &selectors {
        let mut stream = subscribe(&mut c, selector, "").await;
        let replica = std::sync::Arc::new(std::sync::Mutex::new(Replica::default()));
        let (selector, matches, into) = (selector.clone(), *matches, replica.clone());
        let task = tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                if let Some(subscribe_response::Event::Changes(batch)) = msg.event {
                    let mut r = into.lock().expect("replica");
                    r.apply(&batch.documents, matches, &selector);
                }
            }
        });
        streamed.push((replica, task));
    }
    let mut replicas: Vec<(usize, Replica)> = (0..selectors.len() * 2)
        .map(|i| (i % selectors.len(), Replica::default()))
        .collect();
    let mut reader_rng = StdRng::seed_from_u64(seed ^ 0xabc);
    while !writers.iter().all(|w| w.is_finished()) {
        let (s, replica) = &mut replicas[reader_rng.random_range(0..selectors.len() * 2)];
        let (selector, matches) = &selectors[*s];
        let limit = reader_rng.random_range(1..8);
        let (page, next) = try_pull(&mut c, selector, &replica.token, limit)
            .await
            .expect("filtered pull");
        replica.apply(&page, *matches, selector);
        replica.token = next;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    let (all, _) = pull_all(&mut c, "tasks", "", 1000).await;
    for (s, replica) in &mut replicas {
        let (selector, matches) = &selectors[*s];
        let (rest, _) = pull_filtered(&mut c, selector, &replica.token, 5).await;
        replica.apply(&rest, *matches, selector);
        let expected = matching(&all, *matches);
        assert_eq!(
            replica.docs, expected,
            "seed {seed}: {selector}: the reader's copy differs from the matches"
        );
    }
    // The streams converge to the same (bounded wait: they follow the writes live).
    for ((selector, matches), (replica, task)) in selectors.iter().zip(&streamed) {
        let expected = matching(&all, *matches);
        let mut same = false;
        for _ in 0..300 {
            if replica.lock().expect("replica").docs == expected {
                same = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            same,
            "seed {seed}: {selector}: the stream's copy differs: {:?} vs {expected:?}",
            replica.lock().expect("replica").docs
        );
        task.abort();
    }
}

/// Every node of `plan` (EXPLAIN JSON) that reads `relation`, as (node type, index name).
fn reads(plan: &Value, relation: &str, out: &mut Vec<(String, String)>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|v| reads(v, relation, out)),
        Value::Object(map) => {
            let kind = map.get("Node Type").and_then(Value::as_str).unwrap_or("");
            let index = map.get("Index Name").and_then(Value::as_str).unwrap_or("");
            let on = map.get("Relation Name").and_then(Value::as_str);
            if on == Some(relation)
                || (kind == "Bitmap Index Scan" && index.starts_with("syncline_filter_"))
            {
                out.push((kind.to_owned(), index.to_owned()));
            }
            map.values().for_each(|v| reads(v, relation, out));
        }
        _ => {}
    }
}

/// A selective selector over a large collection is served by the declared fields' indexes
/// (btree for scalars, GIN for arrays), and the removal records by their position index:
/// never a scan of the whole table.
#[tokio::test]
async fn filtered_pages_are_served_by_the_declared_fields_indexes() {
    let server = server().await;
    let mut db = server.db().await;
    sqlx::query(
        "INSERT INTO syncline_documents (collection, id, body)
         SELECT 'tasks', 'd' || lpad(i::text, 6, '0'),
                jsonb_build_object('team', CASE WHEN i % 100 = 0 THEN 'needle' ELSE 'hay' || (i % 50) END,
                                   'priority', i % 1000,
                                   'tags', CASE WHEN i % 100 = 1 THEN '[\"x\"]'::jsonb ELSE '[\"y\"]'::jsonb END,
                                   'notes', repeat(md5(i::text), 4))
         FROM generate_series(1, 20000) AS i",
    )
    .execute(&mut db)
    .await
    .expect("load");
    sqlx::query("ANALYZE syncline_documents")
        .execute(&mut db)
        .await
        .expect("analyze");
    let mut config = Config::from_toml(
        r#"
        [auth]
        mode = "none"
        [[collections]]
        name = "tasks"
        filter_fields = { done = "boolean", team = "string", priority = "number", "meta.region" = "string", tags = "string[]" }
        "#,
    )
    .expect("config");
    config.database_url = Some(server.db_url.clone());
    let collections = syncline::protocol::Collections::from_config(&config).expect("collections");
    let tasks = collections.get("tasks").expect("tasks");
    let store = syncline::server::open_store(&config).expect("store");
    for selector in [
        json!({"team": "needle"}),
        json!({"team": {"$in": ["needle", "hay1"]}}),
        json!({"priority": {"$gte": 990}}),
        json!({"tags": "x"}),
        json!({"$or": [{"team": "needle"}, {"tags": "x"}]}),
    ] {
        let filter = syncline::protocol::selective::filter(&tasks, selector.to_string().as_bytes())
            .expect("valid")
            .expect("filtered");
        for after in [
            syncline::store::Resume::default(),
            syncline::store::Resume::new(syncline::store::Position { tx: 1, seq: 1 }, 0),
        ] {
            let plan = store
                .explain_filtered(
                    "tasks",
                    None,
                    &filter.read,
                    after,
                    syncline::store::PageLimit::new(1000, 4 << 20),
                )
                .await
                .expect("explain");
            let mut documents = Vec::new();
            reads(&plan, "syncline_documents", &mut documents);
            let mut moves = Vec::new();
            reads(&plan, "syncline_moves", &mut moves);
            assert!(
                documents
                    .iter()
                    .chain(&moves)
                    .all(|(kind, _)| kind != "Seq Scan"),
                "{selector}: {documents:?} {moves:?}\n{plan:#}"
            );
            assert!(
                documents
                    .iter()
                    .any(|(_, index)| index.starts_with("syncline_filter_")),
                "{selector}: the declared fields' index is not used: {documents:?}\n{plan:#}"
            );
        }
    }
    store.close().await;
}

/// A filtered replica reconciles within its selector: digests, lists and fetches see only the
/// matching documents, and the checkpoint continues a filtered Pull under the same selector.
#[tokio::test]
async fn reconcile_list_and_fetch_stay_within_the_selector() {
    use syncline::proto::{BucketDigests, FetchRequest, ReconcileListRequest, ReconcileRequest};
    let server = server().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .enumerate()
            .map(|(i, id)| insert(doc(id, json!({"team": if i < 3 { "red" } else { "blue" }}))))
            .collect(),
    )
    .await;
    let red = json!({"team": "red"});
    let selector = red.to_string().into_bytes();
    let round = c
        .reconcile(ReconcileRequest {
            collection: "tasks".into(),
            bucket_bits: 0,
            within_bits: 0,
            within: Vec::new(),
            digests: Some(BucketDigests::default()),
            selector: selector.clone(),
        })
        .await
        .expect("reconcile")
        .into_inner();
    let differing = round.differing.expect("differing");
    assert_eq!(differing.buckets, [0]);
    assert_eq!(differing.counts, [3], "only the matching documents count");
    let listed = c
        .reconcile_list(ReconcileListRequest {
            collection: "tasks".into(),
            bucket_bits: 0,
            buckets: vec![0],
            selector: selector.clone(),
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let fetched = c
        .fetch(FetchRequest {
            collection: "tasks".into(),
            ids: vec!["a".into(), "d".into()],
            selector: selector.clone(),
        })
        .await
        .expect("fetch")
        .into_inner();
    let ids: Vec<&str> = fetched.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a"], "a document outside the selector is not fetched");
    // The round's checkpoint is the selector's.
    let token = round.checkpoint.expect("checkpoint").token;
    edit(&mut c, "a", json!({"team": "blue"})).await;
    let (after, _) = pull_filtered(&mut c, &red, &token, 100).await;
    // Changes the round's snapshot may not reflect come again (the checkpoint is its xmin,
    // which concurrent transactions elsewhere in the cluster can hold back); a's removal last.
    let last_a = after.iter().rfind(|d| d.id == "a").expect("a comes");
    assert!(is_removal(last_a), "{after:?}");
    assert!(
        after
            .iter()
            .all(|d| d.deleted || body(d)["team"] == json!("red"))
    );
    let err = try_pull(&mut c, &json!({}), &token, 100)
        .await
        .expect_err("not an unfiltered checkpoint");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A replica started with an older configuration (no declared fields) during a rolling
/// deployment must not stop the removal records the others' filtered readers rely on.
#[tokio::test]
async fn a_replica_without_the_fields_does_not_undeclare_them() {
    let server = server().await;
    let mut c = server.client().await;
    let open = json!({"done": false});
    push(
        &mut c,
        "tasks",
        vec![insert(doc("a", json!({"done": false})))],
    )
    .await;
    let (_, token) = pull_filtered(&mut c, &open, "", 100).await;
    // The older replica: the same database, no filter_fields.
    let older = TestServer::start_with(crate::common::config(&server.db_url)).await;
    let mut o = older.client().await;
    let a = current(&mut o, "a").await;
    assert!(
        push(
            &mut o,
            "tasks",
            vec![update(doc("a", json!({"done": true})), a)]
        )
        .await
        .is_empty()
    );
    let (changes, _) = pull_at_least(&mut c, &open, &token, 1).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(is_removal(&changes[0]), "{changes:?}");
}
