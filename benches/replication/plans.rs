//! Scenario 9: plan stability. A server starts on an empty database (a fresh deployment) and
//! serves a few pushes and pulls; then the collection is bulk-loaded by SQL and measured at
//! once, before any ANALYZE, beside the same collection loaded the same way and then analyzed
//! (each in its own database with its own server, autovacuum off on both tables so that
//! neither changes state during the run), in alternation. Measured: sequential single-row
//! pushes of new documents and of compare-and-set updates, and Pull pages (limit 100 from a
//! random checkpoint); the figure is the just-loaded p50 over the analyzed one. Beside them,
//! PostgreSQL's own latency for the page and the update on the same two tables, and the
//! single-row insert on the empty table (the warm-up).

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use crate::Ctx;
use crate::client::{self, Client};
use crate::load;
use crate::probe::{Comparison, Figures, Probe};
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};
use crate::stats::{Latency, median};

const COLLECTION: &str = "plans";
const PREFIX: &str = "p";
const TARGET: f64 = 1.2;
/// Pushes and pulls on the empty table before the load: past the five executions after which
/// PostgreSQL may keep a prepared statement's generic plan.
const WARM_UP: usize = 30;

/// One database and what was measured on it.
struct Case {
    probe: Probe,
    /// Single-row inserts on the empty table, before the load.
    empty: Latency,
    /// Single-row inserts, one entry per round.
    inserts: Vec<Latency>,
    inserted: usize,
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let mut loaded = prepare(ctx, "plans-loaded", false, report).await;
    let mut analyzed = prepare(ctx, "plans-analyzed", true, report).await;
    for _ in 0..s.rounds {
        for case in [&mut loaded, &mut analyzed] {
            case.probe.round(s.plans_samples, report).await;
            let inserts = case.insert(s.plans_samples, report).await;
            case.inserts.push(inserts);
        }
    }
    let docs = thousands(s.plans_docs as u64);
    let empty = format!(
        "; on the empty table p50 {:.2} / {:.2} ms",
        loaded.empty.p50, analyzed.empty.p50
    );
    let inserts = (
        median_of(&loaded.inserts, |l| l.p50),
        median_of(&loaded.inserts, |l| l.p99),
        median_of(&analyzed.inserts, |l| l.p50),
        median_of(&analyzed.inserts, |l| l.p99),
    );
    let ratio = inserts.0 / inserts.2;
    report.add(Row {
        scenario: format!(
            "9. Plan stability: single-row Push of a new document, just loaded vs analyzed ({docs} docs)"
        ),
        syncline: format!(
            "p50 {:.2} / p99 {:.2} ms (just loaded) vs p50 {:.2} / p99 {:.2} ms (analyzed){empty}",
            inserts.0, inserts.1, inserts.2, inserts.3
        ),
        baseline: "—".into(),
        ratio: Some(ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(ratio <= TARGET),
        figures: json!({
            "docs": s.plans_docs,
            "loaded_p50_ms": inserts.0, "loaded_p99_ms": inserts.1,
            "analyzed_p50_ms": inserts.2, "analyzed_p99_ms": inserts.3,
            "empty_p50_ms": loaded.empty.p50,
        }),
    });
    add_row(
        report,
        "single-row Push compare-and-set update",
        &docs,
        &loaded,
        &analyzed,
        |p| (&p.pushes, &p.pg_pushes),
    );
    add_row(
        report,
        "Pull page (limit 100)",
        &docs,
        &loaded,
        &analyzed,
        |p| (&p.pulls, &p.pg_pulls),
    );
}

/// A fresh database and its server, warmed up on the empty table, then loaded (and analyzed
/// when `analyze`), with checkpoints from a full pull.
async fn prepare(ctx: &Ctx<'_>, name: &str, analyze: bool, report: &mut Report) -> Case {
    let docs = ctx.settings.plans_docs;
    let db = ctx.cluster.fresh_database(&name.replace('-', "_")).await;
    let server = Server::start(&db, &ServerOptions::new(&[COLLECTION]), &ctx.work, name).await;
    let mut admin = sqlx::PgConnection::connect(&db)
        .await
        .expect("connect to the plans database");
    // Autovacuum would analyze the just-loaded table within a minute and so end the case.
    sqlx::query("ALTER TABLE syncline_documents SET (autovacuum_enabled = false)")
        .execute(&mut admin)
        .await
        .expect("disable autovacuum");
    let mut client = client::connect(server.addr).await;
    let mut times = Vec::with_capacity(WARM_UP);
    for i in 0..WARM_UP {
        let id = client::doc_id("w", i);
        let row = client::insert_row(id.clone(), client::body(&id, i, 1));
        let clock = Instant::now();
        let conflicts = client::push(&mut client, COLLECTION, vec![row]).await.len();
        times.push(clock.elapsed());
        report.expect_eq("plans: warm-up push conflicts", conflicts, 0);
        // What it returns depends on the cluster's visibility horizon (other databases'
        // transactions included): the full pull below checks the counts.
        client::pull_page_as(&mut client, None, COLLECTION, "", 100)
            .await
            .unwrap_or_else(|s| panic!("plans: warm-up pull: {s}"));
    }
    let empty = Latency::of(times);
    load::documents_unanalyzed(&db, COLLECTION, PREFIX, docs).await;
    if analyze {
        sqlx::query("VACUUM ANALYZE syncline_documents")
            .execute(&mut admin)
            .await
            .expect("vacuum analyze");
    }
    let _ = admin.close().await;
    let (probe, count, _) =
        Probe::prepare("plans", COLLECTION, PREFIX, db, server, None, docs).await;
    report.expect_eq(
        &format!("plans: full pull of {name}"),
        count,
        docs + WARM_UP,
    );
    Case {
        probe,
        empty,
        inserts: Vec::new(),
        inserted: 0,
    }
}

impl Case {
    /// Sequential single-row pushes of new documents.
    async fn insert(&mut self, samples: usize, report: &mut Report) -> Latency {
        let mut client: Client = client::connect(self.probe.server.addr).await;
        let mut times: Vec<Duration> = Vec::with_capacity(samples);
        let mut conflicts = 0;
        for _ in 0..samples {
            let id = client::doc_id("n", self.inserted);
            let row = client::insert_row(id.clone(), client::body(&id, self.inserted, 1));
            self.inserted += 1;
            let clock = Instant::now();
            conflicts += client::push(&mut client, COLLECTION, vec![row]).await.len();
            times.push(clock.elapsed());
        }
        report.expect_eq("plans: insert conflicts", conflicts, 0);
        Latency::of(times)
    }
}

fn median_of(rounds: &[Latency], pick: fn(&Latency) -> f64) -> f64 {
    median(&rounds.iter().map(pick).collect::<Vec<_>>())
}

fn add_row(
    report: &mut Report,
    what: &str,
    docs: &str,
    loaded: &Case,
    analyzed: &Case,
    figures: impl for<'a> Fn(&'a Probe) -> Figures<'a>,
) {
    let c = Comparison::of(figures(&loaded.probe), figures(&analyzed.probe));
    let [(loaded50, loaded99), (analyzed50, analyzed99)] = c.ours;
    let [(pg_loaded50, _), (pg_analyzed50, _)] = c.pg;
    report.add(Row {
        scenario: format!("9. Plan stability: {what}, just loaded vs analyzed ({docs} docs)"),
        syncline: Comparison::text(c.ours, "just loaded", "analyzed"),
        baseline: format!(
            "{}; ratio {:.2}",
            Comparison::text(c.pg, "just loaded", "analyzed"),
            c.pg_ratio
        ),
        ratio: Some(c.ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(c.ratio <= TARGET),
        figures: json!({
            "docs": docs,
            "loaded_p50_ms": loaded50, "loaded_p99_ms": loaded99,
            "analyzed_p50_ms": analyzed50, "analyzed_p99_ms": analyzed99,
            "baseline_loaded_p50_ms": pg_loaded50, "baseline_analyzed_p50_ms": pg_analyzed50,
            "baseline_ratio": c.pg_ratio,
        }),
    });
}
