//! Scenario 3: one writer pushes single-row batches at a fixed rate while many Subscribe
//! streams (on one process, then split over two on the same database) receive them; latency
//! from the push's acknowledgement to each arrival, and every document missed or duplicated.
//! Baseline: the raw LISTEN/NOTIFY round trip (pg_notify sent -> notification received).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgListener;
use syncline::proto::subscribe_response::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::arrivals::Arrivals;
use crate::client::{self, Client, STREAMS_PER_CONNECTION};
use crate::report::{Report, Row, thousands};
use crate::server::{Server, ServerOptions};
use crate::settings::Settings;
use crate::stats::Latency;

const COLLECTION: &str = "fan";
const CHANNEL: &str = "syncline_bench_fanout";

/// One configuration: how many subscribers, over how many processes, and the p99 target.
struct Setup {
    subscribers: usize,
    processes: usize,
    target_p99_ms: f64,
}

/// What one Syncline run saw.
#[derive(Default)]
struct Outcome {
    latency: Latency,
    missed: usize,
    duplicated: usize,
    reconnects: usize,
    write_rate: f64,
    /// Server CPU (user + system, every process of the setup) from the first write until the
    /// last delivery, per delivery: far steadier than the latencies on a shared machine.
    cpu_us_per_delivery: f64,
    /// The load generator's own CPU (this process: the writer and every subscriber decoding
    /// its deliveries) over the same span, per delivery: its share of the same cores.
    generator_us_per_delivery: f64,
    /// The writer's push round trips: above the write period, they are what holds it back.
    push: Latency,
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let db = ctx.cluster.fresh_database("fanout").await;
    let mut options = ServerOptions::new(&[COLLECTION]);
    options.streams_max = options.streams_max.max(s.subscribers + 100);
    let a = Server::start(&db, &options, &ctx.work, "fanout-a").await;
    let b = Server::start(&db, &options, &ctx.work, "fanout-b").await;
    let setups = [
        Setup {
            subscribers: 1,
            processes: 1,
            target_p99_ms: 5.0,
        },
        Setup {
            subscribers: s.subscribers,
            processes: 1,
            // Issue 17, target 4 (it was 25 ms).
            target_p99_ms: 10.0,
        },
        Setup {
            subscribers: s.subscribers,
            processes: 2,
            target_p99_ms: 10.0,
        },
    ];
    for (i, setup) in setups.iter().enumerate() {
        let servers: Vec<&Server> = [&a, &b].into_iter().take(setup.processes).collect();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..s.rounds {
            theirs.push(notify_baseline(&db, s).await);
            let tag = format!("s{i}r{round}-");
            ours.push(syncline(&servers, setup.subscribers, s, &tag).await);
        }
        add_row(report, s, setup, &ours, &theirs);
    }
}

fn add_row(report: &mut Report, s: &Settings, setup: &Setup, ours: &[Outcome], theirs: &[Latency]) {
    let latency = Latency::across(&ours.iter().map(|o| o.latency).collect::<Vec<_>>());
    let base = Latency::across(theirs);
    let missed: usize = ours.iter().map(|o| o.missed).sum();
    let duplicated: usize = ours.iter().map(|o| o.duplicated).sum();
    let reconnects: usize = ours.iter().map(|o| o.reconnects).sum();
    let write_rate = crate::stats::median(&ours.iter().map(|o| o.write_rate).collect::<Vec<_>>());
    let generator = crate::stats::median(
        &ours
            .iter()
            .map(|o| o.generator_us_per_delivery)
            .collect::<Vec<_>>(),
    );
    let push = Latency::across(&ours.iter().map(|o| o.push).collect::<Vec<_>>());
    let cpu = crate::stats::median(
        &ours
            .iter()
            .map(|o| o.cpu_us_per_delivery)
            .collect::<Vec<_>>(),
    );
    let who = match (setup.subscribers, setup.processes) {
        (1, _) => "1 subscriber".to_owned(),
        (n, 1) => format!("{} subscribers", thousands(n as u64)),
        (n, p) => format!("{} subscribers over {p} processes", thousands(n as u64)),
    };
    if missed > 0 || duplicated > 0 {
        report.violation(format!(
            "fan-out, {who}: {missed} deliveries missed, {duplicated} duplicated"
        ));
    }
    let mut ours_text = format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} ms; {missed} missed, {duplicated} dup; \
         server CPU {cpu:.1} µs/delivery",
        latency.p50, latency.p99, latency.max
    );
    if reconnects > 0 {
        ours_text.push_str(&format!("; {reconnects} stream errors (resumed)"));
    }
    if write_rate < 0.9 * f64::from(s.fanout_rate) {
        ours_text.push_str(&format!(
            "; writer held to {write_rate:.0} pushes/s (push p50 {:.1} / p99 {:.1} ms)",
            push.p50, push.p99
        ));
    }
    report.add(Row {
        scenario: format!(
            "3. Fan-out: {who}, {} single-row pushes/s for {:.0} s",
            s.fanout_rate,
            s.fanout_duration.as_secs_f64()
        ),
        syncline: ours_text,
        baseline: format!(
            "p50 {:.2} / p99 {:.2} / max {:.1} ms (LISTEN/NOTIFY)",
            base.p50, base.p99, base.max
        ),
        ratio: Some(latency.p99 / base.p99.max(0.001)),
        target: format!("p99 < {} ms; 0 missed, 0 dup", setup.target_p99_ms),
        met: Some(latency.p99 < setup.target_p99_ms && missed == 0 && duplicated == 0),
        figures: json!({
            "subscribers": setup.subscribers, "processes": setup.processes,
            "p50_ms": latency.p50, "p99_ms": latency.p99, "max_ms": latency.max,
            "deliveries": latency.count, "missed": missed, "duplicated": duplicated,
            "stream_errors": reconnects, "achieved_writes_per_s": write_rate,
            "server_cpu_us_per_delivery": cpu,
            "generator_cpu_us_per_delivery": generator,
            "push_p50_ms": push.p50, "push_p99_ms": push.p99,
            "baseline_p50_ms": base.p50, "baseline_p99_ms": base.p99, "baseline_max_ms": base.max,
        }),
    });
}

/// One run: subscribe everyone, write at the fixed rate, wait for the stragglers, count.
async fn syncline(servers: &[&Server], subscribers: usize, s: &Settings, tag: &str) -> Outcome {
    let mut writer = client::connect(servers[0].addr).await;
    let (_, start_token) = client::pull_all(&mut writer, COLLECTION, "", 1000, |_, _| {}).await;
    let planned = (f64::from(s.fanout_rate) * s.fanout_duration.as_secs_f64()).round() as usize;
    let cancel = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(subscribers.max(1));
    let (mut tasks, mut progress) = (Vec::new(), Vec::new());
    for (p, server) in servers.iter().enumerate() {
        let mine = (0..subscribers).filter(|k| k % servers.len() == p).count();
        let channels = client::channels_for(server.addr, mine).await;
        for k in 0..mine {
            let sub = Subscriber {
                client: client::client(channels[k / STREAMS_PER_CONNECTION].clone()),
                token: start_token.clone(),
                tag: tag.to_owned(),
                distinct: Arc::new(AtomicUsize::new(0)),
                cancel: cancel.clone(),
            };
            progress.push(sub.distinct.clone());
            tasks.push(tokio::spawn(sub.run(planned, ready_tx.clone())));
        }
    }
    drop(ready_tx);
    for _ in 0..subscribers {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .expect("every subscriber opens its stream within 120 s")
            .expect("a subscriber task ended before its stream opened");
    }
    let cpu = || servers.iter().map(|s| s.cpu_seconds()).sum::<f64>();
    let cpu_before = cpu();
    let generator_before = own_cpu_seconds();
    let (acks, pushes, write_elapsed) = write(&mut writer, tag, planned, s).await;
    let sent = acks.len();
    let deadline = Instant::now() + s.fanout_grace;
    while progress.iter().any(|d| d.load(Ordering::Relaxed) < sent) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_seconds = cpu() - cpu_before;
    let generator_seconds = own_cpu_seconds() - generator_before;
    cancel.cancel();
    let mut outcome = Outcome {
        write_rate: sent as f64 / write_elapsed.as_secs_f64(),
        push: Latency::of(pushes),
        ..Outcome::default()
    };
    let mut latencies = Vec::with_capacity(sent * subscribers);
    for t in tasks {
        let r = t.await.expect("subscriber task");
        outcome.reconnects += r.reconnects;
        outcome.missed += sent - r.got.distinct;
        outcome.duplicated += r.got.duplicated();
        latencies.extend(
            r.got
                .arrivals
                .iter()
                .map(|(seq, at)| at.saturating_duration_since(acks[*seq])),
        );
    }
    outcome.cpu_us_per_delivery = crate::server::micros_per(cpu_seconds, latencies.len());
    outcome.generator_us_per_delivery =
        crate::server::micros_per(generator_seconds, latencies.len());
    outcome.latency = Latency::of(latencies);
    eprintln!(
        "bench:   {subscribers} subscriber(s): {sent} writes at {:.0}/s, p99 {:.1} ms, {} missed, \
         server CPU {:.1} µs/delivery, generator {:.1} µs/delivery, push p50 {:.1} / p99 {:.1} ms",
        outcome.write_rate,
        outcome.latency.p99,
        outcome.missed,
        outcome.cpu_us_per_delivery,
        outcome.generator_us_per_delivery,
        outcome.push.p50,
        outcome.push.p99
    );
    outcome
}

/// User + system CPU time this process (the load generator) used so far, in seconds.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // As in `Server::cpu_seconds`: utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').expect("stat has a command name").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / crate::server::clock_ticks_per_second()
}

/// Pushes single-row batches at the configured rate (at most `planned`, and none after the
/// configured duration: a server that falls behind gets fewer); the acknowledgement times and
/// each push's round trip.
async fn write(
    client: &mut Client,
    tag: &str,
    planned: usize,
    s: &Settings,
) -> (Vec<Instant>, Vec<Duration>, Duration) {
    let period = Duration::from_secs_f64(1.0 / f64::from(s.fanout_rate));
    let start = tokio::time::Instant::now();
    let mut acks = Vec::with_capacity(planned);
    let mut pushes = Vec::with_capacity(planned);
    for seq in 0..planned {
        tokio::time::sleep_until(start + period.mul_f64(seq as f64)).await;
        if start.elapsed() >= s.fanout_duration {
            break;
        }
        let id = client::doc_id(tag, seq);
        let body = client::body(&id, seq, 1);
        let began = Instant::now();
        let conflicts = client::push(client, COLLECTION, vec![client::insert_row(id, body)]).await;
        assert!(conflicts.is_empty(), "fan-out writer: unexpected conflict");
        let now = Instant::now();
        pushes.push(now - began);
        acks.push(now);
    }
    (acks, pushes, start.elapsed())
}

/// One stream's reader.
struct Subscriber {
    client: Client,
    token: String,
    /// Ids of this run are `<tag><number>`.
    tag: String,
    /// Distinct documents received so far (watched by the run).
    distinct: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// What one subscriber received.
struct Received {
    got: Arrivals,
    reconnects: usize,
}

impl Subscriber {
    /// Streams until cancelled, resuming from the last checkpoint after an error (as a client
    /// must). Numbers at or above `capacity` are not expected.
    async fn run(mut self, capacity: usize, ready: mpsc::Sender<()>) -> Received {
        let mut got = Received {
            got: Arrivals::new(&self.tag, capacity, capacity, self.distinct.clone()),
            reconnects: 0,
        };
        let mut ready = Some(ready);
        'connect: while !self.cancel.is_cancelled() {
            let opened = tokio::select! {
                _ = self.cancel.cancelled() => break,
                opened = client::subscribe(&mut self.client, COLLECTION, &self.token) => opened,
            };
            let Ok(mut stream) = opened else {
                got.reconnects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if let Some(r) = ready.take() {
                let _ = r.send(()).await;
            }
            loop {
                let message = tokio::select! {
                    _ = self.cancel.cancelled() => break 'connect,
                    m = stream.message() => m,
                };
                let Ok(Some(message)) = message else {
                    got.reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'connect;
                };
                if let Some(Event::Changes(batch)) = message.event {
                    let now = Instant::now();
                    for d in batch.documents {
                        got.got.record(&d.id, now);
                    }
                    if let Some(c) = batch.checkpoint {
                        self.token = c.token;
                    }
                }
            }
        }
        got
    }
}

/// Raw LISTEN/NOTIFY at the same rate: pg_notify sent -> notification received.
async fn notify_baseline(db: &str, s: &Settings) -> Latency {
    let total = (f64::from(s.fanout_rate) * s.notify_duration.as_secs_f64()).round() as usize;
    let mut listener = PgListener::connect(db).await.expect("connect the listener");
    listener.listen(CHANNEL).await.expect("LISTEN");
    let receiver = tokio::spawn(async move {
        let mut arrivals = Vec::with_capacity(total);
        while arrivals.len() < total {
            let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("notification within 10 s")
                .expect("receive a notification");
            let seq: usize = n.payload().parse().expect("numeric payload");
            arrivals.push((seq, Instant::now()));
        }
        arrivals
    });
    let mut conn = sqlx::PgConnection::connect(db)
        .await
        .expect("connect the notifier");
    let period = Duration::from_secs_f64(1.0 / f64::from(s.fanout_rate));
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(total);
    for seq in 0..total {
        tokio::time::sleep_until(start + period.mul_f64(seq as f64)).await;
        sent.push(Instant::now());
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(seq.to_string())
            .execute(&mut conn)
            .await
            .expect("pg_notify");
    }
    let arrivals = receiver.await.expect("listener task");
    Latency::of(
        arrivals
            .iter()
            .map(|(seq, at)| at.saturating_duration_since(sent[*seq]))
            .collect(),
    )
}
