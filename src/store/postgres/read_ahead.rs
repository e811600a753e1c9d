//! Read-ahead: after a full page, the next page is read in the background, so PostgreSQL works
//! on page N+1 while page N is encoded, sent and decoded. A client syncing a collection from
//! scratch then waits for the database about once, not once per page.
//!
//! A prepared page is served only if a read now would return the same rows. It is full (so it
//! ends at its last document's position, not at a horizon), every row in it was committed
//! below its snapshot's horizon, and every transaction that commits later has an id at or
//! above that horizon. So the rows after the same position are the same unless one of the
//! page's own documents was written again since: [`WRITTEN_SINCE_SQL`] lists what was written
//! since (one range scan of the change index, usually empty) for the store to compare.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::store::{ChangePage, PageLimit, Position, Resume, StoreError};

/// How long a prepared page waits for the pull that wants it.
const TTL: Duration = Duration::from_secs(5);

/// The ids written at or after the horizon before a prepared page ($2), at most $3 of them. Ordered
/// like the change index, so that the plan is a bounded range scan of it.
pub(super) const WRITTEN_SINCE_SQL: &str = "
SELECT id FROM syncline_documents
WHERE collection = $1 AND change_xid >= $2
ORDER BY change_xid, change_seq
LIMIT $3";

/// More writes than this since a prepared page was read: not worth comparing, read afresh.
pub(super) const WRITTEN_SINCE_MAX: i64 = 1_000;

/// What a page read asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PageKey {
    pub collection: String,
    pub owner: Option<String>,
    pub after: Resume,
    pub limit: PageLimit,
}

impl PageKey {
    /// The same read (same floor), from `position`.
    pub fn from(&self, position: Position) -> PageKey {
        PageKey {
            after: Resume::new(position, self.after.floor),
            ..self.clone()
        }
    }
}

/// A read started ahead, and the horizon of the page before it: no later than the prepared
/// page's own, so "nothing written at or after it" can be checked while the read finishes.
pub(super) struct Prepared {
    started: Instant,
    /// The read.
    pub read: JoinHandle<Result<ChangePage, StoreError>>,
    /// The previous page's horizon.
    pub horizon_before: i64,
}

/// Pages read ahead, at most `capacity` at a time.
#[derive(Default)]
pub(super) struct ReadAhead {
    capacity: usize,
    prepared: Mutex<HashMap<PageKey, Prepared>>,
}

impl ReadAhead {
    /// Room for `capacity` prepared pages; 0 turns read-ahead off.
    pub fn new(capacity: usize) -> ReadAhead {
        ReadAhead {
            capacity,
            prepared: Mutex::default(),
        }
    }

    /// The read prepared for `key`, if one is still fresh.
    pub fn take(&self, key: &PageKey) -> Option<Prepared> {
        let prepared = self.lock().remove(key)?;
        if prepared.started.elapsed() > TTL {
            prepared.read.abort();
            return None;
        }
        Some(prepared)
    }

    /// Starts `read` for `key`, which follows a page of horizon `horizon_before`, unless
    /// read-ahead is off, full, or already has it.
    pub fn start<F>(&self, key: PageKey, horizon_before: i64, read: F)
    where
        F: FnOnce() -> JoinHandle<Result<ChangePage, StoreError>>,
    {
        if self.capacity == 0 {
            return;
        }
        let mut prepared = self.lock();
        prepared.retain(|_, p| {
            let fresh = p.started.elapsed() <= TTL;
            if !fresh {
                p.read.abort();
            }
            fresh
        });
        if prepared.len() >= self.capacity || prepared.contains_key(&key) {
            return;
        }
        let started = Instant::now();
        prepared.insert(
            key,
            Prepared {
                started,
                read: read(),
                horizon_before,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PageKey, Prepared>> {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for (_, p) in self.lock().drain() {
            p.read.abort();
        }
    }
}
