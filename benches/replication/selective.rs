//! Scenario 12: selective sync.
//!
//! a. Initial sync of a 1% selector (`{"bucket": 7}`) out of a large collection, in pages of
//!    1,000, against the same indexed keyset query run directly on PostgreSQL (the predicate
//!    compiled by Syncline's own selector compiler, so both use the declared field's index).
//! b. Many live subscribers, each with a selector matching 1% of the collection
//!    (`{"bucket": k % 100}`), one writer at the fan-out rate spreading new documents over the
//!    buckets: latency from the push's acknowledgement to each matching subscriber, server CPU
//!    per write, and every delivery outside a subscriber's selector (must be 0), missed or
//!    duplicated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{Checkpoint, PullRequest, SubscribeRequest};
use syncline::store::filter::SqlParam;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::arrivals::Arrivals;
use crate::client::{self, Client, STREAMS_PER_CONNECTION};
use crate::report::{Report, Row, rate, thousands};
use crate::server::{Server, ServerOptions, micros_per};
use crate::stats::{Latency, median};

const COLLECTION: &str = "sel";
/// Scenario b's collection: empty at the start, so that streams have nothing to catch up on.
const LIVE: &str = "sellive";
const FIELDS: &str = "filter_fields = { bucket = \"number\", done = \"boolean\" }";
const BUCKETS: usize = 100;
const SYNC_BUCKET: usize = 7;
const PAGE: u32 = 1_000;
const SYNC_TARGET: f64 = 0.7;
const FANOUT_TARGET_P99_MS: f64 = 25.0;

// Like load.rs's documents, plus `bucket` = i % 100.
const LOAD_SQL: &str = "
INSERT INTO syncline_documents
    (collection, id, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT $1, 'b' || lpad(i::text, 8, '0'),
       jsonb_build_object(
           'id', 'b' || lpad(i::text, 8, '0'), 'title', 'Document ' || i, 'done', i % 2 = 0,
           'bucket', i % 100, 'tags', jsonb_build_array('alpha', 'beta', 'gamma'),
           'notes', repeat(md5(i::text), 6)),
       false, '1-' || lpad(to_hex(i), 16, '0'), now(),
       pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
FROM generate_series($2::bigint, $3::bigint) AS i";

fn selector(bucket: usize) -> serde_json::Value {
    json!({ "bucket": bucket })
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let db = ctx.cluster.fresh_database("selective").await;
    let mut options = ServerOptions::new(&[COLLECTION, LIVE]);
    for c in [COLLECTION, LIVE] {
        options
            .collection_settings
            .push((c.to_owned(), FIELDS.to_owned()));
    }
    options.streams_max = options.streams_max.max(s.subscribers + 100);
    let server = Server::start(&db, &options, &ctx.work, "selective").await;
    load(&db, s.selective_docs).await;
    initial_sync(ctx, report, &server, &db).await;
    fanout(ctx, report, &server).await;
}

async fn load(db: &str, n: usize) {
    let mut conn = crate::cluster::writer_connection(db).await;
    for start in (0..n).step_by(10_000) {
        let last = (start + 10_000).min(n) - 1;
        sqlx::query(LOAD_SQL)
            .bind(COLLECTION)
            .bind(start as i64)
            .bind(last as i64)
            .execute(&mut conn)
            .await
            .expect("load documents");
    }
    sqlx::query("VACUUM ANALYZE syncline_documents")
        .execute(&mut conn)
        .await
        .expect("vacuum analyze");
}

async fn initial_sync(ctx: &Ctx<'_>, report: &mut Report, server: &Server, db: &str) {
    let n = ctx.settings.selective_docs;
    let want = (0..n).filter(|i| i % BUCKETS == SYNC_BUCKET).count();
    let (mut ours, mut theirs, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.settings.rounds {
        theirs.push(baseline(db, want, report).await);
        let before = server.cpu_seconds();
        ours.push(filtered_pull(server, want, report).await);
        cpu.push(micros_per(server.cpu_seconds() - before, want));
    }
    let (ours, theirs, cpu) = (median(&ours), median(&theirs), median(&cpu));
    let ratio = ours / theirs;
    report.add(Row {
        scenario: format!(
            "12a. Selective initial sync: 1% selector ({} of {} docs), pages of 1,000",
            thousands(want as u64),
            thousands(n as u64)
        ),
        syncline: format!("{}; server CPU {cpu:.1} µs/doc", rate(ours)),
        baseline: format!("{} (same indexed keyset query)", rate(theirs)),
        ratio: Some(ratio),
        target: format!(">= {SYNC_TARGET}"),
        met: Some(ratio >= SYNC_TARGET),
        figures: json!({ "docs": n, "matching": want, "syncline_docs_per_s": ours,
                         "baseline_docs_per_s": theirs, "server_cpu_us_per_doc": cpu }),
    });
}

/// A fresh filtered reader pulls everything matching; docs/s. Checks every document came
/// once and matches.
async fn filtered_pull(server: &Server, want: usize, report: &mut Report) -> f64 {
    let mut c = client::connect(server.addr).await;
    let selector = selector(SYNC_BUCKET).to_string().into_bytes();
    let (mut token, mut count, mut outside) = (String::new(), 0usize, 0usize);
    let start = Instant::now();
    loop {
        let r = c
            .pull(PullRequest {
                collection: COLLECTION.into(),
                checkpoint: Some(Checkpoint {
                    token: token.clone(),
                }),
                limit: PAGE,
                selector: selector.clone(),
            })
            .await
            .expect("filtered pull")
            .into_inner();
        if r.documents.is_empty() {
            break;
        }
        for d in &r.documents {
            let body: serde_json::Value = serde_json::from_slice(&d.json).expect("JSON body");
            if body["bucket"] != json!(SYNC_BUCKET) {
                outside += 1;
            }
        }
        count += r.documents.len();
        token = r.checkpoint.map(|c| c.token).unwrap_or_default();
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    report.expect_eq("selective initial sync: documents", count, want);
    report.expect_eq(
        "selective initial sync: documents outside the selector",
        outside,
        0,
    );
    rate
}

/// The same pages read directly: Syncline's compiled predicate over the declared field's
/// index, keyset by position.
async fn baseline(db: &str, want: usize, report: &mut Report) -> f64 {
    let fields = syncline::protocol::selector::FilterFields::from_config(
        COLLECTION,
        &[("bucket".to_owned(), "number".to_owned())]
            .into_iter()
            .collect(),
    )
    .expect("fields");
    let parsed = syncline::protocol::selector::Selector::parse(&selector(SYNC_BUCKET), &fields)
        .expect("selector");
    let predicate = parsed.to_sql(4).expect("compiles");
    let sql = format!(
        "SELECT id, body::text, deleted, revision, updated_at, change_xid, change_seq
         FROM syncline_documents d
         WHERE d.collection = $1 AND (d.change_xid, d.change_seq) > ($2, $3) AND ({})
         ORDER BY d.change_xid, d.change_seq LIMIT 1000",
        predicate.sql
    );
    let mut conn = sqlx::PgConnection::connect(db).await.expect("connect");
    let (mut xid, mut seq, mut count) = (0i64, 0i64, 0usize);
    let start = Instant::now();
    loop {
        let mut q = sqlx::query_as::<
            _,
            (
                String,
                String,
                bool,
                String,
                chrono::DateTime<chrono::Utc>,
                i64,
                i64,
            ),
        >(sqlx::AssertSqlSafe(sql.clone()))
        .bind(COLLECTION)
        .bind(xid)
        .bind(seq);
        for p in &predicate.params {
            q = match p {
                SqlParam::Numeric(v) | SqlParam::Text(v) | SqlParam::Jsonb(v) => q.bind(v.clone()),
                SqlParam::Bool(b) => q.bind(*b),
                other => panic!("unexpected parameter {other:?}"),
            };
        }
        let rows = q.fetch_all(&mut conn).await.expect("keyset page");
        let Some(last) = rows.last() else { break };
        (xid, seq) = (last.5, last.6);
        count += rows.len();
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    report.expect_eq("selective initial sync baseline: rows", count, want);
    rate
}

/// What one filtered subscriber received.
struct Received {
    /// The matching documents delivered.
    got: Arrivals,
    /// Documents delivered outside its selector (violations).
    outside: usize,
}

async fn fanout(ctx: &Ctx<'_>, report: &mut Report, server: &Server) {
    let s = ctx.settings;
    let (mut latencies, mut cpu, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut missed, mut duplicated, mut outside) = (0usize, 0usize, 0usize);
    for round in 0..s.rounds {
        let tag = format!("f{round}-");
        let planned = (f64::from(s.fanout_rate) * s.fanout_duration.as_secs_f64()).round() as usize;
        let cancel = CancellationToken::new();
        let (ready_tx, mut ready_rx) = mpsc::channel(s.subscribers);
        let channels = client::channels_for(server.addr, s.subscribers).await;
        let mut tasks = Vec::new();
        let mut progress = Vec::new();
        for k in 0..s.subscribers {
            let bucket = k % BUCKETS;
            let distinct = Arc::new(AtomicUsize::new(0));
            progress.push((bucket, distinct.clone()));
            let c = client::client(channels[k / STREAMS_PER_CONNECTION].clone());
            tasks.push(tokio::spawn(subscriber(
                c,
                bucket,
                tag.clone(),
                planned,
                distinct,
                cancel.clone(),
                ready_tx.clone(),
            )));
        }
        drop(ready_tx);
        for _ in 0..s.subscribers {
            tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
                .await
                .expect("every subscriber opens its stream within 120 s")
                .expect("a subscriber ended before its stream opened");
        }
        let mut writer = client::connect(server.addr).await;
        let before = server.cpu_seconds();
        let (acks, elapsed) = write(&mut writer, &tag, planned, s).await;
        let sent = acks.len();
        // Each subscriber expects the writes of its bucket.
        let expected = |bucket: usize| (0..sent).filter(|i| i % BUCKETS == bucket).count();
        let deadline = Instant::now() + s.fanout_grace;
        while progress
            .iter()
            .any(|(b, d)| d.load(Ordering::Relaxed) < expected(*b))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cpu.push(micros_per(server.cpu_seconds() - before, sent.max(1)));
        rates.push(sent as f64 / elapsed.as_secs_f64());
        cancel.cancel();
        let mut all = Vec::new();
        for (t, (bucket, _)) in tasks.into_iter().zip(&progress) {
            let r = t.await.expect("subscriber task");
            missed += expected(*bucket).saturating_sub(r.got.distinct);
            duplicated += r.got.duplicated();
            outside += r.outside;
            all.extend(
                r.got
                    .arrivals
                    .iter()
                    .map(|(seq, at)| at.saturating_duration_since(acks[*seq])),
            );
        }
        latencies.push(Latency::of(all));
    }
    let latency = Latency::across(&latencies);
    let (cpu, write_rate) = (median(&cpu), median(&rates));
    if missed + duplicated + outside > 0 {
        report.violation(format!(
            "selective fan-out: {missed} missed, {duplicated} duplicated, {outside} outside a selector"
        ));
    }
    report.add(Row {
        scenario: format!(
            "12b. Selective fan-out: {} subscribers, each a 1% selector, {} single-row pushes/s for {:.0} s",
            thousands(s.subscribers as u64),
            s.fanout_rate,
            s.fanout_duration.as_secs_f64()
        ),
        syncline: format!(
            "p50 {:.1} / p99 {:.1} / max {:.1} ms to the matching subscribers; server CPU {cpu:.0} µs/write; \
             {missed} missed, {duplicated} dup, {outside} outside; writer {write_rate:.0}/s",
            latency.p50, latency.p99, latency.max
        ),
        baseline: "-".into(),
        ratio: None,
        target: format!("p99 < {FANOUT_TARGET_P99_MS} ms; 0 outside, 0 missed"),
        met: Some(latency.p99 < FANOUT_TARGET_P99_MS && missed + duplicated + outside == 0),
        figures: json!({
            "subscribers": s.subscribers, "p50_ms": latency.p50, "p99_ms": latency.p99,
            "max_ms": latency.max, "deliveries": latency.count, "server_cpu_us_per_write": cpu,
            "missed": missed, "duplicated": duplicated, "outside": outside,
            "achieved_writes_per_s": write_rate,
        }),
    });
}

/// Pushes single-row batches at the fan-out rate, document `i` in bucket `i % 100`.
async fn write(
    client: &mut Client,
    tag: &str,
    planned: usize,
    s: &crate::settings::Settings,
) -> (Vec<Instant>, Duration) {
    let period = Duration::from_secs_f64(1.0 / f64::from(s.fanout_rate));
    let start = tokio::time::Instant::now();
    let mut acks = Vec::with_capacity(planned);
    for seq in 0..planned {
        tokio::time::sleep_until(start + period.mul_f64(seq as f64)).await;
        if start.elapsed() >= s.fanout_duration {
            break;
        }
        let id = client::doc_id(tag, seq);
        let body = json!({"id": id, "bucket": seq % BUCKETS, "title": "live", "done": false});
        let conflicts = client::push(
            client,
            LIVE,
            vec![client::insert_row(id, body.to_string().into_bytes())],
        )
        .await;
        assert!(
            conflicts.is_empty(),
            "selective writer: unexpected conflict"
        );
        acks.push(Instant::now());
    }
    (acks, start.elapsed())
}

/// One filtered stream from the collection's current end, until cancelled.
async fn subscriber(
    mut c: Client,
    bucket: usize,
    tag: String,
    capacity: usize,
    distinct: Arc<AtomicUsize>,
    cancel: CancellationToken,
    ready: mpsc::Sender<()>,
) -> Received {
    let selector = selector(bucket).to_string().into_bytes();
    let mut got = Received {
        got: Arrivals::new(&tag, capacity, capacity / BUCKETS + 1, distinct),
        outside: 0,
    };
    let mut stream = c
        .subscribe(SubscribeRequest {
            collection: LIVE.into(),
            // Each round's ids are new: earlier rounds' documents are told apart by their tag.
            checkpoint: None,
            selector,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let _ = ready.send(()).await;
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = stream.message() => m,
        };
        let Ok(Some(message)) = message else { break };
        let Some(Event::Changes(batch)) = message.event else {
            continue;
        };
        let now = Instant::now();
        for d in batch.documents {
            let body: serde_json::Value = serde_json::from_slice(&d.json).unwrap_or_default();
            if body["bucket"] != json!(bucket) {
                got.outside += 1;
                continue;
            }
            got.got.record(&d.id, now);
        }
    }
    got
}
