//! Scenario 10: attachment throughput. Blobs of `BENCH_ATTACH_MIB` MiB go up (Upload) and
//! come back (Download) through Syncline in chunks of `BENCH_ATTACH_CHUNK_KIB`:
//!
//! - PostgreSQL back end, against PostgreSQL's own write and read of the same bytes in the same
//!   chunking on the same cluster: one `INSERT` per chunk into a bytea table stored like
//!   `syncline_blob_chunks` (uncompressed, out of line), then one `SELECT` per chunk;
//! - S3 back end on `moto_server`, against the filesystem: the same chunks written to a temp
//!   file and fsynced, then read back.
//!
//! A and B alternate, each round on fresh bytes (so nothing is deduplicated); medians. Every
//! download is checked against the digest (a mismatch is a correctness violation). moto is
//! the `TEST_S3_ENDPOINT` / `TEST_S3_BUCKET` that scripts/test.sh runs, else one started
//! from `BENCH_MOTO_SERVER` or `target/moto-venv`; without any, the S3 half is skipped with a
//! line in the report (a violation under CI).

use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use sha2::Digest;
use sqlx::Connection;
use syncline::proto::attachment_service_client::AttachmentServiceClient;
use syncline::proto::{DownloadRequest, UploadRequest, UploadStart, upload_request::Part};
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::report::{Report, Row};
use crate::server::{Server, ServerOptions};
use crate::stats::median;
use crate::{Ctx, client};

const COLLECTION: &str = "files";
const TARGET: f64 = 0.7;
const MIB: usize = 1024 * 1024;
const BUCKET: &str = "syncline-bench";

type Blobs = AttachmentServiceClient<Channel>;

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let size = s.attach_mib * MIB;
    let chunk = s.attach_chunk_kib * 1024;
    postgres_back_end(ctx, report, size, chunk).await;
    match S3::find() {
        Ok(s3) => object_store_back_end(ctx, report, size, chunk, &s3).await,
        Err(why) if in_ci() => report.violation(format!(
            "10. attachments on S3 not measured under CI: {why}"
        )),
        Err(why) => {
            let line = format!("10. Attachments on the S3 back end: not measured ({why}).");
            eprintln!("bench: {line}");
            report.notes.push(line);
        }
    }
}

/// Upload and download MiB/s of one round, and the CPU each took per MiB.
#[derive(Debug, Clone, Copy, Default)]
struct Transfer {
    up_mib_s: f64,
    down_mib_s: f64,
    up_cpu: Cpu,
    down_cpu: Cpu,
}

/// CPU milliseconds per MiB: the load generator (this process: the gRPC or sqlx client),
/// the Syncline server, and the whole PostgreSQL cluster (when this run started it).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    client: f64,
    server: f64,
    postgres: Option<f64>,
}

impl Cpu {
    fn text(&self) -> String {
        let postgres = self
            .postgres
            .map_or(String::new(), |p| format!(", PostgreSQL {p:.1}"));
        let server = if self.server > 0.0 {
            format!(", server {:.1}", self.server)
        } else {
            String::new()
        };
        format!("CPU ms/MiB: client {:.1}{server}{postgres}", self.client)
    }

    fn json(&self) -> serde_json::Value {
        json!({"client": self.client, "server": self.server, "postgres": self.postgres})
    }
}

/// Wall time and CPU of one measured step.
struct Meter<'a> {
    cluster: &'a Cluster,
    server: Option<&'a Server>,
    started: Instant,
    client: f64,
    server_cpu: f64,
    postgres: Option<f64>,
}

impl<'a> Meter<'a> {
    fn start(cluster: &'a Cluster, server: Option<&'a Server>) -> Meter<'a> {
        Meter {
            cluster,
            server,
            client: own_cpu_seconds(),
            server_cpu: server.map_or(0.0, Server::cpu_seconds),
            postgres: cluster.cpu_seconds(),
            started: Instant::now(),
        }
    }

    /// MiB/s, and the CPU per MiB, for `mib` MiB moved since [`Meter::start`].
    fn stop(self, mib: f64) -> (f64, Cpu) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let per_mib = |seconds: f64| seconds * 1000.0 / mib;
        let cpu = Cpu {
            client: per_mib(own_cpu_seconds() - self.client),
            server: per_mib(self.server.map_or(0.0, Server::cpu_seconds) - self.server_cpu),
            postgres: self
                .cluster
                .cpu_seconds()
                .zip(self.postgres)
                .map(|(now, then)| per_mib(now - then)),
        };
        (mib / elapsed, cpu)
    }
}

/// CPU seconds this process (the load generator) used so far.
pub fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / crate::server::clock_ticks_per_second()
}

async fn postgres_back_end(ctx: &Ctx<'_>, report: &mut Report, size: usize, chunk: usize) {
    let db = ctx.cluster.fresh_database("attach_pg").await;
    let options = options(chunk, None, Vec::new());
    let server = Server::start(&db, &options, &ctx.work, "attachments-pg").await;
    let mut conn = sqlx::PgConnection::connect(&db)
        .await
        .expect("connect for the baseline");
    sqlx::raw_sql(
        "CREATE TABLE bench_chunks (upload_id text, start bigint, data bytea NOT NULL, \
         PRIMARY KEY (upload_id, start)); \
         ALTER TABLE bench_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
    )
    .execute(&mut conn)
    .await
    .expect("create the baseline table");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ctx.settings.rounds {
        let blob = Blob::fresh(size, round);
        theirs.push(pg_baseline(ctx.cluster, &mut conn, &blob, chunk, round).await);
        ours.push(syncline_round(ctx.cluster, &server, &blob, chunk, report).await);
    }
    conn.close().await.ok();
    add_rows(
        report,
        "PostgreSQL back end",
        "PostgreSQL INSERT/SELECT per chunk",
        size,
        chunk,
        &ours,
        &theirs,
    );
}

async fn object_store_back_end(
    ctx: &Ctx<'_>,
    report: &mut Report,
    size: usize,
    chunk: usize,
    s3: &S3,
) {
    let db = ctx.cluster.fresh_database("attach_s3").await;
    let lines = format!(
        "store = \"s3\"\ns3_bucket = \"{}\"\ns3_endpoint = \"{}\"\ns3_region = \"us-east-1\"\n\
         s3_allow_http = true\ns3_prefix = \"bench-{:08x}/\"",
        s3.bucket,
        s3.endpoint,
        rand::random::<u32>()
    );
    let env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .map(|k| ((*k).to_owned(), "bench".to_owned()))
        .collect();
    let options = options(chunk, Some(lines), env);
    let server = Server::start(&db, &options, &ctx.work, "attachments-s3").await;
    let dir = tempfile::Builder::new()
        .prefix("syncline-bench-files.")
        .tempdir()
        .expect("a directory for the filesystem baseline");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ctx.settings.rounds {
        let blob = Blob::fresh(size, round);
        theirs.push(fs_baseline(
            ctx.cluster,
            &dir.path().join(format!("r{round}")),
            &blob,
            chunk,
        ));
        ours.push(syncline_round(ctx.cluster, &server, &blob, chunk, report).await);
    }
    add_rows(
        report,
        "S3 back end (moto_server)",
        "filesystem write+fsync / read",
        size,
        chunk,
        &ours,
        &theirs,
    );
}

fn options(chunk: usize, attachments: Option<String>, env: Vec<(String, String)>) -> ServerOptions {
    let mut options = ServerOptions::new(&[COLLECTION]);
    let limit = format!("chunk_bytes_max = {chunk}");
    options.attachments = Some(match attachments {
        Some(lines) => format!("{lines}\n{limit}"),
        None => limit,
    });
    options.env = env;
    options
}

/// The bytes of one round: random, with the round in the first bytes so no two are equal.
struct Blob {
    bytes: Bytes,
    digest: String,
}

impl Blob {
    fn fresh(size: usize, round: usize) -> Blob {
        let mut v = vec![0u8; size];
        rand::Rng::fill(&mut rand::rng(), v.as_mut_slice());
        let tag = (round as u64).to_le_bytes();
        let n = tag.len().min(size);
        v[..n].copy_from_slice(&tag[..n]);
        let digest = hex(&sha2::Sha256::digest(&v));
        Blob {
            bytes: Bytes::from(v),
            digest,
        }
    }

    fn mib(&self) -> f64 {
        self.bytes.len() as f64 / MIB as f64
    }
}

fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Syncline: Upload, push a document referencing the blob (untimed: downloads need a
/// readable referencing document), Download; checks the bytes.
async fn syncline_round(
    cluster: &Cluster,
    server: &Server,
    blob: &Blob,
    chunk: usize,
    report: &mut Report,
) -> Transfer {
    let channel = client::channel(server.addr).await;
    let mut c = AttachmentServiceClient::new(channel)
        .max_decoding_message_size(chunk + 64 * 1024)
        .max_encoding_message_size(chunk + 64 * 1024);

    let meter = Meter::start(cluster, Some(server));
    let done = upload(&mut c, blob, chunk).await;
    let (up_mib_s, up_cpu) = meter.stop(blob.mib());
    if done.already_stored || done.digest != blob.digest {
        report.violation(format!(
            "10. upload answered {done:?}, not a new {}",
            blob.digest
        ));
    }

    let mut rc = client::connect(server.addr).await;
    let id = format!("doc-{}", &blob.digest[..16]);
    let body = json!({"_attachments": {"blob": {"digest": blob.digest, "length": blob.bytes.len(), "type": "application/octet-stream"}}});
    let conflicts = client::push(
        &mut rc,
        COLLECTION,
        vec![client::insert_row(id, body.to_string().into_bytes())],
    )
    .await;
    report.expect_eq(
        "10. conflicts pushing the referencing document",
        conflicts.len(),
        0,
    );

    let meter = Meter::start(cluster, Some(server));
    let (length, digest) = download(&mut c, &blob.digest).await;
    let (down_mib_s, down_cpu) = meter.stop(blob.mib());
    report.expect_eq("10. bytes downloaded", length, blob.bytes.len());
    if digest != blob.digest {
        report.violation(format!(
            "10. downloaded bytes hash to {digest}, not {}",
            blob.digest
        ));
    }
    Transfer {
        up_mib_s,
        down_mib_s,
        up_cpu,
        down_cpu,
    }
}

async fn upload(c: &mut Blobs, blob: &Blob, chunk: usize) -> syncline::proto::UploadResponse {
    let start = UploadRequest {
        part: Some(Part::Start(UploadStart {
            collection: COLLECTION.into(),
            digest: blob.digest.clone(),
            length: blob.bytes.len() as u64,
            content_type: "application/octet-stream".into(),
        })),
    };
    // Lazily, one chunk at a time, as a client streaming a file would.
    let bytes = blob.bytes.clone();
    let chunks = (0..bytes.len())
        .step_by(chunk)
        .map(move |at| UploadRequest {
            part: Some(Part::Chunk(
                bytes[at..(at + chunk).min(bytes.len())].to_vec(),
            )),
        });
    c.upload(futures::stream::iter(std::iter::once(start).chain(chunks)))
        .await
        .expect("upload")
        .into_inner()
}

/// Downloads the whole blob; its length and digest.
async fn download(c: &mut Blobs, digest: &str) -> (usize, String) {
    let mut stream = c
        .download(DownloadRequest {
            collection: COLLECTION.into(),
            digest: digest.into(),
            offset: 0,
            length: 0,
        })
        .await
        .expect("download")
        .into_inner();
    let mut hash = sha2::Sha256::new();
    let mut length = 0;
    while let Some(message) = stream.message().await.expect("download stream") {
        hash.update(&message.chunk);
        length += message.chunk.len();
    }
    (length, hex(&hash.finalize()))
}

/// PostgreSQL alone: each chunk INSERTed as a bytea row in its own statement (autocommit),
/// then each SELECTed back by key, as the PostgreSQL back end does.
async fn pg_baseline(
    cluster: &Cluster,
    conn: &mut sqlx::PgConnection,
    blob: &Blob,
    chunk: usize,
    round: usize,
) -> Transfer {
    let id = format!("r{round}");
    let meter = Meter::start(cluster, None);
    for at in (0..blob.bytes.len()).step_by(chunk) {
        let piece = &blob.bytes[at..(at + chunk).min(blob.bytes.len())];
        sqlx::query("INSERT INTO bench_chunks (upload_id, start, data) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(at as i64)
            .bind(piece)
            .execute(&mut *conn)
            .await
            .expect("baseline insert");
    }
    let (up_mib_s, up_cpu) = meter.stop(blob.mib());
    let meter = Meter::start(cluster, None);
    let mut hash = sha2::Sha256::new();
    for at in (0..blob.bytes.len()).step_by(chunk) {
        let data: Vec<u8> =
            sqlx::query_scalar("SELECT data FROM bench_chunks WHERE upload_id = $1 AND start = $2")
                .bind(&id)
                .bind(at as i64)
                .fetch_one(&mut *conn)
                .await
                .expect("baseline select");
        hash.update(&data);
    }
    let (down_mib_s, down_cpu) = meter.stop(blob.mib());
    assert_eq!(
        hex(&hash.finalize()),
        blob.digest,
        "the baseline read back other bytes"
    );
    Transfer {
        up_mib_s,
        down_mib_s,
        up_cpu,
        down_cpu,
    }
}

/// The filesystem alone: the chunks written to a new file and fsynced, then read back.
fn fs_baseline(cluster: &Cluster, path: &std::path::Path, blob: &Blob, chunk: usize) -> Transfer {
    let meter = Meter::start(cluster, None);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create the baseline file");
    for piece in blob.bytes.chunks(chunk) {
        file.write_all(piece).expect("write the baseline file");
    }
    file.sync_all().expect("fsync the baseline file");
    let (up_mib_s, up_cpu) = meter.stop(blob.mib());
    let meter = Meter::start(cluster, None);
    file.rewind().expect("rewind");
    let mut buf = vec![0u8; chunk];
    let mut hash = sha2::Sha256::new();
    loop {
        let n = file.read(&mut buf).expect("read the baseline file");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let (down_mib_s, down_cpu) = meter.stop(blob.mib());
    assert_eq!(
        hex(&hash.finalize()),
        blob.digest,
        "the baseline read back other bytes"
    );
    drop(file);
    let _ = std::fs::remove_file(path);
    Transfer {
        up_mib_s,
        down_mib_s,
        up_cpu,
        down_cpu,
    }
}

fn add_rows(
    report: &mut Report,
    back_end: &str,
    baseline: &str,
    size: usize,
    chunk: usize,
    ours: &[Transfer],
    theirs: &[Transfer],
) {
    type Pick = fn(&Transfer) -> (f64, Cpu);
    let up: Pick = |t| (t.up_mib_s, t.up_cpu);
    let down: Pick = |t| (t.down_mib_s, t.down_cpu);
    for (what, pick) in [("upload", up), ("download", down)] {
        let (a, a_cpu) = medians(ours, pick);
        let (b, b_cpu) = medians(theirs, pick);
        let ratio = a / b;
        report.add(Row {
            scenario: format!(
                "10. Attachments {what}, {} MiB blobs in {} KiB chunks, {back_end}",
                size / MIB,
                chunk / 1024
            ),
            syncline: format!("{a:.0} MiB/s; {}", a_cpu.text()),
            baseline: format!("{b:.0} MiB/s ({baseline}); {}", b_cpu.text()),
            ratio: Some(ratio),
            target: format!(">= {TARGET}"),
            met: Some(ratio >= TARGET),
            figures: json!({
                "mib_per_second": a,
                "baseline_mib_per_second": b,
                "cpu_ms_per_mib": a_cpu.json(),
                "baseline_cpu_ms_per_mib": b_cpu.json(),
                "rounds": ours.iter().map(|t| pick(t).0).collect::<Vec<_>>(),
                "baseline_rounds": theirs.iter().map(|t| pick(t).0).collect::<Vec<_>>(),
            }),
        });
    }
}

/// The medians of the rounds' MiB/s and of each CPU figure.
fn medians(rounds: &[Transfer], pick: fn(&Transfer) -> (f64, Cpu)) -> (f64, Cpu) {
    let of = |f: &dyn Fn(&Transfer) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let postgres: Vec<f64> = rounds.iter().filter_map(|t| pick(t).1.postgres).collect();
    (
        of(&|t| pick(t).0),
        Cpu {
            client: of(&|t| pick(t).1.client),
            server: of(&|t| pick(t).1.server),
            postgres: (!postgres.is_empty()).then(|| median(&postgres)),
        },
    )
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// An S3-compatible endpoint with a bucket: the test script's, or a moto_server of our own
/// (stopped on drop).
struct S3 {
    endpoint: String,
    bucket: String,
    own: Option<Child>,
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(child) = &mut self.own {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl S3 {
    fn find() -> Result<S3, String> {
        if let (Ok(endpoint), Ok(bucket)) = (
            std::env::var("TEST_S3_ENDPOINT"),
            std::env::var("TEST_S3_BUCKET"),
        ) && !endpoint.is_empty()
            && !bucket.is_empty()
        {
            return Ok(S3 {
                endpoint,
                bucket,
                own: None,
            });
        }
        let binary = moto_binary().ok_or(
            "no moto_server: set TEST_S3_ENDPOINT/TEST_S3_BUCKET or BENCH_MOTO_SERVER, or \
             install target/moto-venv as scripts/test.sh does",
        )?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?;
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{} did not start: {e}", binary.display()))?;
        let s3 = S3 {
            endpoint: format!("http://{addr}"),
            bucket: BUCKET.to_owned(),
            own: Some(child),
        };
        create_bucket(addr, BUCKET)?;
        Ok(s3)
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join("moto-venv/bin/moto_server");
    path.is_file().then_some(path)
}

/// `PUT /<bucket>` (moto takes it unsigned), retried until the server answers (bounded).
fn create_bucket(addr: SocketAddr, bucket: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let request = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let mut answer = String::new();
            if s.write_all(request.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() {
                return if answer.starts_with("HTTP/1.1 200") {
                    Ok(())
                } else {
                    Err(format!(
                        "moto_server refused to create the bucket: {}",
                        answer.lines().next().unwrap_or("")
                    ))
                };
            }
        }
        if Instant::now() > deadline {
            return Err("moto_server did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
