//! The result table: Markdown on stdout and in `target/bench/report.md`, JSON beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub syncline: String,
    pub baseline: String,
    /// Syncline / baseline (or large / small for scaling).
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
    /// The raw figures, for machines.
    pub figures: Value,
}

/// Everything a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Correctness failures (missed or duplicated documents, wrong counts): the run fails.
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn add(&mut self, row: Row) {
        eprintln!(
            "bench: {} | {} | {} | {} | {}",
            row.scenario,
            row.syncline,
            row.baseline,
            ratio_text(row.ratio),
            met_text(row.met)
        );
        self.rows.push(row);
    }

    /// Records a correctness failure.
    pub fn violation(&mut self, what: String) {
        eprintln!("bench: VIOLATION: {what}");
        self.violations.push(what);
    }

    /// Checks a count; a mismatch is a violation.
    pub fn expect_eq(&mut self, what: &str, got: usize, want: usize) {
        if got != want {
            self.violation(format!("{what}: got {got}, expected {want}"));
        }
    }

    /// The Markdown document.
    pub fn markdown(&self, header: &Header) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## Syncline benchmark ({})\n", header.mode);
        let _ = writeln!(md, "- Machine: {}", header.machine);
        let _ = writeln!(md, "- PostgreSQL: {}", header.postgres);
        let _ = writeln!(md, "- Settings: {}", header.settings);
        let _ = writeln!(
            md,
            "- Run: {} (total {:.0} s)\n",
            header.finished, header.elapsed_seconds
        );
        md.push_str("| Scenario | Syncline | PostgreSQL baseline | Ratio | Target | Met |\n");
        md.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.syncline,
                r.baseline,
                ratio_text(r.ratio),
                r.target,
                met_text(r.met)
            );
        }
        if !self.notes.is_empty() {
            md.push('\n');
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        if !self.violations.is_empty() {
            md.push_str("\n**Correctness violations:**\n\n");
            for v in &self.violations {
                let _ = writeln!(md, "- {v}");
            }
        }
        md
    }

    /// The JSON document.
    pub fn json(&self, header: &Header) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario,
                    "syncline": r.syncline,
                    "baseline": r.baseline,
                    "ratio": r.ratio,
                    "target": r.target,
                    "met": r.met,
                    "figures": r.figures,
                })
            })
            .collect();
        json!({
            "mode": header.mode,
            "machine": header.machine,
            "postgres": header.postgres,
            "settings": header.settings,
            "finished": header.finished,
            "elapsed_seconds": header.elapsed_seconds,
            "rows": rows,
            "notes": self.notes,
            "violations": self.violations,
        })
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub fn write(&self, header: &Header, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("create the report directory");
        let md = dir.join("report.md");
        // Replaced, never written through: a target directory seeded with hard links shares
        // its files with another one, whose report would otherwise be overwritten.
        for name in ["report.md", "report.json"] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        std::fs::write(&md, self.markdown(header)).expect("write report.md");
        let text = serde_json::to_string_pretty(&self.json(header)).expect("encode the report");
        std::fs::write(dir.join("report.json"), text).expect("write report.json");
        md
    }
}

/// What the table ran on.
#[derive(Debug, Clone)]
pub struct Header {
    pub mode: String,
    pub machine: String,
    pub postgres: String,
    pub settings: String,
    pub finished: String,
    pub elapsed_seconds: f64,
}

impl Header {
    pub fn new(mode: &str, postgres: String, settings: String, elapsed: Duration) -> Header {
        Header {
            mode: mode.to_owned(),
            machine: machine(),
            postgres,
            settings,
            finished: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            elapsed_seconds: elapsed.as_secs_f64(),
        }
    }
}

/// `nproc`, the CPU model and the RAM, from the system.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    format!(
        "{cpus} CPU(s) (nproc), {model}, {:.1} GiB RAM",
        ram_kib / 1024.0 / 1024.0
    )
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or("—".to_owned(), |r| format!("{r:.2}"))
}

fn met_text(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

/// A rate as "123,456 docs/s".
pub fn rate(docs_per_second: f64) -> String {
    format!("{} docs/s", thousands(docs_per_second.round() as u64))
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
