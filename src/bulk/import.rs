//! `syncline import`: JSON lines into a collection, in large batches, each one transaction
//! written by the push statement (positions under the visibility horizon, revisions, the
//! NOTIFY that wakes live streams). A thread reads and validates the next batch while the
//! current one is written; a bad line stops the import before its batch is written, and the
//! batches before it stay committed, so running the same command again resumes: documents
//! already in the line's state are not rewritten.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::progress::{Done, Progress};
use super::{BulkError, open};
use crate::config::Config;
use crate::protocol::import::{self, BatchCounts, ImportRow, OnConflict};
use crate::protocol::{Collection, Limits, ProtocolError, Reason};
use crate::store::{PushError, Store};

/// What to do with a stored document that differs from its line (`--on-conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnConflictArg {
    /// Write the line as the document's next revision (the file is the truth).
    #[default]
    Overwrite,
    /// Leave the stored document as it is.
    Keep,
    /// Stop the import (nothing of the batch is written).
    Fail,
}

/// The flags of `syncline import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The collection (declared in the configuration).
    #[arg(long)]
    pub collection: String,
    /// JSON lines, one document per line; `-` reads standard input.
    pub file: PathBuf,
    /// Owner of new documents whose line has no `_owner` (default: none, as for an
    /// unauthenticated service).
    #[arg(long, default_value = "")]
    pub owner: String,
    /// Most documents per batch (one transaction each).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_rows: u32,
    /// Most input mebibytes per batch.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_mib: u32,
    /// A stored document in another state than its line: overwrite it (a new revision),
    /// keep it, or fail.
    #[arg(long, value_enum, default_value_t = OnConflictArg::Overwrite)]
    pub on_conflict: OnConflictArg,
    /// Seconds between plain progress lines (when stderr is not a terminal).
    #[arg(long, default_value_t = 5)]
    pub progress_seconds: u64,
    /// Check every line and write nothing (the database is still read for the collection).
    #[arg(long)]
    pub check: bool,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportSummary {
    /// Lines read (blank lines included).
    pub lines: u64,
    /// What the batches did.
    pub counts: BatchCounts,
}

/// A validated batch from the reader.
struct Batch {
    rows: Vec<ImportRow>,
    /// The last line it covers.
    last_line: u64,
    /// Input bytes read through its last line.
    bytes: u64,
}

/// Why the reader stopped early.
struct Stop {
    message: String,
    /// The first line of the batch that was not written.
    batch_first_line: u64,
}

/// Runs the import; prints progress and a summary on stderr.
pub async fn run(config: &Config, args: &ImportArgs) -> Result<ImportSummary, BulkError> {
    if let Some(problem) = owner_problem(&args.owner, config.owner_bytes_max) {
        return Err(BulkError::Usage(format!("--owner: {problem}")));
    }
    let (store, collection) = open(config, &args.collection).await?;
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = if args.file.as_os_str() == "-"
    {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| BulkError::Usage(format!("{}: {e}", args.file.display())))?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (Box::new(file), size)
    };
    let on_conflict = match args.on_conflict {
        OnConflictArg::Overwrite => OnConflict::Overwrite,
        OnConflictArg::Keep => OnConflict::Keep,
        OnConflictArg::Fail => OnConflict::Fail,
    };
    let reader = Reader {
        collection: collection.clone(),
        limits: Limits::from_config(config),
        owner: args.owner.clone(),
        batch_rows: args.batch_rows as usize,
        batch_bytes: (args.batch_mib as usize) << 20,
    };
    // One batch in flight while the next is read: bounded memory, reading overlaps writing.
    let (sender, mut batches) = mpsc::channel(1);
    let reading = std::thread::spawn(move || reader.run(input, sender));

    let mut progress = Progress::new(total_bytes, Duration::from_secs(args.progress_seconds));
    let mut done = Done::default();
    let result = loop {
        let Some(next) = batches.recv().await else {
            break Ok(());
        };
        let batch = match next {
            Ok(batch) => batch,
            Err(stop) => break Err(stopped(&stop, &done, args.check)),
        };
        let written = if args.check {
            Ok(BatchCounts::default())
        } else {
            write_batch(&store, &collection, batch.rows, on_conflict).await
        };
        match written {
            Ok(counts) => {
                done.counts.add(counts);
                done.lines = batch.last_line;
                done.bytes = batch.bytes;
                progress.update(&done);
            }
            Err(e) => {
                let first = done.lines + 1;
                break Err(match e {
                    BulkError::Input(m) => BulkError::Input(format!(
                        "{m}\nnothing from line {first} on was written; {}",
                        resume_hint(done.lines)
                    )),
                    other => BulkError::Database(format!(
                        "{other}\nthe batch from line {first} was not written; {}",
                        resume_hint(done.lines)
                    )),
                });
            }
        }
    };
    drop(batches);
    if done.counts.created + done.counts.updated > 0 {
        // Fresh statistics for the rows just written, before the servers' next plans.
        if let Err(e) = store.analyze_documents().await {
            tracing::warn!(error = %e, "ANALYZE after the import failed");
        }
    }
    if result.is_ok() {
        // It closed the channel: it has returned.
        let _ = reading.join();
    }
    // Otherwise it may be blocked reading a pipe that never ends; it stops at its next send
    // (the channel is closed) or with the process.
    store.close().await;
    let outcome = match (&result, args.check) {
        (Ok(()), true) => "checked, nothing written",
        (Ok(()), false) => "done",
        (Err(_), _) => "stopped",
    };
    progress.finish(&done, outcome);
    result.map(|()| ImportSummary {
        lines: done.lines,
        counts: done.counts,
    })
}

fn stopped(stop: &Stop, done: &Done, check: bool) -> BulkError {
    if check {
        return BulkError::Input(format!("{}\nnothing was written (--check)", stop.message));
    }
    BulkError::Input(format!(
        "{}\nnothing of its batch (from line {}) was written; {}",
        stop.message,
        stop.batch_first_line,
        resume_hint(done.lines)
    ))
}

fn resume_hint(committed_lines: u64) -> String {
    if committed_lines == 0 {
        "nothing was imported".into()
    } else {
        format!(
            "lines 1-{committed_lines} are imported; fix the input and run the same command \
             again (documents already imported are not rewritten)"
        )
    }
}

/// `--owner` as a push would accept it.
fn owner_problem(owner: &str, bytes_max: usize) -> Option<String> {
    if owner.len() > bytes_max {
        Some(format!(
            "{} bytes, over the limit of {bytes_max}",
            owner.len()
        ))
    } else if owner.contains('\0') {
        Some("must not contain NUL".into())
    } else {
        None
    }
}

/// Writes one batch with the push statement, deciding it with [`import::plan_import`].
async fn write_batch<S: Store>(
    store: &S,
    collection: &Collection,
    rows: Vec<ImportRow>,
    on_conflict: OnConflict,
) -> Result<BatchCounts, BulkError> {
    let rows = import::last_per_id(rows);
    if rows.is_empty() {
        return Ok(BatchCounts::default());
    }
    let targets = import::targets(&rows);
    // The store may decide more than once (a retried transaction): the last decision is the
    // one committed.
    let counts = Mutex::new(BatchCounts::default());
    let outcome = store
        .apply_push(
            &collection.name,
            &targets,
            |current| {
                let (plan, c) = import::plan_import(&rows, current, on_conflict)?;
                if let Ok(mut counts) = counts.lock() {
                    *counts = c;
                }
                Ok::<_, ProtocolError>(plan)
            },
            None,
        )
        .await;
    match outcome {
        Ok(_) => Ok(counts.lock().map(|c| *c).unwrap_or_default()),
        Err(PushError::Refused(e)) => Err(BulkError::Input(e.to_string())),
        Err(PushError::Store(e)) => Err(BulkError::Database(e.to_string())),
        // Imports send no idempotency key.
        Err(PushError::KeyReused) => Err(BulkError::Database("idempotency key reused".into())),
    }
}

/// Reads lines and validates them into batches, on its own thread.
struct Reader {
    collection: Arc<Collection>,
    limits: Limits,
    owner: String,
    batch_rows: usize,
    batch_bytes: usize,
}

impl Reader {
    fn run(self, input: Box<dyn Read + Send>, out: mpsc::Sender<Result<Batch, Stop>>) {
        let mut input = BufReader::with_capacity(1 << 20, input);
        // A line holds a body, an id and reserved fields: bounded before it is held in memory.
        let line_max = self
            .limits
            .document_bytes_max
            .saturating_add(self.limits.owner_bytes_max)
            .saturating_add(4096);
        let (mut line_no, mut bytes) = (0u64, 0u64);
        let mut batch: Vec<ImportRow> = Vec::new();
        let (mut batch_first, mut batch_bytes) = (1u64, 0usize);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = match read_line(&mut input, &mut buf, line_max) {
                Ok(read) => read,
                Err(e) => {
                    let message = match e {
                        LineError::TooLong => format!(
                            "line {}: longer than {line_max} bytes; a document is at most {} \
                             bytes (document_bytes_max)",
                            line_no + 1,
                            self.limits.document_bytes_max
                        ),
                        LineError::Io(e) => format!("after line {line_no}: cannot read: {e}"),
                    };
                    let _ = out.blocking_send(Err(Stop {
                        message,
                        batch_first_line: batch_first,
                    }));
                    return;
                }
            };
            let Some(read) = read else { break };
            line_no += 1;
            bytes += read as u64;
            // A byte order mark (some Windows tools write one) is not part of the document.
            let text = match buf.strip_prefix(b"\xEF\xBB\xBF") {
                Some(rest) if line_no == 1 => rest,
                _ => &buf[..],
            };
            let parsed = std::str::from_utf8(text)
                .map_err(|_| {
                    ProtocolError::invalid(
                        Reason::InvalidDocument,
                        format!("line {line_no}"),
                        format!("line {line_no}: not valid UTF-8"),
                    )
                })
                .and_then(|text| {
                    if text.trim().is_empty() {
                        return Ok(None);
                    }
                    import::parse_line(&self.collection, &self.limits, line_no, text, &self.owner)
                        .map(Some)
                });
            match parsed {
                Ok(Some(row)) => {
                    batch_bytes += buf.len();
                    batch.push(row);
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = out.blocking_send(Err(Stop {
                        message: e.to_string(),
                        batch_first_line: batch_first,
                    }));
                    return;
                }
            }
            if batch.len() >= self.batch_rows || batch_bytes >= self.batch_bytes {
                let full = Batch {
                    rows: std::mem::take(&mut batch),
                    last_line: line_no,
                    bytes,
                };
                if out.blocking_send(Ok(full)).is_err() {
                    return;
                }
                (batch_first, batch_bytes) = (line_no + 1, 0);
            }
        }
        if !batch.is_empty() || line_no >= batch_first {
            let _ = out.blocking_send(Ok(Batch {
                rows: batch,
                last_line: line_no,
                bytes,
            }));
        }
    }
}

enum LineError {
    TooLong,
    Io(std::io::Error),
}

/// Reads one line into `buf` (without its `\n`), refusing one longer than `max` before holding
/// it. Returns the bytes consumed (line break included), or `None` at the end of the input.
fn read_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Option<usize>, LineError> {
    let mut consumed = 0usize;
    loop {
        let available = match input.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if available.is_empty() {
            return Ok((consumed > 0).then_some(consumed));
        }
        let (chunk, newline) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        if buf.len() + chunk.len() > max {
            return Err(LineError::TooLong);
        }
        buf.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(newline);
        input.consume(used);
        consumed += used;
        if newline {
            return Ok(Some(consumed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut input = BufReader::with_capacity(4, &b"ab\n\ncdefg\nlast"[..]);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        loop {
            buf.clear();
            match read_line(&mut input, &mut buf, 8) {
                Ok(Some(n)) => lines.push((String::from_utf8(buf.clone()).unwrap(), n)),
                Ok(None) => break,
                Err(_) => panic!("no line is too long"),
            }
        }
        assert_eq!(
            lines,
            [
                ("ab".to_owned(), 3),
                (String::new(), 1),
                ("cdefg".to_owned(), 6),
                ("last".to_owned(), 4)
            ]
        );
        let mut input = BufReader::with_capacity(4, &b"123456789\n"[..]);
        buf.clear();
        assert!(matches!(
            read_line(&mut input, &mut buf, 8),
            Err(LineError::TooLong)
        ));
    }
}
