//! Scenario 5 by owners: does one owner's cost grow with what other owners hold? Pull page
//! latency (limit 100, from a random checkpoint of the owner's full pull) and single-row push
//! latency (an update of a random document of the owner's with its right revision) for the
//! JWT principal `owner-0`, in a collection spread over 100 owners and in one that is all its
//! own: the same row count, each in its own database with its own server (JWT authentication),
//! measured in alternation. Beside each, PostgreSQL's own figures for the same work (the
//! owner's page query from a random position, a guarded single-row update).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use sqlx::Connection;

use crate::Ctx;
use crate::client::{self, Bearer, Client};
use crate::load;
use crate::report::{Report, Row};
use crate::server::{Server, ServerOptions};
use crate::stats::{Latency, median};

const COLLECTION: &str = "owned";
const PREFIX: &str = "o";
const TARGET: f64 = 1.3;
/// Owners of the shared collection.
const MANY: usize = 100;
const SECRET: &str = "syncline-bench-owners-hs256-secret-0123456789";

// What a Pull page of one owner costs PostgreSQL alone: the keyset query from a position.
const PAGE_SQL: &str = "
SELECT id, owner, body::text, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND owner = $2 AND (change_xid, change_seq) > ($3, $4)
ORDER BY change_xid, change_seq
LIMIT 100";

// What a single-row push writes: an update guarded by the revision the client saw (the
// server checks the owner on the row it read first, not in the update).
const UPDATE_SQL: &str = "
UPDATE syncline_documents
SET body = $3::jsonb, revision = $4, updated_at = now(),
    change_xid = pg_current_xact_id()::text::bigint, change_seq = nextval('syncline_change_seq')
WHERE collection = $1 AND id = $2 AND revision = $5";

/// One collection, its owner count, and what the scenario learnt about it.
struct Owners {
    owners: usize,
    docs: usize,
    db: String,
    server: Server,
    /// The measured principal, `owner-0`.
    owner: String,
    bearer: Bearer,
    /// Checkpoints after each page of the owner's full pull.
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

impl Owners {
    /// The documents of `owner-0`: numbers 0, owners, 2 * owners...
    fn owned(&self) -> usize {
        owned(self.docs, self.owners)
    }
}

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
    add_row(report, "Pull page (limit 100)", &many, &one, |z| {
        (&z.pulls, &z.pg_pulls)
    });
    add_row(report, "single-row Push", &many, &one, |z| {
        (&z.pushes, &z.pg_pushes)
    });
}

/// A database with the scenario's documents spread over `owners`, its server, and the
/// checkpoints of `owner-0`'s full pull (which must see exactly its own documents).
async fn prepare(ctx: &Ctx<'_>, owners: usize, name: &str, report: &mut Report) -> Owners {
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
    let mut client = client::connect(server.addr).await;
    let mut checkpoints = Vec::new();
    let mut foreign = 0;
    let (count, _) = client::pull_all_as(
        &mut client,
        Some(&bearer),
        COLLECTION,
        "",
        1000,
        |docs, token| {
            foreign += docs.iter().filter(|d| d.owner != owner).count();
            checkpoints.push(token.to_owned());
        },
    )
    .await;
    report.expect_eq(
        &format!("owners: full pull of {owner} in {name}"),
        count,
        owned(docs, owners),
    );
    report.expect_eq(
        &format!("owners: others' documents in {owner}'s pull in {name}"),
        foreign,
        0,
    );
    checkpoints.pop(); // the last one has nothing after it
    checkpoints.push(String::new());
    let positions = page_positions(&db, &owner).await;
    Owners {
        owners,
        docs,
        db,
        server,
        owner,
        bearer,
        checkpoints,
        positions,
        updated: HashSet::new(),
        pulls: Vec::new(),
        pushes: Vec::new(),
        pg_pulls: Vec::new(),
        pg_pushes: Vec::new(),
    }
}

/// The position after every 1,000th document of `owner` (and the start), in change order.
async fn page_positions(db: &str, owner: &str) -> Vec<(i64, i64)> {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect for positions");
    let mut positions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT change_xid, change_seq FROM (
             SELECT change_xid, change_seq,
                    row_number() OVER (ORDER BY change_xid, change_seq) AS n
             FROM syncline_documents WHERE collection = $1 AND owner = $2) p
         WHERE n % 1000 = 0 ORDER BY n",
    )
    .bind(COLLECTION)
    .bind(owner)
    .fetch_all(&mut conn)
    .await
    .expect("page positions");
    positions.pop(); // nothing may follow the last one
    positions.push((0, 0));
    positions
}

/// The owner's page query alone, on one direct connection, from random positions.
async fn pg_pulls(size: &Owners, samples: usize) -> Latency {
    let mut conn = sqlx::PgConnection::connect(&size.db)
        .await
        .expect("connect for the baseline");
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (xid, seq) = size.positions[rand::rng().random_range(0..size.positions.len())];
        let clock = Instant::now();
        let rows = sqlx::query(PAGE_SQL)
            .bind(COLLECTION)
            .bind(&size.owner)
            .bind(xid)
            .bind(seq)
            .fetch_all(&mut conn)
            .await
            .expect("baseline page");
        times.push(clock.elapsed());
        assert!(!rows.is_empty(), "owners baseline: a page has rows");
    }
    Latency::of(times)
}

/// The guarded single-row update alone, on one direct connection.
async fn pg_pushes(size: &mut Owners, samples: usize, report: &mut Report) -> Latency {
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
    report.expect_eq("owners baseline: rows updated", written, samples);
    Latency::of(times)
}

async fn sample_pulls(size: &Owners, samples: usize) -> Latency {
    let mut client = client::connect(size.server.addr).await;
    let bearer = Some(&size.bearer);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let checkpoint = &size.checkpoints[rand::rng().random_range(0..size.checkpoints.len())];
        let clock = Instant::now();
        let (docs, _) = client::pull_page_as(&mut client, bearer, COLLECTION, checkpoint, 100)
            .await
            .unwrap_or_else(|s| panic!("owners pull: {s}"));
        times.push(clock.elapsed());
        assert!(
            !docs.is_empty(),
            "owners: a page after a checkpoint has documents"
        );
    }
    Latency::of(times)
}

async fn sample_pushes(size: &mut Owners, samples: usize, report: &mut Report) -> Latency {
    let mut client = client::connect(size.server.addr).await;
    let mut times: Vec<Duration> = Vec::with_capacity(samples);
    let mut conflicts = 0;
    for _ in 0..samples {
        let i = untouched(size);
        conflicts += timed_update(&mut client, &size.bearer, i, &mut times).await;
    }
    report.expect_eq("owners: push conflicts", conflicts, 0);
    Latency::of(times)
}

/// A random document of `owner-0` not updated yet (so its revision is still the loaded one).
fn untouched(size: &mut Owners) -> usize {
    loop {
        let i = rand::rng().random_range(0..size.owned()) * size.owners;
        if size.updated.insert(i) {
            return i;
        }
    }
}

async fn timed_update(
    client: &mut Client,
    bearer: &Bearer,
    i: usize,
    times: &mut Vec<Duration>,
) -> usize {
    let id = client::doc_id(PREFIX, i);
    let body = client::body(&id, i, 2);
    let row = client::update_row(id, body, load::loaded_revision(i));
    let clock = Instant::now();
    let conflicts = client::push_as(client, Some(bearer), COLLECTION, vec![row])
        .await
        .len();
    times.push(clock.elapsed());
    conflicts
}

/// Per collection: Syncline's latencies and PostgreSQL's for the same work, one per round.
type Figures<'a> = (&'a Vec<Latency>, &'a Vec<Latency>);

fn add_row(
    report: &mut Report,
    what: &str,
    many: &Owners,
    one: &Owners,
    figures: impl for<'a> Fn(&'a Owners) -> Figures<'a>,
) {
    let pick =
        |l: &Vec<Latency>, p: fn(&Latency) -> f64| median(&l.iter().map(p).collect::<Vec<_>>());
    let p50 = |l: &Vec<Latency>| pick(l, |x| x.p50);
    let p99 = |l: &Vec<Latency>| pick(l, |x| x.p99);
    let (ours_many, pg_many) = figures(many);
    let (ours_one, pg_one) = figures(one);
    let ratio = p50(ours_many) / p50(ours_one);
    let pg_ratio = p50(pg_many) / p50(pg_one);
    let text = |m: &Vec<Latency>, o: &Vec<Latency>| {
        format!(
            "p50 {:.2} / p99 {:.2} ms ({} owners) vs p50 {:.2} / p99 {:.2} ms (1 owner)",
            p50(m),
            p99(m),
            many.owners,
            p50(o),
            p99(o)
        )
    };
    report.add(Row {
        scenario: format!(
            "5. Scaling: {what} latency for one owner, {} owners vs 1 owner",
            many.owners
        ),
        syncline: text(ours_many, ours_one),
        baseline: format!("{}; ratio {pg_ratio:.2}", text(pg_many, pg_one)),
        ratio: Some(ratio),
        target: format!("p50 ratio <= {TARGET}"),
        met: Some(ratio <= TARGET),
        figures: json!({
            "docs": many.docs, "owners": many.owners,
            "many_owner_docs": many.owned(), "one_owner_docs": one.owned(),
            "many_p50_ms": p50(ours_many), "many_p99_ms": p99(ours_many),
            "one_p50_ms": p50(ours_one), "one_p99_ms": p99(ours_one),
            "baseline_many_p50_ms": p50(pg_many), "baseline_one_p50_ms": p50(pg_one),
            "baseline_ratio": pg_ratio,
        }),
    });
}
