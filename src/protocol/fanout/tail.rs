//! The shared tail of one collection: recent changes read from the table **once** and served
//! to every caught-up stream, so a write costs one read however many streams follow the
//! collection. It is bounded in documents and bytes (`stream_buffer_documents`,
//! `stream_buffer_bytes`); a stream whose position is older than the oldest buffered change
//! reads the table itself until it catches up.
//!
//! A tail with no stream to serve goes dormant (empty, not ready) instead of reading every
//! write back for nobody; the next stream wakes it, and reads the table until it is ready.
//!
//! Invariant: the buffer holds every change with a position in `(from, head]`, and no change
//! at a position `<= head` can commit later (head only moves to positions the visibility
//! horizon covers). An entry superseded by a later write of the same document is skipped, so
//! a stream sends each document once, at its latest buffered state, like a Pull. `from` never
//! moves back, and a tail that resumes following starts from an empty buffer: entries kept
//! from before would sit below a gap of changes it never read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::protocol::selector::{FilterFields, Projection, Selector};
use crate::store::filter::MoveRecord;
use crate::store::{PageLimit, Position, Resume, Store, StoredDocument};

/// Pauses before re-reading when a signalled commit is not yet readable in order (an older
/// transaction is still running), and after a failed read.
const PENDING_BACKOFF_MIN: Duration = Duration::from_millis(2);
const PENDING_BACKOFF_MAX: Duration = Duration::from_millis(250);
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Removal records read with each page, per document of the page.
const MOVES_PER_DOCUMENT: u32 = 4;

/// What a filtered stream receives for a removal record whose document's latest state is
/// `current` (deleted, or out of the stream's selector): a deletion, or a departure from its
/// scope that reveals nothing of the state.
fn removal(record: &StoredDocument, current: &StoredDocument) -> StoredDocument {
    let left_scope = !current.deleted;
    StoredDocument {
        id: record.id.clone(),
        owner: record.owner.clone(),
        body: "{}".to_owned(),
        deleted: true,
        revision: if left_scope {
            String::new()
        } else {
            current.revision.clone()
        },
        updated_at: current.updated_at,
        position: record.position,
        left_scope,
    }
}

/// What the buffer can say about the changes after a position.
#[derive(Debug)]
pub enum Take {
    /// The buffer covers the position: these documents (possibly none) follow it, and the
    /// stream may move to `position`.
    Covered {
        /// Documents in change order.
        documents: Vec<StoredDocument>,
        /// Where the stream stands after them.
        position: Position,
        /// The documents stopped at the limit: more may follow `position` at once.
        more: bool,
    },
    /// The position is older than the buffer (or the tail is not ready): read the table.
    NotCovered,
}

/// One buffered change: a document at its state then, or a removal record.
struct Entry {
    /// The document; for a removal record only its id, owner and the record's position.
    doc: StoredDocument,
    /// The declared fields, read once for every stream: of the document's state (live
    /// documents of a collection declaring fields), or of the previous state a removal record
    /// keeps.
    projection: Option<Projection>,
    /// A removal record (selective sync) rather than a document.
    removal: bool,
    /// What the entry weighs in the buffer.
    bytes: usize,
}

/// Which buffered changes one stream receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct View<'a> {
    /// Only this owner's documents (every owner's for `None`).
    pub owner: Option<&'a str>,
    /// Selective sync: the documents matching it, and removals of those it may hold that
    /// stopped matching (see `store::Store::read_filtered`).
    pub selector: Option<&'a Selector>,
    /// The stream's floor: removal records of older transactions are of states it never held.
    pub floor: i64,
}

#[derive(Default)]
struct Buffer {
    ready: bool,
    from: Position,
    head: Position,
    entries: VecDeque<Arc<Entry>>,
    /// What the entries weigh ([`StoredDocument::page_bytes`] each).
    bytes: usize,
    /// Position of each buffered document's latest entry (removal records are not entries
    /// of their document).
    latest: HashMap<String, Position>,
}

impl Buffer {
    /// The document entry at `position`.
    fn entry_at(&self, position: Position) -> Option<&Entry> {
        let at = self.entries.partition_point(|e| e.doc.position < position);
        self.entries
            .range(at..)
            .take_while(|e| e.doc.position == position)
            .map(|e| &**e)
            .find(|e| !e.removal)
    }
}

impl Buffer {
    /// Drops every entry (the positions stay).
    fn clear(&mut self) {
        self.entries = VecDeque::new();
        self.latest = HashMap::new();
        self.bytes = 0;
    }
}

/// A test hook: stops the tail between "no stream watches" and its re-check, the window in
/// which a stream that subscribes must not make the tail resume with stale entries.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Pause {
    reached: Notify,
    resume: Notify,
}

impl Pause {
    /// Waits until the tail stops at the hook.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the tail go on.
    pub fn resume(&self) {
        self.resume.notify_one();
    }
}

/// One collection's tail.
pub struct Tail {
    collection: String,
    /// The collection's declared filterable fields: when there are some, the tail also reads
    /// removal records and projects each document once.
    fields: FilterFields,
    capacity: usize,
    capacity_bytes: usize,
    buffer: RwLock<Buffer>,
    pause: Mutex<Option<Arc<Pause>>>,
    head: watch::Sender<Position>,
    /// Wakes a dormant tail when a stream starts watching.
    wake: Notify,
    /// Answers shared by the streams of one view (see `super::shared`).
    shared: super::shared::SharedTakes,
}

impl Tail {
    /// An empty tail keeping at most `capacity` documents and `capacity_bytes` bytes (counted
    /// by [`StoredDocument::page_bytes`]); [`Tail::run`] fills it.
    pub fn new(collection: &str, capacity: usize, capacity_bytes: usize) -> Arc<Tail> {
        Tail::with_fields(
            collection,
            capacity,
            capacity_bytes,
            FilterFields::default(),
        )
    }

    /// Like [`Tail::new`], for a collection declaring filterable `fields`.
    pub fn with_fields(
        collection: &str,
        capacity: usize,
        capacity_bytes: usize,
        fields: FilterFields,
    ) -> Arc<Tail> {
        Arc::new(Tail {
            collection: collection.to_owned(),
            fields,
            capacity: capacity.max(1),
            capacity_bytes,
            buffer: RwLock::default(),
            pause: Mutex::default(),
            head: watch::channel(Position::START).0,
            wake: Notify::new(),
            shared: super::shared::SharedTakes::default(),
        })
    }

    /// The answers the streams of one view share (see `super::shared`).
    pub(super) fn shared(&self) -> &super::shared::SharedTakes {
        &self.shared
    }

    /// Signals every time the head moves. The tail follows the table while at least one
    /// receiver is alive.
    pub fn watch(&self) -> watch::Receiver<Position> {
        let receiver = self.head.subscribe();
        self.wake.notify_one();
        receiver
    }

    /// True while some stream holds a receiver from [`Tail::watch`].
    fn watched(&self) -> bool {
        self.head.receiver_count() > 0
    }

    /// Forgets everything and stops covering any position: streams read the table.
    fn sleep(&self) {
        let mut buffer = self.buffer.write().unwrap_or_else(|e| e.into_inner());
        buffer.ready = false;
        buffer.clear();
    }

    /// Stops the tail at its next "no stream watches" re-check until the returned hook is
    /// resumed (tests only).
    #[doc(hidden)]
    pub fn pause_before_recheck(&self) -> Arc<Pause> {
        let pause = Arc::new(Pause::default());
        *self.pause.lock().unwrap_or_else(|e| e.into_inner()) = Some(pause.clone());
        pause
    }

    /// Documents buffered now.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes buffered now, counted by [`StoredDocument::page_bytes`].
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Buffer> {
        self.buffer.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The changes after `after` that `owner` may see (every owner's for `None`), within
    /// `limit` (documents and bytes, at least one document), each at its latest buffered state.
    pub fn take(&self, after: Position, owner: Option<&str>, limit: PageLimit) -> Take {
        self.take_view(
            after,
            View {
                owner,
                ..View::default()
            },
            limit,
        )
    }

    /// The changes after `after` that `view` receives, within `limit` (documents and bytes,
    /// at least one document), each at its latest buffered state. With a selector: the
    /// documents whose latest state matches, and for each removal record whose previous state
    /// matched, of a document whose latest state is deleted or no longer matches, a removal at
    /// the record's position (once per document in a batch), as a filtered Pull reads them.
    pub fn take_view(&self, after: Position, view: View<'_>, limit: PageLimit) -> Take {
        let buffer = self.read();
        if !buffer.ready || after < buffer.from {
            return Take::NotCovered;
        }
        if after >= buffer.head {
            return Take::Covered {
                documents: Vec::new(),
                position: after,
                more: false,
            };
        }
        let start = buffer.entries.partition_point(|e| e.doc.position <= after);
        let mut documents: Vec<StoredDocument> = Vec::new();
        let mut removed: Vec<&str> = Vec::new();
        let mut bytes = 0;
        for entry in buffer.entries.range(start..) {
            let doc = &entry.doc;
            if view.owner.is_some_and(|o| o != doc.owner) {
                continue;
            }
            let send = match view.selector {
                None => (!entry.removal && buffer.latest.get(&doc.id) == Some(&doc.position))
                    .then(|| StoredDocument::clone(doc)),
                Some(selector) if !entry.removal => {
                    let latest = buffer.latest.get(&doc.id) == Some(&doc.position);
                    let matches = !doc.deleted
                        && entry
                            .projection
                            .as_ref()
                            .is_some_and(|p| selector.matches_projected_of(p, &doc.owner));
                    (latest && matches).then(|| StoredDocument::clone(doc))
                }
                Some(selector) => {
                    if doc.position.tx < view.floor
                        || removed.contains(&doc.id.as_str())
                        || !entry
                            .projection
                            .as_ref()
                            .is_some_and(|p| selector.matches_projected_of(p, &doc.owner))
                    {
                        continue;
                    }
                    // The record's write is buffered (it is at or after the record), unless
                    // the buffer lost it: then read the table.
                    let Some(current) = buffer
                        .latest
                        .get(&doc.id)
                        .and_then(|at| buffer.entry_at(*at))
                    else {
                        return Take::NotCovered;
                    };
                    let still = !current.doc.deleted
                        && current
                            .projection
                            .as_ref()
                            .is_some_and(|p| selector.matches_projected_of(p, &current.doc.owner));
                    if still {
                        continue;
                    }
                    removed.push(&doc.id);
                    Some(removal(doc, &current.doc))
                }
            };
            let Some(send) = send else { continue };
            let size = send.page_bytes();
            if let Some(last) = documents.last()
                && bytes + size > limit.bytes
            {
                return Take::Covered {
                    position: last.position,
                    documents,
                    more: true,
                };
            }
            bytes += size;
            let position = send.position;
            documents.push(send);
            if documents.len() >= limit.documents as usize {
                return Take::Covered {
                    position,
                    documents,
                    more: true,
                };
            }
        }
        Take::Covered {
            documents,
            position: buffer.head,
            more: false,
        }
    }

    #[cfg(test)]
    fn append(&self, documents: Vec<StoredDocument>, covered: Position) {
        self.append_with_moves(documents, Vec::new(), covered);
    }

    /// Appends a read's documents and the removal records of the same range, in position
    /// order, and moves the head to `covered`.
    fn append_with_moves(
        &self,
        documents: Vec<StoredDocument>,
        moves: Vec<MoveRecord>,
        covered: Position,
    ) {
        let project = !self.fields.is_empty();
        let mut entries: Vec<Entry> = documents
            .into_iter()
            .map(|doc| {
                let projection = (project && !doc.deleted)
                    .then(|| self.fields.project(&doc.body))
                    .flatten();
                Entry {
                    // The projection is held beside the document: it weighs too.
                    bytes: doc.page_bytes() + projection.as_ref().map_or(0, Projection::heap_bytes),
                    projection,
                    doc,
                    removal: false,
                }
            })
            .chain(moves.into_iter().map(|m| {
                let projection = Projection::from_json(&m.previous);
                let bytes = m.id.len()
                    + m.owner.len()
                    + 64
                    + projection.as_ref().map_or(0, Projection::heap_bytes);
                Entry {
                    projection,
                    doc: StoredDocument {
                        id: m.id,
                        owner: m.owner,
                        body: String::new(),
                        deleted: true,
                        revision: String::new(),
                        updated_at: chrono::DateTime::UNIX_EPOCH,
                        position: m.position,
                        left_scope: false,
                    },
                    removal: true,
                    bytes,
                }
            }))
            .collect();
        // A record shares its write's position: it comes first, as the state it replaced.
        entries.sort_by_key(|e| (e.doc.position, !e.removal));
        let mut buffer = self.buffer.write().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            buffer.bytes += entry.bytes;
            if !entry.removal {
                buffer
                    .latest
                    .insert(entry.doc.id.clone(), entry.doc.position);
            }
            buffer.entries.push_back(Arc::new(entry));
        }
        while buffer.entries.len() > self.capacity || buffer.bytes > self.capacity_bytes {
            let Some(old) = buffer.entries.pop_front() else {
                break;
            };
            buffer.bytes -= old.bytes;
            // Never back: a position below `from` may sit in a gap the buffer never held.
            buffer.from = buffer.from.max(old.doc.position);
            if !old.removal && buffer.latest.get(&old.doc.id) == Some(&old.doc.position) {
                buffer.latest.remove(&old.doc.id);
            }
        }
        buffer.head = buffer.head.max(covered);
        let head = buffer.head;
        drop(buffer);
        self.head.send_replace(head);
    }
    /// Reads new changes whenever `signals` (the hub) says something committed, until
    /// `shutdown`, while some stream watches; dormant otherwise. Each time it wakes it starts
    /// from the newest position: older changes are read by the streams that need them.
    pub async fn run<S: Store>(
        self: Arc<Self>,
        store: Arc<S>,
        mut signals: watch::Receiver<i64>,
        page: PageLimit,
        shutdown: CancellationToken,
    ) {
        loop {
            if !self.watched() {
                self.sleep();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            if self
                .follow(store.as_ref(), &mut signals, page, &shutdown)
                .await
            {
                return;
            }
            let pause = self.pause.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(pause) = pause {
                pause.reached.notify_one();
                pause.resume.notified().await;
            }
        }
    }

    /// Follows the table until no stream watches or a purge overtakes it (false), or shutdown
    /// (true).
    async fn follow<S: Store>(
        &self,
        store: &S,
        signals: &mut watch::Receiver<i64>,
        page: PageLimit,
        shutdown: &CancellationToken,
    ) -> bool {
        // The tail begins at this horizon: it is its floor (see `Resume::floor`).
        let (start, floor) = loop {
            match store.horizon().await {
                Ok(h) => break (covered_below(h), h),
                Err(e) => {
                    tracing::warn!(error = %e, collection = %self.collection, "stream tail cannot start yet");
                    if pause(shutdown, ERROR_BACKOFF).await {
                        return true;
                    }
                }
            }
        };
        let start = {
            let mut buffer = self.buffer.write().unwrap_or_else(|e| e.into_inner());
            // Positions only grow: a restart never moves the head back. Entries kept from an
            // earlier run end at the old head, below changes this run will never read: drop
            // them, or a later eviction would move `from` back across that gap.
            let start = start.max(buffer.head);
            buffer.clear();
            buffer.from = start;
            buffer.head = start;
            buffer.ready = true;
            start
        };
        self.head.send_replace(start);
        let mut backoff = PENDING_BACKOFF_MIN;
        loop {
            if !self.watched() {
                return false;
            }
            let signalled = *signals.borrow_and_update();
            let head = self.read().head;
            let result = store
                .read_changes(&self.collection, None, Resume::new(head, floor), page)
                .await;
            let page_read = match result {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, collection = %self.collection, "stream tail read failed");
                    if pause(shutdown, ERROR_BACKOFF).await {
                        return true;
                    }
                    continue;
                }
            };
            if page_read.expired {
                // A purge passed the head (the tail fell far behind, or a tiny retention):
                // changes after it may be gone. Cover nothing, so that streams read the table
                // (and resync where they must), and start over from the newest position.
                tracing::warn!(collection = %self.collection, "stream tail overtaken by a purge; restarting");
                self.sleep();
                return pause(shutdown, ERROR_BACKOFF).await;
            }
            let mut full = page_read.more;
            // Everything below the horizon has been read once the page is not full.
            let mut covered = match (page_read.documents.last(), full) {
                (Some(last), true) => last.position,
                _ => head.max(covered_below(page_read.horizon)),
            };
            let mut documents = page_read.documents;
            let mut moves = Vec::new();
            if !self.fields.is_empty() && covered > head {
                // The removal records of the same range: every transaction in it has finished.
                let max = page.documents.saturating_mul(MOVES_PER_DOCUMENT).max(1);
                moves = match store.read_moves(&self.collection, head, covered, max).await {
                    Ok(moves) => moves,
                    Err(e) => {
                        tracing::warn!(error = %e, collection = %self.collection, "stream tail read failed");
                        if pause(shutdown, ERROR_BACKOFF).await {
                            return true;
                        }
                        continue;
                    }
                };
                if moves.len() >= max as usize
                    && let Some(last) = moves.last()
                {
                    // More records than a batch holds (documents rewritten many times): cover
                    // only up to the last one read; the next read starts there.
                    covered = last.position;
                    documents.retain(|d| d.position <= covered);
                    full = true;
                }
            }
            self.append_with_moves(documents, moves, covered);
            if full {
                continue;
            }
            if page_read.horizon <= signalled {
                if pause(shutdown, backoff).await {
                    return true;
                }
                backoff = (backoff * 2).min(PENDING_BACKOFF_MAX);
                continue;
            }
            backoff = PENDING_BACKOFF_MIN;
            tokio::select! {
                _ = shutdown.cancelled() => return true,
                _ = self.head.closed() => return false,
                changed = signals.changed() => if changed.is_err() { return true },
            }
        }
    }
}

/// The greatest position of any transaction below `horizon`: every change up to it is final.
pub fn covered_below(horizon: i64) -> Position {
    Position {
        tx: horizon.saturating_sub(1).max(0),
        seq: i64::MAX,
    }
}

/// Sleeps unless shut down first; true when shutting down.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, owner: &str, tx: i64) -> StoredDocument {
        StoredDocument {
            id: id.into(),
            owner: owner.into(),
            body: "{}".into(),
            deleted: false,
            revision: format!("{tx}-x"),
            updated_at: chrono::Utc::now(),
            position: Position { tx, seq: 0 },
            left_scope: false,
        }
    }

    fn ids(t: Take) -> (Vec<String>, Position) {
        match t {
            Take::Covered {
                documents,
                position,
                ..
            } => (documents.into_iter().map(|d| d.id).collect(), position),
            Take::NotCovered => panic!("not covered"),
        }
    }

    /// A limit of `documents` documents and no byte budget.
    fn n(documents: u32) -> PageLimit {
        PageLimit::new(documents, usize::MAX)
    }

    fn ready(capacity: usize) -> Arc<Tail> {
        ready_bytes(capacity, usize::MAX)
    }

    fn ready_bytes(capacity: usize, capacity_bytes: usize) -> Arc<Tail> {
        let tail = Tail::new("c", capacity, capacity_bytes);
        {
            let mut b = tail.buffer.write().unwrap();
            b.ready = true;
            b.from = Position { tx: 10, seq: 0 };
            b.head = b.from;
        }
        tail
    }

    #[test]
    fn serves_latest_states_in_order_filtered_per_document() {
        let tail = ready(100);
        let p = |tx| Position { tx, seq: 0 };
        tail.append(
            vec![
                doc("a", "alice", 11),
                doc("b", "bob", 12),
                doc("a", "alice", 13),
                doc("c", "alice", 14),
            ],
            p(14),
        );
        assert_eq!(
            ids(tail.take(p(10), None, n(100))),
            (vec!["b".into(), "a".into(), "c".into()], p(14))
        );
        assert_eq!(
            ids(tail.take(p(10), Some("alice"), n(100))),
            (vec!["a".into(), "c".into()], p(14))
        );
        assert_eq!(
            ids(tail.take(p(10), Some("alice"), n(1))),
            (vec!["a".into()], p(13))
        );
        assert_eq!(ids(tail.take(p(12), Some("bob"), n(100))), (vec![], p(14)));
        assert_eq!(
            ids(tail.take(p(20), None, n(100))),
            (vec![], p(20)),
            "never moves back"
        );
        assert!(matches!(tail.take(p(5), None, n(100)), Take::NotCovered));
    }

    #[test]
    fn eviction_moves_the_covered_range() {
        let tail = ready(2);
        let p = |tx| Position { tx, seq: 0 };
        tail.append(
            vec![doc("a", "", 11), doc("b", "", 12), doc("c", "", 13)],
            p(13),
        );
        assert_eq!(tail.len(), 2);
        assert!(
            matches!(tail.take(p(10), None, n(10)), Take::NotCovered),
            "a was evicted"
        );
        assert_eq!(ids(tail.take(p(11), None, n(10))).0, vec!["b", "c"]);
        assert!(
            !Tail::new("x", 1, usize::MAX)
                .take(p(0), None, n(1))
                .is_covered(),
            "not ready: read the table"
        );
    }

    fn sized(id: &str, tx: i64, body_bytes: usize) -> StoredDocument {
        StoredDocument {
            body: "x".repeat(body_bytes),
            ..doc(id, "", tx)
        }
    }

    #[test]
    fn batches_end_at_the_byte_budget_with_at_least_one_document() {
        let tail = ready(100);
        let p = |tx| Position { tx, seq: 0 };
        tail.append(
            vec![
                sized("a", 11, 1000),
                sized("b", 12, 1000),
                sized("c", 13, 5000),
            ],
            p(13),
        );
        let weight = sized("a", 11, 1000).page_bytes();
        let take = |after, bytes| match tail.take(p(after), None, PageLimit::new(100, bytes)) {
            Take::Covered {
                documents,
                position,
                more,
            } => (
                documents.into_iter().map(|d| d.id).collect::<Vec<_>>(),
                position,
                more,
            ),
            Take::NotCovered => panic!("not covered"),
        };
        assert_eq!(
            take(10, 2 * weight),
            (vec!["a".into(), "b".into()], p(12), true)
        );
        assert_eq!(take(10, 2 * weight - 1), (vec!["a".into()], p(11), true));
        assert_eq!(take(10, 1), (vec!["a".into()], p(11), true), "one at least");
        assert_eq!(
            take(12, 1),
            (vec!["c".into()], p(13), false),
            "one at least"
        );
        assert_eq!(
            take(10, usize::MAX),
            (vec!["a".into(), "b".into(), "c".into()], p(13), false)
        );
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_and_from_never_moves_back() {
        let weight = sized("d11", 11, 1000).page_bytes();
        let tail = ready_bytes(100, 3 * weight);
        let p = |tx| Position { tx, seq: 0 };
        tail.append(
            (11..=15)
                .map(|tx| sized(&format!("d{tx}"), tx, 1000))
                .collect(),
            p(15),
        );
        assert_eq!(tail.len(), 3);
        assert!(tail.bytes() <= 3 * weight);
        assert!(matches!(tail.take(p(11), None, n(10)), Take::NotCovered));
        assert_eq!(
            ids(tail.take(p(12), None, n(10))).0,
            vec!["d13", "d14", "d15"]
        );

        // Entries older than `from` (as a buffer kept across a restart would hold) never pull
        // it back when they are evicted.
        {
            let mut b = tail.buffer.write().unwrap();
            b.from = p(20);
            b.head = p(20);
        }
        tail.append(vec![sized("e", 21, 1000)], p(21));
        assert!(matches!(tail.take(p(15), None, n(10)), Take::NotCovered));
        assert_eq!(ids(tail.take(p(20), None, n(10))).0, vec!["e"]);
    }

    fn fields() -> FilterFields {
        let declared = [
            ("done".to_owned(), "boolean".to_owned()),
            ("team".to_owned(), "string".to_owned()),
        ]
        .into_iter()
        .collect();
        FilterFields::from_config("c", &declared).expect("fields")
    }

    fn with_body(id: &str, owner: &str, tx: i64, body: &str, deleted: bool) -> StoredDocument {
        StoredDocument {
            body: body.into(),
            deleted,
            ..doc(id, owner, tx)
        }
    }

    fn record(id: &str, owner: &str, tx: i64, previous: &str) -> MoveRecord {
        MoveRecord {
            id: id.into(),
            owner: owner.into(),
            position: Position { tx, seq: 0 },
            previous: previous.into(),
        }
    }

    /// (id, deleted, left_scope) of what `view` takes after `after`.
    fn taken(tail: &Tail, after: i64, view: View<'_>) -> Vec<(String, bool, bool)> {
        match tail.take_view(Position { tx: after, seq: 0 }, view, n(100)) {
            Take::Covered { documents, .. } => documents
                .into_iter()
                .map(|d| (d.id, d.deleted, d.left_scope))
                .collect(),
            Take::NotCovered => panic!("not covered"),
        }
    }

    /// The declared fields' projections are held beside the documents and records: the byte
    /// bound counts them, so a buffer of large declared values stays within its bytes.
    #[test]
    fn projections_count_in_the_buffer_bytes() {
        let big = "v".repeat(10_000);
        let body = format!(r#"{{"team": "{big}", "done": false}}"#);
        let doc = with_body("a", "alice", 11, &body, false);
        let weight = doc.page_bytes();
        let plain = Tail::with_fields("c", 100, usize::MAX, FilterFields::default());
        let declared = Tail::with_fields("c", 100, usize::MAX, fields());
        for tail in [&plain, &declared] {
            tail.buffer.write().unwrap().ready = true;
            tail.append_with_moves(vec![doc.clone()], Vec::new(), Position { tx: 11, seq: 0 });
        }
        assert_eq!(plain.bytes(), weight);
        assert!(
            declared.bytes() >= weight + big.len(),
            "{} vs {weight}",
            declared.bytes()
        );
        // A removal record weighs its projection too.
        let record_tail = Tail::with_fields("c", 100, usize::MAX, fields());
        record_tail.buffer.write().unwrap().ready = true;
        let previous = format!(r#"{{"team": "{big}"}}"#);
        record_tail.append_with_moves(
            Vec::new(),
            vec![record("a", "alice", 12, &previous)],
            Position { tx: 12, seq: 0 },
        );
        assert!(record_tail.bytes() >= big.len(), "{}", record_tail.bytes());
    }

    #[test]
    fn filtered_views_get_matches_and_one_removal_per_document_above_their_floor() {
        let fields = fields();
        let tail = Tail::with_fields("c", 100, usize::MAX, fields.clone());
        {
            let mut b = tail.buffer.write().unwrap();
            b.ready = true;
            b.from = Position { tx: 10, seq: 0 };
            b.head = b.from;
        }
        let open = Selector::parse(&serde_json::json!({"done": false}), &fields).expect("selector");
        // a: edited out twice (records at 11 and 12), b: deleted (record at 13), c: matches,
        // d: never matched (its record's previous state did not match either).
        tail.append_with_moves(
            vec![
                with_body("a", "alice", 12, r#"{"done": true, "x": 2}"#, false),
                with_body("b", "bob", 13, "{}", true),
                with_body("c", "alice", 14, r#"{"done": false}"#, false),
                with_body("d", "alice", 15, r#"{"done": true}"#, false),
            ],
            vec![
                record("a", "alice", 11, r#"{"done": false}"#),
                record("a", "alice", 12, r#"{"done": true}"#),
                record("b", "bob", 13, r#"{"done": false}"#),
                record("d", "alice", 15, r#"{"done": true}"#),
            ],
            Position { tx: 15, seq: 0 },
        );
        let view = |owner, floor| View {
            owner,
            selector: Some(&open),
            floor,
        };
        assert_eq!(
            taken(&tail, 10, view(None, 0)),
            vec![
                ("a".into(), true, true),
                ("b".into(), true, false),
                ("c".into(), false, false)
            ],
            "a removal for a (once), a deletion for b, the match c, nothing of d"
        );
        assert_eq!(
            taken(&tail, 10, view(Some("alice"), 0)),
            vec![("a".into(), true, true), ("c".into(), false, false)],
            "another owner's records are not this reader's"
        );
        assert_eq!(
            taken(&tail, 10, view(None, 12)),
            vec![("b".into(), true, false), ("c".into(), false, false)],
            "records below the floor are of states the reader never held"
        );
        assert_eq!(
            taken(&tail, 11, view(None, 0)),
            vec![("b".into(), true, false), ("c".into(), false, false)],
            "a's only matching record is at or before the position"
        );
        // Unfiltered views never see records, and see every latest state.
        assert_eq!(
            ids(tail.take(Position { tx: 10, seq: 0 }, None, n(100))).0,
            vec!["a", "b", "c", "d"]
        );
        // Moved back in: the document, no removal.
        tail.append_with_moves(
            vec![with_body("a", "alice", 16, r#"{"done": false}"#, false)],
            vec![record("a", "alice", 16, r#"{"done": true, "x": 2}"#)],
            Position { tx: 16, seq: 0 },
        );
        assert_eq!(
            taken(&tail, 10, view(None, 0)),
            vec![
                ("b".into(), true, false),
                ("c".into(), false, false),
                ("a".into(), false, false)
            ]
        );
    }

    impl Take {
        fn is_covered(&self) -> bool {
            matches!(self, Take::Covered { .. })
        }
    }
}
