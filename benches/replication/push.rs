//! Scenario 2: concurrent clients push batches — (a) new documents, (b) updates with the
//! right assumed revision, (c) the same with 10% of rows stale — against the same rows
//! upserted directly with one set-based statement per batch at the same concurrency. Then
//! (c) again on a collection per server-side conflict strategy, whose stale rows are resolved
//! and written (their assumed state carries the base body the merge needs). Last, single-row
//! pushes of new documents, with and without an idempotency key, one at a time, for latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use syncline::proto::ChangeRow;
use tokio::sync::Barrier;

use crate::report::{Report, Row, rate};
use crate::server::{Server, ServerOptions, micros_per};
use crate::stats::{Latency, median};
use crate::{Ctx, client};

const COLLECTION: &str = "push";
/// The baseline writes the same ids into another collection of the same table.
const BASE_COLLECTION: &str = "push_base";
/// Issue 17, target 5 (it was 0.6).
const TARGET: f64 = 0.75;
const STALE_REVISION: &str = "0-stale";

/// A collection per automatic strategy: (name, its `[[collections]]` settings, label).
const STRATEGIES: [(&str, &str, &str); 3] = [
    (
        "push_lww",
        "conflict = \"last-write-wins\"",
        "last-write-wins",
    ),
    ("push_merge", "conflict = \"field-merge\"", "field-merge"),
    (
        "push_crdt",
        "conflict = \"crdt\"\ncrdt_fields = { version = \"counter\" }",
        "crdt",
    ),
];

const UPSERT_SQL: &str = "
INSERT INTO syncline_documents AS d
    (collection, id, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT $1, t.id, t.body::jsonb, false, t.revision, now(),
       pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
FROM unnest($2::text[], $3::text[], $4::text[]) AS t(id, body, revision)
ON CONFLICT (collection, id) DO UPDATE
SET body = excluded.body, deleted = excluded.deleted, revision = excluded.revision,
    updated_at = excluded.updated_at, change_xid = excluded.change_xid,
    change_seq = excluded.change_seq";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    New,
    Update,
    TenPercentStale,
}

const VARIANTS: [Variant; 3] = [Variant::New, Variant::Update, Variant::TenPercentStale];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::New => "(a) new docs",
            Variant::Update => "(b) updates, right revision",
            Variant::TenPercentStale => "(c) updates, 10% conflicting",
        }
    }

    fn version(self) -> u32 {
        match self {
            Variant::New => 1,
            Variant::Update => 2,
            Variant::TenPercentStale => 3,
        }
    }

    /// Row `j` of a batch carries a stale assumption.
    fn stale(self, j: usize) -> bool {
        self == Variant::TenPercentStale && j.is_multiple_of(10)
    }
}

/// Who writes what: `clients` clients, each `batches` pushes of `batch` rows.
#[derive(Debug, Clone, Copy)]
struct Shape {
    clients: usize,
    batches: usize,
    batch: usize,
}

impl Shape {
    fn rows(self) -> usize {
        self.clients * self.batches * self.batch
    }

    /// The document number of row `j` of push `k` of client `c`.
    fn number(self, c: usize, k: usize, j: usize) -> usize {
        (c * self.batches + k) * self.batch + j
    }

    fn stale_rows(self, variant: Variant) -> usize {
        self.clients * self.batches * (0..self.batch).filter(|&j| variant.stale(j)).count()
    }
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let shape = Shape {
        clients: s.push_clients,
        batches: s.push_batches,
        batch: s.push_batch,
    };
    let db = ctx.cluster.fresh_database("push").await;
    let mut collections = vec![COLLECTION];
    collections.extend(STRATEGIES.iter().map(|(name, _, _)| *name));
    let mut options = ServerOptions::new(&collections);
    options.collection_settings = STRATEGIES
        .iter()
        .map(|(name, settings, _)| ((*name).to_owned(), (*settings).to_owned()))
        .collect();
    let server = Server::start(&db, &options, &ctx.work, "push").await;
    let mut revisions = HashMap::new();
    let mut token = String::new();
    let target = Target {
        collection: COLLECTION,
        resolves: false,
    };
    for variant in VARIANTS {
        let (mut ours, mut theirs, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..s.rounds {
            theirs.push(baseline(&db, shape, variant, round, report).await);
            let cpu_before = server.cpu_seconds();
            ours.push(syncline(&server, target, shape, variant, round, &revisions, report).await);
            cpu.push(micros_per(server.cpu_seconds() - cpu_before, shape.rows()));
        }
        if variant != Variant::TenPercentStale {
            // The next variant updates these documents: learn their revisions as a client would.
            token = learn_revisions(&server, COLLECTION, &token, &mut revisions).await;
        }
        let measured = [median(&ours), median(&theirs), median(&cpu)];
        add_row(report, shape, variant, measured, "first-write-wins");
    }
    for (collection, _, strategy) in STRATEGIES {
        let target = Target {
            collection,
            resolves: true,
        };
        // The same documents, loaded unmeasured, then (c) measured against the baseline.
        let mut revisions = HashMap::new();
        let mut token = String::new();
        for variant in [Variant::New, Variant::Update] {
            for round in 0..s.rounds {
                syncline(&server, target, shape, variant, round, &revisions, report).await;
            }
            token = learn_revisions(&server, collection, &token, &mut revisions).await;
        }
        let variant = Variant::TenPercentStale;
        let (mut ours, mut theirs, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..s.rounds {
            theirs.push(baseline(&db, shape, variant, round, report).await);
            let cpu_before = server.cpu_seconds();
            ours.push(syncline(&server, target, shape, variant, round, &revisions, report).await);
            cpu.push(micros_per(server.cpu_seconds() - cpu_before, shape.rows()));
        }
        let measured = [median(&ours), median(&theirs), median(&cpu)];
        add_row(report, shape, variant, measured, strategy);
    }
    single_rows(ctx, &server, &db, report).await;
}

/// Single-row pushes of new documents, one at a time: without a key, and with an idempotency
/// key (as the TypeScript client always sends), against PostgreSQL's own one-row upsert,
/// interleaved call by call; p50 and p99 per round, medians over rounds.
async fn single_rows(ctx: &Ctx<'_>, server: &Server, db: &str, report: &mut Report) {
    let samples = ctx.settings.scale_samples;
    let mut client = client::connect(server.addr).await;
    let mut conn = crate::cluster::writer_connection(db).await;
    let (mut plain, mut keyed, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ctx.settings.rounds {
        let (mut p, mut k, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples {
            let id = client::doc_id(&format!("single-{round}-"), i);
            let body = client::body(&id, i, 1);
            let clock = Instant::now();
            let done = sqlx::query(UPSERT_SQL)
                .bind(BASE_COLLECTION)
                .bind([id.as_str()])
                .bind([String::from_utf8_lossy(&body).as_ref()])
                .bind(["1-baseline"])
                .execute(&mut conn)
                .await
                .expect("baseline single-row upsert");
            t.push(clock.elapsed());
            report.expect_eq(
                "single-row baseline: rows written",
                done.rows_affected() as usize,
                1,
            );
            for (key, times) in [
                (String::new(), &mut p),
                (format!("single-{round}-{i}"), &mut k),
            ] {
                let id = format!("{id}-{}", if key.is_empty() { "plain" } else { "keyed" });
                let body = client::body(&id, i, 1);
                let message = syncline::proto::PushRequest {
                    collection: COLLECTION.into(),
                    rows: vec![client::insert_row(id, body)],
                    mode: 0,
                    idempotency_key: key,
                };
                let clock = Instant::now();
                let response = client
                    .push(client::request(message, None))
                    .await
                    .unwrap_or_else(|s| panic!("single-row push: {s}"))
                    .into_inner();
                times.push(clock.elapsed());
                report.expect_eq("single-row push: conflicts", response.conflicts.len(), 0);
            }
        }
        plain.push(Latency::of(p));
        keyed.push(Latency::of(k));
        theirs.push(Latency::of(t));
    }
    let theirs = Latency::across(&theirs);
    for (what, ours) in [("without key", plain), ("with idempotency key", keyed)] {
        let ours = Latency::across(&ours);
        report.add(Row {
            scenario: format!("2. Push one new document {what}, sequential"),
            syncline: format!("p50 {:.2} / p99 {:.2} ms", ours.p50, ours.p99),
            baseline: format!(
                "p50 {:.2} / p99 {:.2} ms (one-row upsert)",
                theirs.p50, theirs.p99
            ),
            ratio: Some(ours.p50 / theirs.p50),
            target: "— (issue 17 target 2 is measured from Node)".into(),
            met: None,
            figures: json!({ "p50_ms": ours.p50, "p99_ms": ours.p99,
                             "baseline_p50_ms": theirs.p50, "baseline_p99_ms": theirs.p99,
                             "samples": ours.count }),
        });
    }
}

/// The collection pushed to, and whether its strategy resolves stale rows (then they carry
/// their base body and must come back resolved, not as conflicts).
#[derive(Debug, Clone, Copy)]
struct Target {
    collection: &'static str,
    resolves: bool,
}

/// `[syncline docs/s, baseline docs/s, server CPU µs per row]`, medians.
fn add_row(
    report: &mut Report,
    shape: Shape,
    variant: Variant,
    measured: [f64; 3],
    strategy: &str,
) {
    let [ours, theirs, cpu] = measured;
    let ratio = ours / theirs;
    let targeted = variant != Variant::TenPercentStale;
    let under = if strategy == "first-write-wins" {
        String::new()
    } else {
        format!(" under {strategy} (stale rows resolved and written)")
    };
    report.add(Row {
        scenario: format!(
            "2. Push {}{under}: {} clients x batches of {}",
            variant.label(),
            shape.clients,
            shape.batch
        ),
        syncline: format!("{}; server CPU {cpu:.1} µs/doc", rate(ours)),
        baseline: rate(theirs),
        ratio: Some(ratio),
        target: if targeted {
            format!(">= {TARGET}")
        } else {
            "— (baseline writes every row)".into()
        },
        met: targeted.then_some(ratio >= TARGET),
        figures: json!({ "syncline_docs_per_s": ours, "baseline_docs_per_s": theirs,
                         "server_cpu_us_per_doc": cpu, "rows_per_run": shape.rows() }),
    });
}

/// Pulls what changed since `token` and records each document's revision.
async fn learn_revisions(
    server: &Server,
    collection: &str,
    token: &str,
    revisions: &mut HashMap<String, String>,
) -> String {
    let mut client = client::connect(server.addr).await;
    let (_, token) = client::pull_all(&mut client, collection, token, 1000, |docs, _| {
        revisions.extend(docs.into_iter().map(|d| (d.id, d.revision)));
    })
    .await;
    token
}

/// The pushes of each client, built before the clock starts.
fn requests(
    shape: Shape,
    variant: Variant,
    round: usize,
    revisions: &HashMap<String, String>,
    with_base: bool,
) -> Vec<Vec<Vec<ChangeRow>>> {
    let prefix = format!("r{round}-");
    let row = |i: usize, j: usize| {
        let id = client::doc_id(&prefix, i);
        let body = client::body(&id, i, variant.version());
        if variant == Variant::New {
            return client::insert_row(id, body);
        }
        if variant.stale(j) && with_base {
            // The state this client saw before the previous variant's update.
            let base = client::body(&id, i, variant.version() - 1);
            return client::update_row_with_base(id, body, STALE_REVISION.to_owned(), base);
        }
        let assumed = if variant.stale(j) {
            STALE_REVISION.to_owned()
        } else {
            revisions
                .get(&id)
                .unwrap_or_else(|| panic!("no revision pulled for {id}"))
                .clone()
        };
        client::update_row(id, body, assumed)
    };
    (0..shape.clients)
        .map(|c| {
            (0..shape.batches)
                .map(|k| {
                    (0..shape.batch)
                        .map(|j| row(shape.number(c, k, j), j))
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Every client pushes its batches, all at once; docs/s. Checks the conflicts (or, for a
/// resolving strategy, the resolutions) returned.
async fn syncline(
    server: &Server,
    target: Target,
    shape: Shape,
    variant: Variant,
    round: usize,
    revisions: &HashMap<String, String>,
    report: &mut Report,
) -> f64 {
    let work = requests(shape, variant, round, revisions, target.resolves);
    let collection = target.collection;
    let start = Arc::new(Barrier::new(shape.clients + 1));
    let mut tasks = Vec::new();
    for batches in work {
        let mut client = client::connect(server.addr).await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let (mut conflicts, mut resolved) = (0, 0);
            for rows in batches {
                let r = client::push_response(&mut client, collection, rows).await;
                conflicts += r.conflicts.len();
                resolved += r.resolved.len();
            }
            // Both fit: the counts are at most the rows pushed.
            conflicts * (1 << 32) + resolved
        }));
    }
    let (elapsed, counts) = timed(start, tasks).await;
    let conflicts = counts.iter().map(|c| c >> 32).sum();
    let resolved = counts.iter().map(|c| c & 0xffff_ffff).sum();
    let stale = shape.stale_rows(variant);
    let (want_conflicts, want_resolved) = if target.resolves {
        (0, stale)
    } else {
        (stale, 0)
    };
    let what = format!("push {} to {collection}", variant.label());
    report.expect_eq(&format!("{what}: conflicts"), conflicts, want_conflicts);
    report.expect_eq(&format!("{what}: resolved"), resolved, want_resolved);
    shape.rows() as f64 / elapsed.as_secs_f64()
}

/// The column arrays of one baseline upsert.
struct Columns {
    ids: Vec<String>,
    bodies: Vec<String>,
    revisions: Vec<String>,
}

fn baseline_requests(shape: Shape, variant: Variant, round: usize) -> Vec<Vec<Columns>> {
    let prefix = format!("r{round}-");
    let revision = format!("{}-baseline", variant.version());
    let batch = |c: usize, k: usize| {
        let ids: Vec<String> = (0..shape.batch)
            .map(|j| client::doc_id(&prefix, shape.number(c, k, j)))
            .collect();
        let bodies = ids
            .iter()
            .enumerate()
            .map(|(j, id)| {
                let body = client::body(id, shape.number(c, k, j), variant.version());
                String::from_utf8(body).expect("bodies are UTF-8")
            })
            .collect();
        Columns {
            revisions: vec![revision.clone(); ids.len()],
            ids,
            bodies,
        }
    };
    (0..shape.clients)
        .map(|c| (0..shape.batches).map(|k| batch(c, k)).collect())
        .collect()
}

/// The same rows upserted directly, one statement per batch, same concurrency; docs/s.
async fn baseline(
    db: &str,
    shape: Shape,
    variant: Variant,
    round: usize,
    report: &mut Report,
) -> f64 {
    let work = baseline_requests(shape, variant, round);
    let start = Arc::new(Barrier::new(shape.clients + 1));
    let mut tasks = Vec::new();
    for batches in work {
        let mut conn = crate::cluster::writer_connection(db).await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut written = 0;
            for b in batches {
                let done = sqlx::query(UPSERT_SQL)
                    .bind(BASE_COLLECTION)
                    .bind(&b.ids)
                    .bind(&b.bodies)
                    .bind(&b.revisions)
                    .execute(&mut conn)
                    .await
                    .expect("baseline upsert");
                written += done.rows_affected() as usize;
            }
            written
        }));
    }
    let (elapsed, written) = timed(start, tasks).await;
    report.expect_eq(
        &format!("push baseline {}: rows written", variant.label()),
        written.iter().sum(),
        shape.rows(),
    );
    shape.rows() as f64 / elapsed.as_secs_f64()
}

/// Releases the tasks waiting on `start` and times them until the last one finishes.
async fn timed(
    start: Arc<Barrier>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
) -> (Duration, Vec<usize>) {
    start.wait().await;
    let clock = Instant::now();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.expect("push task"));
    }
    (clock.elapsed(), results)
}
