//! Scenario 11: the Node family (issue 17). The TypeScript client's own path (the package's
//! exported client on its Node gRPC transport, no RxDB storage) against node-postgres doing
//! the same work on the same table, both driven from one Node process
//! (`clients/typescript/bench/`, compiled here with `npm run build:test`), which prints its
//! per-round figures as JSON. Steps: push sequential and `push_clients` in flight, pull all,
//! initial sync (uncompressed, as node-postgres reads; and again with gzip responses, the
//! plugin's default), single-document compare-and-set, push-to-live-stream latency.
//!
//! `cargo test` (the smoke run) leaves it to `scripts/test-typescript.sh`, which runs the same
//! steps at tiny sizes, unless `BENCH_ONLY` names `node`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::json;

use crate::Ctx;
use crate::report::{Report, Row, rate, thousands};
use crate::server::{Server, ServerOptions};
use crate::stats::{Latency, median};

/// The collections `bench/config.ts` uses (`COLLECTIONS`).
const COLLECTIONS: [&str; 5] = [
    "node_push",
    "node_pull",
    "node_sync",
    "node_cas",
    "node_live",
];
/// Issue 17 target 3: initial sync into the client at this fraction of node-postgres or more.
const SYNC_TARGET: f64 = 0.7;
/// Issue 17 target 2: single-document push and push-to-stream p50 within this factor.
const LATENCY_TARGET: f64 = 1.5;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeResult {
    node: String,
    steps: Vec<Step>,
    violations: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    name: String,
    label: String,
    count: usize,
    syncline: Vec<Round>,
    baseline: Vec<Round>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Round {
    rate: f64,
    latency: Option<RoundLatency>,
    client_cpu_micros_per_doc: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct RoundLatency {
    p50: f64,
    p99: f64,
    max: f64,
    count: usize,
}

/// The medians of one side of a step.
struct Side {
    rate: f64,
    cpu: f64,
    latency: Option<Latency>,
}

impl Side {
    fn of(rounds: &[Round]) -> Side {
        let rates: Vec<f64> = rounds.iter().map(|r| r.rate).collect();
        let cpu: Vec<f64> = rounds.iter().map(|r| r.client_cpu_micros_per_doc).collect();
        let latencies: Vec<Latency> = rounds
            .iter()
            .filter_map(|r| r.latency)
            .map(|l| Latency {
                p50: l.p50,
                p99: l.p99,
                max: l.max,
                count: l.count,
            })
            .collect();
        Side {
            rate: median(&rates),
            cpu: median(&cpu),
            latency: (!latencies.is_empty()).then(|| Latency::across(&latencies)),
        }
    }

    fn text(&self, unit: &str) -> String {
        let cpu = format!("client CPU {:.1} µs/{unit}", self.cpu);
        match self.latency {
            Some(l) => format!(
                "p50 {:.2} / p99 {:.2} ms; {} /s; {cpu}",
                l.p50,
                l.p99,
                thousands(self.rate.round() as u64)
            ),
            None => format!("{}; {cpu}", rate(self.rate)),
        }
    }
}

pub async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    let s = ctx.settings;
    let named = s
        .only
        .as_ref()
        .is_some_and(|only| only.iter().any(|o| o == "node"));
    if s.smoke && !named {
        report
            .notes
            .push("11. Node family: smoke-tested by scripts/test-typescript.sh".into());
        return;
    }
    let dir = typescript_dir();
    build(&dir);
    let db = ctx.cluster.fresh_database("node").await;
    let server = Server::start(&db, &ServerOptions::new(&COLLECTIONS), &ctx.work, "node").await;
    let mut config = json!({
        "url": format!("http://{}", server.addr),
        "databaseUrl": db,
        "rounds": s.rounds,
        "pushDocs": s.node_push_docs,
        "pushBatch": s.push_batch,
        "pushInFlight": s.push_clients,
        "pullDocs": s.node_pull_docs,
        "syncDocs": s.sync_docs,
        "pullPage": 1000,
        "casSamples": s.node_samples,
        "liveSamples": s.node_samples,
        "pullAhead": s.node_pull_ahead,
        "pullDecoder": s.node_pull_decoder,
        "responseCompression": s.node_response_compression,
        "unaryTransport": s.node_unary,
    });
    if let Some(steps) = &s.node_steps {
        config["only"] = json!(steps);
    }
    let cpu_before = server.cpu_seconds();
    let result = spawn(&dir, &config.to_string()).await;
    eprintln!(
        "bench: node family: server CPU {:.1} s over the whole Node run",
        server.cpu_seconds() - cpu_before
    );
    for v in result.violations {
        report.violation(format!("node: {v}"));
    }
    for step in &result.steps {
        add_row(report, step, &result.node);
    }
}

fn add_row(report: &mut Report, step: &Step, node: &str) {
    let ours = Side::of(&step.syncline);
    let theirs = Side::of(&step.baseline);
    let latency = ours.latency.zip(theirs.latency);
    let (ratio, target, met) = match (step.name.as_str(), latency) {
        ("cas" | "live", Some((o, t))) => {
            let ratio = o.p50 / t.p50;
            (
                ratio,
                format!("p50 <= {LATENCY_TARGET}x"),
                Some(ratio <= LATENCY_TARGET),
            )
        }
        ("sync", _) => {
            let ratio = ours.rate / theirs.rate;
            (
                ratio,
                format!(">= {SYNC_TARGET}"),
                Some(ratio >= SYNC_TARGET),
            )
        }
        _ => (ours.rate / theirs.rate, "—".to_owned(), None),
    };
    let (what, unit) = if latency.is_some() {
        (format!("{} calls", thousands(step.count as u64)), "call")
    } else {
        (
            format!("{} docs (~300 B)", thousands(step.count as u64)),
            "doc",
        )
    };
    report.add(Row {
        scenario: format!("11. Node ({node}): {}, {what}", step.label),
        syncline: ours.text(unit),
        baseline: format!("{} (node-postgres)", theirs.text(unit)),
        ratio: Some(ratio),
        target,
        met,
        figures: json!({
            "step": step.name,
            "count": step.count,
            "syncline_rate": ours.rate, "baseline_rate": theirs.rate,
            "syncline_client_cpu_us": ours.cpu, "baseline_client_cpu_us": theirs.cpu,
            "syncline_p50_ms": ours.latency.map(|l| l.p50),
            "syncline_p99_ms": ours.latency.map(|l| l.p99),
            "baseline_p50_ms": theirs.latency.map(|l| l.p50),
            "baseline_p99_ms": theirs.latency.map(|l| l.p99),
        }),
    });
}

fn typescript_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/typescript")
}

/// Installs the client's packages when missing and compiles it with the benchmark.
fn build(dir: &Path) {
    if !dir.join("node_modules").is_dir() {
        eprintln!("bench: npm ci (clients/typescript)");
        run_tool(dir, "npm", &["ci", "--no-audit", "--no-fund"]);
    }
    run_tool(dir, "npm", &["run", "--silent", "build:test"]);
}

fn run_tool(dir: &Path, tool: &str, args: &[&str]) {
    let status = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {tool} (Node.js and npm are needed): {e}"));
    assert!(
        status.success(),
        "{tool} {} failed in {}",
        args.join(" "),
        dir.display()
    );
}

/// Runs the Node benchmark (extra `node` flags from `BENCH_NODE_ARGS`, e.g. `--cpu-prof`) and
/// reads its result.
async fn spawn(dir: &Path, config: &str) -> NodeResult {
    let extra = std::env::var("BENCH_NODE_ARGS").unwrap_or_default();
    let mut command = Command::new("node");
    command
        .args(extra.split_whitespace())
        .arg("build/bench/main.js")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The server runs on this runtime's threads meanwhile: wait off them.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the Node benchmark's waiting thread")
        .expect("start node (Node.js is needed for scenario 11)");
    assert!(
        output.status.success(),
        "the Node benchmark failed ({})",
        output.status
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the Node benchmark printed no result ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
