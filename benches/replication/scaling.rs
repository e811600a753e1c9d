//! Scenario 5: does the cost of a call grow with the data? Pull page latency (limit 100, from
//! a random checkpoint of an earlier full pull) and single-row push latency (an update of a
//! random document with its right revision), with a small and a large collection, each in
//! its own database with its own server, measured in alternation.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use crate::Ctx;
use crate::client::{self, Client};
use crate::load;
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};
use crate::stats::{Latency, median};

const COLLECTION: &str = "scale";
const PREFIX: &str = "s";
const TARGET: f64 = 1.3;

/// One collection size and what the scenario learnt about it.
struct Size {
    docs: usize,
    server: Server,
    /// Checkpoints after each page of a full pull.
    checkpoints: Vec<String>,
    /// Documents already updated (each update needs the loaded revision).
    updated: HashSet<usize>,
    pulls: Vec<Latency>,
    pushes: Vec<Latency>,
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let mut small = prepare(ctx, s.scale_small, "scale-small").await;
    let mut large = prepare(ctx, s.scale_large, "scale-large").await;
    for _ in 0..s.rounds {
        for size in [&mut small, &mut large] {
            let pulls = sample_pulls(size, s.scale_samples).await;
            size.pulls.push(pulls);
            let pushes = sample_pushes(size, s.scale_samples, report).await;
            size.pushes.push(pushes);
        }
    }
    add_row(report, "Pull page (limit 100)", &small, &large, |z| {
        &z.pulls
    });
    add_row(report, "single-row Push", &small, &large, |z| &z.pushes);
}

/// A database with `docs` documents, its server, and checkpoints from a full pull.
async fn prepare(ctx: &Ctx<'_>, docs: usize, name: &str) -> Size {
    let db = ctx.cluster.fresh_database(&name.replace('-', "_")).await;
    let server = Server::start(&db, &ServerOptions::new(&[COLLECTION]), &ctx.work, name).await;
    load::documents(&db, COLLECTION, PREFIX, docs).await;
    let mut client = client::connect(server.addr).await;
    let mut checkpoints = Vec::new();
    let (count, _) = client::pull_all(&mut client, COLLECTION, "", 1000, |_, token| {
        checkpoints.push(token.to_owned());
    })
    .await;
    assert_eq!(count, docs, "scaling: full pull of {name}");
    checkpoints.pop(); // the last one has nothing after it
    checkpoints.push(String::new());
    Size {
        docs,
        server,
        checkpoints,
        updated: HashSet::new(),
        pulls: Vec::new(),
        pushes: Vec::new(),
    }
}

async fn sample_pulls(size: &Size, samples: usize) -> Latency {
    let mut client = client::connect(size.server.addr).await;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let i = rand::rng().random_range(0..size.checkpoints.len());
        let clock = Instant::now();
        let (docs, _) = client::pull_page(&mut client, COLLECTION, &size.checkpoints[i], 100)
            .await
            .unwrap_or_else(|s| panic!("scaling pull: {s}"));
        times.push(clock.elapsed());
        assert!(
            !docs.is_empty(),
            "scaling: a page after a checkpoint has documents"
        );
    }
    Latency::of(times)
}

async fn sample_pushes(size: &mut Size, samples: usize, report: &mut Report) -> Latency {
    let mut client = client::connect(size.server.addr).await;
    let mut times: Vec<Duration> = Vec::with_capacity(samples);
    let mut conflicts = 0;
    for _ in 0..samples {
        let i = untouched(size);
        conflicts += timed_update(&mut client, i, &mut times).await;
    }
    report.expect_eq("scaling: push conflicts", conflicts, 0);
    Latency::of(times)
}

/// A random document not updated yet (so its revision is still the loaded one).
fn untouched(size: &mut Size) -> usize {
    loop {
        let i = rand::rng().random_range(0..size.docs);
        if size.updated.insert(i) {
            return i;
        }
    }
}

async fn timed_update(client: &mut Client, i: usize, times: &mut Vec<Duration>) -> usize {
    let id = client::doc_id(PREFIX, i);
    let body = client::body(&id, i, 2);
    let row = client::update_row(id, body, load::loaded_revision(i));
    let clock = Instant::now();
    let conflicts = client::push(client, COLLECTION, vec![row]).await.len();
    times.push(clock.elapsed());
    conflicts
}

fn add_row(
    report: &mut Report,
    what: &str,
    small: &Size,
    large: &Size,
    figures: impl Fn(&Size) -> &Vec<Latency>,
) {
    let p50 = |z: &Size| median(&figures(z).iter().map(|l| l.p50).collect::<Vec<_>>());
    let p99 = |z: &Size| median(&figures(z).iter().map(|l| l.p99).collect::<Vec<_>>());
    let ratio = p50(large) / p50(small);
    let text = |z: &Size| format!("p50 {:.2} / p99 {:.2} ms", p50(z), p99(z));
    report.add(Row {
        scenario: format!(
            "5. Scaling: {what} latency, {} vs {} docs",
            thousands(large.docs as u64),
            thousands(small.docs as u64)
        ),
        syncline: format!("{} ({} docs)", text(large), thousands(large.docs as u64)),
        baseline: format!("{} ({} docs)", text(small), thousands(small.docs as u64)),
        ratio: Some(ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(ratio <= TARGET),
        figures: json!({
            "large_docs": large.docs, "small_docs": small.docs,
            "large_p50_ms": p50(large), "large_p99_ms": p99(large),
            "small_p50_ms": p50(small), "small_p99_ms": p99(small),
        }),
    });
}
