//! Scenario 6: a hostile client's worst cases (issue 10), one case at a time, each against a
//! fresh server process so that its peak resident memory (`VmHWM`) belongs to that case alone.
//! Each row is the peak's growth over the resident memory of the settled, just-started server,
//! against a bound derived from the configuration's defaults (the constants below):
//!
//! a. Pushes of a million empty rows (~2 MB on the wire), refused before decoding;
//! b. one principal writes documents of ~1 MiB while streams follow the collection (the
//!    shared tail): another principal's, and the writer's own, reading slowly;
//! c. concurrent Pulls (limit 1000) of those documents, paging to the end, repeated;
//! d. Subscribe streams from the start over them that never read a message;
//! e. unauthenticated Health/Watch streams beyond `health_watches_max`, and TCP connections
//!    that never speak.
//!
//! Wrong status codes, and paging or streams that do not reach the end, are violations (the
//! smoke run fails on them); a bound exceeded is a figure (`met = no`), never a violation. A
//! server whose memory passes `BENCH_ABUSE_CEILING_MIB` is killed (an unbounded server would
//! take the shared machine) and its case reported over the ceiling.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use prost::Message;
use serde_json::{Value, json};
use syncline::proto::subscribe_response::Event;
use syncline::proto::{Checkpoint, Document, PullRequest, PushRequest, SubscribeRequest};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Ctx;
use crate::client::{self, STREAMS_PER_CONNECTION};
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};

const COLLECTION: &str = "abuse";
const SECRET: &str = "syncline-benchmark-abuse-hs256-secret";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// The configuration's defaults the bounds rest on (src/config.rs): change them here when the
// defaults change.

/// `document_bytes_max`: the largest body.
const DOCUMENT_BYTES_MAX: u64 = MIB;
/// `page_bytes_max`: body bytes at which a Pull page or a stream batch ends (it always holds
/// at least one document, so one page is at most this plus one document).
const PAGE_BYTES_MAX: u64 = 4 * MIB;
/// `stream_buffer_bytes`: body bytes one collection's shared tail holds.
const STREAM_BUFFER_BYTES: u64 = 64 * MIB;
/// `stream_bytes_per_principal_max`: the memory one principal's streams may pin (each counted
/// as two batches: one queued, one being sent).
const PRINCIPAL_STREAM_BYTES: u64 = 512 * MIB;
/// `read_ahead_pages`: next pages prepared in the background, per process.
const READ_AHEAD_PAGES: u64 = 16;
/// `health_watches_max`.
const HEALTH_WATCHES_MAX: usize = 1000;

// What the server spends beyond those limits.

/// Copies of one message held at once while it is served: as received (the request) or read
/// (rows from PostgreSQL), as the response's documents, and encoded in HTTP/2's send buffer.
const COPIES: u64 = 3;
/// One open stream beyond its batches (task, channel, encode buffer, HTTP/2 stream state):
/// scenario 4 measures ~17 KiB per idle Subscribe stream; twice that.
const STREAM_BYTES: u64 = 32 * KIB;
/// One accepted connection (task, read and write buffers, HTTP/2 connection state).
const CONNECTION_BYTES: u64 = 64 * KIB;
/// Allocator fragmentation, the runtime's and the pool's own growth under load.
const SLACK_BYTES: u64 = 32 * MIB;

/// The largest page or stream batch: the byte budget plus the document that crosses it.
const PAGE_BYTES: u64 = PAGE_BYTES_MAX + DOCUMENT_BYTES_MAX;
/// Prepared next pages, each at most one page.
const READ_AHEAD_BYTES: u64 = READ_AHEAD_PAGES * PAGE_BYTES;

/// a: each refused request is buffered whole before the scan refuses it, one at a time.
fn bound_empty_rows(request_bytes: u64) -> u64 {
    COPIES * request_bytes + SLACK_BYTES
}

/// b: the tail's bytes, the Push in flight, and each following stream's batch and state.
fn bound_writes(push_bytes: u64, streams: u64) -> u64 {
    STREAM_BUFFER_BYTES
        + COPIES * push_bytes
        + streams * (COPIES * PAGE_BYTES + STREAM_BYTES)
        + READ_AHEAD_BYTES
        + SLACK_BYTES
}

/// c: one page being served per concurrent Pull, and the prepared next pages.
fn bound_pulls(pullers: u64) -> u64 {
    pullers * COPIES * PAGE_BYTES + READ_AHEAD_BYTES + SLACK_BYTES
}

/// d: every stream's batches, or the per-principal bound on them if smaller (the server counts
/// two batches of at most a page and one document per stream; what they really hold, decoded
/// and encoded, with the allocator's own share, is up to a quarter more), and the streams'
/// own state.
fn bound_unread_streams(streams: u64) -> u64 {
    (streams * COPIES * PAGE_BYTES).min(PRINCIPAL_STREAM_BYTES + PRINCIPAL_STREAM_BYTES / 4)
        + streams * STREAM_BYTES
        + READ_AHEAD_BYTES
        + SLACK_BYTES
}

/// e: the watches served (the rest are refused at once) and every connection.
fn bound_floods(watches: usize, connections: usize) -> u64 {
    watches.min(HEALTH_WATCHES_MAX) as u64 * STREAM_BYTES
        + connections as u64 * CONNECTION_BYTES
        + SLACK_BYTES
}

/// Documents per Push in case b.
const WRITE_BATCH: usize = 4;
/// Body bytes of each document of cases b-d: just under `document_bytes_max`. The padding
/// compresses well, so PostgreSQL stores little; the server holds every byte decompressed.
const BODY_BYTES: usize = (DOCUMENT_BYTES_MAX - 4 * KIB) as usize;
/// Concurrent pullers in case c.
const PULLERS: usize = 4;
/// Case b's slow reader waits this long before each read.
const SLOW_READ_PAUSE: Duration = Duration::from_millis(20);

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let db = ctx.cluster.fresh_database("abuse").await;
    let mut options = ServerOptions::new(&[COLLECTION]);
    options.hs256_secret = Some(SECRET.to_owned());
    let env = Env {
        ctx,
        db: &db,
        options: &options,
    };
    empty_rows(&env, report).await;
    big_writes(&env, report).await;
    concurrent_pulls(&env, report).await;
    unread_streams(&env, report).await;
    floods(&env, report).await;
}

/// What every case needs.
struct Env<'a> {
    ctx: &'a Ctx<'a>,
    db: &'a str,
    options: &'a ServerOptions,
}

impl Env<'_> {
    /// A fresh server, settled, with its peak reset; and the watchdog over its memory.
    async fn start(&self, case: &str) -> (Server, Peak) {
        let server = Server::start(self.db, self.options, &self.ctx.work, case).await;
        server.settle().await;
        let reset = server.reset_peak_rss();
        let start_bytes = server.rss_bytes();
        let ceiling = self.ctx.settings.abuse_ceiling_mib as u64 * MIB;
        let watchdog = Watchdog::spawn(server.pid(), ceiling);
        let peak = Peak {
            start_bytes,
            reset,
            ceiling,
            watchdog,
        };
        (server, peak)
    }
}

/// The memory figures of one case.
struct Peak {
    start_bytes: u64,
    /// Whether the kernel reset the peak after start-up (else it may include start-up's).
    reset: bool,
    ceiling: u64,
    watchdog: Watchdog,
}

impl Peak {
    /// Whether the watchdog killed the server.
    fn killed(&self) -> bool {
        self.watchdog.fired.load(Ordering::Relaxed)
    }

    /// Adds the case's row: the peak's growth against `bound`.
    fn row(self, server: &Server, report: &mut Report, case: &str, bound: u64, figures: Value) {
        self.watchdog.cancel.cancel();
        let killed = self.killed();
        let peak = match server.peak_rss_bytes() {
            Some(peak) if !killed => peak,
            _ => self.ceiling,
        };
        let growth = peak.saturating_sub(self.start_bytes);
        let syncline = if killed {
            format!(
                "peak RSS over the {} MiB ceiling: killed",
                self.ceiling / MIB
            )
        } else {
            format!("peak RSS +{} MiB", thousands(growth.div_ceil(MIB)))
        };
        let mut figures = figures;
        if let Value::Object(map) = &mut figures {
            map.insert("peak_growth_mib".into(), json!(growth as f64 / MIB as f64));
            map.insert("bound_mib".into(), json!(bound as f64 / MIB as f64));
            map.insert("start_rss_mib".into(), json!(self.start_bytes / MIB));
            map.insert("peak_reset_after_start".into(), json!(self.reset));
            map.insert("killed_at_ceiling".into(), json!(killed));
        }
        report.add(Row {
            scenario: format!("6. Abuse {case}"),
            syncline,
            baseline: "—".into(),
            ratio: None,
            target: format!("<= {} MiB peak RSS growth", bound / MIB),
            met: Some(!killed && growth <= bound),
            figures,
        });
    }
}

/// Kills the server (by its process id) once its resident memory passes the ceiling.
struct Watchdog {
    fired: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Watchdog {
    fn spawn(pid: u32, ceiling: u64) -> Watchdog {
        let fired = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let (flag, stop) = (fired.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(rss) = rss_of(pid) else { return };
                if rss > ceiling {
                    flag.store(true, Ordering::Relaxed);
                    eprintln!(
                        "bench: abuse: server {pid} passed {} MiB; killing it",
                        ceiling / MIB
                    );
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    return;
                }
            }
        });
        Watchdog { fired, cancel }
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Records a violation unless the watchdog killed the server (then failures are expected).
fn violation(report: &mut Report, peak: &Peak, what: String) {
    if peak.killed() {
        eprintln!("bench: abuse: after the kill: {what}");
    } else {
        report.violation(what);
    }
}

// ---------------------------------------------------------------------------------------------
// a. A million empty rows.

async fn empty_rows(env: &Env<'_>, report: &mut Report) {
    let s = env.ctx.settings;
    let (server, peak) = env.start("abuse-a").await;
    let request = empty_rows_request(s.abuse_rows);
    let request_bytes = request.len() as u64;
    let channel = client::channel(server.addr).await;
    let token = token("abuse-a");
    let mut refused = 0;
    for _ in 0..s.abuse_pushes {
        match raw_push(channel.clone(), &token, request.clone()).await {
            Err(status)
                if status.code() == Code::InvalidArgument
                    && status.message().starts_with("rows") =>
            {
                refused += 1;
            }
            other => {
                let got = match other {
                    Ok(()) => "success".to_owned(),
                    Err(status) => format!("{:?} {:?}", status.code(), status.message()),
                };
                violation(
                    report,
                    &peak,
                    format!(
                        "abuse a: a Push of {} empty rows: expected INVALID_ARGUMENT naming \
                         rows, got {got}",
                        s.abuse_rows
                    ),
                );
            }
        }
    }
    let case = format!(
        "a: {} Pushes of {} empty rows ({:.1} MB each), refused",
        s.abuse_pushes,
        thousands(s.abuse_rows as u64),
        request_bytes as f64 / 1e6
    );
    let figures = json!({ "pushes": s.abuse_pushes, "rows": s.abuse_rows,
                          "request_bytes": request_bytes, "refused": refused });
    peak.row(
        &server,
        report,
        &case,
        bound_empty_rows(request_bytes),
        figures,
    );
}

/// A PushRequest holding `rows` empty ChangeRows, encoded directly: building a million
/// `ChangeRow` values just to encode them would cost the load generator hundreds of MB.
fn empty_rows_request(rows: usize) -> Vec<u8> {
    let mut bytes = PushRequest {
        collection: COLLECTION.into(),
        rows: Vec::new(),
        mode: 0,
        idempotency_key: String::new(),
    }
    .encode_to_vec();
    // Field 2 (rows), wire type 2 (length-delimited), length 0.
    bytes.reserve(2 * rows);
    for _ in 0..rows {
        bytes.extend_from_slice(&[0x12, 0x00]);
    }
    bytes
}

/// One Push of raw request bytes; the response, if any, is not decoded.
async fn raw_push(
    channel: tonic::transport::Channel,
    token: &client::Bearer,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/syncline.v1.ReplicationService/Push");
    grpc.unary(request(body, token), path, RawCodec)
        .await
        .map(|_| ())
}

/// Sends request bytes as they are; skips the response.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct SkipDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for SkipDecoder {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let n = buf.remaining();
        buf.advance(n);
        Ok(Some(()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = SkipDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> SkipDecoder {
        SkipDecoder
    }
}

// ---------------------------------------------------------------------------------------------
// b. Large documents written while streams follow the collection.

/// The principal that owns the large documents (cases b, c, d).
const WRITER: &str = "abuse-writer";

async fn big_writes(env: &Env<'_>, report: &mut Report) {
    let s = env.ctx.settings;
    let n = s.abuse_docs;
    let (server, peak) = env.start("abuse-b").await;
    let writer = token(WRITER);
    let cancel = CancellationToken::new();
    // Another principal's stream sees none of the writer's documents, yet keeps the shared
    // tail following the collection; the writer's own stream reads slowly, so the tail (and
    // the table) must serve it from behind.
    let mut other = client::connect(server.addr).await;
    let mut own = client::connect(server.addr).await;
    let streams = (
        subscribe(&mut other, &token("abuse-other"), "").await,
        subscribe(&mut own, &writer, "").await,
    );
    let (other_stream, own_stream) = match streams {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let e = a
                .err()
                .or(b.err())
                .map(|s| format!("{:?} {}", s.code(), s.message()));
            violation(report, &peak, format!("abuse b: Subscribe refused: {e:?}"));
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(if s.smoke { 60 } else { 900 });
    let other_task = tokio::spawn(count_documents(other_stream, cancel.clone()));
    let own_task = tokio::spawn(read_slowly(own_stream, n, deadline));

    let mut c = client::connect(server.addr).await;
    let mut written = 0;
    let mut push_error = None;
    while written < n && push_error.is_none() {
        let rows: Vec<_> = (written..(written + WRITE_BATCH).min(n))
            .map(|i| {
                let id = client::doc_id("big-", i);
                let json = large_body(&id);
                client::insert_row(id, json)
            })
            .collect();
        let count = rows.len();
        let message = PushRequest {
            collection: COLLECTION.into(),
            rows,
            mode: 0,
            idempotency_key: String::new(),
        };
        match c.push(request(message, &writer)).await {
            Ok(r) if r.get_ref().conflicts.is_empty() => written += count,
            Ok(_) => push_error = Some("conflicts on new documents".to_owned()),
            Err(status) => push_error = Some(format!("{:?} {}", status.code(), status.message())),
        }
    }
    if let Some(e) = push_error {
        violation(
            report,
            &peak,
            format!("abuse b: Push of large documents: {e}"),
        );
    }
    let own = own_task.await.expect("slow reader task");
    cancel.cancel();
    let other = other_task.await.expect("other stream task");
    if !own.complete(n) {
        violation(
            report,
            &peak,
            format!(
                "abuse b: the writer's slow stream got {} of {n} documents ({} duplicates){}",
                own.distinct,
                own.duplicates,
                own.error_text()
            ),
        );
    }
    if other.distinct > 0 {
        violation(
            report,
            &peak,
            format!(
                "abuse b: another principal's stream received {} of the writer's documents",
                other.distinct
            ),
        );
    }
    let case = format!(
        "b: {} docs of ~1 MiB written ({} per Push), another principal subscribed, the \
         writer's stream reading slowly",
        thousands(n as u64),
        WRITE_BATCH
    );
    let figures = json!({ "documents": n, "written": written, "body_bytes": BODY_BYTES,
                          "slow_stream_documents": own.distinct, "slow_stream_batches": own.batches });
    let push_bytes = (WRITE_BATCH * BODY_BYTES) as u64;
    peak.row(&server, report, &case, bound_writes(push_bytes, 2), figures);
}

/// A JSON body of exactly `BODY_BYTES` bytes.
fn large_body(id: &str) -> Vec<u8> {
    let head = format!(r#"{{"id":"{id}","pad":""#);
    let mut body = Vec::with_capacity(BODY_BYTES);
    body.extend_from_slice(head.as_bytes());
    body.resize(BODY_BYTES - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// What a stream received.
#[derive(Debug, Default)]
struct Received {
    distinct: usize,
    duplicates: usize,
    batches: usize,
    error: Option<String>,
}

impl Received {
    fn complete(&self, n: usize) -> bool {
        self.distinct == n && self.duplicates == 0 && self.error.is_none()
    }

    fn error_text(&self) -> String {
        self.error
            .as_ref()
            .map_or(String::new(), |e| format!("; ended with {e}"))
    }

    /// Counts one batch's documents, telling new ones from repeats.
    fn add(&mut self, documents: Vec<Document>, seen: &mut HashSet<String>) {
        self.batches += 1;
        for d in documents {
            if seen.insert(d.id) {
                self.distinct += 1;
            } else {
                self.duplicates += 1;
            }
        }
    }
}

/// Reads one message at a time, pausing before each, until `n` documents arrived, the
/// stream ends or fails, or the deadline passes.
async fn read_slowly(
    mut stream: tonic::Streaming<syncline::proto::SubscribeResponse>,
    n: usize,
    deadline: Instant,
) -> Received {
    let mut got = Received::default();
    let mut seen = HashSet::new();
    while got.distinct < n {
        tokio::time::sleep(SLOW_READ_PAUSE).await;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => {
                got.error = Some("no progress before the deadline".into());
                break;
            }
            Ok(Ok(Some(m))) => match m.event {
                Some(Event::Changes(batch)) => got.add(batch.documents, &mut seen),
                Some(Event::Resync(r)) => {
                    got.error = Some(format!("Resync ({})", r.reason));
                    break;
                }
                _ => {}
            },
            Ok(Ok(None)) => {
                got.error = Some("the stream ended".into());
                break;
            }
            Ok(Err(status)) => {
                got.error = Some(format!("{:?} {}", status.code(), status.message()));
                break;
            }
        }
    }
    got
}

/// Counts the documents a stream receives until cancelled.
async fn count_documents(
    mut stream: tonic::Streaming<syncline::proto::SubscribeResponse>,
    cancel: CancellationToken,
) -> Received {
    let mut got = Received::default();
    let mut seen = HashSet::new();
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return got,
            m = stream.message() => m,
        };
        match message {
            Ok(Some(m)) => {
                if let Some(Event::Changes(batch)) = m.event {
                    got.add(batch.documents, &mut seen);
                }
            }
            Ok(None) => return got,
            Err(status) => {
                got.error = Some(format!("{:?} {}", status.code(), status.message()));
                return got;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// c. Concurrent Pulls of large documents.

async fn concurrent_pulls(env: &Env<'_>, report: &mut Report) {
    let s = env.ctx.settings;
    let n = s.abuse_docs;
    let (server, peak) = env.start("abuse-c").await;
    let writer = token(WRITER);
    let mut tasks = Vec::new();
    for _ in 0..PULLERS {
        let c = client::connect(server.addr).await;
        let token = writer.clone();
        let rounds = s.abuse_pull_rounds;
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            let mut pages = 0;
            for _ in 0..rounds {
                pages += pull_to_end(&mut c, &token, n).await?;
            }
            Ok::<usize, String>(pages)
        }));
    }
    let mut pages = 0;
    for t in tasks {
        match t.await.expect("puller task") {
            Ok(p) => pages += p,
            Err(e) => violation(report, &peak, format!("abuse c: {e}")),
        }
    }
    let case = format!(
        "c: {PULLERS} concurrent Pulls (limit 1000) x {} rounds of {} docs of ~1 MiB",
        s.abuse_pull_rounds,
        thousands(n as u64)
    );
    let figures = json!({ "pullers": PULLERS, "rounds": s.abuse_pull_rounds, "documents": n,
                          "pages": pages });
    peak.row(&server, report, &case, bound_pulls(PULLERS as u64), figures);
}

/// Pages from the start to the end; the pages taken, or what went wrong.
async fn pull_to_end(
    c: &mut client::Client,
    token: &client::Bearer,
    n: usize,
) -> Result<usize, String> {
    let mut checkpoint = String::new();
    let mut seen = HashSet::new();
    // Every page but the last brings at least one document.
    for page in 0..=n {
        let message = PullRequest {
            collection: COLLECTION.into(),
            checkpoint: Some(Checkpoint {
                token: checkpoint.clone(),
            }),
            limit: 1000,
            selector: Vec::new(),
        };
        let r = c
            .pull(request(message, token))
            .await
            .map_err(|s| {
                format!(
                    "Pull page {page} failed: {:?} {}",
                    s.code(),
                    s.message().chars().take(200).collect::<String>()
                )
            })?
            .into_inner();
        if r.documents.is_empty() {
            if seen.len() != n {
                return Err(format!(
                    "paging ended after {} of {n} documents",
                    seen.len()
                ));
            }
            return Ok(page + 1);
        }
        for d in r.documents {
            if !seen.insert(d.id) {
                return Err("a document came twice in one paging".into());
            }
        }
        checkpoint = r.checkpoint.map(|c| c.token).unwrap_or_default();
    }
    Err(format!("paging did not end after {} pages", n + 1))
}

// ---------------------------------------------------------------------------------------------
// d. Streams that never read.

async fn unread_streams(env: &Env<'_>, report: &mut Report) {
    let s = env.ctx.settings;
    let n = s.abuse_streams;
    let (server, peak) = env.start("abuse-d").await;
    let writer = token(WRITER);
    // One connection each, so that no stream waits behind another's flow-control window.
    // RESOURCE_EXHAUSTED (the principal's stream memory or count) is a fair answer, at the
    // Subscribe or later; any other error is not.
    let mut exhausted = 0;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = match client::try_channel(server.addr).await {
            Ok(channel) => client::client(channel),
            Err(e) => {
                violation(report, &peak, format!("abuse d: connect: {e}"));
                break;
            }
        };
        match subscribe(&mut c, &writer, "").await {
            Ok(stream) => held.push((c, stream)),
            Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
            Err(status) => violation(
                report,
                &peak,
                format!(
                    "abuse d: Subscribe refused: {:?} {}",
                    status.code(),
                    status.message()
                ),
            ),
        }
    }
    // Let every stream take what it can; the server is idle once all of them are blocked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if !peak.killed() {
        server.settle().await;
    }
    let peak_bytes = server.peak_rss_bytes();
    // Now read one message of each: a batch (or a heartbeat), never an error.
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (_, stream) in &mut held {
        let left = deadline.saturating_duration_since(Instant::now());
        let first = tokio::time::timeout(left, stream.message()).await;
        if let Ok(Err(status)) = &first
            && status.code() == Code::ResourceExhausted
        {
            exhausted += 1;
        } else if !matches!(first, Ok(Ok(Some(_)))) {
            failed += 1;
            let what = match first {
                Err(_) => "nothing within 60 s of the first read".to_owned(),
                Ok(Ok(None)) => "the stream ended".to_owned(),
                Ok(Err(status)) => format!(
                    "{:?} {}",
                    status.code(),
                    status.message().chars().take(200).collect::<String>()
                ),
                Ok(Ok(Some(_))) => unreachable!("matched above"),
            };
            violation(report, &peak, format!("abuse d: an unread stream: {what}"));
        }
    }
    drop(held);
    let case = format!(
        "d: {n} Subscribe streams of one principal from the start over {} docs of ~1 MiB, \
         never reading",
        thousands(s.abuse_docs as u64)
    );
    let figures = json!({ "streams": n, "documents": s.abuse_docs, "failed_first_read": failed,
                          "resource_exhausted": exhausted,
                          "peak_before_reading_mib": peak_bytes.map(|b| b / MIB) });
    peak.row(
        &server,
        report,
        &case,
        bound_unread_streams(n as u64),
        figures,
    );
}

// ---------------------------------------------------------------------------------------------
// e. Unauthenticated floods: Health/Watch streams and silent connections.

async fn floods(env: &Env<'_>, report: &mut Report) {
    let s = env.ctx.settings;
    let (server, peak) = env.start("abuse-e").await;
    // Silent connections first, so that they are open while the watches pile up (the server
    // closes them after `handshake_timeout_ms`, 10 s).
    let mut silent = Vec::with_capacity(s.abuse_idle_connections);
    for _ in 0..s.abuse_idle_connections {
        match TcpStream::connect(server.addr).await {
            Ok(tcp) => silent.push(tcp),
            Err(e) => {
                eprintln!("bench: abuse e: connection {} failed: {e}", silent.len());
                break;
            }
        }
    }
    let opened_silent = silent.len();
    let (served, exhausted, other) = watch_flood(server.addr, s.abuse_watches).await;
    let expect_served = s.abuse_watches.min(HEALTH_WATCHES_MAX);
    if served != expect_served || exhausted != s.abuse_watches - expect_served {
        violation(
            report,
            &peak,
            format!(
                "abuse e: of {} watches {served} were served and {exhausted} refused \
                 RESOURCE_EXHAUSTED (expected {expect_served} served); others: {other:?}",
                s.abuse_watches
            ),
        );
    }
    let watch_connections = s.abuse_watches.div_ceil(STREAMS_PER_CONNECTION);
    let case = format!(
        "e: {} Health/Watch streams without a token, {} silent TCP connections",
        thousands(s.abuse_watches as u64),
        thousands(opened_silent as u64)
    );
    let figures = json!({ "watches": s.abuse_watches, "served": served,
                          "resource_exhausted": exhausted, "silent_connections": opened_silent });
    let bound = bound_floods(s.abuse_watches, opened_silent + watch_connections);
    peak.row(&server, report, &case, bound, figures);
    drop(silent);
}

/// Opens `n` watches at once and holds the served ones until all have answered: (served,
/// refused RESOURCE_EXHAUSTED, other outcomes by text).
async fn watch_flood(addr: SocketAddr, n: usize) -> (usize, usize, Vec<String>) {
    let channels = client::channels_for(addr, n).await;
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<Result<(), String>>(n);
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let mut health = HealthClient::new(channels[k / STREAMS_PER_CONNECTION].clone());
        let (tx, cancel) = (tx.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            let outcome = match health.watch(request).await {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
                        Ok(Ok(Some(_))) => {
                            let _ = tx.send(Ok(())).await;
                            drop(tx);
                            cancel.cancelled().await;
                            return;
                        }
                        other => Err(format!("served, then {other:?}")),
                    }
                }
                Err(status) if status.code() == Code::ResourceExhausted => {
                    Err("RESOURCE_EXHAUSTED".to_owned())
                }
                Err(status) => Err(format!("{:?} {}", status.code(), status.message())),
            };
            let _ = tx.send(outcome).await;
        }));
    }
    drop(tx);
    let (mut served, mut exhausted, mut other) = (0, 0, Vec::new());
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(Ok(()))) => served += 1,
            Ok(Some(Err(e))) if e == "RESOURCE_EXHAUSTED" => exhausted += 1,
            Ok(Some(Err(e))) => {
                if other.len() < 5 {
                    other.push(e);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    (served, exhausted, other)
}

// ---------------------------------------------------------------------------------------------
// Calls as a JWT principal.

/// An HS256 token for `sub` (no scopes: an owner, not a service principal).
fn token(sub: &str) -> client::Bearer {
    client::Bearer::hs256(SECRET, sub)
}

fn request<T>(message: T, token: &client::Bearer) -> tonic::Request<T> {
    client::request(message, Some(token))
}

async fn subscribe(
    c: &mut client::Client,
    token: &client::Bearer,
    checkpoint: &str,
) -> Result<tonic::Streaming<syncline::proto::SubscribeResponse>, tonic::Status> {
    let message = SubscribeRequest {
        collection: COLLECTION.into(),
        checkpoint: Some(Checkpoint {
            token: checkpoint.into(),
        }),
        selector: Vec::new(),
    };
    Ok(c.subscribe(request(message, token)).await?.into_inner())
}
