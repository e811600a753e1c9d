//! Scenario 4: many idle Subscribe streams on one process (keepalive off, heartbeats only):
//! the process's resident memory per stream and the CPU it burns per second while idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use syncline::proto::subscribe_response::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::client::{self, STREAMS_PER_CONNECTION};
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};
use crate::stats::median;

const COLLECTION: &str = "idle";
const TARGET_KIB: f64 = 20.0;
/// "~0 CPU": under 1% of one core.
const TARGET_CPU: f64 = 0.01;

/// One round's figures.
struct Idle {
    kib_per_stream: f64,
    cpu_per_second: f64,
    heartbeats: usize,
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let db = ctx.cluster.fresh_database("idle").await;
    let mut options = ServerOptions::new(&[COLLECTION]);
    options.keepalive_seconds = 0;
    options.heartbeat_seconds = s.idle_heartbeat_seconds;
    options.streams_max = options.streams_max.max(s.idle_streams + 10);
    let mut rounds = Vec::new();
    for round in 0..s.rounds {
        // A fresh process each round: memory freed by the last round would hide the cost.
        let server = Server::start(&db, &options, &ctx.work, &format!("idle-{round}")).await;
        rounds.push(measure(&server, ctx, report).await);
    }
    let kib = median(&rounds.iter().map(|r| r.kib_per_stream).collect::<Vec<_>>());
    let cpu = median(&rounds.iter().map(|r| r.cpu_per_second).collect::<Vec<_>>());
    let heartbeats: usize = rounds.iter().map(|r| r.heartbeats).sum();
    report.add(Row {
        scenario: format!(
            "4. Idle streams: {} on one process, heartbeat {} s, {:.0} s window",
            thousands(s.idle_streams as u64),
            s.idle_heartbeat_seconds,
            s.idle_window.as_secs_f64()
        ),
        syncline: format!("{kib:.1} KiB RSS/stream; {cpu:.4} CPU s/s"),
        baseline: "—".into(),
        ratio: None,
        target: format!("<= {TARGET_KIB} KiB; ~0 CPU (< {TARGET_CPU})"),
        met: Some(kib <= TARGET_KIB && cpu < TARGET_CPU),
        figures: json!({ "kib_per_stream": kib, "cpu_seconds_per_second": cpu,
                         "streams": s.idle_streams, "heartbeats_received": heartbeats }),
    });
}

async fn measure(server: &Server, ctx: &Ctx<'_>, report: &mut Report) -> Idle {
    let n = ctx.settings.idle_streams;
    settle(server).await;
    let before = server.rss_bytes();
    let cancel = CancellationToken::new();
    let heartbeats = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel(n);
    let channels = client::channels_for(server.addr, n).await;
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let c = client::client(channels[k / STREAMS_PER_CONNECTION].clone());
        let stream = hold_stream(c, ready_tx.clone(), heartbeats.clone(), cancel.clone());
        tasks.push(tokio::spawn(stream));
    }
    drop(ready_tx);
    let mut opened = 0;
    while let Ok(Some(ok)) = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
        opened += usize::from(ok);
    }
    report.expect_eq("idle streams opened", opened, n);
    settle(server).await;
    let after = server.rss_bytes();
    let (cpu0, clock) = (server.cpu_seconds(), Instant::now());
    tokio::time::sleep(ctx.settings.idle_window).await;
    let cpu = (server.cpu_seconds() - cpu0) / clock.elapsed().as_secs_f64();
    let heartbeats = heartbeats.load(Ordering::Relaxed);
    cancel.cancel();
    for t in tasks {
        t.await.expect("stream task");
    }
    Idle {
        kib_per_stream: after.saturating_sub(before) as f64 / 1024.0 / n as f64,
        cpu_per_second: cpu,
        heartbeats,
    }
}

/// Opens one stream, reports whether it opened, then reads heartbeats until cancelled.
async fn hold_stream(
    mut c: client::Client,
    ready: mpsc::Sender<bool>,
    heartbeats: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let Ok(mut stream) = client::subscribe(&mut c, COLLECTION, "").await else {
        let _ = ready.send(false).await;
        return;
    };
    let _ = ready.send(true).await;
    drop(ready);
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            m = stream.message() => m,
        };
        match message {
            Ok(Some(m)) if matches!(m.event, Some(Event::Heartbeat(_))) => {
                heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

/// Waits (at most 30 s) until the server uses under 5% of a core over half a second.
async fn settle(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let c0 = server.cpu_seconds();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if (server.cpu_seconds() - c0) / 0.5 < 0.05 {
            return;
        }
    }
}
