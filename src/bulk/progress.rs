//! Import progress on stderr: a bar with rate and ETA on a terminal, plain lines every few
//! seconds otherwise (logs, CI), and one summary line at the end either way.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::protocol::import::BatchCounts;

/// Where an import stands: what has been committed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Lines read into committed batches.
    pub lines: u64,
    /// Input bytes of those lines.
    pub bytes: u64,
    /// What those batches did.
    pub counts: BatchCounts,
}

enum Style {
    Bar(ProgressBar),
    Plain { every: Duration, last: Instant },
}

/// The progress display of one import.
pub struct Progress {
    style: Style,
    total_bytes: Option<u64>,
    started: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal (by bytes of a file whose size is known, else a
    /// spinner), else plain lines at most every `every`.
    pub fn new(total_bytes: Option<u64>, every: Duration) -> Progress {
        let style = if std::io::stderr().is_terminal() {
            let bar = match total_bytes {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.enable_steady_tick(Duration::from_millis(200));
            Style::Bar(bar)
        } else {
            Style::Plain {
                every,
                last: Instant::now(),
            }
        };
        Progress {
            style,
            total_bytes,
            started: Instant::now(),
        }
    }

    /// Shows a new committed state.
    pub fn update(&mut self, done: &Done) {
        let rate = self.rate(done.lines);
        match &mut self.style {
            Style::Bar(bar) => {
                bar.set_position(done.bytes);
                bar.set_message(format!("{} lines, {rate:.0} lines/s", done.lines));
            }
            Style::Plain { every, last } => {
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    let share = match self.total_bytes {
                        Some(total) if total > 0 => {
                            format!(" ({:.1}%)", done.bytes as f64 * 100.0 / total as f64)
                        }
                        _ => String::new(),
                    };
                    eprintln!(
                        "import: {} lines{share}, {rate:.0} lines/s, {}",
                        done.lines,
                        counts_text(&done.counts)
                    );
                }
            }
        }
    }

    /// Clears the bar and prints the summary line.
    pub fn finish(&self, done: &Done, outcome: &str) {
        if let Style::Bar(bar) = &self.style {
            bar.finish_and_clear();
        }
        eprintln!(
            "import: {outcome}: {} lines in {:.1} s ({:.0} lines/s), {}",
            done.lines,
            self.started.elapsed().as_secs_f64(),
            self.rate(done.lines),
            counts_text(&done.counts)
        );
    }

    fn rate(&self, lines: u64) -> f64 {
        lines as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

/// `created 3, updated 1, unchanged 5, kept 0`.
fn counts_text(c: &BatchCounts) -> String {
    format!(
        "created {}, updated {}, unchanged {}, kept {}",
        c.created, c.updated, c.unchanged, c.kept
    )
}
