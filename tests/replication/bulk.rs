//! `syncline import` and `syncline export`, run as the real binary against the test server's
//! database: imported documents replicate like pushes (Pull, live streams, positions later
//! pushes follow), a bad line writes nothing of its batch, a rerun writes nothing twice, and
//! export output re-imports to the same state.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::*;
use crate::subscribe::{next_batch, subscribe};
use syncline::proto::Document;

const BINARY: &str = env!("CARGO_BIN_EXE_syncline");

/// A configuration file for the binary on `db_url`: the test server's collections, `tasks`
/// with the schema `tasks_schema` when given.
fn config_file(dir: &Path, db_url: &str, tasks_schema: Option<Value>) -> PathBuf {
    let schema_line = match tasks_schema {
        Some(schema) => {
            let path = dir.join("tasks.schema.json");
            std::fs::write(&path, schema.to_string()).expect("write the schema");
            format!("schema = {:?}\n", path.display().to_string())
        }
        None => String::new(),
    };
    let path = dir.join("syncline.toml");
    let toml = format!(
        "database_url = {db_url:?}\n[auth]\nmode = \"none\"\n\
         [[collections]]\nname = \"tasks\"\n{schema_line}[[collections]]\nname = \"notes\"\n"
    );
    std::fs::write(&path, toml).expect("write the configuration");
    path
}

/// Runs the binary with `args` (stdin empty, 60 s at most).
async fn syncline(config: &Path, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the command finishes within 60 s")
        .expect("run syncline")
}

/// Runs the binary and expects success; returns (stdout, stderr).
async fn ok(config: &Path, args: &[&str]) -> (String, String) {
    let out = syncline(config, args).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "syncline {args:?} failed: {stderr}");
    (stdout, stderr)
}

/// Writes `docs` as a JSONL file, one per line.
fn jsonl(path: &Path, docs: impl Iterator<Item = Value>) {
    let text: String = docs.map(|d| format!("{d}\n")).collect();
    std::fs::write(path, text).expect("write the input");
}

/// Document number `i` of the test files (id `t<i, 5 digits>`).
fn task(i: usize) -> Value {
    json!({"id": format!("t{i:05}"), "title": format!("task {i}"), "n": i})
}

/// A test database, dropped when the test ends, passed or failed (a panic unwinds through it).
/// It keeps whatever `fresh_database` returned alive until then.
struct Database<T> {
    url: String,
    _created: T,
}

async fn test_database() -> Database<impl std::fmt::Display> {
    let created = fresh_database().await;
    Database {
        url: created.to_string(),
        _created: created,
    }
}

impl<T> Drop for Database<T> {
    fn drop(&mut self) {
        let Some(name) = self.url.rsplit('/').next().map(str::to_owned) else {
            return;
        };
        // Drop runs inside the test's runtime: the statement gets a thread and runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url())
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.url);
        }
    }
}

/// Every row of `collection` as id -> (revision, change_xid, change_seq, deleted, owner, body).
async fn rows(
    db: &mut sqlx::PgConnection,
    collection: &str,
) -> BTreeMap<String, (String, i64, i64, bool, String, Value)> {
    let rows: Vec<(String, String, i64, i64, bool, String, String)> = sqlx::query_as(
        "SELECT id, revision, change_xid, change_seq, deleted, owner, body::text \
         FROM syncline_documents WHERE collection = $1",
    )
    .bind(collection)
    .fetch_all(db)
    .await
    .expect("read the table");
    rows.into_iter()
        .map(|(id, rev, x, s, del, owner, b)| {
            let body = serde_json::from_str(&b).expect("a JSON body");
            (id, (rev, x, s, del, owner, body))
        })
        .collect()
}

#[tokio::test]
async fn imported_documents_reach_pull_and_a_live_stream_before_later_pushes() {
    const N: usize = 10_000;
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let input = dir.path().join("tasks.jsonl");
    jsonl(&input, (0..N).map(task));

    // A live stream, caught up before the import starts.
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("seed", json!({"seed": 1})))],
    )
    .await;
    let mut stream = subscribe(&server, "tasks", "").await;
    let mut streamed: HashSet<String> = HashSet::new();
    while !streamed.contains("seed") {
        let batch = next_batch(&mut stream, Duration::from_secs(10)).await;
        streamed.extend(batch.documents.into_iter().map(|d| d.id));
    }

    let input_arg = input.to_string_lossy();
    let (_, stderr) = ok(
        &config,
        &[
            "import",
            "--collection",
            "tasks",
            &input_arg,
            "--batch-rows",
            "1500",
        ],
    )
    .await;
    assert!(
        stderr.contains(&format!("import: done: {N} lines in"))
            && stderr.contains(&format!("created {N}, updated 0, unchanged 0")),
        "{stderr}"
    );

    // The stream receives every imported document (woken by the batches' notifications).
    for _ in 0..10_000 {
        if streamed.len() == N + 1 {
            break;
        }
        let batch = next_batch(&mut stream, Duration::from_secs(20)).await;
        streamed.extend(batch.documents.into_iter().map(|d| d.id));
    }
    assert_eq!(streamed.len(), N + 1, "the live stream got every document");

    // Pull sees each document once, at its imported state and first revision.
    let (docs, token) = pull_all(&mut c, "tasks", "", 1000).await;
    assert_eq!(docs.len(), N + 1);
    let pulled: BTreeMap<String, (Value, String)> = docs
        .iter()
        .map(|d| (d.id.clone(), (body(d), d.revision.clone())))
        .collect();
    assert_eq!(pulled.len(), N + 1, "each document once");
    for i in (0..N).step_by(997) {
        let (b, rev) = &pulled[&format!("t{i:05}")];
        assert_eq!(*b, task(i));
        assert_eq!(generation(rev), 1, "{rev}");
    }

    // A later push lands after every imported position: pulled alone from the last token.
    push(&mut c, "tasks", vec![insert(doc("after", json!({"v": 1})))]).await;
    let (docs, _) = pull_all(&mut c, "tasks", &token, 1000).await;
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["after"]);

    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn a_bad_line_names_its_line_and_field_and_writes_nothing_of_its_batch() {
    let database = test_database().await;
    let db_url = database.url.clone();
    let server = TestServer::start_with(config(&db_url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = json!({
        "type": "object",
        "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["id", "title"]
    });
    let config = config_file(dir.path(), &db_url, Some(schema));
    let input = dir.path().join("tasks.jsonl");
    // Batches of 100: lines 1-100 and 101-200 are good, line 250 is not.
    jsonl(
        &input,
        (0..400).map(|i| {
            if i == 249 {
                json!({"id": "t00249", "title": 7})
            } else {
                task(i)
            }
        }),
    );
    let input_arg = input.to_string_lossy();
    let mut conn = server.db().await;

    // --check finds the line and writes nothing, not even the batches before it.
    let out = syncline(
        &config,
        &[
            "import",
            "--collection",
            "tasks",
            &input_arg,
            "--batch-rows",
            "100",
            "--check",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 250 (id \"t00249\")") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(rows(&mut conn, "tasks").await.is_empty());

    let out = syncline(
        &config,
        &[
            "import",
            "--collection",
            "tasks",
            &input_arg,
            "--batch-rows",
            "100",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "line 250 (id \"t00249\"): new_document_state.json does not match the collection schema at /title"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("from line 201") && stderr.contains("lines 1-200 are imported"),
        "{stderr}"
    );

    let stored = rows(&mut conn, "tasks").await;
    let want: Vec<String> = (0..200).map(|i| format!("t{i:05}")).collect();
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        want,
        "the batches before the bad line, and nothing of its own"
    );

    // A line without the primary key, and one that is not JSON, are refused the same way.
    for (line, want) in [
        (
            r#"{"title": "x"}"#,
            "line 2: the primary key field \"id\" is missing",
        ),
        ("{\"id\": \"x\",", "line 2: invalid JSON"),
    ] {
        std::fs::write(&input, format!("{}\n{line}\n", task(0))).expect("write");
        let out = syncline(&config, &["import", "--collection", "tasks", &input_arg]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
    // A byte order mark before the first line is not part of the document.
    std::fs::write(&input, format!("\u{feff}{}\n", task(0))).expect("write");
    ok(&config, &["import", "--collection", "tasks", &input_arg]).await;

    drop(conn);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn an_interrupted_import_rerun_writes_each_document_once() {
    const N: usize = 3_000;
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let full = dir.path().join("full.jsonl");
    let prefix = dir.path().join("prefix.jsonl");
    jsonl(&full, (0..N).map(task));
    // What an interrupted run had committed: its first batches.
    jsonl(&prefix, (0..1_200).map(task));
    let (full_arg, prefix_arg) = (full.to_string_lossy(), prefix.to_string_lossy());
    let import = |file: &str| {
        [
            "import",
            "--collection",
            "tasks",
            file,
            "--batch-rows",
            "500",
        ]
        .map(str::to_owned)
    };
    let args = import(&prefix_arg);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&config, &args).await;
    let mut conn = server.db().await;
    let before = rows(&mut conn, "tasks").await;
    assert_eq!(before.len(), 1_200);

    // The same document changed in the meantime: the file wins with a new revision.
    let mut c = server.client().await;
    let changed = &before["t00007"];
    push(
        &mut c,
        "tasks",
        vec![update(
            doc("t00007", json!({"id": "t00007", "title": "edited"})),
            Document {
                id: "t00007".into(),
                revision: changed.0.clone(),
                ..Default::default()
            },
        )],
    )
    .await;

    let args = import(&full_arg);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, stderr) = ok(&config, &args).await;
    assert!(
        stderr.contains(&format!(
            "created {}, updated 1, unchanged 1199, kept 0",
            N - 1_200
        )),
        "{stderr}"
    );
    let after = rows(&mut conn, "tasks").await;
    assert_eq!(after.len(), N, "each document once");
    for (id, (rev, xid, seq, _, _, b)) in &after {
        let i: usize = id[1..].parse().expect("numbered ids");
        assert_eq!(*b, task(i), "{id}");
        match before.get(id) {
            Some(old) if id != "t00007" => assert_eq!(
                (&old.0, old.1, old.2),
                (rev, *xid, *seq),
                "{id}: an unchanged document keeps its revision and position"
            ),
            Some(_) => assert_eq!(generation(rev), 3, "{id}: pushed, then re-imported"),
            None => assert_eq!(generation(rev), 1, "{id}"),
        }
    }

    // A third run writes nothing at all: no new revision, no new position.
    let (_, stderr) = ok(&config, &args).await;
    assert!(
        stderr.contains(&format!("created 0, updated 0, unchanged {N}, kept 0")),
        "{stderr}"
    );
    assert_eq!(rows(&mut conn, "tasks").await, after);

    // --on-conflict keep leaves a changed document alone; fail stops before its batch.
    let edited = json!({"id": "t00100", "title": "edited"});
    sqlx::query("SELECT syncline_put('tasks', 't00100', $1::jsonb)")
        .bind(edited.to_string())
        .execute(&mut conn)
        .await
        .expect("edit from SQL");
    let mut keep = args.clone();
    keep.extend(["--on-conflict", "keep"]);
    let (_, stderr) = ok(&config, &keep).await;
    assert!(
        stderr.contains("updated 0, unchanged 2999, kept 1"),
        "{stderr}"
    );
    let mut fail = args.clone();
    fail.extend(["--on-conflict", "fail"]);
    let out = syncline(&config, &fail).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 101 (id \"t00100\"): the stored document differs"),
        "{stderr}"
    );
    assert_eq!(rows(&mut conn, "tasks").await["t00100"].5, edited);

    drop(conn);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn a_killed_import_rerun_gives_each_document_once() {
    const N: usize = 20_000;
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let input = dir.path().join("tasks.jsonl");
    jsonl(&input, (0..N).map(task));
    let mut conn = server.db().await;

    let mut child = tokio::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .args(["import", "--collection", "tasks", "--batch-rows", "200"])
        .arg(&input)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the import");
    // Kill it once some batches are committed.
    let mut seen = 0i64;
    for _ in 0..2_000 {
        seen = sqlx::query_scalar("SELECT count(*) FROM syncline_documents")
            .fetch_one(&mut conn)
            .await
            .expect("count");
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().await.expect("kill the import");
    assert!(
        seen > 0,
        "the import committed something before it was killed"
    );
    let partial = rows(&mut conn, "tasks").await;
    assert!(partial.len() < N, "killed before the end");
    assert_eq!(
        partial.len() % 200,
        0,
        "whole batches only: {}",
        partial.len()
    );

    let input_arg = input.to_string_lossy();
    ok(&config, &["import", "--collection", "tasks", &input_arg]).await;
    let after = rows(&mut conn, "tasks").await;
    assert_eq!(after.len(), N);
    for (id, old) in &partial {
        assert_eq!(
            &after[id], old,
            "{id}: committed before the kill, untouched"
        );
    }
    assert!(after.values().all(|r| generation(&r.0) == 1));

    drop(conn);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn export_writes_the_pushed_documents_and_reimports_to_the_same_state() {
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let mut c = server.client().await;
    // Bodies with and without their id field, exact decimals, owners, a tombstone.
    let mut rows_in = Vec::new();
    for i in 0..2_500 {
        let id = format!("e{i:05}");
        let mut d = if i % 3 == 0 {
            doc(&id, json!({"v": i, "price": "x"}))
        } else {
            doc(&id, json!({"id": id, "v": i}))
        };
        if i == 5 {
            d.json = br#"{"id": "e00005", "amount": 0.10000000000000000000001}"#.to_vec();
        }
        d.owner = format!("owner-{}", i % 4);
        rows_in.push(insert(d));
    }
    for chunk in rows_in.chunks(500) {
        push(&mut c, "tasks", chunk.to_vec()).await;
    }
    push(&mut c, "tasks", vec![insert(tombstone("e99999"))]).await;
    // Another collection is not exported.
    push(&mut c, "notes", vec![insert(doc("n1", json!({"v": 1})))]).await;

    let (stdout, _) = ok(&config, &["export", "--collection", "tasks"]).await;
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2_500, "live documents only");
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["id"].as_str().expect("id"))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "in id order");
    let mut db = server.db().await;
    let stored = rows(&mut db, "tasks").await;
    for line in &lines {
        let id = line["id"].as_str().expect("id");
        let mut want = stored[id].5.clone();
        want["id"] = json!(id);
        assert_eq!(*line, want, "{id}: the stored body, with its id field");
    }
    assert!(
        stdout.contains("0.10000000000000000000001"),
        "exact decimals"
    );

    // With tombstones and owners, into a file; imported into a fresh database: same state.
    let file = dir.path().join("export.jsonl");
    let file_arg = file.to_string_lossy();
    ok(
        &config,
        &[
            "export",
            "--collection",
            "tasks",
            "--include-deleted",
            "--with-owner",
            "--output",
            &file_arg,
        ],
    )
    .await;
    let other_database = test_database().await;
    let other_db = other_database.url.clone();
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = config_file(other_dir.path(), &other_db, None);
    ok(&other, &["migrate"]).await;
    ok(&other, &["import", "--collection", "tasks", &file_arg]).await;
    let mut other_conn = sqlx::PgConnection::connect(&other_db)
        .await
        .expect("connect");
    let copied = rows(&mut other_conn, "tasks").await;
    let state = |r: &BTreeMap<String, (String, i64, i64, bool, String, Value)>| {
        r.iter()
            .map(|(id, (_, _, _, deleted, owner, b))| {
                let mut b = b.clone();
                b["id"] = json!(id);
                (id.clone(), (*deleted, owner.clone(), b))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        state(&copied),
        state(&stored),
        "the same documents, owners and tombstones"
    );
    assert!(copied["e99999"].3, "the tombstone");

    // Re-importing the export where it came from changes nothing but the id fields added to
    // bodies that lacked them (written as new revisions).
    let (_, stderr) = ok(&config, &["import", "--collection", "tasks", &file_arg]).await;
    assert!(
        stderr.contains("created 0, updated 835, unchanged 1666, kept 0"),
        "{stderr}"
    );
    let (_, stderr) = ok(&config, &["import", "--collection", "tasks", &file_arg]).await;
    assert!(
        stderr.contains("created 0, updated 0, unchanged 2501"),
        "{stderr}"
    );

    drop((db, other_conn));
    server.stop().await.expect("server stops");
}

/// Deadlocks PostgreSQL detected in the connection's database since its statistics began.
async fn deadlocks(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(conn)
        .await
        .expect("read pg_stat_database")
}

#[tokio::test]
async fn an_import_racing_pushes_on_the_same_ids_ends_in_the_file_state_without_deadlocks() {
    const N: usize = 6_000;
    const PUSHERS: usize = 4;
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let input = dir.path().join("tasks.jsonl");
    jsonl(&input, (0..N).map(task));
    let mut conn = server.db().await;
    let deadlocks_before = deadlocks(&mut conn).await;

    // Pushers insert ids of the file (descending, in batches of 50) while the import runs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let mut c = server.client().await;
        let done = done.clone();
        pushers.push(tokio::spawn(async move {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && rounds < 400 {
                let start = (rounds * 197 + p * 1_499) % N;
                let rows: Vec<_> = (0..50)
                    .rev()
                    .map(|k| {
                        let id = format!("t{:05}", (start + k * 7) % N);
                        insert(doc(&id, json!({"id": id, "title": "pushed"})))
                    })
                    .collect();
                push(&mut c, "tasks", rows).await;
                rounds += 1;
            }
            rounds
        }));
    }
    let input_arg = input.to_string_lossy();
    let out = syncline(
        &config,
        &[
            "import",
            "--collection",
            "tasks",
            &input_arg,
            "--batch-rows",
            "300",
        ],
    )
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pushed = 0;
    for p in pushers {
        pushed += p.await.expect("pusher task");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(pushed > 0, "the pushers ran");

    // The import ran after or over every push: the file's state everywhere, each id once.
    let stored = rows(&mut conn, "tasks").await;
    assert_eq!(stored.len(), N);
    for (id, (rev, _, _, deleted, _, b)) in &stored {
        let i: usize = id[1..].parse().expect("numbered ids");
        assert_eq!((b, *deleted), (&task(i), false), "{id}");
        assert!(matches!(generation(rev), 1 | 2), "{id}: {rev}");
    }
    let overwritten = stored.values().filter(|r| generation(&r.0) == 2).count();
    assert!(
        overwritten > 0,
        "pushes wrote documents the import then replaced"
    );
    // A rerun finds nothing to write.
    let (_, stderr) = ok(&config, &["import", "--collection", "tasks", &input_arg]).await;
    assert!(stderr.contains(&format!("unchanged {N}")), "{stderr}");
    assert_eq!(deadlocks(&mut conn).await, deadlocks_before, "no deadlock");

    drop(conn);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn an_export_reads_one_snapshot_while_writes_commit() {
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let mut c = server.client().await;
    let pushed: Vec<_> = (0..30)
        .map(|i| {
            let id = format!("s{i:02}");
            insert(doc(&id, json!({"id": id, "v": i})))
        })
        .collect();
    push(&mut c, "tasks", pushed).await;
    let pool = sqlx::PgPool::connect(&server.db_url).await.expect("pool");
    let store = syncline::store::postgres::PgStore::from_pool(pool);
    let options = syncline::store::postgres::ExportOptions {
        include_deleted: true,
        with_owner: false,
        page_rows: 10,
    };
    let db_url = server.db_url.clone();
    let mut lines: Vec<Value> = Vec::new();
    let n = store
        .export("tasks", "id", options, |line| {
            if lines.len() == 1 {
                // While the first page is being written out, others change later pages.
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime");
                        runtime.block_on(async {
                            let mut db = sqlx::PgConnection::connect(&db_url)
                                .await
                                .expect("connect");
                            for sql in [
                                r#"SELECT syncline_put('tasks', 's25', '{"id": "s25", "v": "changed"}')"#,
                                r#"SELECT syncline_put('tasks', 's99', '{"id": "s99"}')"#,
                                "DELETE FROM syncline_documents WHERE collection = 'tasks' AND id = 's15'",
                            ] {
                                sqlx::query(sql).execute(&mut db).await.expect(sql);
                            }
                        });
                    })
                    .join()
                    .expect("writer thread");
                });
            }
            lines.push(serde_json::from_str(line).expect("a JSON line"));
            Ok(())
        })
        .await
        .expect("export");
    assert_eq!(n, 30);
    let want: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("s{i:02}"), "v": i}))
        .collect();
    assert_eq!(
        lines, want,
        "the state when the export began, nothing after"
    );
    // The writes did commit: the next export sees them.
    let (stdout, _) = {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_file(dir.path(), &server.db_url, None);
        ok(
            &config,
            &["export", "--collection", "tasks", "--include-deleted"],
        )
        .await
    };
    assert!(
        stdout.contains(r#""v": "changed""#) && stdout.contains("s99"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"{"v": 15, "id": "s15", "_deleted": true}"#),
        "{stdout}"
    );

    store.close().await;
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn standard_input_imports_with_plain_progress_lines() {
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let input: String = (0..1_000)
        .map(|i| format!("{}\r\n", task(i)))
        .chain(std::iter::once("\n".to_owned()))
        .collect();
    let mut child = tokio::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .args([
            "import",
            "--collection",
            "tasks",
            "-",
            "--batch-rows",
            "100",
            "--progress-seconds",
            "0",
            "--owner",
            "importer",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the import");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the import finishes")
        .expect("import output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Stderr is not a terminal: one plain line per committed batch here (every 0 s), no bar.
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("import: ") && l.contains(" lines/s, created "))
        .collect();
    assert!(progress.len() >= 10, "{stderr}");
    assert!(progress[0].starts_with("import: 100 lines, "), "{stderr}");
    assert!(
        stderr.contains("import: done: 1001 lines in") && stderr.contains("created 1000,"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout stays free for data");

    let mut conn = server.db().await;
    let stored = rows(&mut conn, "tasks").await;
    assert_eq!(stored.len(), 1_000);
    assert!(
        stored.values().all(|r| r.4 == "importer"),
        "owned by --owner"
    );
    assert_eq!(stored["t00042"].5, task(42));

    drop(conn);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn a_body_with_reserved_field_names_exports_without_them_and_stays_live() {
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let mut c = server.client().await;
    let mut d = doc(
        "odd",
        json!({"id": "odd", "_deleted": true, "_owner": "mallory", "v": 1}),
    );
    d.owner = "alice".into();
    push(&mut c, "tasks", vec![insert(d)]).await;

    let (stdout, _) = ok(
        &config,
        &[
            "export",
            "--collection",
            "tasks",
            "--include-deleted",
            "--with-owner",
        ],
    )
    .await;
    let line: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line, json!({"id": "odd", "v": 1, "_owner": "alice"}));

    // Imported elsewhere: live, owned by its real owner.
    let other_database = test_database().await;
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = config_file(other_dir.path(), &other_database.url, None);
    let file = other_dir.path().join("odd.jsonl");
    std::fs::write(&file, &stdout).expect("write");
    ok(&other, &["migrate"]).await;
    ok(
        &other,
        &["import", "--collection", "tasks", &file.to_string_lossy()],
    )
    .await;
    let mut conn = sqlx::PgConnection::connect(&other_database.url)
        .await
        .expect("connect");
    let stored = rows(&mut conn, "tasks").await;
    let (_, _, _, deleted, owner, body) = &stored["odd"];
    assert_eq!((*deleted, owner.as_str()), (false, "alice"));
    assert_eq!(*body, json!({"id": "odd", "v": 1}));

    drop(conn);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn a_failed_batch_ends_the_import_while_its_input_pipe_stays_open() {
    let database = test_database().await;
    let server = TestServer::start_with(config(&database.url)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path(), &server.db_url, None);
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("t00000", json!({"other": 1})))],
    )
    .await;

    let mut child = tokio::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .args([
            "import",
            "--collection",
            "tasks",
            "-",
            "--batch-rows",
            "1",
            "--on-conflict",
            "fail",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the import");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{}\n", task(0)).as_bytes())
        .await
        .expect("write stdin");
    // The pipe stays open (a producer still running): the refused batch must end the import.
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the import ends without waiting for the end of its input")
        .expect("import output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 1 (id \"t00000\"): the stored document differs"),
        "{stderr}"
    );
    drop(stdin);
    server.stop().await.expect("server stops");
}
