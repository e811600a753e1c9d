//! Scenario 5 by owners: does one owner's cost grow with what other owners hold? Pull page
//! latency (limit 100, from a random checkpoint of the owner's full pull) and single-row push
//! latency (an update of a random document of the owner's with its right revision) for the
//! JWT principal `owner-0`, in a collection spread over 100 owners and in one that is all its
//! own: the same row count, each in its own database with its own server (JWT authentication),
//! measured in alternation. Beside each, PostgreSQL's own figures for the same work (the
//! owner's page query from a random position, a guarded single-row update).

use serde_json::json;

use crate::Ctx;
use crate::load;
use crate::probe::{Caller, Comparison, Figures, Probe};
use crate::report::{Report, Row};
use crate::server::{Server, ServerOptions};

const COLLECTION: &str = "owned";
const PREFIX: &str = "o";
const TARGET: f64 = 1.3;
/// Owners of the shared collection.
const MANY: usize = 100;
const SECRET: &str = "syncline-bench-owners-hs256-secret-0123456789";

fn owned(docs: usize, owners: usize) -> usize {
    docs.div_ceil(owners)
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    // Each update needs a document of the owner's not updated yet.
    let updates = 2 * s.rounds * s.scale_samples;
    let fewest = owned(s.scale_owners_docs, MANY);
    assert!(
        updates <= fewest,
        "owners: {updates} updates need as many documents of owner-0, which has {fewest}: \
         raise BENCH_SCALE_OWNER_DOCS"
    );
    let mut many = prepare(ctx, MANY, "owners-many", report).await;
    let mut one = prepare(ctx, 1, "owners-one", report).await;
    for _ in 0..s.rounds {
        for size in [&mut many, &mut one] {
            size.round(s.scale_samples, report).await;
        }
    }
    let docs = s.scale_owners_docs;
    add_row(report, "Pull page (limit 100)", docs, &many, &one, |z| {
        (&z.pulls, &z.pg_pulls)
    });
    add_row(report, "single-row Push", docs, &many, &one, |z| {
        (&z.pushes, &z.pg_pushes)
    });
}

/// A database with the scenario's documents spread over `owners`, its server, and the
/// checkpoints of `owner-0`'s full pull (which must see exactly its own documents).
async fn prepare(ctx: &Ctx<'_>, owners: usize, name: &str, report: &mut Report) -> Probe {
    let docs = ctx.settings.scale_owners_docs;
    let db = ctx.cluster.fresh_database(&name.replace('-', "_")).await;
    let options = ServerOptions {
        hs256_secret: Some(SECRET.to_owned()),
        ..ServerOptions::new(&[COLLECTION])
    };
    let server = Server::start(&db, &options, &ctx.work, name).await;
    load::documents_owned(&db, COLLECTION, PREFIX, docs, owners).await;
    let owner = load::owner(0, owners);
    let bearer = options
        .bearer(&owner)
        .expect("the server authenticates callers");
    let caller = Caller {
        owner: owner.clone(),
        bearer,
        stride: owners,
    };
    let visible = owned(docs, owners);
    let (probe, count, foreign) = Probe::prepare(
        "owners",
        COLLECTION,
        PREFIX,
        db,
        server,
        Some(caller),
        visible,
    )
    .await;
    report.expect_eq(
        &format!("owners: full pull of {owner} in {name}"),
        count,
        visible,
    );
    report.expect_eq(
        &format!("owners: others' documents in {owner}'s pull in {name}"),
        foreign,
        0,
    );
    probe
}

fn add_row(
    report: &mut Report,
    what: &str,
    docs: usize,
    many: &Probe,
    one: &Probe,
    figures: impl for<'a> Fn(&'a Probe) -> Figures<'a>,
) {
    let c = Comparison::of(figures(many), figures(one));
    let many_label = format!("{MANY} owners");
    let [(many50, many99), (one50, one99)] = c.ours;
    let [(pg_many50, _), (pg_one50, _)] = c.pg;
    report.add(Row {
        scenario: format!("5. Scaling: {what} latency for one owner, {MANY} owners vs 1 owner"),
        syncline: Comparison::text(c.ours, &many_label, "1 owner"),
        baseline: format!(
            "{}; ratio {:.2}",
            Comparison::text(c.pg, &many_label, "1 owner"),
            c.pg_ratio
        ),
        ratio: Some(c.ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(c.ratio <= TARGET),
        figures: json!({
            "docs": docs, "owners": MANY,
            "many_owner_docs": many.visible, "one_owner_docs": one.visible,
            "many_p50_ms": many50, "many_p99_ms": many99,
            "one_p50_ms": one50, "one_p99_ms": one99,
            "baseline_many_p50_ms": pg_many50, "baseline_one_p50_ms": pg_one50,
            "baseline_ratio": c.pg_ratio,
        }),
    });
}
