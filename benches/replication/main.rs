//! The replication benchmark: the real `syncline` binary on a real PostgreSQL, driven by a
//! load generator on the generated gRPC client, every figure paired with what PostgreSQL
//! itself does for the same work, measured in alternation (A B A B ...).
//!
//!   cargo bench --bench replication        full sizes; target/bench/report.{md,json}
//!   cargo test --bench replication         smoke run: tiny sizes, correctness checks only
//!
//! Without `--bench` (how `cargo test` runs it) the smoke run uses the test cluster in
//! `TEST_DATABASE_ADMIN_URL` when set, else its own; with `--bench` it always starts its own
//! cluster (`scripts/pg-cluster.sh`, fsync off) on `BENCH_PG_PORT` (55460). Sizes: see
//! `settings.rs` (`BENCH_DOCS`, `BENCH_SUBSCRIBERS`, `BENCH_SCALE_DOCS`, `BENCH_ONLY`...).

mod abuse;
mod arrivals;
mod attachments;
mod client;
mod cluster;
mod compression;
mod fanout;
mod idle;
mod import;
mod initial_sync;
mod load;
mod node;
mod owners;
mod plans;
mod probe;
mod push;
mod reconcile;
mod report;
mod scaling;
mod selective;
mod server;
mod settings;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use cluster::Cluster;
use report::{Header, Report};
use settings::Settings;

/// What every scenario needs.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub cluster: &'a Cluster,
    /// Server configurations and logs.
    pub work: PathBuf,
}

fn main() {
    let smoke = !std::env::args().skip(1).any(|a| a == "--bench");
    let settings = Settings::from_env(smoke);
    let out = output_dir(smoke);
    let work = out.join("logs");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create the log directory");
    eprintln!("bench: {}", settings.describe());

    let started = Instant::now();
    let cluster = Cluster::open(smoke, settings.pg_port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ctx = Ctx {
        settings: &settings,
        cluster: &cluster,
        work,
    };
    let (report, postgres) = runtime.block_on(async {
        let report = tokio::select! {
            report = run_all(&ctx) => report,
            _ = tokio::signal::ctrl_c() => panic!("interrupted"),
        };
        let postgres = cluster.server_version().await;
        cluster.drop_databases().await;
        (report, postgres)
    });
    drop(runtime);
    drop(cluster);

    let mode = if smoke { "smoke run" } else { "full run" };
    let header = Header::new(mode, postgres, settings.describe(), started.elapsed());
    let path = report.write(&header, &out);
    println!("{}", report.markdown(&header));
    eprintln!("bench: report written to {}", path.display());
    if !report.violations.is_empty() {
        eprintln!(
            "bench: FAILED: {} correctness violation(s)",
            report.violations.len()
        );
        std::process::exit(1);
    }
}

/// Every selected scenario, in order; servers stop as each scenario ends.
async fn run_all(ctx: &Ctx<'_>) -> Report {
    let mut report = Report::default();
    let s = ctx.settings;
    if s.runs("sync") {
        phase("1. initial sync");
        initial_sync::run(ctx, &mut report).await;
    }
    if s.runs("compression") {
        phase("1b. initial sync: wire bytes with and without compression");
        compression::run(ctx, &mut report).await;
    }
    if s.runs("push") {
        phase("2. push throughput");
        push::run(ctx, &mut report).await;
    }
    if s.runs("fanout") {
        phase("3. fan-out latency");
        fanout::run(ctx, &mut report).await;
    }
    if s.runs("idle") {
        phase("4. idle streams");
        idle::run(ctx, &mut report).await;
    }
    if s.runs("scale") {
        phase("5. scaling with size");
        scaling::run(ctx, &mut report).await;
    }
    if s.runs("owners") {
        phase("5. scaling by owners");
        owners::run(ctx, &mut report).await;
    }
    if s.runs("abuse") {
        phase("6. abuse: peak memory under a hostile client's worst cases");
        abuse::run(ctx, &mut report).await;
    }
    if s.runs("import") {
        phase("7. import from a JSONL file");
        import::run(ctx, &mut report).await;
    }
    if s.runs("reconcile") {
        phase("8. reconcile after a purge vs a full re-download");
        reconcile::run(ctx, &mut report).await;
    }
    if s.runs("plans") {
        phase("9. plan stability: just loaded vs analyzed");
        plans::run(ctx, &mut report).await;
    }
    if s.runs("attachments") {
        phase("10. attachments: blob upload and download throughput");
        attachments::run(ctx, &mut report).await;
    }
    if s.runs("selective") {
        phase("12. selective sync: a 1% selector's initial sync, filtered fan-out");
        selective::run(ctx, &mut report).await;
    }
    if s.runs("node") {
        phase("11. Node family: the TypeScript client against node-postgres");
        node::run(ctx, &mut report).await;
    }
    report.notes.push(
        "Each figure is the median of the rounds; Syncline and its baseline alternate \
         (A B A B). Everything (PostgreSQL, server, load generator) shares the same cores."
            .into(),
    );
    report
}

fn phase(name: &str) {
    eprintln!("bench: == {name}");
}

/// `target/bench` (`target/bench/smoke` for the smoke run), under `CARGO_TARGET_DIR` if set.
fn output_dir(smoke: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bench = target.join("bench");
    if smoke { bench.join("smoke") } else { bench }
}
