//! Makes a stuck visibility horizon visible. Readers return only writes of transactions older
//! than the oldest one still running (docs/architecture.md), so a long-running or prepared
//! transaction anywhere in the cluster delays every delivery while health stays SERVING.
//! This task samples the horizon and exports how long it has stood still, and how long a
//! commit this process heard of has waited to become readable; both log a warning past
//! `horizon_warn_seconds`. Sampling needs no privileges (no `pg_stat_activity`), so the age
//! is measured from the first sample that saw the horizon where it is: a lower bound, within
//! one interval. A snapshot's xmax is one past the latest *completed* transaction, so an old
//! transaction counts as holding the horizon once a newer one has finished, that is, as soon
//! as it delays anything.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::fanout::Hub;
use crate::store::postgres::PgStore;
use crate::telemetry::metrics::{HORIZON_AGE_SECONDS, PENDING_COMMIT_AGE_SECONDS};

/// How long the horizon has stood still, and how long a heard-of commit has been pending,
/// from successive samples.
#[derive(Debug, Default)]
pub struct HorizonWatch {
    /// The horizon last seen, and since when, while some transaction was running.
    held: Option<(i64, Instant)>,
    /// The heard-of commit being waited for, and since when.
    pending: Option<(i64, Instant)>,
}

/// One sample's verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HorizonAges {
    /// How long the horizon has been held back by the same running transaction.
    pub horizon: Duration,
    /// How long a commit this process heard of has not been readable in order.
    pub pending_commit: Duration,
}

impl HorizonWatch {
    /// Takes a sample: the snapshot's `xmin` and `xmax`, and the newest transaction this
    /// process heard of (0 if none).
    pub fn observe(&mut self, xmin: i64, xmax: i64, signalled: i64, now: Instant) -> HorizonAges {
        self.held = match self.held {
            _ if xmin >= xmax => None,
            Some((seen, since)) if seen == xmin => Some((seen, since)),
            _ => Some((xmin, now)),
        };
        self.pending = match self.pending {
            Some((tx, since)) if tx >= xmin => Some((tx, since)),
            _ if signalled >= xmin => Some((signalled, now)),
            _ => None,
        };
        let age = |s: Option<(i64, Instant)>| s.map_or(Duration::ZERO, |(_, t)| now - t);
        HorizonAges {
            horizon: age(self.held),
            pending_commit: age(self.pending),
        }
    }
}

/// Samples every `interval` until `stop`, publishing the gauges and warning once per episode
/// past `warn_after`.
pub async fn watch(
    store: PgStore,
    hub: Hub,
    collections: Vec<String>,
    interval: Duration,
    warn_after: Duration,
    stop: CancellationToken,
) {
    let mut watch = HorizonWatch::default();
    let mut warned = false;
    loop {
        if let Ok((xmin, xmax)) = store.snapshot_bounds().await {
            let signalled = collections.iter().map(|c| hub.latest(c)).max().unwrap_or(0);
            let ages = watch.observe(xmin, xmax, signalled, Instant::now());
            metrics::gauge!(HORIZON_AGE_SECONDS).set(ages.horizon.as_secs_f64());
            metrics::gauge!(PENDING_COMMIT_AGE_SECONDS).set(ages.pending_commit.as_secs_f64());
            let stuck = ages.horizon.max(ages.pending_commit);
            if stuck >= warn_after && !warned {
                tracing::warn!(
                    horizon_age_seconds = ages.horizon.as_secs(),
                    pending_commit_age_seconds = ages.pending_commit.as_secs(),
                    horizon = xmin,
                    "a long-running or prepared transaction holds back delivery of every \
                     change (see pg_stat_activity / pg_prepared_xacts for transaction {xmin})"
                );
            }
            warned = stuck >= warn_after;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_ages_while_the_same_transaction_holds_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = HorizonWatch::default();
        assert_eq!(w.observe(100, 100, 0, t0).horizon, Duration::ZERO);
        assert_eq!(w.observe(100, 105, 0, t0 + s(1)).horizon, Duration::ZERO);
        assert_eq!(w.observe(100, 120, 0, t0 + s(4)).horizon, s(3));
        // It moved: a new episode starts.
        assert_eq!(w.observe(101, 130, 0, t0 + s(5)).horizon, Duration::ZERO);
        // Nothing running: nothing held.
        assert_eq!(w.observe(140, 140, 0, t0 + s(9)).horizon, Duration::ZERO);
    }

    #[test]
    fn a_heard_of_commit_ages_until_the_horizon_passes_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = HorizonWatch::default();
        assert_eq!(w.observe(100, 110, 99, t0).pending_commit, Duration::ZERO);
        assert_eq!(
            w.observe(100, 110, 105, t0 + s(1)).pending_commit,
            Duration::ZERO
        );
        // Still pending, and a newer signal does not restart the clock.
        assert_eq!(w.observe(100, 120, 115, t0 + s(3)).pending_commit, s(2));
        // The horizon passed 105: the next pending one (115) starts its own clock.
        assert_eq!(
            w.observe(110, 120, 115, t0 + s(4)).pending_commit,
            Duration::ZERO
        );
        assert_eq!(
            w.observe(116, 120, 115, t0 + s(6)).pending_commit,
            Duration::ZERO
        );
    }
}
