//! Scenario 1: a fresh replica pulls a whole collection in pages of 1,000, against the same
//! keyset query loop run directly on PostgreSQL.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Connection;

use crate::report::{Report, Row, rate, thousands};
use crate::server::{Server, ServerOptions, micros_per};
use crate::stats::median;
use crate::{Ctx, client, load};

const COLLECTION: &str = "docs";
const PAGE: u32 = 1_000;
const TARGET: f64 = 0.7;

const KEYSET_SQL: &str = "
SELECT id, body::text, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND (change_xid, change_seq) > ($2, $3)
ORDER BY change_xid, change_seq
LIMIT 1000";

type KeysetRow = (String, String, bool, String, DateTime<Utc>, i64, i64);

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let n = ctx.settings.sync_docs;
    let db = ctx.cluster.fresh_database("sync").await;
    let server = Server::start(&db, &ServerOptions::new(&[COLLECTION]), &ctx.work, "sync").await;
    load::documents(&db, COLLECTION, "d", n).await;

    let (mut ours, mut theirs, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.settings.rounds {
        theirs.push(baseline(&db, n, report).await);
        let cpu_before = server.cpu_seconds();
        ours.push(syncline(&server, n, report).await);
        cpu.push(micros_per(server.cpu_seconds() - cpu_before, n));
    }
    let (ours, theirs, cpu) = (median(&ours), median(&theirs), median(&cpu));
    let ratio = ours / theirs;
    report.add(Row {
        scenario: format!(
            "1. Initial sync: {} docs (~300 B), pages of 1,000",
            thousands(n as u64)
        ),
        syncline: format!("{}; server CPU {cpu:.1} µs/doc", rate(ours)),
        baseline: rate(theirs),
        ratio: Some(ratio),
        target: format!(">= {TARGET}"),
        met: Some(ratio >= TARGET),
        figures: json!({ "syncline_docs_per_s": ours, "baseline_docs_per_s": theirs,
                         "server_cpu_us_per_doc": cpu }),
    });
}

/// A fresh client pulls everything; docs/s. Checks every document came exactly once.
async fn syncline(server: &Server, n: usize, report: &mut Report) -> f64 {
    let mut client = client::connect(server.addr).await;
    let mut ids = Vec::with_capacity(n);
    let start = Instant::now();
    let (count, _) = client::pull_all(&mut client, COLLECTION, "", PAGE, |docs, _| {
        ids.extend(docs.into_iter().map(|d| d.id));
    })
    .await;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    report.expect_eq("initial sync: documents pulled", count, n);
    let unique: HashSet<&String> = ids.iter().collect();
    report.expect_eq("initial sync: distinct documents pulled", unique.len(), n);
    rate
}

/// The same keyset loop over one direct connection; docs/s.
async fn baseline(db: &str, n: usize, report: &mut Report) -> f64 {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect for the baseline");
    let (mut xid, mut seq, mut count) = (0i64, 0i64, 0usize);
    let start = Instant::now();
    loop {
        let rows: Vec<KeysetRow> = sqlx::query_as(KEYSET_SQL)
            .bind(COLLECTION)
            .bind(xid)
            .bind(seq)
            .fetch_all(&mut conn)
            .await
            .expect("keyset page");
        let Some(last) = rows.last() else { break };
        (xid, seq) = (last.5, last.6);
        count += rows.len();
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    report.expect_eq("initial sync baseline: rows read", count, n);
    rate
}
