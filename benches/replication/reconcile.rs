//! Scenario 8: a client held a whole collection; while it was away 1% of the documents changed
//! and 1% were deleted and purged. It comes back by reconcile (bucket digests in two rounds,
//! the last differing buckets listed, the differing documents fetched, then an ordinary Pull
//! from the first round's checkpoint) instead of re-downloading everything. Bytes are every
//! byte of the client's TCP connection, both ways (see scenario 1b); the run checks that the
//! client ends with exactly the server's live set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::json;
use sqlx::Connection;
use syncline::proto::{
    BucketDigests, Checkpoint, FetchRequest, PullRequest, ReconcileListRequest, ReconcileRequest,
};
use syncline::protocol::reconcile::{BUCKET_BITS_MAX, Digest, digests_of_keys, key};

use crate::compression::counting_client;
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};
use crate::stats::median;
use crate::{Ctx, client, load};

const COLLECTION: &str = "docs";
const PAGE: u32 = 1_000;
const TARGET: f64 = 0.05;
/// Bucket levels of the two digest rounds: 4,096 buckets, then 16 sub-buckets of each that
/// differs (about 25 and 1.5 documents per bucket at 100,000 documents).
const L1: u32 = 12;
const L2: u32 = 16;

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let n = ctx.settings.reconcile_docs;
    let db = ctx.cluster.fresh_database("reconcile").await;
    let server = Server::start(
        &db,
        &ServerOptions::new(&[COLLECTION]),
        &ctx.work,
        "reconcile",
    )
    .await;
    load::documents(&db, COLLECTION, "d", n).await;
    // What the client held before it went away: every document at its loaded revision.
    let held: BTreeMap<String, String> = (0..n)
        .map(|i| (client::doc_id("d", i), load::loaded_revision(i)))
        .collect();
    let (changed, purged) = away(&db, n).await;

    let expected = live(&db).await;
    report.expect_eq(
        "reconcile: live documents after the purge",
        expected.len(),
        n - purged,
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ctx.settings.rounds {
        theirs.push(full(&server, &expected, report).await);
        ours.push(reconcile(&server, held.clone(), &expected, report).await);
    }
    let bytes = median(&ours.iter().map(|o| o.0).collect::<Vec<_>>());
    let seconds = median(&ours.iter().map(|o| o.1).collect::<Vec<_>>());
    let full_bytes = median(&theirs.iter().map(|o| o.0).collect::<Vec<_>>());
    let full_seconds = median(&theirs.iter().map(|o| o.1).collect::<Vec<_>>());
    let ratio = bytes / full_bytes.max(1.0);
    report.add(Row {
        scenario: format!(
            "8. Reconcile: {} docs held, {} changed and {} deleted+purged while away",
            thousands(n as u64),
            thousands(changed as u64),
            thousands(purged as u64)
        ),
        syncline: format!(
            "{:.0} KiB both ways ({:.0} B/doc held), {:.2} s; exact",
            bytes / 1024.0,
            bytes / n as f64,
            seconds
        ),
        baseline: format!(
            "full re-download: {:.1} MiB both ways, {:.2} s",
            full_bytes / (1024.0 * 1024.0),
            full_seconds
        ),
        ratio: Some(ratio),
        target: format!("bytes <= {TARGET}"),
        met: Some(ratio <= TARGET),
        figures: json!({ "reconcile_bytes": bytes, "reconcile_seconds": seconds,
                         "full_bytes": full_bytes, "full_seconds": full_seconds }),
    });
}

/// While the client is away: every 100th document changes, every 100th (offset by 50) is
/// deleted, and the tombstones are purged. Returns (changed, purged).
async fn away(db: &str, n: usize) -> (usize, usize) {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect to change documents");
    let ids = |offset: usize| -> Vec<String> {
        (offset..n)
            .step_by(100)
            .map(|i| client::doc_id("d", i))
            .collect()
    };
    let (change, delete) = (ids(0), ids(50));
    sqlx::query(
        "UPDATE syncline_documents SET body = body || '{\"version\": 2}'
         WHERE collection = $1 AND id = ANY($2)",
    )
    .bind(COLLECTION)
    .bind(&change)
    .execute(&mut conn)
    .await
    .expect("change documents");
    sqlx::query("DELETE FROM syncline_documents WHERE collection = $1 AND id = ANY($2)")
        .bind(COLLECTION)
        .bind(&delete)
        .execute(&mut conn)
        .await
        .expect("delete documents");
    let mut tx = conn.begin().await.expect("begin the purge");
    sqlx::query("SET LOCAL syncline.purge = on")
        .execute(&mut *tx)
        .await
        .expect("purge on");
    let purged = sqlx::query("DELETE FROM syncline_documents WHERE collection = $1 AND deleted")
        .bind(COLLECTION)
        .execute(&mut *tx)
        .await
        .expect("purge")
        .rows_affected();
    tx.commit().await.expect("commit the purge");
    let _ = conn.close().await;
    (change.len(), purged as usize)
}

/// The server's live set, id -> revision.
async fn live(db: &str) -> BTreeMap<String, String> {
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect to read the live set");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, revision FROM syncline_documents WHERE collection = $1 AND NOT deleted",
    )
    .bind(COLLECTION)
    .fetch_all(&mut conn)
    .await
    .expect("read the live set");
    let _ = conn.close().await;
    rows.into_iter().collect()
}

/// A full re-download from scratch: (bytes both ways, seconds).
async fn full(
    server: &Server,
    expected: &BTreeMap<String, String>,
    report: &mut Report,
) -> (f64, f64) {
    let (mut c, counts) = counting_client(server).await;
    let start = Instant::now();
    let mut local = BTreeMap::new();
    client::pull_all(&mut c, COLLECTION, "", PAGE, |docs, _| {
        for d in docs {
            if d.deleted {
                local.remove(&d.id);
            } else {
                local.insert(d.id, d.revision);
            }
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    if &local != expected {
        report.violation("full re-download: not the server's live set".into());
    }
    (counts.total() as f64, seconds)
}

fn wire(d: &BTreeMap<u32, Digest>) -> BucketDigests {
    BucketDigests {
        buckets: d.keys().copied().collect(),
        counts: d.values().map(|d| d.count as u32).collect(),
        sums: d.values().map(|d| d.sum).collect(),
    }
}

/// The reference client's reconcile, then a Pull from C0: (bytes both ways, seconds). Checks
/// the client ends with exactly the server's live set.
async fn reconcile(
    server: &Server,
    mut local: BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
    report: &mut Report,
) -> (f64, f64) {
    let (mut c, counts) = counting_client(server).await;
    let start = Instant::now();
    // Each held document's bucket and hash, computed once for every round.
    let keys: Vec<(u32, u64)> = local.iter().map(|(i, r)| key(i, r)).collect();
    let items = || keys.iter().copied();
    let keyed = start.elapsed().as_secs_f64();
    let r1 = c
        .reconcile(ReconcileRequest {
            collection: COLLECTION.into(),
            bucket_bits: L1,
            within_bits: 0,
            within: vec![],
            digests: Some(wire(&digests_of_keys(items(), L1, 0, &[]))),
            selector: Vec::new(),
        })
        .await
        .expect("reconcile round 1")
        .into_inner();
    let c0 = r1.checkpoint.map(|c| c.token).unwrap_or_default();
    let differ1 = r1.differing.unwrap_or_default().buckets;
    let mut differ2: Vec<(u32, u32)> = Vec::new();
    for within in differ1.chunks(2048) {
        let r2 = c
            .reconcile(ReconcileRequest {
                collection: COLLECTION.into(),
                bucket_bits: L2,
                within_bits: L1,
                within: within.to_vec(),
                digests: Some(wire(&digests_of_keys(items(), L2, L1, within))),
                selector: Vec::new(),
            })
            .await
            .expect("reconcile round 2")
            .into_inner()
            .differing
            .unwrap_or_default();
        differ2.extend(r2.buckets.into_iter().zip(r2.counts));
    }
    // The held ids of the buckets that still differ, to drop those the server does not list.
    let differing: HashSet<u32> = differ2.iter().map(|(b, _)| *b).collect();
    let mut held_in: HashMap<u32, Vec<String>> = HashMap::new();
    for (id, (top, _)) in local.keys().zip(&keys) {
        let bucket = top >> (BUCKET_BITS_MAX - L2);
        if differing.contains(&bucket) {
            held_in.entry(bucket).or_default().push(id.clone());
        }
    }
    let digested = start.elapsed().as_secs_f64();
    // List the buckets that still differ, a few thousand documents per request.
    let mut to_fetch = Vec::new();
    let mut batch: Vec<u32> = Vec::new();
    let mut batch_docs = 0u32;
    let mut batches = Vec::new();
    for (bucket, count) in differ2 {
        if batch_docs + count > 5_000 && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            batch_docs = 0;
        }
        batch.push(bucket);
        batch_docs += count;
    }
    batches.push(batch);
    for buckets in batches {
        let listed = c
            .reconcile_list(ReconcileListRequest {
                collection: COLLECTION.into(),
                bucket_bits: L2,
                buckets: buckets.clone(),
                selector: Vec::new(),
            })
            .await
            .expect("reconcile list")
            .into_inner()
            .documents;
        let server: HashMap<String, String> =
            listed.into_iter().map(|e| (e.id, e.revision)).collect();
        for bucket in &buckets {
            for id in held_in.get(bucket).into_iter().flatten() {
                if !server.contains_key(id) {
                    local.remove(id);
                }
            }
        }
        for (id, revision) in server {
            if local.get(&id) != Some(&revision) {
                to_fetch.push(id);
            }
        }
    }
    let listed = start.elapsed().as_secs_f64();
    let mut rest = &to_fetch[..];
    while !rest.is_empty() {
        let ask = &rest[..rest.len().min(1_000)];
        let r = c
            .fetch(FetchRequest {
                collection: COLLECTION.into(),
                ids: ask.to_vec(),
                selector: Vec::new(),
            })
            .await
            .expect("fetch")
            .into_inner();
        let answered = (r.answered as usize).clamp(1, ask.len());
        let got: HashSet<&str> = r.documents.iter().map(|d| d.id.as_str()).collect();
        for id in &ask[..answered] {
            if !got.contains(id.as_str()) {
                local.remove(id);
            }
        }
        for d in r.documents {
            local.insert(d.id, d.revision);
        }
        rest = &rest[answered..];
    }
    let fetched = start.elapsed().as_secs_f64();
    // Then an ordinary Pull from C0.
    let mut token = c0;
    loop {
        let r = c
            .pull(PullRequest {
                collection: COLLECTION.into(),
                checkpoint: Some(Checkpoint {
                    token: token.clone(),
                }),
                limit: PAGE,
                selector: Vec::new(),
            })
            .await
            .expect("pull from C0")
            .into_inner();
        if r.documents.is_empty() {
            break;
        }
        for d in r.documents {
            if d.deleted {
                local.remove(&d.id);
            } else {
                local.insert(d.id, d.revision);
            }
        }
        token = r.checkpoint.map(|c| c.token).unwrap_or_default();
    }
    let seconds = start.elapsed().as_secs_f64();
    if &local != expected {
        let wrong = local
            .iter()
            .filter(|(i, r)| expected.get(*i) != Some(r))
            .count()
            + expected.keys().filter(|i| !local.contains_key(*i)).count();
        report.violation(format!(
            "reconcile: the client's copy differs from the live set in {wrong} documents"
        ));
    }
    eprintln!(
        "bench: reconcile phases (cumulative s): client hashing {keyed:.2}, digests {digested:.2}, list {listed:.2}, \
         fetch {fetched:.2}, pull {seconds:.2}; {} ids fetched",
        to_fetch.len()
    );
    (counts.total() as f64, seconds)
}
