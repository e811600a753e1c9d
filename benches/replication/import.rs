//! Scenario 7: `syncline import` of a JSONL file (the real binary, batches of 5,000, each a
//! push transaction with positions, revisions and a notification), against PostgreSQL's own
//! `COPY` of the same rows into a plain table of (id primary key, jsonb body), alternated.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde_json::json;
use sqlx::Connection;

use crate::report::{Report, Row, rate, thousands};
use crate::stats::median;
use crate::{Ctx, client};

const TARGET: f64 = 0.25;

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let n = ctx.settings.import_docs;
    let rounds = ctx.settings.rounds;
    let db = ctx.cluster.fresh_database("import").await;
    let config = ctx.work.join("import.toml");
    let mut toml = format!("database_url = {db:?}\n[auth]\nmode = \"none\"\n");
    for r in 0..rounds {
        let _ = write!(toml, "[[collections]]\nname = \"imp{r}\"\n");
    }
    std::fs::write(&config, toml).expect("write the import configuration");
    command(&config, &["migrate"]);

    let file = ctx.work.join("import.jsonl");
    let (lines, copy_rows) = documents(n);
    std::fs::write(&file, &lines).expect("write the import file");

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        theirs.push(copy(&db, r, &copy_rows, n, report).await);
        ours.push(import(&db, &config, &file, r, n, report).await);
    }
    let _ = std::fs::remove_file(&file);
    let (ours, theirs) = (median(&ours), median(&theirs));
    let ratio = ours / theirs;
    report.add(Row {
        scenario: format!(
            "7. Import: {} docs (~300 B) from a JSONL file, batches of 5,000",
            thousands(n as u64)
        ),
        syncline: rate(ours),
        baseline: format!("{} (COPY into a plain table)", rate(theirs)),
        ratio: Some(ratio),
        target: format!(">= {TARGET}"),
        met: Some(ratio >= TARGET),
        figures: json!({ "syncline_docs_per_s": ours, "baseline_docs_per_s": theirs }),
    });
}

/// The JSONL text, and the same rows in COPY's text format (`id<TAB>body`; the bodies hold no
/// backslash, tab or newline, so nothing needs escaping).
fn documents(n: usize) -> (String, String) {
    let (mut lines, mut rows) = (String::new(), String::new());
    for i in 0..n {
        let id = client::doc_id("i", i);
        let body = json!({
            "id": id, "title": format!("Document {i}"), "done": i % 2 == 0,
            "priority": i % 5, "tags": ["alpha", "beta", "gamma"], "version": 1,
            "notes": format!("{:032x}", (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)).repeat(6),
        })
        .to_string();
        let _ = writeln!(lines, "{body}");
        let _ = writeln!(rows, "{id}\t{body}");
    }
    (lines, rows)
}

/// `syncline import` into collection `imp<round>`; docs/s, process start included.
async fn import(
    db: &str,
    config: &Path,
    file: &Path,
    round: usize,
    n: usize,
    report: &mut Report,
) -> f64 {
    let collection = format!("imp{round}");
    let file = file.to_string_lossy();
    let start = Instant::now();
    command(config, &["import", "--collection", &collection, &file]);
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect to count");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM syncline_documents WHERE collection = $1")
            .bind(&collection)
            .fetch_one(&mut conn)
            .await
            .expect("count the imported documents");
    report.expect_eq("import: documents stored", stored as usize, n);
    rate
}

/// COPY of the same rows into a fresh plain table; docs/s.
async fn copy(db: &str, round: usize, rows: &str, n: usize, report: &mut Report) -> f64 {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect for COPY");
    let table = format!("bench_copy_{round}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id text PRIMARY KEY, body jsonb NOT NULL)"
    )))
    .execute(&mut conn)
    .await
    .expect("create the COPY table");
    let start = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} (id, body) FROM STDIN"))
        .await
        .expect("start COPY");
    copy.send(rows.as_bytes()).await.expect("COPY data");
    let copied = copy.finish().await.expect("finish COPY");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    report.expect_eq("import baseline: rows copied", copied as usize, n);
    rate
}

/// Runs the server binary's command; panics with its stderr when it fails.
fn command(config: &Path, args: &[&str]) {
    let out = std::process::Command::new(crate::server::binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run syncline");
    assert!(
        out.status.success(),
        "syncline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
