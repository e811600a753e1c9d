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
use std::sync::{Arc, Mutex};
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
    /// Whether the page after this one is wanted, and where it starts.
    follow: Follow,
}

/// Whether a read ahead should start the page after its own: wanted once a reader was served
/// the page before it. The read and the reader may come in either order, so the first to come
/// leaves word for the other: the read records where the next page starts, the reader that it
/// is wanted; whichever comes second starts it, and only one does.
#[derive(Clone, Default)]
pub(super) struct Follow(Arc<Mutex<FollowState>>);

#[derive(Default)]
struct FollowState {
    wanted: bool,
    /// The page after, and the horizon of the page before it, once the read came back full.
    next: Option<(PageKey, i64)>,
}

impl Follow {
    fn new(wanted: bool) -> Follow {
        Follow(Arc::new(Mutex::new(FollowState { wanted, next: None })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FollowState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The read came back full; the page after it starts at `next`. Returns it when it is
    /// wanted already (the read starts it), else keeps it for the reader.
    pub fn read_full(&self, next: PageKey, horizon: i64) -> Option<(PageKey, i64)> {
        let mut state = self.lock();
        if state.wanted {
            Some((next, horizon))
        } else {
            state.next = Some((next, horizon));
            None
        }
    }

    /// A reader was served the page before: the page after, if the read already said where it
    /// starts (the caller starts it), else the read will start it.
    fn want(&self) -> Option<(PageKey, i64)> {
        let mut state = self.lock();
        state.wanted = true;
        state.next.take()
    }
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
    /// read-ahead is off, full, or already has it. With `follow` (a reader was just served the
    /// page before `key`), the read is to start the page after its own once it comes back full
    /// (`read` gets the [`Follow`] to tell): so PostgreSQL works on two pages of a sync at once,
    /// on two connections, while the server sends the one before. A read already held for
    /// `key` is told to follow too; if it has already come back full, the page after it is
    /// returned, for the caller to start (never started twice).
    pub fn start<F>(
        &self,
        key: PageKey,
        horizon_before: i64,
        follow: bool,
        read: F,
    ) -> Option<(PageKey, i64)>
    where
        F: FnOnce(Follow) -> JoinHandle<Result<ChangePage, StoreError>>,
    {
        if self.capacity == 0 {
            return None;
        }
        let mut prepared = self.lock();
        prepared.retain(|_, p| {
            let fresh = p.started.elapsed() <= TTL;
            if !fresh {
                p.read.abort();
            }
            fresh
        });
        if let Some(existing) = prepared.get(&key) {
            return if follow { existing.follow.want() } else { None };
        }
        if prepared.len() >= self.capacity {
            return None;
        }
        let flag = Follow::new(follow);
        let started = Instant::now();
        prepared.insert(
            key,
            Prepared {
                started,
                read: read(flag.clone()),
                horizon_before,
                follow: flag,
            },
        );
        None
    }

    /// How many reads ahead are held (tests).
    pub fn len(&self) -> usize {
        self.lock().len()
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
