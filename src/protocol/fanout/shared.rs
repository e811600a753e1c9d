//! Batches shared by the streams of one view. With many streams following a collection, a
//! change used to be cloned out of the tail and encoded once per stream; now the streams of
//! one view (one owner, or every owner; one selector, or none) woken by the same move of the
//! tail's head ask the tail once, and the transport encodes the answer once for all of them.
//!
//! A stream asks [`SharedTakes`] the question it would ask the tail: its view, its position,
//! its batch limit, and the head it saw before asking. The first stream to ask takes the
//! answer from the tail and records it; the others with the same question take the recorded
//! answer. The head is part of the question so that a stream never receives an answer older
//! than the wake-up it acts on (it would then wait for the next write with changes still
//! unsent). Only the answers for the newest head are kept, within a byte budget counted once
//! for the process.
//!
//! Memory: a [`Batch`] holds its documents until the transport encodes it, then only the
//! encoding ([`Batch::encoded`] drops the documents): whichever stream holds it, it weighs one
//! batch, as an unshared batch did. So a stream still pins at most two batches (one in its
//! channel, one in the HTTP/2 send buffer), each counted at its full size by the stream limits
//! even when shared: the sum over streams is an upper bound of what they pin together.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::store::{PageLimit, Position, StoredDocument};

/// Documents of one stream batch, in change order, shared by every stream that sends them.
#[derive(Clone)]
pub struct Batch(Arc<Inner>);

struct Inner {
    /// The documents, until the transport encodes them (see [`Batch::encoded`]).
    documents: Mutex<Option<Vec<StoredDocument>>>,
    /// The transport's encoding, made once for every stream that sends the batch.
    encoded: OnceLock<Bytes>,
    /// Kept apart from the documents, for the streams' metrics once those are gone.
    updated_at: Vec<DateTime<Utc>>,
    last: Position,
    /// What the documents weigh ([`StoredDocument::page_bytes`]).
    bytes: usize,
}

impl Batch {
    /// A batch of `documents`; `None` when there are none.
    pub fn new(documents: Vec<StoredDocument>) -> Option<Batch> {
        let last = documents.last()?.position;
        Some(Batch(Arc::new(Inner {
            updated_at: documents.iter().map(|d| d.updated_at).collect(),
            bytes: documents.iter().map(StoredDocument::page_bytes).sum(),
            documents: Mutex::new(Some(documents)),
            encoded: OnceLock::new(),
            last,
        })))
    }

    /// How many documents the batch holds.
    pub fn len(&self) -> usize {
        self.0.updated_at.len()
    }

    /// Never true: a batch holds at least one document.
    pub fn is_empty(&self) -> bool {
        self.0.updated_at.is_empty()
    }

    /// The position of the last document.
    pub fn last_position(&self) -> Position {
        self.0.last
    }

    /// When each document was written, in order.
    pub fn updated_at(&self) -> &[DateTime<Utc>] {
        &self.0.updated_at
    }

    /// A copy of the documents; `None` once the transport has encoded them.
    pub fn documents(&self) -> Option<Vec<StoredDocument>> {
        self.0
            .documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The batch's encoding, made by `encode` on the first call (every later call, from any
    /// stream, returns the same bytes). The documents are dropped then: the encoding is all a
    /// transport sends, and holding both would double what a slow stream pins.
    pub fn encoded(&self, encode: impl FnOnce(&[StoredDocument]) -> Bytes) -> Bytes {
        self.0
            .encoded
            .get_or_init(|| {
                let documents = self
                    .0
                    .documents
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                encode(&documents)
            })
            .clone()
    }

    /// True when both are the same shared batch (not merely equal documents).
    pub fn ptr_eq(&self, other: &Batch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.len())
            .field("last", &self.0.last)
            .field("encoded", &self.0.encoded.get().map(Bytes::len))
            .finish()
    }
}

/// Equal when both hold the same documents (or are the same batch).
impl PartialEq for Batch {
    fn eq(&self, other: &Batch) -> bool {
        self.ptr_eq(other) || (self.documents().is_some() && self.documents() == other.documents())
    }
}

/// The documents, copied out (for callers of the protocol layer that read them directly).
impl IntoIterator for Batch {
    type Item = StoredDocument;
    type IntoIter = std::vec::IntoIter<StoredDocument>;

    fn into_iter(self) -> Self::IntoIter {
        self.documents().unwrap_or_default().into_iter()
    }
}

/// What identifies a stream's question to the tail. Built from every field of the stream's
/// view: two streams share an answer only when the tail would answer both alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The view's owner (`None`: every owner).
    pub owner: Option<String>,
    /// The digest of the view's selector (`None`: unfiltered).
    pub selector: Option<[u8; 32]>,
    /// The view's floor where it can change the answer (see [`Question::floor_key`]), else 0.
    pub floor: i64,
    /// The stream's position.
    pub after: Position,
    /// The stream's batch limit.
    pub limit: PageLimit,
}

impl Question {
    /// The floor as far as it matters for a take after `after`: the tail drops removal records
    /// of transactions below the floor, and every record after `after` is of a transaction at
    /// or above `after.tx`; so a floor at or below it changes nothing, and streams whose floors
    /// differ there still share.
    pub fn floor_key(floor: i64, after: Position, filtered: bool) -> i64 {
        if filtered && floor > after.tx {
            floor
        } else {
            0
        }
    }
}

/// The answer to a question: the batch and where the stream stands after it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The documents.
    pub batch: Batch,
    /// The position after them.
    pub position: Position,
    /// The batch stopped at its limit.
    pub more: bool,
}

/// The recorded answers of one collection, for the newest head seen.
#[derive(Debug, Default)]
pub struct SharedTakes {
    recorded: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    head: Position,
    answers: Vec<(Question, Answer)>,
    bytes: usize,
}

/// Recorded answers per head, at most.
const ANSWERS_MAX: usize = 64;
/// Bytes of recorded answers, in batch limits (counted once for the process: the streams that
/// hold the same batches count them again in their own limits).
const BUDGET_BATCHES: usize = 2;

impl SharedTakes {
    /// The recorded answer to `question` asked after seeing `head`, or `take`'s answer,
    /// recorded for the next stream. `take` returns `None` when the tail cannot answer (the
    /// stream reads the table) or has no documents for the stream: neither is recorded.
    pub fn answer(
        &self,
        head: Position,
        question: Question,
        take: impl FnOnce() -> Option<Answer>,
    ) -> Option<Answer> {
        {
            let recorded = self.lock();
            if recorded.head == head
                && let Some((_, answer)) = recorded.answers.iter().find(|(q, _)| *q == question)
            {
                return Some(answer.clone());
            }
        }
        // Taken outside the lock: streams of other views must not queue behind this take.
        let answer = take()?;
        let mut recorded = self.lock();
        if head > recorded.head {
            *recorded = Recorded {
                head,
                ..Recorded::default()
            };
        }
        if head == recorded.head {
            if let Some((_, first)) = recorded.answers.iter().find(|(q, _)| *q == question) {
                // Another stream answered meanwhile: share its batch, not a second one.
                return Some(first.clone());
            }
            let budget = question.limit.bytes.saturating_mul(BUDGET_BATCHES);
            let bytes = answer.batch.0.bytes;
            if recorded.answers.len() < ANSWERS_MAX
                && recorded.bytes.saturating_add(bytes) <= budget
            {
                recorded.bytes += bytes;
                recorded.answers.push((question, answer.clone()));
            }
        }
        Some(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, tx: i64) -> StoredDocument {
        StoredDocument {
            id: id.into(),
            owner: "o".into(),
            body: "{}".into(),
            deleted: false,
            revision: format!("{tx}-x"),
            updated_at: chrono::Utc::now(),
            position: Position { tx, seq: 0 },
            left_scope: false,
        }
    }

    fn question(owner: Option<&str>, after: i64) -> Question {
        Question {
            owner: owner.map(str::to_owned),
            selector: None,
            floor: 0,
            after: Position { tx: after, seq: 0 },
            limit: PageLimit::new(100, 1 << 20),
        }
    }

    fn answer(ids: &[(&str, i64)]) -> Option<Answer> {
        let batch = Batch::new(ids.iter().map(|(id, tx)| doc(id, *tx)).collect())?;
        Some(Answer {
            position: batch.last_position(),
            batch,
            more: false,
        })
    }

    #[test]
    fn one_take_per_question_and_head() {
        let shared = SharedTakes::default();
        let head = Position { tx: 12, seq: 0 };
        let mut takes = 0;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(
                shared
                    .answer(head, question(None, 10), || {
                        takes += 1;
                        answer(&[("a", 11), ("b", 12)])
                    })
                    .expect("an answer"),
            );
        }
        assert_eq!(takes, 1);
        assert!(got.iter().all(|a| a.batch.ptr_eq(&got[0].batch)));
        // Another owner, another position, or a newer head: asked again.
        for (head, q) in [
            (head, question(Some("o"), 10)),
            (head, question(None, 11)),
            (Position { tx: 13, seq: 0 }, question(None, 10)),
        ] {
            let mut asked = false;
            shared.answer(head, q, || {
                asked = true;
                answer(&[("b", 12)])
            });
            assert!(asked);
        }
        // A stream that saw an older head is answered, never from (nor into) the records.
        let mut asked = 0;
        for _ in 0..2 {
            shared.answer(head, question(None, 10), || {
                asked += 1;
                answer(&[("a", 11)])
            });
        }
        assert_eq!(asked, 2);
    }

    #[test]
    fn the_floor_matters_only_above_the_position() {
        let after = Position { tx: 10, seq: 3 };
        assert_eq!(Question::floor_key(5, after, true), 0);
        assert_eq!(Question::floor_key(10, after, true), 0);
        assert_eq!(Question::floor_key(11, after, true), 11);
        assert_eq!(Question::floor_key(11, after, false), 0);
    }

    #[test]
    fn encoding_once_drops_the_documents() {
        let batch = Batch::new(vec![doc("a", 11), doc("b", 12)]).expect("a batch");
        let copy = batch.clone();
        assert_eq!(copy.into_iter().count(), 2);
        let mut encodes = 0;
        for _ in 0..3 {
            let bytes = batch.encoded(|docs| {
                encodes += 1;
                Bytes::from(docs.iter().map(|d| d.id.clone()).collect::<String>())
            });
            assert_eq!(&bytes[..], b"ab");
        }
        assert_eq!(encodes, 1);
        assert_eq!(batch.documents(), None);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.last_position(), Position { tx: 12, seq: 0 });
    }

    #[test]
    fn recorded_answers_stay_within_their_budget() {
        let shared = SharedTakes::default();
        let head = Position { tx: 100, seq: 0 };
        let big = |id: &str| {
            let mut d = doc(id, 50);
            d.body = "x".repeat(600);
            Some(Answer {
                batch: Batch::new(vec![d]).expect("a batch"),
                position: Position { tx: 50, seq: 0 },
                more: false,
            })
        };
        let limit = PageLimit::new(100, 1000);
        let q = |owner: &str| Question {
            limit,
            ..question(Some(owner), 10)
        };
        shared.answer(head, q("a"), || big("a"));
        shared.answer(head, q("b"), || big("b"));
        // 2 x 1000 bytes of budget: a third 700-byte batch is not recorded.
        shared.answer(head, q("c"), || big("c"));
        let mut asked = false;
        shared.answer(head, q("c"), || {
            asked = true;
            big("c")
        });
        assert!(asked, "over the budget: not recorded");
        assert!(shared.lock().bytes <= 2 * 1000);
    }
}
