//! Scenario 1: a fresh replica pulls a whole collection in pages of 1,000, against the same
//! keyset query loop run directly on PostgreSQL.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Connection;

use crate::attachments::own_cpu_seconds;
use crate::report::{Report, Row, rate, thousands};
use crate::server::{Server, ServerOptions, micros_per};
use crate::stats::median;
use crate::{Ctx, client, load};

const COLLECTION: &str = "docs";
const PAGE: u32 = 1_000;
const TARGET: f64 = 0.85;

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

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut theirs_cpu) = (Cpu::default(), Cpu::default());
    for _ in 0..ctx.settings.rounds {
        let meter = Meter::start(ctx, None);
        theirs.push(baseline(&db, n, report).await);
        theirs_cpu.add(meter.stop(n));
        let meter = Meter::start(ctx, Some(&server));
        ours.push(syncline(&server, n, report).await);
        ours_cpu.add(meter.stop(n));
    }
    let (ours, theirs) = (median(&ours), median(&theirs));
    let (ours_cpu, theirs_cpu) = (ours_cpu.medians(), theirs_cpu.medians());
    let ratio = ours / theirs;
    report.add(Row {
        scenario: format!(
            "1. Initial sync: {} docs (~300 B), pages of 1,000",
            thousands(n as u64)
        ),
        syncline: format!(
            "{}; CPU µs/doc: server {:.1}, PostgreSQL {}, client {:.1}",
            rate(ours),
            ours_cpu[0],
            postgres(ours_cpu[1]),
            ours_cpu[2]
        ),
        baseline: format!(
            "{}; CPU µs/doc: PostgreSQL {}, client {:.1}",
            rate(theirs),
            postgres(theirs_cpu[1]),
            theirs_cpu[2]
        ),
        ratio: Some(ratio),
        target: format!(">= {TARGET}"),
        met: Some(ratio >= TARGET),
        figures: json!({ "syncline_docs_per_s": ours, "baseline_docs_per_s": theirs,
                         "server_cpu_us_per_doc": ours_cpu[0],
                         "postgres_cpu_us_per_doc": ours_cpu[1].is_finite().then_some(ours_cpu[1]),
                         "client_cpu_us_per_doc": ours_cpu[2],
                         "baseline_postgres_cpu_us_per_doc":
                             theirs_cpu[1].is_finite().then_some(theirs_cpu[1]),
                         "baseline_client_cpu_us_per_doc": theirs_cpu[2] }),
    });
}

/// PostgreSQL's CPU per document, when this run started the cluster (else it is not ours to
/// read).
fn postgres(micros: f64) -> String {
    if micros.is_finite() {
        format!("{micros:.1}")
    } else {
        "n/a".into()
    }
}

/// CPU per document of each round, by process: [server, PostgreSQL, load generator].
#[derive(Default)]
struct Cpu([Vec<f64>; 3]);

impl Cpu {
    fn add(&mut self, round: [f64; 3]) {
        for (all, one) in self.0.iter_mut().zip(round) {
            all.push(one);
        }
    }

    fn medians(&self) -> [f64; 3] {
        self.0.each_ref().map(|v| median(v))
    }
}

/// CPU seconds of the server, the cluster and this process at the start of a sync, so that
/// the work a page costs is seen apart from what a shared machine does to throughput.
struct Meter<'a> {
    ctx: &'a Ctx<'a>,
    server: Option<&'a Server>,
    at: [Option<f64>; 3],
}

impl<'a> Meter<'a> {
    fn start(ctx: &'a Ctx<'a>, server: Option<&'a Server>) -> Meter<'a> {
        Meter {
            ctx,
            server,
            at: Meter::now(ctx, server),
        }
    }

    fn now(ctx: &Ctx<'_>, server: Option<&Server>) -> [Option<f64>; 3] {
        [
            server.map(Server::cpu_seconds),
            ctx.cluster.cpu_seconds(),
            Some(own_cpu_seconds()),
        ]
    }

    /// µs per document for `n` documents since the start (NaN where unknown).
    fn stop(self, n: usize) -> [f64; 3] {
        let now = Meter::now(self.ctx, self.server);
        let mut out = [f64::NAN; 3];
        for (i, slot) in out.iter_mut().enumerate() {
            if let (Some(then), Some(now)) = (self.at[i], now[i]) {
                *slot = micros_per(now - then, n);
            }
        }
        if self.server.is_none() {
            out[0] = 0.0;
        }
        out
    }
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
