//! One Subscribe stream: catch up from the checkpoint in pages read from the table, then follow
//! the collection's shared [`Tail`] (changes read once for all streams). Nothing is queued per
//! subscriber: the only buffer is a channel of one event, and the next page is taken only once
//! the client has received the previous one; a stream that falls behind the tail's window
//! reads the table again. Batches are bounded in documents and bytes like Pull pages.
//!
//! The credential's expiry is checked before every send, not only while the stream is idle: a
//! client catching up slowly must not keep receiving on an expired token.
//!
//! Every table read checks the purge horizon in its own snapshot: a stream whose position a
//! purge has passed (a slow reader, or one opened from an old checkpoint) sends `Resync` and
//! ends. Pages from the shared tail need no check: the tail read them before any purge could
//! remove them, so they are exactly what the table held.

use std::sync::Arc;
use std::time::Duration;

use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shared::{Answer, Batch, Question};
use super::stream_limits::StreamSlot;
use super::tail::{Tail, Take, View, covered_below};
use crate::protocol::{ProtocolError, Reason, checkpoint};
use crate::store::{PageLimit, Position, Resume, Store};
use crate::telemetry::metrics as m;

/// What a stream sends.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Documents in change order and the checkpoint after them.
    Changes {
        /// The documents, shared with the other streams of the same view that send them.
        documents: Batch,
        /// Token of the position after the last one.
        checkpoint: String,
    },
    /// Nothing happened for a heartbeat interval.
    Heartbeat,
    /// The stream's position can no longer be served exactly (older than the purge horizon, or
    /// of another dataset generation); the stream ends after it. The client starts over.
    Resync {
        /// Why, in words for logs.
        reason: String,
    },
}

/// Why a stream overtaken by a purge resyncs.
const OVERTAKEN: &str = "the stream's position is older than the collection's purge horizon \
                         (deleted documents after it were purged); start over from an empty \
                         checkpoint";

/// Counts and logs a Resync sent on `collection`'s stream.
pub(in crate::protocol) fn resync(collection: &str, reason: &str) {
    tracing::info!(collection, reason, "stream resync");
    metrics::counter!(m::RESYNCS).increment(1);
}

/// Items on a stream's channel: an event, or the error that ends the stream.
pub type StreamItem = Result<StreamEvent, ProtocolError>;

/// A page for a stream: documents, the position they reach, and whether the stream is now
/// caught up with the table.
struct Page {
    documents: Option<Batch>,
    position: Position,
    caught_up: bool,
    /// The page ended at its limit: read the next one at once.
    more: bool,
    /// The position is at or below the purge horizon: nothing can be served from it.
    expired: bool,
    /// The visibility horizon of a table read.
    horizon: Option<i64>,
}

/// Everything one stream task needs.
pub(in crate::protocol) struct Subscription<S> {
    pub store: Arc<S>,
    pub collection: String,
    /// Only this owner's documents (every document for a service principal).
    pub owner: Option<String>,
    /// Selective sync: only matching documents, and removals (see `selective`).
    pub filter: Option<Arc<crate::protocol::selective::Filter>>,
    /// The credential's expiry: the stream ends with UNAUTHENTICATED then.
    pub expires_at: Option<SystemTime>,
    pub position: Position,
    /// The stream's floor (see `Resume::floor`): from its checkpoint, or the horizon of its
    /// first read when it starts from the beginning.
    pub floor: i64,
    /// False until a table read came back not full; until then pages come from the table.
    pub caught_up: bool,
    /// Documents and bytes per batch.
    pub page: PageLimit,
    pub heartbeat: Duration,
    pub tail: Arc<Tail>,
    /// Seals the checkpoint of each batch for this stream's collection and principal.
    pub tokens: checkpoint::Tokens,
    pub shutdown: CancellationToken,
    pub out: mpsc::Sender<StreamItem>,
    /// Held for the stream's life: counts against the stream limits.
    pub _slot: StreamSlot,
}

impl<S: Store> Subscription<S> {
    /// Runs until the client goes away, the server shuts down or the store fails.
    pub async fn run(mut self) {
        let mut head = self.tail.watch();
        // Looked up once: with many streams, a registry lookup (and a label copied) per batch
        // and stream added up.
        let sent = Sent {
            documents: metrics::counter!(m::DOCS_STREAMED, "collection" => self.collection.clone()),
            lag: metrics::histogram!(m::STREAM_LAG_SECONDS),
        };
        let mut last_sent = Instant::now();
        let mut read = true;
        // Built once and reset, not rebuilt at every wake-up: with many streams, registering
        // timers and waiters per iteration was a visible share of the fan-out's CPU.
        let expired = tokio::time::sleep_until(self.expiry());
        let heartbeat = tokio::time::sleep_until(last_sent + self.heartbeat);
        let shutdown = self.shutdown.clone();
        let stopping = shutdown.cancelled();
        let out = self.out.clone();
        let gone = out.closed();
        tokio::pin!(expired, heartbeat, stopping, gone);
        loop {
            if read {
                // Wait for room before reading, so a slow client holds back reads, not memory.
                let permit = tokio::select! {
                    _ = &mut stopping => return self.end_for_shutdown().await,
                    _ = &mut expired => return self.end_expired().await,
                    permit = self.out.reserve() => match permit {
                        Ok(p) => p,
                        Err(_) => return, // the client went away
                    },
                };
                if self.expired() {
                    permit.send(Err(token_expired()));
                    return;
                }
                // Mark the head seen before looking: a change appended meanwhile wakes us.
                let seen = *head.borrow_and_update();
                // Lag is commit-to-send of live changes; documents a reconnecting stream catches
                // up on are old by design and would drown it.
                let live = self.caught_up;
                let Page {
                    documents,
                    position,
                    caught_up,
                    more,
                    expired,
                    horizon,
                    // Boxed: the read's future is large, and inline it would sit in every idle
                    // stream's task for the stream's whole life.
                } = match Box::pin(self.next_page(seen)).await {
                    Ok(next) => next,
                    Err(e) => {
                        permit.send(Err(e));
                        return;
                    }
                };
                if expired {
                    resync(&self.collection, OVERTAKEN);
                    permit.send(Ok(StreamEvent::Resync {
                        reason: OVERTAKEN.to_owned(),
                    }));
                    return;
                }
                if self.position == Position::START
                    && let Some(horizon) = horizon
                {
                    self.floor = horizon;
                }
                self.position = self.position.max(position);
                self.caught_up |= caught_up;
                // The read may have outlived the token.
                if self.expired() {
                    permit.send(Err(token_expired()));
                    return;
                }
                if let Some(documents) = documents {
                    let checkpoint = self.tokens.encode(documents.last_position(), self.floor);
                    sent.observe(&documents, live);
                    permit.send(Ok(StreamEvent::Changes {
                        documents,
                        checkpoint,
                    }));
                    last_sent = Instant::now();
                    heartbeat.as_mut().reset(last_sent + self.heartbeat);
                } else {
                    drop(permit);
                }
                if more {
                    continue;
                }
            }
            read = true;
            tokio::select! {
                _ = &mut stopping => return self.end_for_shutdown().await,
                _ = &mut expired => return self.end_expired().await,
                _ = &mut gone => return,
                changed = head.changed() => {
                    if changed.is_err() {
                        return; // the tail is gone: the server is stopping
                    }
                }
                _ = &mut heartbeat => {
                    if self.expired() {
                        return self.end_expired().await;
                    }
                    if self.out.send(Ok(StreamEvent::Heartbeat)).await.is_err() {
                        return;
                    }
                    metrics::counter!(m::HEARTBEATS).increment(1);
                    last_sent = Instant::now();
                    heartbeat.as_mut().reset(last_sent + self.heartbeat);
                    read = false;
                }
            }
        }
    }

    /// The next page after the stream's position: from the shared tail when it covers the
    /// position, else from the table. Returns the documents and the position they reach.
    /// `seen` is the tail's head as the stream saw it before asking: streams of the same view
    /// that saw the same head share one answer (see `super::shared`).
    ///
    /// Catch-up always reads the table, until a page comes back not full: the tail may lag the
    /// table, and a document committed before the stream started must arrive at its latest
    /// state, not at an older one still buffered.
    async fn next_page(&self, seen: Position) -> Result<Page, ProtocolError> {
        if self.caught_up {
            let view = View {
                owner: self.owner.as_deref(),
                selector: self.filter.as_ref().map(|f| &f.selector),
                floor: self.floor,
            };
            // Covered, but nothing for this stream: not worth recording.
            let mut nothing = None;
            let shared = self.tail.shared().answer(seen, self.question(view), || {
                match self.tail.take_view(self.position, view, self.page) {
                    Take::Covered {
                        documents,
                        position,
                        more,
                    } => match Batch::new(documents) {
                        Some(batch) => Some(Answer {
                            batch,
                            position,
                            more,
                        }),
                        None => {
                            nothing = Some((position, more));
                            None
                        }
                    },
                    Take::NotCovered => None,
                }
            });
            let covered = match (shared, nothing) {
                (Some(a), _) => Some((Some(a.batch), a.position, a.more)),
                (None, Some((position, more))) => Some((None, position, more)),
                (None, None) => None,
            };
            if let Some((documents, position, more)) = covered {
                return Ok(Page {
                    documents,
                    position,
                    caught_up: true,
                    more,
                    expired: false,
                    horizon: None,
                });
            }
        }
        let after = Resume::new(self.position, self.floor);
        let page = match &self.filter {
            None => {
                self.store
                    .read_changes(&self.collection, self.owner.as_deref(), after, self.page)
                    .await?
            }
            Some(filter) => {
                self.store
                    .read_filtered(
                        &self.collection,
                        self.owner.as_deref(),
                        &filter.read,
                        after,
                        self.page,
                    )
                    .await?
            }
        };
        let full = page.more;
        let position = match page.documents.last() {
            Some(last) if full => last.position,
            // Not full: everything below the horizon has been seen.
            _ => self.position.max(covered_below(page.horizon)),
        };
        Ok(Page {
            documents: Batch::new(page.documents),
            position,
            caught_up: !full,
            more: full,
            expired: page.expired,
            horizon: Some(page.horizon),
        })
    }

    /// What identifies this stream's take from the tail among those of other streams.
    fn question(&self, view: View<'_>) -> Question {
        // Every field of the view, so that a field added to it cannot be forgotten here:
        // streams the tail would answer differently must never share an answer.
        let View {
            owner,
            selector,
            floor,
        } = view;
        let filtered = selector.is_some();
        Question {
            owner: owner.map(str::to_owned),
            selector: self.filter.as_ref().filter(|_| filtered).map(|f| f.digest),
            floor: Question::floor_key(floor, self.position, filtered),
            after: self.position,
            limit: self.page,
        }
    }

    async fn end_for_shutdown(&self) {
        self.end(ProtocolError::unavailable(
            Reason::ShuttingDown,
            "the server is shutting down; reconnect from your last checkpoint",
        ))
        .await;
    }

    async fn end(&self, error: ProtocolError) {
        // Bounded: a client that stopped reading must not hold up shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.out.send(Err(error))).await;
    }

    /// Ends the stream with UNAUTHENTICATED. The client may be slow rather than gone: it gets
    /// [`EXPIRED_STATUS_WAIT`] to take the batch ahead of the status, or the stream would end
    /// without one (an OK end, to the client); then the stream gives up, so that an expired
    /// stream whose client never reads does not hold its slot for good.
    async fn end_expired(&self) {
        let _ =
            tokio::time::timeout(EXPIRED_STATUS_WAIT, self.out.send(Err(token_expired()))).await;
    }

    /// True once the credential has expired.
    fn expired(&self) -> bool {
        self.expires_at.is_some_and(|at| SystemTime::now() >= at)
    }

    /// The instant the credential expires (far in the future when it never does).
    fn expiry(&self) -> Instant {
        const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let left = match self.expires_at {
            None => NEVER,
            Some(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        };
        Instant::now() + left.min(NEVER)
    }
}

/// A stream's metrics of what it sent.
struct Sent {
    documents: metrics::Counter,
    lag: metrics::Histogram,
}

impl Sent {
    /// Counts streamed documents and, for live ones, their lag from commit to send.
    fn observe(&self, documents: &Batch, live: bool) {
        self.documents.increment(documents.len() as u64);
        if !live {
            return;
        }
        let now = chrono::Utc::now();
        for updated_at in documents.updated_at() {
            self.lag
                .record((now - *updated_at).as_seconds_f64().max(0.0));
        }
    }
}

/// How long an expired stream waits for its client to take the status.
const EXPIRED_STATUS_WAIT: Duration = Duration::from_secs(10);

/// Ends a stream whose credential expired.
fn token_expired() -> ProtocolError {
    ProtocolError::unauthenticated(
        Reason::TokenExpired,
        "the token expired; reconnect with a fresh one",
    )
}
