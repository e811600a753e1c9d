//! Plan stability: the statements of the hot path keep reading through their index after the
//! table they were first run on (empty) was bulk-loaded and never analyzed. PostgreSQL keeps a
//! prepared statement's generic plan, made for the table as it was, until statistics or DDL
//! change; the store's connections must not depend on that (see src/store/postgres/plans.rs).

use std::time::Duration;

use sqlx::Connection;

use crate::common::{config, fresh_database};

/// Documents loaded after the statements were first run.
const LOADED: i64 = 50_000;

// A bulk load as a deployment's first one is done by SQL: one transaction, stamped like a
// push (so the SQL-write triggers leave the rows as they are), then no ANALYZE.
const LOAD_SQL: &str = "
INSERT INTO syncline_documents
    (collection, id, owner, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT 'tasks', 'doc-' || lpad(i::text, 8, '0'),
       CASE WHEN i % 100 = 0 THEN 'plan-probe-owner' ELSE 'owner-' || (i % 100) END,
       jsonb_build_object('i', i, 'notes', repeat(md5(i::text), 6)),
       false, '1-' || lpad(to_hex(i), 16, '0'), now(),
       pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
FROM generate_series(1, $1::bigint) AS i";

/// Runs the hot statements on the empty table (vacuumed first when `vacuumed`), loads it,
/// and returns what is wrong with each statement's plan now.
async fn plans_after_load(vacuumed: bool) -> Vec<String> {
    let db = fresh_database().await;
    let store = syncline::server::open_store(&config(&db)).expect("open the store");
    store.migrate().await.expect("migrate");
    let mut admin = sqlx::PgConnection::connect(&db).await.expect("connect");
    // Autovacuum would analyze the table while the test runs (and so heal the plans).
    sqlx::query("ALTER TABLE syncline_documents SET (autovacuum_enabled = false)")
        .execute(&mut admin)
        .await
        .expect("disable autovacuum");
    if vacuumed {
        // An empty table once vacuumed has zero pages: a plan made now finds a scan free.
        sqlx::query("VACUUM syncline_documents")
            .execute(&mut admin)
            .await
            .expect("vacuum");
    }
    let mut probe = store.plan_probe("tasks").await.expect("probe");
    probe.prepare().await.expect("run the hot statements");

    load(&mut admin, LOADED).await;
    assert!(
        !analyzed(&mut admin, true).await,
        "the table must not have been analyzed"
    );

    let plans = probe.explain().await.expect("explain");
    probe.close().await;
    let _ = admin.close().await;
    store.close().await;
    assert_eq!(plans.len(), 9, "every hot statement is explained");
    plans
        .into_iter()
        .filter_map(|p| {
            p.problem
                .map(|problem| format!("{}: {problem}\n{:#}", p.name, p.plan))
        })
        .collect()
}

#[tokio::test]
async fn hot_statements_keep_their_index_after_a_first_bulk_load() {
    let problems = plans_after_load(false).await;
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[tokio::test]
async fn hot_statements_keep_their_index_after_a_bulk_load_into_a_vacuumed_empty_table() {
    let problems = plans_after_load(true).await;
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Loads documents 1..=n of `tasks` by SQL in one transaction.
async fn load(db: &mut sqlx::PgConnection, n: i64) {
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("SELECT set_config('syncline.writer', 'push', true)")
        .execute(&mut *tx)
        .await
        .expect("mark the load");
    let loaded = sqlx::query(LOAD_SQL)
        .bind(n)
        .execute(&mut *tx)
        .await
        .expect("load");
    assert_eq!(loaded.rows_affected(), n as u64);
    tx.commit().await.expect("commit the load");
}

/// Whether the documents table was analyzed (by a command; by autovacuum too when `auto`).
async fn analyzed(db: &mut sqlx::PgConnection, auto: bool) -> bool {
    sqlx::query_scalar(
        "SELECT last_analyze IS NOT NULL OR ($1 AND last_autoanalyze IS NOT NULL) \
         FROM pg_stat_user_tables WHERE relname = 'syncline_documents'",
    )
    .bind(auto)
    .fetch_one(db)
    .await
    .expect("analyze times")
}

/// A migrated database whose documents table autovacuum leaves alone, and a connection to it.
async fn quiet_database() -> (String, sqlx::PgConnection) {
    let db = fresh_database().await;
    let store = syncline::server::open_store(&config(&db)).expect("open the store");
    store.migrate().await.expect("migrate");
    store.close().await;
    let mut admin = sqlx::PgConnection::connect(&db).await.expect("connect");
    sqlx::query("ALTER TABLE syncline_documents SET (autovacuum_enabled = false)")
        .execute(&mut admin)
        .await
        .expect("disable autovacuum");
    (db, admin)
}

#[tokio::test]
async fn an_import_ends_with_analyze() {
    let (db, mut admin) = quiet_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("syncline.toml");
    let toml = format!(
        "database_url = {db:?}\n[auth]\nmode = \"none\"\n[[collections]]\nname = \"tasks\"\n"
    );
    std::fs::write(&config_path, toml).expect("write the configuration");
    let input = dir.path().join("tasks.jsonl");
    let lines: String = (0..500)
        .map(|i| format!("{{\"id\": \"t{i:05}\", \"n\": {i}}}\n"))
        .collect();
    std::fs::write(&input, lines).expect("write the input");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncline"))
        .arg("--config")
        .arg(&config_path)
        .args(["import", "--collection", "tasks"])
        .arg(&input)
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the import finishes within 60 s")
        .expect("run syncline import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(analyzed(&mut admin, false).await, "the import ran ANALYZE");
    let _ = admin.close().await;
}

#[tokio::test]
async fn a_restamp_ends_with_analyze() {
    let (db, mut admin) = quiet_database().await;
    load(&mut admin, 1_000).await;
    // Positions recorded under another cluster's identity must be re-stamped.
    sqlx::query("UPDATE syncline_dataset SET system_identifier = system_identifier + 1")
        .execute(&mut admin)
        .await
        .expect("pretend another cluster");
    let store = syncline::server::open_store(&config(&db)).expect("open the store");
    let done = store.restamp_if_foreign(300).await.expect("restamp");
    store.close().await;
    assert!(done.is_some(), "the positions were re-stamped");
    assert!(
        analyzed(&mut admin, false).await,
        "the re-stamp ran ANALYZE"
    );
    let _ = admin.close().await;
}
