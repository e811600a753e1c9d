//! Scenario 1b: the initial sync of scenario 1 with no compression, gzip and zstd, in the same
//! run against one server: bytes on the wire (counted by the client's connector: every byte
//! of the TCP stream, HTTP/2 framing included, both ways), docs/s and the server's CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Endpoint;

use crate::report::{Report, Row, rate, thousands};
use crate::server::{Server, ServerOptions, micros_per};
use crate::stats::median;
use crate::{Ctx, client, load};

const COLLECTION: &str = "docs";
const PAGE: u32 = 1_000;

/// One way of pulling: its name and the encoding the client sends and accepts.
const MODES: [(&str, Option<CompressionEncoding>); 3] = [
    ("none", None),
    ("gzip", Some(CompressionEncoding::Gzip)),
    ("zstd", Some(CompressionEncoding::Zstd)),
];

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let n = ctx.settings.sync_docs;
    let db = ctx.cluster.fresh_database("compress").await;
    // The shipped defaults: gzip and zstd on, replies under 1 KiB plain.
    let server = Server::start(
        &db,
        &ServerOptions::new(&[COLLECTION]),
        &ctx.work,
        "compress",
    )
    .await;
    load::documents(&db, COLLECTION, "d", n).await;

    // Per mode: docs/s, bytes from the server, bytes to it, server CPU µs/doc; modes
    // alternate within each round.
    let mut figures: Vec<[Vec<f64>; 4]> = MODES.iter().map(|_| Default::default()).collect();
    for _ in 0..ctx.settings.rounds {
        for (i, (_, encoding)) in MODES.iter().enumerate() {
            let cpu_before = server.cpu_seconds();
            let (docs_per_s, down, up) = sync(&server, *encoding, n, report).await;
            let cpu = micros_per(server.cpu_seconds() - cpu_before, n);
            for (series, value) in figures[i].iter_mut().zip([docs_per_s, down, up, cpu]) {
                series.push(value);
            }
        }
    }
    let medians: Vec<[f64; 4]> = figures
        .iter()
        .map(|f| [median(&f[0]), median(&f[1]), median(&f[2]), median(&f[3])])
        .collect();
    let plain = medians[0];
    for ((name, _), [docs_per_s, down, up, cpu]) in MODES.iter().zip(medians) {
        let wire = format!(
            "{docs}; {mib:.1} MiB from the server ({per_doc:.0} B/doc), {up} B to it; \
             server CPU {cpu:.1} µs/doc",
            docs = rate(docs_per_s),
            mib = down / (1024.0 * 1024.0),
            per_doc = down / n.max(1) as f64,
            up = thousands(up as u64),
        );
        report.add(Row {
            scenario: format!(
                "1b. Initial sync, compression {name}: {} docs (~300 B), pages of 1,000",
                thousands(n as u64)
            ),
            syncline: wire,
            baseline: format!(
                "no compression: {}, {:.1} MiB",
                rate(plain[0]),
                plain[1] / (1024.0 * 1024.0)
            ),
            // Bytes from the server against no compression.
            ratio: Some(down / plain[1].max(1.0)),
            target: "— (bytes ratio)".into(),
            met: None,
            figures: json!({ "docs_per_s": docs_per_s, "bytes_from_server": down,
                             "bytes_to_server": up, "server_cpu_us_per_doc": cpu }),
        });
    }
}

/// A fresh client on a counting connection pulls everything: docs/s, bytes received, bytes
/// sent. Checks every document came.
async fn sync(
    server: &Server,
    encoding: Option<CompressionEncoding>,
    n: usize,
    report: &mut Report,
) -> (f64, f64, f64) {
    let counts = Counts::default();
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint URL")
        .connect_with_connector(counts.clone())
        .await
        .unwrap_or_else(|e| panic!("connect to syncline at {}: {e}", server.addr));
    let mut c = client::client(channel);
    if let Some(e) = encoding {
        c = c.send_compressed(e).accept_compressed(e);
    }
    let start = Instant::now();
    let (count, _) = client::pull_all(&mut c, COLLECTION, "", PAGE, |_, _| {}).await;
    let docs_per_s = count as f64 / start.elapsed().as_secs_f64();
    report.expect_eq("compressed initial sync: documents pulled", count, n);
    (
        docs_per_s,
        counts.down.load(Ordering::Relaxed) as f64,
        counts.up.load(Ordering::Relaxed) as f64,
    )
}

/// A connector whose connections count the bytes they carry.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Bytes read from the server.
    pub down: Arc<AtomicU64>,
    /// Bytes written to it.
    pub up: Arc<AtomicU64>,
}

impl Counts {
    /// Bytes both ways so far.
    pub fn total(&self) -> u64 {
        self.down.load(Ordering::Relaxed) + self.up.load(Ordering::Relaxed)
    }
}

/// A client on a fresh counting connection to `server`, and its counts.
pub async fn counting_client(server: &Server) -> (client::Client, Counts) {
    let counts = Counts::default();
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint URL")
        .connect_with_connector(counts.clone())
        .await
        .unwrap_or_else(|e| panic!("connect to syncline at {}: {e}", server.addr));
    (client::client(channel), counts)
}

impl tower::Service<http::Uri> for Counts {
    type Response = TokioIo<Counted>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let counts = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(Counted { stream, counts }))
        })
    }
}

/// A TCP stream that adds what it reads and writes to its counts.
pub struct Counted {
    stream: TcpStream,
    counts: Counts,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        self.counts.down.fetch_add(read as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, buf))?;
        self.counts.up.fetch_add(written as u64, Ordering::Relaxed);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs))?;
        self.counts.up.fetch_add(written as u64, Ordering::Relaxed);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
