//! Stream limits: per process (a semaphore) and per principal (a counted registry whose guards
//! give the slot back on drop, however the stream ends).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ProtocolError;

/// Open streams per principal subject.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Counts open streams.
#[derive(Debug)]
pub struct StreamLimits {
    process: Arc<Semaphore>,
    process_max: usize,
    per_principal: Counts,
    per_principal_max: usize,
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
    /// Limits of `process_max` streams in all and `per_principal_max` per subject.
    pub fn new(process_max: usize, per_principal_max: usize) -> StreamLimits {
        StreamLimits {
            process: Arc::new(Semaphore::new(process_max)),
            process_max,
            per_principal: Arc::default(),
            per_principal_max,
        }
    }

    /// Takes a slot for `subject` (empty = anonymous: only the process limit applies).
    pub fn acquire(&self, subject: &str) -> Result<StreamSlot, ProtocolError> {
        let process = self.process.clone().try_acquire_owned().map_err(|_| {
            ProtocolError::ResourceExhausted(format!(
                "this server already holds its limit of {} streams; retry later or elsewhere",
                self.process_max
            ))
        })?;
        if subject.is_empty() {
            return Ok(StreamSlot::new(process, None));
        }
        let mut counts = self.per_principal.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(subject.to_owned()).or_default();
        if *n >= self.per_principal_max {
            return Err(ProtocolError::ResourceExhausted(format!(
                "you already hold the limit of {} streams on this server",
                self.per_principal_max
            )));
        }
        *n += 1;
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
        let limits = StreamLimits::new(3, 2);
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        assert!(matches!(
            limits.acquire("a"),
            Err(ProtocolError::ResourceExhausted(_))
        ));
        let _b = limits.acquire("b").unwrap();
        assert!(limits.acquire("c").is_err(), "process limit");
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.acquire("a").unwrap();
    }
}
