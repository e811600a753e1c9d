//! The replication rules, independent of gRPC: checkpoints, validation, conflict decisions,
//! limits and the stream loop. Handlers in [`crate::api`] only translate to and from protobuf.

pub mod access;
pub mod attachments;
pub mod checkpoint;
pub mod collections;
pub mod conflict;
mod error;
pub mod fanout;
pub mod import;
mod json_check;
mod json_number;
mod json_text;
pub mod merge;
mod overwritten;
pub mod principal;
mod push;
pub mod reconcile;
pub mod resolution;
pub mod selective;
pub mod selector;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use collections::{Collection, Collections, Limits};
pub use conflict::{PushMode, RefusedRow};
pub use error::{Kind, ProtocolError, Reason, cut_text, shown};
pub use principal::Principal;
pub use push::{IdempotentPush, PushReply, PushResult};
pub use stream::{StreamEvent, StreamItem};
use stream_limits::StreamLimits;
pub use validate::{DocumentInput, PlannedRow, Refusal, RowInput};

use crate::store::{PageLimit, Position, Store, StoredDocument};
use crate::telemetry::metrics as m;
use fanout::Hub;
use fanout::{stream, stream_limits, tail};

/// Refuses a checkpoint at or below the collection's purge horizon (`field` names it).
fn expired_checkpoint(field: &str) -> ProtocolError {
    ProtocolError::checkpoint_expired(
        field,
        format!(
            "{field}: the checkpoint is older than the collection's purge horizon (deleted \
             documents after it were purged); reconcile your copy (Reconcile) or start over from an empty checkpoint"
        ),
    )
}

/// A page of a Pull.
#[derive(Debug, Clone)]
pub struct PullPage {
    /// Documents in change order.
    pub documents: Vec<StoredDocument>,
    /// The checkpoint after them (the request's own when empty).
    pub checkpoint: String,
}

/// The replication service's logic over a store.
pub struct Replicator<S> {
    store: Arc<S>,
    collections: Collections,
    limits: Limits,
    hub: Hub,
    tails: std::collections::HashMap<String, Arc<tail::Tail>>,
    streams: StreamLimits,
    /// Most bytes per Pull page and stream batch.
    page_bytes: usize,
    heartbeat: Duration,
    visibility_wait: Duration,
    shutdown: CancellationToken,
    waits_out: std::sync::atomic::AtomicU64,
    /// The declared filterable fields are recorded in the store (removal records follow
    /// them): filtered reads wait for it.
    filters_declared: Arc<std::sync::atomic::AtomicBool>,
    /// Built on first use from the key (the configured one, else the store's) and the
    /// store's dataset generation (the server starts and waits for migrations without a
    /// database).
    checkpoints: tokio::sync::OnceCell<checkpoint::Sealer>,
    /// The configured checkpoint key, if any.
    checkpoint_key: Option<[u8; checkpoint::KEY_LEN]>,
    /// Limits of the reconcile RPCs.
    reconcile_limits: reconcile::ReconcileLimits,
    /// How long pushes' idempotency keys are remembered.
    idempotency_retention: Duration,
}

/// Settings a [`Replicator`] is built from.
pub struct ReplicatorParts<S> {
    /// The store.
    pub store: Arc<S>,
    /// Declared collections.
    pub collections: Collections,
    /// Request limits.
    pub limits: Limits,
    /// Wake-up hub (fed by the listener and by local pushes).
    pub hub: Hub,
    /// Most concurrent streams in this process.
    pub streams_max: usize,
    /// Recent changes kept per collection for caught-up streams.
    pub stream_buffer_documents: usize,
    /// Most concurrent streams per principal.
    pub streams_per_principal_max: usize,
    /// Most bytes per Pull page and stream batch (at least one document each).
    pub page_bytes_max: usize,
    /// Most bytes kept per collection for caught-up streams.
    pub stream_buffer_bytes: usize,
    /// Most memory one principal's streams may pin (see [`stream_limits`]).
    pub stream_bytes_per_principal_max: usize,
    /// Idle interval before a Heartbeat.
    pub heartbeat: Duration,
    /// Longest wait of a Pull for signalled writes to become readable in order.
    pub visibility_wait: Duration,
    /// Cancelled when the server drains: streams end with UNAVAILABLE.
    pub shutdown: CancellationToken,
    /// The key that seals checkpoint tokens; `None`: the store's.
    pub checkpoint_key: Option<[u8; checkpoint::KEY_LEN]>,
}

impl<S: Store> Replicator<S> {
    /// Builds the replicator; its background work starts with [`Replicator::start`].
    pub fn new(p: ReplicatorParts<S>) -> Replicator<S> {
        let tails = p
            .collections
            .iter()
            .map(|c| {
                let tail = tail::Tail::with_fields(
                    &c.name,
                    p.stream_buffer_documents,
                    p.stream_buffer_bytes,
                    c.filter_fields.clone(),
                );
                (c.name.clone(), tail)
            })
            .collect();
        let batch_bytes = p.limits.batch_bytes(p.page_bytes_max);
        Replicator {
            tails,
            store: p.store,
            collections: p.collections,
            limits: p.limits,
            hub: p.hub,
            streams: StreamLimits::new(
                p.streams_max,
                p.streams_per_principal_max,
                batch_bytes,
                p.stream_bytes_per_principal_max,
            ),
            page_bytes: p.page_bytes_max,
            heartbeat: p.heartbeat,
            visibility_wait: p.visibility_wait,
            shutdown: p.shutdown,
            waits_out: Default::default(),
            filters_declared: Default::default(),
            checkpoints: tokio::sync::OnceCell::new(),
            checkpoint_key: p.checkpoint_key,
            reconcile_limits: reconcile::ReconcileLimits::default(),
            idempotency_retention: push::IDEMPOTENCY_RETENTION_DEFAULT,
        }
    }

    /// Sets how long pushes' idempotency keys are remembered (default 24 hours).
    pub fn with_idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }

    /// Sets the limits of the reconcile RPCs (default: [`reconcile::ReconcileLimits::default`]).
    pub fn with_reconcile_limits(mut self, limits: reconcile::ReconcileLimits) -> Self {
        self.reconcile_limits = limits;
        self
    }

    /// Records every collection's declared filterable fields in the store (adding to those
    /// recorded, never removing: see the store) and builds their indexes. Filtered reads are
    /// UNAVAILABLE until it succeeded once ([`Replicator::start`] retries it when the database
    /// was not ready).
    pub async fn declare_filters(&self) -> Result<(), ProtocolError> {
        declare_filters(self.store.as_ref(), &self.collections).await?;
        self.filters_declared
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Starts each collection's shared stream tail on `tasks`; they run until the streams'
    /// shutdown. Retries [`Replicator::declare_filters`] until it succeeds, if it has not.
    pub fn start(&self, tasks: &TaskTracker) {
        if !self
            .filters_declared
            .load(std::sync::atomic::Ordering::Acquire)
        {
            let (store, collections) = (self.store.clone(), self.collections.clone());
            let (declared, shutdown) = (self.filters_declared.clone(), self.shutdown.clone());
            tasks.spawn(async move {
                loop {
                    match declare_filters(store.as_ref(), &collections).await {
                        Ok(()) => {
                            declared.store(true, std::sync::atomic::Ordering::Release);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e.message, "cannot declare the filterable fields yet (migrations pending?); retrying"),
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            });
        }
        for (name, tail) in &self.tails {
            if let Some(signals) = self.hub.subscribe(name) {
                tasks.spawn(tail.clone().run(
                    self.store.clone(),
                    signals,
                    PageLimit::new(self.limits.pull_max, self.page_bytes),
                    self.shutdown.clone(),
                ));
            }
        }
    }

    /// The checkpoint tokens of `principal` on `collection` for reads in `scope` (its
    /// selector's digest and its read rule's fingerprint).
    async fn filtered_tokens(
        &self,
        collection: &str,
        principal: &Principal,
        scope: &selective::ReadScope,
    ) -> Result<checkpoint::Tokens, ProtocolError> {
        let sealer = self
            .checkpoints
            .get_or_try_init(|| async {
                let key = match self.checkpoint_key {
                    Some(key) => key,
                    None => self.store.checkpoint_key().await?,
                };
                // Read once: a re-stamp (which moves the generation) finishes before serving.
                let generation = self.store.dataset_generation().await?;
                Ok::<_, ProtocolError>(checkpoint::Sealer::new(&key).with_generation(generation))
            })
            .await?;
        Ok(sealer.bind_filtered(collection, principal, scope.selector.as_ref(), scope.rule))
    }

    /// Pull: the documents whose latest write is after `checkpoint`, at most `limit`; with a
    /// `selector` (JSON bytes, empty for none), only those matching it and removals of those
    /// that stopped matching (see [`selective`]).
    pub async fn pull(
        &self,
        principal: &Principal,
        collection: &str,
        checkpoint: &str,
        limit: u32,
        selector: &[u8],
    ) -> Result<PullPage, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_read(&collection)?;
        let scope = self.scope(&collection, principal, selector)?;
        let tokens = self
            .filtered_tokens(&collection.name, principal, &scope)
            .await?;
        let after = tokens.decode(checkpoint, "checkpoint.token", self.collections.names())?;
        let limit = PageLimit::new(self.limits.pull_limit(limit), self.page_bytes);
        // A write this process has heard of (its own pushes, or NOTIFY from others) may be
        // committed yet not readable in order while an older transaction runs. Wait a little
        // for it, so that a client sees its own acknowledged writes; but wait for any one
        // position only once (it may be a long transaction's, or a stale hint).
        let pending = self.hub.pending(&collection.name);
        let deadline = tokio::time::Instant::now() + self.visibility_wait;
        let mut backoff = Duration::from_millis(1);
        let mut waited = false;
        let page = loop {
            let page = match &scope.filter {
                None => {
                    self.store
                        .read_changes(&collection.name, scope.owner(), after, limit)
                        .await?
                }
                Some(filter) => {
                    self.store
                        .read_filtered(&collection.name, scope.owner(), &filter.read, after, limit)
                        .await?
                }
            };
            if page.expired {
                return Err(expired_checkpoint("checkpoint.token"));
            }
            let Some(signalled) = pending else {
                break page;
            };
            if page.horizon > signalled || page.more {
                if waited {
                    self.count_wait(&collection.name, "readable");
                }
                break page;
            }
            if tokio::time::Instant::now() + backoff > deadline {
                self.hub.waited_out(&collection.name, signalled);
                self.count_wait(&collection.name, "waited_out");
                break page;
            }
            waited = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        };
        metrics::counter!(m::DOCS_PULLED, "collection" => collection.name.clone())
            .increment(page.documents.len() as u64);
        // A reader starting over begins at this page's horizon (see `Resume::floor`).
        let floor = if after.position == Position::START {
            page.horizon
        } else {
            after.floor
        };
        let checkpoint = match page.documents.last() {
            Some(last) => tokens.encode(last.position, floor),
            None => checkpoint.to_owned(),
        };
        Ok(PullPage {
            documents: page.documents,
            checkpoint,
        })
    }

    /// Subscribe: starts a stream task and returns its channel. The first event comes from
    /// the catch-up read. With a `selector` (JSON bytes, empty for none), the stream carries
    /// what a filtered Pull would (see [`selective`]).
    pub async fn subscribe(
        &self,
        principal: &Principal,
        collection: &str,
        checkpoint: &str,
        selector: &[u8],
    ) -> Result<mpsc::Receiver<StreamItem>, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_read(&collection)?;
        let scope = self.scope(&collection, principal, selector)?;
        let tokens = self
            .filtered_tokens(&collection.name, principal, &scope)
            .await?;
        let resume = match tokens.decode(checkpoint, "checkpoint.token", self.collections.names()) {
            Ok(resume) => resume,
            // An expired checkpoint is a stream's Resync, as when the stream is overtaken
            // by a purge later: one way for a client to handle both.
            Err(e) if e.kind == Kind::FailedPrecondition => {
                let (out, events) = mpsc::channel(1);
                stream::resync(&collection.name, &e.message);
                let _ = out.try_send(Ok(StreamEvent::Resync { reason: e.message }));
                return Ok(events);
            }
            Err(e) => return Err(e),
        };
        if self.shutdown.is_cancelled() {
            return Err(ProtocolError::unavailable(
                Reason::ShuttingDown,
                "the server is shutting down; reconnect to another instance",
            ));
        }
        let slot = self.streams.acquire(&principal.subject)?;
        let tail = self
            .tails
            .get(&collection.name)
            .cloned()
            .ok_or_else(|| ProtocolError::internal("collection without a tail"))?;
        let (out, events) = mpsc::channel(1);
        let subscription = stream::Subscription {
            store: self.store.clone(),
            collection: collection.name.clone(),
            owner: scope.owner,
            filter: scope.filter.map(Arc::new),
            expires_at: principal.expires_at,
            position: resume.position,
            floor: resume.floor,
            caught_up: false,
            page: PageLimit::new(self.limits.pull_max, self.page_bytes),
            heartbeat: self.heartbeat,
            tail,
            tokens,
            shutdown: self.shutdown.clone(),
            out,
            _slot: slot,
        };
        tokio::spawn(subscription.run());
        Ok(events)
    }

    /// A read's scope (see [`selective::scope`]); filtered ones once the fields are declared.
    fn scope(
        &self,
        collection: &Collection,
        principal: &Principal,
        selector: &[u8],
    ) -> Result<selective::ReadScope, ProtocolError> {
        let scope = selective::scope(collection, principal, selector)?;
        if scope.filter.is_some()
            && !self
                .filters_declared
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(ProtocolError::unavailable(
                Reason::DatabaseUnavailable,
                "filtered reads start once the filterable fields are recorded in the database \
                 (are the migrations applied?); retry shortly",
            ));
        }
        Ok(scope)
    }

    fn count_wait(&self, collection: &str, outcome: &'static str) {
        if outcome == "waited_out" {
            self.waits_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        metrics::counter!(m::VISIBILITY_WAITS, "collection" => collection.to_owned(), "outcome" => outcome)
            .increment(1);
    }

    /// Pulls whose wait for a signalled commit ran out, since start (the metric
    /// `syncline_visibility_waits_total{outcome="waited_out"}`, readable without a recorder).
    pub fn visibility_waits_out(&self) -> u64 {
        self.waits_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Documents held in `collection`'s shared stream buffer (0 for unknown collections).
    pub fn buffered(&self, collection: &str) -> usize {
        self.tails.get(collection).map_or(0, |t| t.len())
    }

    /// Bytes held in `collection`'s shared stream buffer (0 for unknown collections).
    pub fn buffered_bytes(&self, collection: &str) -> usize {
        self.tails.get(collection).map_or(0, |t| t.bytes())
    }

    /// `collection`'s shared tail (tests reach its hooks through it).
    #[doc(hidden)]
    pub fn tail(&self, collection: &str) -> Option<Arc<tail::Tail>> {
        self.tails.get(collection).cloned()
    }

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        self.streams.open()
    }
}

/// Each id a push touches once, with the revision its first row assumes: only that row ever
/// compares with the stored state, so a match replaces it unread. An id first met in a refused
/// row (`None`) is read whole: its state may be reported back; so is every id when `whole`
/// (a write rule looks at the stored states).
fn push_targets<'a>(
    rows: impl Iterator<Item = (&'a str, Option<&'a validate::ValidRow>)>,
    whole: bool,
) -> Vec<crate::store::PushTarget> {
    let mut seen = std::collections::HashSet::new();
    rows.filter(|(id, _)| seen.insert(*id))
        .map(|(id, row)| crate::store::PushTarget {
            id: id.to_owned(),
            skip_body_at: match row.and_then(|r| r.assumed.as_ref()) {
                Some(validate::Assumed::Revision(rev)) if !whole => Some(rev.clone()),
                _ => None,
            },
            // A refused row's id (no row) is read for the state reported with it.
            new: row.is_some_and(|r| r.assumed.is_none()),
        })
        .collect()
}

/// See [`Replicator::declare_filters`].
async fn declare_filters<S: Store>(
    store: &S,
    collections: &Collections,
) -> Result<(), ProtocolError> {
    for collection in collections.iter() {
        let fields = &collection.filter_fields;
        let paths: Vec<String> = fields.iter().map(|f| f.path.clone()).collect();
        store
            .declare_filter_fields(&collection.name, &paths, &fields.index_ddl(true))
            .await?;
    }
    Ok(())
}
