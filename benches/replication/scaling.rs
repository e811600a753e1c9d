//! Scenario 5: does the cost of a call grow with the data? Pull page latency (limit 100, from
//! a random checkpoint of an earlier full pull) and single-row push latency (an update of a
//! random document with its right revision), with a small and a large collection, each in
//! its own database with its own server, measured in alternation. Beside each, PostgreSQL's
//! own figures for the same work on the same tables (the page query from a random position,
//! a guarded single-row update), so that growth PostgreSQL itself shows can be told apart.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use sqlx::Connection;

use crate::Ctx;
use crate::client::{self, Client};
use crate::load;
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};
use crate::stats::{Latency, median};

const COLLECTION: &str = "scale";
const PREFIX: &str = "s";
const TARGET: f64 = 1.3;

// What a Pull page costs PostgreSQL alone: the keyset query from a position.
const PAGE_SQL: &str = "
SELECT id, owner, body::text, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND (change_xid, change_seq) > ($2, $3)
ORDER BY change_xid, change_seq
LIMIT 100";

// What a single-row push writes: an update guarded by the revision the client saw.
const UPDATE_SQL: &str = "
UPDATE syncline_documents
SET body = $3::jsonb, revision = $4, updated_at = now(),
    change_xid = pg_current_xact_id()::text::bigint, change_seq = nextval('syncline_change_seq')
WHERE collection = $1 AND id = $2 AND revision = $5";

/// One collection size and what the scenario learnt about it.
struct Size {
    docs: usize,
    db: String,
    server: Server,
    /// Checkpoints after each page of a full pull.
    checkpoints: Vec<String>,
    /// The positions after each page, for the PostgreSQL baseline.
    positions: Vec<(i64, i64)>,
    /// Documents already updated (each update needs the loaded revision).
    updated: HashSet<usize>,
    pulls: Vec<Latency>,
    pushes: Vec<Latency>,
    pg_pulls: Vec<Latency>,
    pg_pushes: Vec<Latency>,
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let mut small = prepare(ctx, s.scale_small, "scale-small").await;
    let mut large = prepare(ctx, s.scale_large, "scale-large").await;
    for _ in 0..s.rounds {
        for size in [&mut small, &mut large] {
            let pulls = pg_pulls(size, s.scale_samples).await;
            size.pg_pulls.push(pulls);
            let pulls = sample_pulls(size, s.scale_samples).await;
            size.pulls.push(pulls);
            let pushes = pg_pushes(size, s.scale_samples, report).await;
            size.pg_pushes.push(pushes);
            let pushes = sample_pushes(size, s.scale_samples, report).await;
            size.pushes.push(pushes);
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
    let positions = page_positions(&db).await;
    Size {
        docs,
        db,
        server,
        checkpoints,
        positions,
        updated: HashSet::new(),
        pulls: Vec::new(),
        pushes: Vec::new(),
        pg_pulls: Vec::new(),
        pg_pushes: Vec::new(),
    }
}

/// The position after every 1,000th document (and the start), in change order.
async fn page_positions(db: &str) -> Vec<(i64, i64)> {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect for positions");
    let mut positions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT change_xid, change_seq FROM (
             SELECT change_xid, change_seq,
                    row_number() OVER (ORDER BY change_xid, change_seq) AS n
             FROM syncline_documents WHERE collection = $1) p
         WHERE n % 1000 = 0 ORDER BY n",
    )
    .bind(COLLECTION)
    .fetch_all(&mut conn)
    .await
    .expect("page positions");
    positions.pop(); // nothing may follow the last one
    positions.push((0, 0));
    positions
}

/// The page query alone, on one direct connection, from random positions.
async fn pg_pulls(size: &Size, samples: usize) -> Latency {
    let mut conn = sqlx::PgConnection::connect(&size.db)
        .await
        .expect("connect for the baseline");
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (xid, seq) = size.positions[rand::rng().random_range(0..size.positions.len())];
        let clock = Instant::now();
        let rows = sqlx::query(PAGE_SQL)
            .bind(COLLECTION)
            .bind(xid)
            .bind(seq)
            .fetch_all(&mut conn)
            .await
            .expect("baseline page");
        times.push(clock.elapsed());
        assert!(!rows.is_empty(), "scaling baseline: a page has rows");
    }
    Latency::of(times)
}

/// The guarded single-row update alone, on one direct connection.
async fn pg_pushes(size: &mut Size, samples: usize, report: &mut Report) -> Latency {
    let mut conn = sqlx::PgConnection::connect(&size.db)
        .await
        .expect("connect for the baseline");
    let mut times = Vec::with_capacity(samples);
    let mut written = 0;
    for _ in 0..samples {
        let i = untouched(size);
        let id = client::doc_id(PREFIX, i);
        let body = String::from_utf8(client::body(&id, i, 2)).expect("bodies are UTF-8");
        let clock = Instant::now();
        let done = sqlx::query(UPDATE_SQL)
            .bind(COLLECTION)
            .bind(&id)
            .bind(&body)
            .bind("2-baseline")
            .bind(load::loaded_revision(i))
            .execute(&mut conn)
            .await
            .expect("baseline update");
        times.push(clock.elapsed());
        written += done.rows_affected() as usize;
    }
    report.expect_eq("scaling baseline: rows updated", written, samples);
    Latency::of(times)
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

/// Per size: Syncline's latencies and PostgreSQL's for the same work, one entry per round.
type Figures<'a> = (&'a Vec<Latency>, &'a Vec<Latency>);

fn add_row(
    report: &mut Report,
    what: &str,
    small: &Size,
    large: &Size,
    figures: impl for<'a> Fn(&'a Size) -> Figures<'a>,
) {
    let pick =
        |l: &Vec<Latency>, p: fn(&Latency) -> f64| median(&l.iter().map(p).collect::<Vec<_>>());
    let p50 = |l: &Vec<Latency>| pick(l, |x| x.p50);
    let p99 = |l: &Vec<Latency>| pick(l, |x| x.p99);
    let (ours_small, pg_small) = figures(small);
    let (ours_large, pg_large) = figures(large);
    let ratio = p50(ours_large) / p50(ours_small);
    let pg_ratio = p50(pg_large) / p50(pg_small);
    let (large_n, small_n) = (thousands(large.docs as u64), thousands(small.docs as u64));
    let text = |big: &Vec<Latency>, little: &Vec<Latency>| {
        format!(
            "p50 {:.2} / p99 {:.2} ms ({large_n}) vs p50 {:.2} / p99 {:.2} ms ({small_n})",
            p50(big),
            p99(big),
            p50(little),
            p99(little)
        )
    };
    report.add(Row {
        scenario: format!("5. Scaling: {what} latency, {large_n} vs {small_n} docs"),
        syncline: text(ours_large, ours_small),
        baseline: format!("{}; ratio {pg_ratio:.2}", text(pg_large, pg_small)),
        ratio: Some(ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(ratio <= TARGET),
        figures: json!({
            "large_docs": large.docs, "small_docs": small.docs,
            "large_p50_ms": p50(ours_large), "large_p99_ms": p99(ours_large),
            "small_p50_ms": p50(ours_small), "small_p99_ms": p99(ours_small),
            "baseline_large_p50_ms": p50(pg_large), "baseline_small_p50_ms": p50(pg_small),
            "baseline_ratio": pg_ratio,
        }),
    });
}
