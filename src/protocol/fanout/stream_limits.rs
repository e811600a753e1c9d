//! Stream limits: per process (a semaphore) and per principal (a counted registry whose guards
//! give the slot back on drop, however the stream ends).
//!
//! The memory a principal's streams can pin is bounded by refusing the subscribe, not by making
//! streams wait: every stream may pin up to [`StreamLimits::STREAM_PINS_PAGES`] batches (one
//! queued in its channel, one ahead of it encoded in the HTTP/2 send buffer of a client that
//! stopped reading), each at most `page_bytes_max` plus the document that crosses it, so
//! `stream_bytes_per_principal_max` allows that many streams' worth. A batch shared by the
//! streams of one view (`super::shared`) counts at its full size for every stream holding it:
//! the sum is an upper bound of what they pin together, so sharing only makes the bound looser,
//! never wrong, and a slow consumer still pins at most its two batches (a shared batch keeps
//! either its documents or, once encoded, only its encoding). Refusing is decided once, costs nothing per batch, and
//! tells the client at once (RESOURCE_EXHAUSTED); waiting would let one stalled stream hold
//! back every other stream of its principal, indefinitely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::protocol::ProtocolError;

/// Open streams per principal subject.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Counts open streams.
#[derive(Debug)]
pub struct StreamLimits {
    process: Arc<Semaphore>,
    process_max: usize,
    per_principal: Counts,
    per_principal_max: usize,
    /// What one stream may pin, and what one principal's streams may pin in all.
    stream_bytes: usize,
    per_principal_bytes: usize,
}

/// Held for a stream's life.
#[derive(Debug)]
pub struct StreamSlot {
    _process: OwnedSemaphorePermit,
    principal: Option<(Counts, String)>,
}

impl StreamSlot {
    fn new(process: OwnedSemaphorePermit, principal: Option<(Counts, String)>) -> StreamSlot {
        metrics::gauge!(crate::telemetry::metrics::STREAMS_OPEN).increment(1.0);
        StreamSlot {
            _process: process,
            principal,
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::metrics::STREAMS_OPEN).decrement(1.0);
        if let Some((counts, subject)) = self.principal.take() {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&subject) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&subject);
                }
            }
        }
    }
}

impl StreamLimits {
    /// Batches a stream may pin at once (see the module documentation).
    pub const STREAM_PINS_PAGES: usize = 2;

    /// Limits of `process_max` streams in all, and per subject `per_principal_max` streams and
    /// `per_principal_bytes` of memory pinned, each stream counting for two batches of
    /// `batch_bytes` bytes (the largest batch).
    pub fn new(
        process_max: usize,
        per_principal_max: usize,
        batch_bytes: usize,
        per_principal_bytes: usize,
    ) -> StreamLimits {
        StreamLimits {
            process: Arc::new(Semaphore::new(process_max)),
            process_max,
            per_principal: Arc::default(),
            per_principal_max,
            stream_bytes: batch_bytes.saturating_mul(Self::STREAM_PINS_PAGES).max(1),
            per_principal_bytes,
        }
    }

    /// Takes a slot for `subject` (empty = anonymous: only the process limit applies).
    pub fn acquire(&self, subject: &str) -> Result<StreamSlot, ProtocolError> {
        let process = self.process.clone().try_acquire_owned().map_err(|_| {
            ProtocolError::resource_exhausted(format!(
                "this server already holds its limit of {} streams; retry later or elsewhere",
                self.process_max
            ))
        })?;
        if subject.is_empty() {
            return Ok(StreamSlot::new(process, None));
        }
        let mut counts = self.per_principal.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before inserting: a refused first stream must leave no entry behind.
        let n = counts.get(subject).copied().unwrap_or(0);
        if n >= self.per_principal_max {
            return Err(ProtocolError::resource_exhausted(format!(
                "you already hold the limit of {} streams on this server",
                self.per_principal_max
            )));
        }
        if (n + 1).saturating_mul(self.stream_bytes) > self.per_principal_bytes {
            return Err(ProtocolError::resource_exhausted(format!(
                "your {} streams on this server may already pin {} bytes, the limit for one \
                 principal (stream_bytes_per_principal_max); close one first",
                n,
                n.saturating_mul(self.stream_bytes)
            )));
        }
        counts.insert(subject.to_owned(), n + 1);
        Ok(StreamSlot::new(
            process,
            Some((self.per_principal.clone(), subject.to_owned())),
        ))
    }

    /// Streams currently open in this process.
    pub fn open(&self) -> usize {
        self.process_max - self.process.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_per_process_and_per_principal_and_free_on_drop() {
        let limits = StreamLimits::new(3, 2, 1, usize::MAX);
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        assert!(matches!(
            limits.acquire("a"),
            Err(ProtocolError {
                kind: crate::protocol::Kind::ResourceExhausted,
                ..
            })
        ));
        let _b = limits.acquire("b").unwrap();
        assert!(limits.acquire("c").is_err(), "process limit");
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.acquire("a").unwrap();
    }

    #[test]
    fn a_principal_may_pin_only_so_many_bytes() {
        // Each stream counts for two pages of 100 bytes: 450 bytes allow two streams.
        let limits = StreamLimits::new(10, 10, 100, 450);
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        let err = limits.acquire("a").unwrap_err();
        assert!(
            err.kind == crate::protocol::Kind::ResourceExhausted
                && err.message.contains("stream_bytes_per_principal_max"),
            "{err:?}"
        );
        let _b = limits.acquire("b").unwrap();
        let _anonymous: Vec<_> = (0..5).map(|_| limits.acquire("").unwrap()).collect();
        drop(a1);
        let _a3 = limits.acquire("a").unwrap();
    }
}
