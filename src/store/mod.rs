//! Storage behind a narrow interface: read a page of changes after a position, and apply a
//! push atomically with a caller-supplied decision. The protocol rules live in
//! [`crate::protocol`]; a store only guarantees ordering, atomicity and isolation.

pub mod filter;
pub mod postgres;

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};

/// A position in a collection's change order. Ordered lexicographically; the PostgreSQL store
/// uses (writing transaction id, tie-breaking sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Major component: the writing transaction.
    pub tx: i64,
    /// Minor component: order within the transaction.
    pub seq: i64,
}

impl Position {
    /// Before every write.
    pub const START: Position = Position { tx: 0, seq: 0 };
}

/// Where a reader resumes: the position, and its floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Resume {
    /// The position of the last change the reader received ([`Position::START`]: none).
    pub position: Position,
    /// The visibility horizon when the reader began from [`Position::START`] (0 when not
    /// known): every tombstone of an older transaction had committed before the reader's first
    /// read, so the reader never held a state such a tombstone replaced, and its purge cannot
    /// leave the reader with a deleted document. Carried unchanged by the reader's later
    /// checkpoints.
    pub floor: i64,
}

impl Resume {
    /// From `position`, with `floor`.
    pub fn new(position: Position, floor: i64) -> Resume {
        Resume { position, floor }
    }
}

/// A document as stored, with its server-owned metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    /// Primary key within the collection.
    pub id: String,
    /// The owning principal's subject.
    pub owner: String,
    /// The JSON object, as text.
    pub body: String,
    /// Tombstone flag.
    pub deleted: bool,
    /// Server-assigned revision of the latest write.
    pub revision: String,
    /// Server time of the latest write.
    pub updated_at: DateTime<Utc>,
    /// Position of the latest write.
    pub position: Position,
    /// A filtered reader's removal: the document left the reader's filter (it still exists,
    /// and `deleted` is set for this reader only). Its body is `{}` and its position that of
    /// the write that moved it out.
    pub left_scope: bool,
}

impl StoredDocument {
    /// What this document weighs in a page or a stream batch: its variable-length fields plus
    /// [`DOCUMENT_OVERHEAD_BYTES`]. The PostgreSQL page query computes the same sum (body as
    /// text, id, owner, revision), so that a page is cut at its byte budget before it is read.
    pub fn page_bytes(&self) -> usize {
        self.body.len()
            + self.id.len()
            + self.owner.len()
            + self.revision.len()
            + DOCUMENT_OVERHEAD_BYTES
    }
}

/// The fixed part of a document's weight: timestamps, flags, positions and protobuf framing,
/// rounded up.
pub const DOCUMENT_OVERHEAD_BYTES: usize = 64;

/// How much one page (or stream batch) may hold: it ends at whichever limit it reaches first,
/// and always holds at least one document when any follows, so paging always progresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageLimit {
    /// Most documents.
    pub documents: u32,
    /// Most bytes, counted by [`StoredDocument::page_bytes`]; a single larger document still
    /// makes a page of its own.
    pub bytes: usize,
}

impl PageLimit {
    /// A limit of `documents` documents and `bytes` bytes.
    pub fn new(documents: u32, bytes: usize) -> PageLimit {
        PageLimit { documents, bytes }
    }
}

/// A page of changes read after a position.
#[derive(Debug, Clone)]
pub struct ChangePage {
    /// Documents in change order.
    pub documents: Vec<StoredDocument>,
    /// The page ended at its limit (documents or bytes): more changes may follow its last
    /// document right away. When false, it holds every change after the position it was read
    /// from that is below `horizon`.
    pub more: bool,
    /// Every transaction below this id had finished when the page was read; writes of later
    /// transactions may still become visible. Streams use it to tell "nothing new" from
    /// "something committed but not yet readable in order".
    pub horizon: i64,
    /// The reader is expired: its position is at or below the collection's purge horizon,
    /// and the tombstone there is of a transaction at or above the reader's floor, so a
    /// tombstone it needed may be gone. The page is then empty. Never for
    /// [`Position::START`]. Read in the same snapshot as the page.
    pub expired: bool,
}

/// A document state a push wants to store. Revision and body are already decided.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentWrite {
    /// Primary key.
    pub id: String,
    /// Owner; only stored for new documents (updates keep the existing owner).
    pub owner: String,
    /// The JSON object, as text.
    pub body: String,
    /// Tombstone flag.
    pub deleted: bool,
    /// The new revision.
    pub revision: String,
    /// True when the document was absent when the push read it (an insert).
    pub is_new: bool,
}

/// A server state reported back as a conflict. `updated_at` is `None` when the state was
/// written earlier in the same push; the store fills in the push's commit time.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictState {
    /// Primary key.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// The JSON object, as text.
    pub body: String,
    /// Tombstone flag.
    pub deleted: bool,
    /// Revision of this state.
    pub revision: String,
    /// Time of the write, when it is already stored.
    pub updated_at: Option<DateTime<Utc>>,
    /// Why the collection's strategy could not resolve the row, when it tried and failed (no
    /// base to merge against, a merged document the schema refuses, ...).
    pub why: Option<String>,
}

/// A conflicting row the decision resolved and wrote. `state.updated_at` is `None` until the
/// store fills in the push's commit time.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedState {
    /// The row's index in the push.
    pub index: usize,
    /// The strategy's name (`last-write-wins`, `field-merge`, `crdt`).
    pub strategy: &'static str,
    /// The state the resolution wrote, with its new revision.
    pub state: ConflictState,
}

/// A version that lost an automatic resolution, to be kept for `keep`.
#[derive(Debug, Clone, PartialEq)]
pub struct OverwrittenVersion {
    /// The document's id.
    pub id: String,
    /// The document's owner (who may list it).
    pub owner: String,
    /// The losing body, as text.
    pub body: String,
    /// The losing tombstone flag.
    pub deleted: bool,
    /// The revision the losing state had (`server`), or the one the client assumed (`client`;
    /// empty when none).
    pub revision: String,
    /// `server` (a stored state replaced) or `client` (a pushed state not written as sent).
    pub source: &'static str,
    /// The strategy that decided.
    pub strategy: &'static str,
    /// The revision left stored by the resolution.
    pub resolved_revision: String,
    /// The subject of the pushing principal.
    pub pushed_by: String,
    /// How long to keep it.
    pub keep: std::time::Duration,
}

/// A kept losing version as listed, with the time it lost.
#[derive(Debug, Clone, PartialEq)]
pub struct OverwrittenRecord {
    /// The version.
    pub version: OverwrittenVersion,
    /// When it lost (the resolving push's commit time).
    pub overwritten_at: DateTime<Utc>,
}

/// What a push decided, given the current states: the final state of every written id, the
/// conflicting rows' server states, the resolved rows, the versions to keep, and the rows the
/// decision refused (`R`: the decision's own account of them, passed back untouched).
#[derive(Debug, Clone, PartialEq)]
pub struct PushPlan<R = ()> {
    /// One entry per written id, its final state.
    pub writes: Vec<DocumentWrite>,
    /// One entry per conflicting row that was not written, in row order.
    pub conflicts: Vec<ConflictState>,
    /// The rows refused, as the decision describes them.
    pub refused: Vec<R>,
    /// One entry per conflicting row that was resolved and written, in row order.
    pub resolved: Vec<ResolvedState>,
    /// Losing versions to store with the writes (in the same transaction).
    pub overwritten: Vec<OverwrittenVersion>,
}

impl<R> Default for PushPlan<R> {
    fn default() -> Self {
        PushPlan {
            writes: Vec::new(),
            conflicts: Vec::new(),
            refused: Vec::new(),
            resolved: Vec::new(),
            overwritten: Vec::new(),
        }
    }
}

/// Makes a push idempotent: the store remembers `key` for `principal` with the push's
/// response (made by `respond` from the outcome, before commit) in the push's transaction.
pub struct Idempotency<'a, R> {
    /// The pushing principal's subject.
    pub principal: &'a str,
    /// The client's key (1-128 bytes, checked by the caller).
    pub key: &'a str,
    /// Digest of the request (collection, rows, mode): a different request under the same
    /// key is refused.
    pub request_hash: [u8; 32],
    /// How long the key is remembered.
    pub retention: std::time::Duration,
    /// Encodes the response to remember.
    pub respond: &'a (dyn Fn(&PushOutcome<R>) -> Vec<u8> + Send + Sync),
}

/// A push's result: applied now, or answered from an earlier push with the same key.
#[derive(Debug)]
pub enum PushApplied<R> {
    /// Decided and committed by this call.
    Applied(PushOutcome<R>),
    /// The remembered response of the first push with this key; nothing was written.
    Replayed(Vec<u8>),
}

/// The outcome of an applied push.
#[derive(Debug, Clone)]
pub struct PushOutcome<R = ()> {
    /// Conflicts with every `updated_at` filled in.
    pub conflicts: Vec<ConflictState>,
    /// Resolved rows with every `updated_at` filled in.
    pub resolved: Vec<ResolvedState>,
    /// The plan's refused rows, as decided in the transaction that committed.
    pub refused: Vec<R>,
    /// Number of documents written.
    pub written: usize,
    /// The transaction the writes are positioned under, when anything was written.
    pub tx: Option<i64>,
    /// The commit time of the writes (the `updated_at` of every written state).
    pub written_at: Option<DateTime<Utc>>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down: the client may retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Concurrent writers kept colliding after every retry: the client may retry.
    #[error("too much contention: {0}")]
    Contention(String),
    /// Anything else; details are logged, never sent to clients.
    #[error("database error: {0}")]
    Internal(String),
}

/// Why a push was not applied: its decision refused it (with the decision's own error), or
/// the store failed. Either way nothing was written.
#[derive(Debug)]
pub enum PushError<E> {
    /// `decide` refused the batch.
    Refused(E),
    /// The idempotency key is remembered for a different request.
    KeyReused,
    /// The store failed.
    Store(StoreError),
}

impl<E> From<StoreError> for PushError<E> {
    fn from(err: StoreError) -> Self {
        PushError::Store(err)
    }
}

/// A document a push touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The document's id.
    pub id: String,
    /// The revision the push's first row for this id assumes, when it names one. A current
    /// state at exactly this revision is replaced without being looked at, so the store may
    /// leave its `body` empty (which no stored body ever is).
    pub skip_body_at: Option<String>,
    /// The push's first row for this id assumes the document absent. When every target
    /// does, the store may decide on no stored state at all and skip the read: its guarded
    /// write then checks that each id is indeed new, and decides again after a read if not.
    pub new: bool,
}

/// One hash bucket's digest of live documents (see [`crate::protocol::reconcile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketDigest {
    /// The bucket number at the level asked for.
    pub bucket: u32,
    /// Live documents in it.
    pub count: u64,
    /// Wrapping sum of their item hashes.
    pub sum: u64,
}

/// Bucket digests read from one snapshot, with that snapshot's xmin: every transaction below
/// it had ended, so its writes are in the digests; every later one has a position above it.
#[derive(Debug, Clone)]
pub struct DigestSnapshot {
    /// Non-empty buckets, in bucket order.
    pub digests: Vec<BucketDigest>,
    /// `pg_snapshot_xmin` of the snapshot.
    pub xmin: i64,
}

/// The storage interface the protocol needs.
pub trait Store: Send + Sync + 'static {
    /// Reads the documents of `collection` (only `owner`'s when given) whose latest write is
    /// after `after.position`, in change order, within `limit` (documents and bytes; at least one),
    /// returning only positions that can no longer be preceded by a later commit. When
    /// the reader is past the collection's purge horizon, the page comes back empty and
    /// `expired` (see [`ChangePage::expired`]).
    fn read_changes(
        &self,
        collection: &str,
        owner: Option<&str>,
        after: Resume,
        limit: PageLimit,
    ) -> impl Future<Output = Result<ChangePage, StoreError>> + Send;

    /// Like [`Store::read_changes`], for a reader with `filter`: the documents after
    /// `after.position` whose latest state matches `filter.current`, and a removal (see
    /// [`StoredDocument::left_scope`]; `deleted`, body `{}`) for each document with a removal
    /// record after it whose previous state matched `filter.previous` while the latest state
    /// is deleted or no longer matches. Removal records older than the reader's floor, and
    /// every one for a reader at [`Position::START`], are skipped: it never held those states.
    fn read_filtered(
        &self,
        _collection: &str,
        _owner: Option<&str>,
        _filter: &filter::ReadFilter,
        _after: Resume,
        _limit: PageLimit,
    ) -> impl Future<Output = Result<ChangePage, StoreError>> + Send {
        async { Err(StoreError::Internal("this store cannot filter".into())) }
    }

    /// The removal records of `collection` at positions in `(after, upto]`, in position order,
    /// at most `max`. Only for positions every transaction of which has finished (a shared
    /// stream tail reads them for the range of changes it has just read).
    fn read_moves(
        &self,
        _collection: &str,
        _after: Position,
        _upto: Position,
        _max: u32,
    ) -> impl Future<Output = Result<Vec<filter::MoveRecord>, StoreError>> + Send {
        async {
            Err(StoreError::Internal(
                "this store keeps no removal records".into(),
            ))
        }
    }

    /// Records `collection`'s declared filterable fields (dotted paths) for its removal
    /// records, and creates the indexes `index_ddl` lists. Run at start-up.
    fn declare_filter_fields(
        &self,
        _collection: &str,
        _paths: &[String],
        _index_ddl: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// The visibility horizon now: every transaction below it has finished, so no change at a
    /// position with a smaller transaction can still appear.
    fn horizon(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// In one transaction: reads the current states of `targets` (distinct ids), calls
    /// `decide` with them, stores its writes with new positions and its overwritten versions,
    /// and wakes listeners of `collection`. `decide` may run more than once when the
    /// transaction is retried; its error refuses the batch and comes back as
    /// [`PushError::Refused`]. With `idempotency`, a key already remembered for the principal
    /// is answered with its response ([`PushApplied::Replayed`]) without deciding, or refused
    /// ([`PushError::KeyReused`]) when remembered for another request; a concurrent push with
    /// the same key waits for this one.
    fn apply_push<F, E, R>(
        &self,
        collection: &str,
        targets: &[PushTarget],
        decide: F,
        idempotency: Option<&Idempotency<'_, R>>,
    ) -> impl Future<Output = Result<PushApplied<R>, PushError<E>>> + Send
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync;

    /// Which of `digests` the blob store of `collection` holds for a principal in `scope`,
    /// with their lengths: stored, and uploaded by it or referenced by a live document it may
    /// read. A push may reference only these.
    fn attachments_held(
        &self,
        _collection: &str,
        _scope: filter::BlobScope<'_>,
        _digests: &[String],
    ) -> impl Future<Output = Result<HashMap<String, u64>, StoreError>> + Send {
        async { Ok(HashMap::new()) }
    }

    /// The kept losing versions of `id` in `collection` (only when `owner` owns it, if given),
    /// newest first, at most `limit`, excluding expired ones.
    fn overwritten_versions(
        &self,
        _collection: &str,
        _id: &str,
        _owner: Option<&str>,
        _limit: usize,
    ) -> impl Future<Output = Result<Vec<OverwrittenRecord>, StoreError>> + Send {
        async {
            Err(StoreError::Internal(
                "this store keeps no overwritten versions".into(),
            ))
        }
    }

    /// The 32-byte secret that seals checkpoint tokens, the same for every process on this
    /// store and across restarts: created at random on first use, then kept.
    fn checkpoint_key(&self) -> impl Future<Output = Result<[u8; 32], StoreError>> + Send;

    /// The dataset generation checkpoint tokens are sealed with: it moves on when the
    /// positions were re-stamped after a restore into another cluster.
    fn dataset_generation(&self) -> impl Future<Output = Result<u32, StoreError>> + Send {
        async { Ok(0) }
    }

    /// Digests of the hash buckets (`bits` bits) of the live documents of `collection` (only
    /// `owner`'s when given, and only those matching `filter.current` when given), only under the `within_bits`-bit prefixes `within` unless
    /// `within_bits` is 0, read from one snapshot whose xmin comes back with them.
    fn bucket_digests(
        &self,
        _collection: &str,
        _owner: Option<&str>,
        _filter: Option<&filter::ReadFilter>,
        _bits: u32,
        _within_bits: u32,
        _within: &[u32],
    ) -> impl Future<Output = Result<DigestSnapshot, StoreError>> + Send {
        async { Err(StoreError::Internal("this store cannot reconcile".into())) }
    }

    /// Up to `max` (id, revision) pairs of the live documents in `buckets` (`bits` bits), in
    /// id order, in the same scope as [`Store::bucket_digests`].
    fn bucket_documents(
        &self,
        _collection: &str,
        _owner: Option<&str>,
        _filter: Option<&filter::ReadFilter>,
        _bits: u32,
        _buckets: &[u32],
        _max: usize,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send {
        async { Err(StoreError::Internal("this store cannot reconcile".into())) }
    }

    /// The live documents among `ids` (in scope), in request order, within `limit.bytes` (at
    /// least one), and how many of the ids (a prefix) that answers.
    fn live_documents(
        &self,
        _collection: &str,
        _owner: Option<&str>,
        _filter: Option<&filter::ReadFilter>,
        _ids: &[String],
        _limit: PageLimit,
    ) -> impl Future<Output = Result<(Vec<StoredDocument>, usize), StoreError>> + Send {
        async { Err(StoreError::Internal("this store cannot fetch by id".into())) }
    }
}
