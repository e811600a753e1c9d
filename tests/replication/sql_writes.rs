//! "Every committed write replicates, however it was written": plain SQL on
//! `syncline_documents` (an operator's psql, another service) gets a position, a revision and a
//! wake-up from the table's triggers, so it reaches Pull and live streams with no push after it;
//! a hard DELETE becomes a tombstone. Pushes keep their own revisions.

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::common::*;
use crate::subscribe::{next_batch, subscribe};
use syncline::proto::{Document, SubscribeResponse};
use tonic::Streaming;

/// How long a live change may take to arrive (it normally takes milliseconds).
const ARRIVAL: Duration = Duration::from_secs(10);

/// Runs one SQL statement as an outside writer would.
async fn sql(db: &mut sqlx::PgConnection, statement: &'static str) {
    sqlx::query(statement)
        .execute(&mut *db)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// The next documents the stream delivers with the given id (other ids are skipped).
async fn next_of(stream: &mut Streaming<SubscribeResponse>, id: &str) -> Document {
    loop {
        let batch = next_batch(stream, ARRIVAL).await;
        if let Some(d) = batch.documents.into_iter().find(|d| d.id == id) {
            return d;
        }
    }
}

/// `<generation>-<16 hex digits>`, the server's revision format.
fn well_formed(revision: &str) -> bool {
    revision.split_once('-').is_some_and(|(g, h)| {
        g.parse::<u64>().is_ok() && h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// A live stream that has caught up (it delivered the seed document).
async fn live_stream(server: &TestServer) -> Streaming<SubscribeResponse> {
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("seed", json!({"seed": true})))],
    )
    .await;
    let mut stream = subscribe(server, "tasks", "").await;
    next_of(&mut stream, "seed").await;
    stream
}

#[tokio::test]
async fn plain_sql_insert_update_and_delete_reach_pull_and_a_live_stream() {
    let server = TestServer::start().await;
    let mut stream = live_stream(&server).await;
    let mut db = server.db().await;

    // An INSERT naming only what a person would: no position, revision or timestamps.
    sql(
        &mut db,
        r#"INSERT INTO syncline_documents (collection, id, body) VALUES ('tasks', 'sql', '{"v": 1}')"#,
    )
    .await;
    let d = next_of(&mut stream, "sql").await;
    assert_eq!((body(&d), d.deleted), (json!({"v": 1}), false));
    assert!(
        well_formed(&d.revision) && generation(&d.revision) == 1,
        "{}",
        d.revision
    );

    // An UPDATE that does not touch the position columns.
    sql(
        &mut db,
        r#"UPDATE syncline_documents SET body = '{"v": 2}' WHERE collection = 'tasks' AND id = 'sql'"#,
    )
    .await;
    let d = next_of(&mut stream, "sql").await;
    assert_eq!(body(&d), json!({"v": 2}));
    assert!(
        well_formed(&d.revision) && generation(&d.revision) == 2,
        "{}",
        d.revision
    );

    // A hard DELETE becomes a tombstone, which replicates.
    sql(
        &mut db,
        "DELETE FROM syncline_documents WHERE collection = 'tasks' AND id = 'sql'",
    )
    .await;
    let d = next_of(&mut stream, "sql").await;
    assert!(d.deleted);
    assert_eq!(generation(&d.revision), 3);
    let rows = table(&mut db, "tasks").await;
    assert!(
        rows.iter().any(|r| r.0 == "sql" && r.2),
        "the row stays, as a tombstone"
    );

    // Pull sees the same final state.
    let mut c = server.client().await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 100).await;
    let pulled = docs.iter().find(|d| d.id == "sql").expect("pulled");
    assert!(pulled.deleted);
    assert_eq!(pulled.revision, d.revision);

    // Pushes still work on a document written from SQL, and keep the server's revisions.
    let conflicts = push(
        &mut c,
        "tasks",
        vec![update(doc("sql", json!({"v": 4})), pulled.clone())],
    )
    .await;
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let d = next_of(&mut stream, "sql").await;
    assert_eq!((body(&d), d.deleted), (json!({"v": 4}), false));
    let expected = syncline::protocol::conflict::next_revision(
        Some(&pulled.revision),
        &json!({"v": 4}).to_string(),
        false,
    );
    assert_eq!(
        d.revision, expected,
        "a push's revision is the server's own"
    );
}

#[tokio::test]
async fn sql_updates_self_stamped_inserts_and_transactions_replicate() {
    let server = TestServer::start().await;
    let mut stream = live_stream(&server).await;
    let mut db = server.db().await;

    // An UPDATE of a pushed document that does not touch the position columns.
    sql(
        &mut db,
        r#"UPDATE syncline_documents SET body = '{"seed": false}' WHERE collection = 'tasks' AND id = 'seed'"#,
    )
    .await;
    let d = next_of(&mut stream, "seed").await;
    assert_eq!(body(&d), json!({"seed": false}));
    assert_eq!(generation(&d.revision), 2);

    // A writer that stamps its rows the way the server does (its own transaction id, a
    // sequence number, a revision) keeps them, and live streams still hear of it.
    sql(
        &mut db,
        r#"INSERT INTO syncline_documents
               (collection, id, body, deleted, revision, updated_at, change_xid, change_seq)
           VALUES ('tasks', 'stamped', '{}', false, '7-0123456789abcdef', now(),
                   pg_current_xact_id()::text::bigint, nextval('syncline_change_seq'))"#,
    )
    .await;
    let d = next_of(&mut stream, "stamped").await;
    assert_eq!(d.revision, "7-0123456789abcdef");

    // Several rows in one transaction, one of them written twice: every state gets a new
    // revision; the stream and Pull see the final one.
    let mut tx = db.begin().await.unwrap();
    for statement in [
        r#"INSERT INTO syncline_documents (collection, id, body, owner)
           SELECT 'tasks', 'many-' || i, jsonb_build_object('i', i), 'ops' FROM generate_series(1, 20) i"#,
        r#"UPDATE syncline_documents SET body = '{"i": "twice"}' WHERE collection = 'tasks' AND id = 'many-1'"#,
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 20 {
        let batch = next_batch(&mut stream, ARRIVAL).await;
        for d in batch.documents {
            seen.insert(d.id.clone(), d);
        }
    }
    assert_eq!(body(&seen["many-1"]), json!({"i": "twice"}));
    assert_eq!(generation(&seen["many-1"].revision), 2);
    assert_eq!(seen["many-7"].owner, "ops");
    let mut c = server.client().await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 100).await;
    assert_eq!(docs.len(), 22, "seed, stamped and 20 rows, each once");
    assert_eq!(
        view(&docs).iter().find(|r| r.0 == "many-1").unwrap().3,
        json!({"i": "twice"})
    );
}

#[tokio::test]
async fn syncline_put_creates_and_replaces_a_document_with_a_fresh_revision() {
    let server = TestServer::start().await;
    let mut stream = live_stream(&server).await;
    let mut db = server.db().await;
    let put = "SELECT syncline_put('tasks', 'put', $1::jsonb, 'svc')";
    let first: String = sqlx::query_scalar(put)
        .bind(r#"{"v": 1}"#)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let d = next_of(&mut stream, "put").await;
    assert_eq!(
        (d.revision.as_str(), d.owner.as_str()),
        (first.as_str(), "svc")
    );
    sql(
        &mut db,
        "DELETE FROM syncline_documents WHERE collection = 'tasks' AND id = 'put'",
    )
    .await;
    assert!(next_of(&mut stream, "put").await.deleted);
    let third: String = sqlx::query_scalar(put)
        .bind(r#"{"v": 3}"#)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let d = next_of(&mut stream, "put").await;
    assert_eq!(d.revision, third);
    assert_eq!(generation(&third), 3);
    assert_eq!((body(&d), d.deleted), (json!({"v": 3}), false));
}

#[tokio::test]
async fn sql_that_would_not_replicate_is_refused_and_a_purge_really_deletes() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("a", json!({}))), insert(doc("b", json!({})))],
    )
    .await;
    let mut db = server.db().await;
    // Renaming a key would make the old one vanish without a tombstone.
    let err = sqlx::query("UPDATE syncline_documents SET id = 'c' WHERE id = 'a'")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot change"), "{err}");
    // TRUNCATE fires no row triggers.
    let err = sqlx::query("TRUNCATE syncline_documents")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TRUNCATE"), "{err}");
    // A retention purge says so and really deletes.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL syncline.purge = on")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM syncline_documents WHERE id = 'a'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows = table(&mut db, "tasks").await;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["b"]);
    assert!(!rows[0].2, "b untouched");
}
