//! Scenario 5: does the cost of a call grow with the data? Pull page latency (limit 100, from
//! a random checkpoint of an earlier full pull) and single-row push latency (an update of a
//! random document with its right revision), with a small and a large collection, each in
//! its own database with its own server, measured in alternation. Beside each, PostgreSQL's
//! own figures for the same work on the same tables (the page query from a random position,
//! a guarded single-row update), so that growth PostgreSQL itself shows can be told apart.

use serde_json::json;

use crate::Ctx;
use crate::load;
use crate::probe::{Comparison, Figures, Probe};
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};

const COLLECTION: &str = "scale";
const PREFIX: &str = "s";
const TARGET: f64 = 1.3;

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let mut small = prepare(ctx, s.scale_small, "scale-small").await;
    let mut large = prepare(ctx, s.scale_large, "scale-large").await;
    for _ in 0..s.rounds {
        for size in [&mut small, &mut large] {
            size.round(s.scale_samples, report).await;
        }
    }
    add_row(report, "Pull page (limit 100)", &small, &large, |z| {
        (&z.pulls, &z.pg_pulls)
    });
    add_row(report, "single-row Push", &small, &large, |z| {
        (&z.pushes, &z.pg_pushes)
    });
}

/// A database with `docs` documents, its server, and checkpoints from a full pull.
async fn prepare(ctx: &Ctx<'_>, docs: usize, name: &str) -> Probe {
    let db = ctx.cluster.fresh_database(&name.replace('-', "_")).await;
    let server = Server::start(&db, &ServerOptions::new(&[COLLECTION]), &ctx.work, name).await;
    load::documents(&db, COLLECTION, PREFIX, docs).await;
    let (probe, count, _) =
        Probe::prepare("scaling", COLLECTION, PREFIX, db, server, None, docs).await;
    assert_eq!(count, docs, "scaling: full pull of {name}");
    probe
}

fn add_row(
    report: &mut Report,
    what: &str,
    small: &Probe,
    large: &Probe,
    figures: impl for<'a> Fn(&'a Probe) -> Figures<'a>,
) {
    let c = Comparison::of(figures(large), figures(small));
    let (large_n, small_n) = (
        thousands(large.visible as u64),
        thousands(small.visible as u64),
    );
    let [(large50, large99), (small50, small99)] = c.ours;
    let [(pg_large50, _), (pg_small50, _)] = c.pg;
    report.add(Row {
        scenario: format!("5. Scaling: {what} latency, {large_n} vs {small_n} docs"),
        syncline: Comparison::text(c.ours, &large_n, &small_n),
        baseline: format!(
            "{}; ratio {:.2}",
            Comparison::text(c.pg, &large_n, &small_n),
            c.pg_ratio
        ),
        ratio: Some(c.ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(c.ratio <= TARGET),
        figures: json!({
            "large_docs": large.visible, "small_docs": small.visible,
            "large_p50_ms": large50, "large_p99_ms": large99,
            "small_p50_ms": small50, "small_p99_ms": small99,
            "baseline_large_p50_ms": pg_large50, "baseline_small_p50_ms": pg_small50,
            "baseline_ratio": c.pg_ratio,
        }),
    });
}
