//! What both scaling scenarios (by size, by owners) measure on one database: Pull page latency
//! (limit 100, from a random checkpoint of an earlier full pull) and single-row push latency
//! (an update of a random untouched document with its loaded revision), each beside
//! PostgreSQL's own latency for the same work (the page query from a random position, the
//! guarded single-row update), and how two databases compare.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::Connection;

use crate::client::{self, Bearer, Client};
use crate::load;
use crate::report::Report;
use crate::server::Server;
use crate::stats::{Latency, median};

// What a Pull page costs PostgreSQL alone: the keyset query from a position.
const PAGE_SQL: &str = "
SELECT id, owner, body::text, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND (change_xid, change_seq) > ($2, $3)
ORDER BY change_xid, change_seq
LIMIT 100";

// The same for one owner's documents.
const OWNER_PAGE_SQL: &str = "
SELECT id, owner, body::text, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND owner = $4 AND (change_xid, change_seq) > ($2, $3)
ORDER BY change_xid, change_seq
LIMIT 100";

// What a single-row push writes: an update guarded by the revision the client saw (the
// server checks the owner on the row it read first, not in the update).
const UPDATE_SQL: &str = "
UPDATE syncline_documents
SET body = $3::jsonb, revision = $4, updated_at = now(),
    change_xid = pg_current_xact_id()::text::bigint, change_seq = nextval('syncline_change_seq')
WHERE collection = $1 AND id = $2 AND revision = $5";

/// The caller measured on a probe: anonymous, or an owner with its token.
pub struct Caller {
    pub owner: String,
    pub bearer: Bearer,
    /// The owner holds documents 0, stride, 2 * stride... (see `load::owner`).
    pub stride: usize,
}

/// One database with its server and what was measured on it, one entry per round.
pub struct Probe {
    /// Names the probe in correctness checks ("scaling", "owners").
    pub scenario: &'static str,
    pub collection: &'static str,
    pub prefix: &'static str,
    pub db: String,
    pub server: Server,
    pub caller: Option<Caller>,
    /// Documents the caller sees (all of them for an anonymous caller).
    pub visible: usize,
    checkpoints: Vec<String>,
    positions: Vec<(i64, i64)>,
    updated: HashSet<usize>,
    pub pulls: Vec<Latency>,
    pub pushes: Vec<Latency>,
    pub pg_pulls: Vec<Latency>,
    pub pg_pushes: Vec<Latency>,
}

/// Per probe: Syncline's latencies and PostgreSQL's for the same work, one entry per round.
pub type Figures<'a> = (&'a Vec<Latency>, &'a Vec<Latency>);

/// Medians over the rounds of two probes, `a` over `b`.
pub struct Comparison {
    pub ours: [(f64, f64); 2],
    pub pg: [(f64, f64); 2],
    pub ratio: f64,
    pub pg_ratio: f64,
}

impl Comparison {
    /// p50 and p99 (medians over the rounds) of `a` and `b`, and the p50 ratios.
    pub fn of(a: Figures<'_>, b: Figures<'_>) -> Comparison {
        let pick =
            |l: &Vec<Latency>, p: fn(&Latency) -> f64| median(&l.iter().map(p).collect::<Vec<_>>());
        let both = |l: &Vec<Latency>| (pick(l, |x| x.p50), pick(l, |x| x.p99));
        let (ours, pg) = ([both(a.0), both(b.0)], [both(a.1), both(b.1)]);
        Comparison {
            ratio: ours[0].0 / ours[1].0,
            pg_ratio: pg[0].0 / pg[1].0,
            ours,
            pg,
        }
    }

    /// "p50 .. / p99 .. ms (a) vs p50 .. / p99 .. ms (b)" for Syncline or the baseline.
    pub fn text(figures: [(f64, f64); 2], a: &str, b: &str) -> String {
        let [(a50, a99), (b50, b99)] = figures;
        format!("p50 {a50:.2} / p99 {a99:.2} ms ({a}) vs p50 {b50:.2} / p99 {b99:.2} ms ({b})")
    }
}

impl Probe {
    /// Takes the checkpoints of the caller's full pull (returning what it pulled: count and
    /// documents of other owners) and the matching positions for the baseline.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        scenario: &'static str,
        collection: &'static str,
        prefix: &'static str,
        db: String,
        server: Server,
        caller: Option<Caller>,
        visible: usize,
    ) -> (Probe, usize, usize) {
        let mut client = client::connect(server.addr).await;
        let owner = caller.as_ref().map(|c| c.owner.clone());
        let mut checkpoints = Vec::new();
        let mut foreign = 0;
        let (count, _) = client::pull_all_as(
            &mut client,
            caller.as_ref().map(|c| &c.bearer),
            collection,
            "",
            1000,
            |docs, token| {
                if let Some(owner) = &owner {
                    foreign += docs.iter().filter(|d| d.owner != *owner).count();
                }
                checkpoints.push(token.to_owned());
            },
        )
        .await;
        checkpoints.pop(); // the last one has nothing after it
        checkpoints.push(String::new());
        let positions = page_positions(&db, collection, owner.as_deref()).await;
        let probe = Probe {
            scenario,
            collection,
            prefix,
            db,
            server,
            caller,
            visible,
            checkpoints,
            positions,
            updated: HashSet::new(),
            pulls: Vec::new(),
            pushes: Vec::new(),
            pg_pulls: Vec::new(),
            pg_pushes: Vec::new(),
        };
        (probe, count, foreign)
    }

    /// One round: baseline and Syncline, pulls then pushes.
    pub async fn round(&mut self, samples: usize, report: &mut Report) {
        let pulls = self.pg_pulls(samples).await;
        self.pg_pulls.push(pulls);
        let pulls = self.sample_pulls(samples).await;
        self.pulls.push(pulls);
        let pushes = self.pg_pushes(samples, report).await;
        self.pg_pushes.push(pushes);
        let pushes = self.sample_pushes(samples, report).await;
        self.pushes.push(pushes);
    }

    fn bearer(&self) -> Option<&Bearer> {
        self.caller.as_ref().map(|c| &c.bearer)
    }

    /// The page query alone, on one direct connection, from random positions.
    async fn pg_pulls(&self, samples: usize) -> Latency {
        let mut conn = sqlx::PgConnection::connect(&self.db)
            .await
            .expect("connect for the baseline");
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let (xid, seq) = self.positions[rand::rng().random_range(0..self.positions.len())];
            let sql = if self.caller.is_some() {
                OWNER_PAGE_SQL
            } else {
                PAGE_SQL
            };
            let mut query = sqlx::query(sql).bind(self.collection).bind(xid).bind(seq);
            if let Some(caller) = &self.caller {
                query = query.bind(&caller.owner);
            }
            let clock = Instant::now();
            let rows = query.fetch_all(&mut conn).await.expect("baseline page");
            times.push(clock.elapsed());
            assert!(
                !rows.is_empty(),
                "{} baseline: a page has rows",
                self.scenario
            );
        }
        Latency::of(times)
    }

    /// The guarded single-row update alone, on one direct connection.
    async fn pg_pushes(&mut self, samples: usize, report: &mut Report) -> Latency {
        let mut conn = crate::cluster::writer_connection(&self.db).await;
        let mut times = Vec::with_capacity(samples);
        let mut written = 0;
        for _ in 0..samples {
            let i = self.untouched();
            let id = client::doc_id(self.prefix, i);
            let body = String::from_utf8(client::body(&id, i, 2)).expect("bodies are UTF-8");
            let clock = Instant::now();
            let done = sqlx::query(UPDATE_SQL)
                .bind(self.collection)
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
        let what = format!("{} baseline: rows updated", self.scenario);
        report.expect_eq(&what, written, samples);
        Latency::of(times)
    }

    async fn sample_pulls(&self, samples: usize) -> Latency {
        let mut client = client::connect(self.server.addr).await;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let checkpoint = &self.checkpoints[rand::rng().random_range(0..self.checkpoints.len())];
            let clock = Instant::now();
            let (docs, _) =
                client::pull_page_as(&mut client, self.bearer(), self.collection, checkpoint, 100)
                    .await
                    .unwrap_or_else(|s| panic!("{} pull: {s}", self.scenario));
            times.push(clock.elapsed());
            assert!(
                !docs.is_empty(),
                "{}: a page after a checkpoint has documents",
                self.scenario
            );
        }
        Latency::of(times)
    }

    async fn sample_pushes(&mut self, samples: usize, report: &mut Report) -> Latency {
        let mut client = client::connect(self.server.addr).await;
        let mut times: Vec<Duration> = Vec::with_capacity(samples);
        let mut conflicts = 0;
        for _ in 0..samples {
            let i = self.untouched();
            conflicts += self.timed_update(&mut client, i, &mut times).await;
        }
        report.expect_eq(&format!("{}: push conflicts", self.scenario), conflicts, 0);
        Latency::of(times)
    }

    /// A random document of the caller's not updated yet (so its revision is still the
    /// loaded one).
    fn untouched(&mut self) -> usize {
        let stride = self.caller.as_ref().map_or(1, |c| c.stride);
        loop {
            let i = rand::rng().random_range(0..self.visible) * stride;
            if self.updated.insert(i) {
                return i;
            }
        }
    }

    async fn timed_update(
        &self,
        client: &mut Client,
        i: usize,
        times: &mut Vec<Duration>,
    ) -> usize {
        let id = client::doc_id(self.prefix, i);
        let body = client::body(&id, i, 2);
        let row = client::update_row(id, body, load::loaded_revision(i));
        let clock = Instant::now();
        let conflicts = client::push_as(client, self.bearer(), self.collection, vec![row])
            .await
            .len();
        times.push(clock.elapsed());
        conflicts
    }
}

/// The position after every 1,000th document (of `owner`, when given) and the start, in
/// change order.
async fn page_positions(db: &str, collection: &str, owner: Option<&str>) -> Vec<(i64, i64)> {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect for positions");
    let mut positions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT change_xid, change_seq FROM (
             SELECT change_xid, change_seq,
                    row_number() OVER (ORDER BY change_xid, change_seq) AS n
             FROM syncline_documents
             WHERE collection = $1 AND ($2::text IS NULL OR owner = $2)) p
         WHERE n % 1000 = 0 ORDER BY n",
    )
    .bind(collection)
    .bind(owner)
    .fetch_all(&mut conn)
    .await
    .expect("page positions");
    positions.pop(); // nothing may follow the last one
    positions.push((0, 0));
    positions
}
