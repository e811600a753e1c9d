//! Invalid input: INVALID_ARGUMENT naming the row, id and field; nothing applied.

use serde_json::json;
use tonic::Code;

use crate::common::*;
use syncline::proto::{ChangeRow, Document, PushRequest};

async fn push_err(server: &TestServer, collection: &str, rows: Vec<ChangeRow>) -> tonic::Status {
    let mut c = server.client().await;
    c.push(PushRequest {
        collection: collection.into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    })
    .await
    .expect_err("push refused")
}

#[tokio::test]
async fn bad_rows_are_invalid_argument_naming_row_id_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tasks.json"),
        json!({
            "title": "tasks", "version": 0, "primaryKey": "id", "type": "object",
            "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "done": {"type": "boolean"}},
            "required": ["id", "title"]
        })
        .to_string(),
    )
    .unwrap();
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.collections[0].schema = Some(dir.path().join("tasks.json"));
    cfg.collections[0].primary_key = "id".into();
    cfg.document_bytes_max = 1000;
    cfg.json_depth_max = 5;
    cfg.id_bytes_max = 16;
    cfg.push_rows_max = 5;
    let server = TestServer::start_with(cfg).await;
    let ok = || insert(doc("ok", json!({"id": "ok", "title": "fine"})));
    let raw = |id: &str, json: &[u8]| {
        insert(Document {
            id: id.into(),
            json: json.to_vec(),
            ..Default::default()
        })
    };
    let cases: Vec<(ChangeRow, &str)> = vec![
        (
            raw("t-17", b"{nope"),
            "rows[1] (id \"t-17\"): new_document_state.json: invalid JSON",
        ),
        (
            raw("t-17", b"[1,2]"),
            "rows[1] (id \"t-17\"): new_document_state.json: must be a JSON object",
        ),
        (
            raw("t-17", b""),
            "rows[1] (id \"t-17\"): new_document_state.json: empty",
        ),
        (raw("t-17", &[0xff, 0xfe]), "not valid UTF-8"),
        (
            insert(doc("t-17", json!({"id": "other", "title": "x"}))),
            "primary key field \"id\"",
        ),
        (
            insert(doc("t-17", json!({"id": "t-17", "title": 5}))),
            "does not match the collection schema at /title",
        ),
        (
            insert(doc("t-17", json!({"id": "t-17"}))),
            "does not match the collection schema at /",
        ),
        (
            insert(doc("", json!({}))),
            "rows[1] (id \"\"): new_document_state.id must not be empty",
        ),
        (
            insert(doc("x".repeat(17).as_str(), json!({}))),
            "over the limit of 16",
        ),
        (
            insert(doc("t-17", json!({"title": "x".repeat(1000)}))),
            "over the limit of 1000",
        ),
        (
            insert(doc(
                "t-17",
                json!({"title": "x", "a": {"b": {"c": {"d": {"e": 1}}}}}),
            )),
            "nested deeper than the limit of 5",
        ),
        (insert(doc("t-17", json!({"title": "x\u{0}"}))), "\\u0000"),
        (
            ChangeRow {
                new_document_state: None,
                assumed_master_state: None,
            },
            "rows[1]: new_document_state is required",
        ),
        (
            update(
                doc("t-17", json!({"id": "t-17", "title": "x"})),
                doc("t-18", json!({})),
            ),
            "assumed_master_state.id",
        ),
    ];
    for (bad, expected) in cases {
        let err = push_err(&server, "tasks", vec![ok(), bad]).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}: {err:?}");
        assert!(
            err.message().contains(expected),
            "{:?} should contain {expected:?}",
            err.message()
        );
    }
    let err = push_err(&server, "tasks", (0..6).map(|_| ok()).collect()).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("6 rows exceed the limit of 5"),
        "{}",
        err.message()
    );
    let err = push_err(&server, "nope", vec![ok()]).await;
    assert_eq!(err.code(), Code::NotFound);
    let err = push_err(&server, "", vec![ok()]).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut db = server.db().await;
    assert!(
        table(&mut db, "tasks").await.is_empty(),
        "nothing was applied"
    );

    // Tombstones skip the schema and may have an empty body.
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![ok()]).await;
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    assert!(
        push(
            &mut c,
            "tasks",
            vec![update(tombstone("ok"), docs[0].clone())]
        )
        .await
        .is_empty()
    );
}
