//! What a live-stream benchmark subscriber received: every delivery of a document of its run
//! (ids `<tag><number>`), duplicates included, and how many distinct ones, published to the
//! run so that it can wait for the stragglers. Shared by the fan-out and selective scenarios.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One subscriber's deliveries.
pub struct Arrivals {
    tag: String,
    seen: Vec<bool>,
    /// (document number, arrival) for every delivery, duplicates included.
    pub arrivals: Vec<(usize, Instant)>,
    /// Distinct documents received.
    pub distinct: usize,
    /// `distinct`, for the run to watch.
    progress: Arc<AtomicUsize>,
}

impl Arrivals {
    /// Deliveries of documents numbered below `capacity` with ids starting with `tag`;
    /// `expected` sizes the list. The run watches `progress`.
    pub fn new(
        tag: &str,
        capacity: usize,
        expected: usize,
        progress: Arc<AtomicUsize>,
    ) -> Arrivals {
        Arrivals {
            tag: tag.to_owned(),
            seen: vec![false; capacity],
            arrivals: Vec::with_capacity(expected),
            distinct: 0,
            progress,
        }
    }

    /// Records a delivery of `id` at `now`; ids of other runs, or numbered beyond the
    /// capacity, are not this run's and are skipped.
    pub fn record(&mut self, id: &str, now: Instant) {
        let Some(seq) = id
            .strip_prefix(&self.tag)
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        let Some(seen) = self.seen.get_mut(seq) else {
            return;
        };
        self.arrivals.push((seq, now));
        if !*seen {
            *seen = true;
            self.distinct += 1;
            self.progress.store(self.distinct, Ordering::Relaxed);
        }
    }

    /// Deliveries beyond the first of each document.
    pub fn duplicated(&self) -> usize {
        self.arrivals.len() - self.distinct
    }
}
