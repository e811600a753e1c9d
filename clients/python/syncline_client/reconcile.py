"""Reconcile: bring a local copy back in line with the server without a full re-download.

Used after a checkpoint expired (tombstones purged past it, or the database was restored into
another cluster): the client hashes the (id, revision) pairs it holds into buckets, compares
bucket digests with the server in rounds (``Reconcile``), going deeper only where they differ,
lists the last differing buckets (``ReconcileList``), fetches what it lacks or holds at another
revision (``Fetch``), and drops what the server no longer has. Pulling then continues from the
first round's checkpoint, C0, with nothing missed in between (README "Reconcile" explains why).

The hashes must equal the server's bit for bit; the reference is ``src/protocol/reconcile.rs``:

- bucket of an id at ``b`` bits: the top ``b`` bits of the first 8 bytes of ``sha256(id)``,
  big-endian;
- hash of a document: the first 8 bytes of ``sha256(id || "\\n" || revision)``, big-endian;
- digest of a bucket: its number of documents and the sum of their hashes modulo 2^64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import LimitExceeded

if TYPE_CHECKING:  # pragma: no cover
    from .client import Doc

__all__ = [
    "BUCKET_BITS_MAX",
    "ReconcileLimits",
    "ReconcileResult",
    "bucket_of",
    "digests",
    "item_hash",
    "key",
]

#: The deepest bucket level the server accepts.
BUCKET_BITS_MAX = 24
_MASK64 = (1 << 64) - 1
#: Bits added per deeper round: a differing bucket is split into 16.
_STEP_BITS = 4
#: The first round's level (4096 buckets: about 25 documents each for 100,000).
_FIRST_BITS = 12
#: A differing bucket the server holds at most this many documents in is listed rather than
#: compared deeper: listing a pair costs about as much as a few digests.
_LIST_AT_MOST = 8


def _sha8(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def bucket_of(doc_id: str, bits: int) -> int:
    """The bucket of ``doc_id`` at ``bits`` bits (0 to :data:`BUCKET_BITS_MAX`)."""
    bits = min(bits, BUCKET_BITS_MAX)
    if bits <= 0:
        return 0
    return _sha8(doc_id.encode()) >> (64 - bits)


def item_hash(doc_id: str, revision: str) -> int:
    """The hash of one (id, revision) pair, as the server computes it."""
    return _sha8(doc_id.encode() + b"\n" + revision.encode())


def key(doc_id: str, revision: str) -> tuple[int, int]:
    """``(bucket at BUCKET_BITS_MAX bits, item hash)``: computed once per held document, the
    bucket at fewer bits being a prefix of it."""
    return bucket_of(doc_id, BUCKET_BITS_MAX), item_hash(doc_id, revision)


def digests(
    keys: Iterable[tuple[int, int]], bits: int, within_bits: int = 0, within: Iterable[int] = ()
) -> dict[int, tuple[int, int]]:
    """``{bucket: (count, sum)}`` at ``bits`` of the non-empty buckets of ``keys`` (see
    :func:`key`), keeping only those under a ``within`` prefix at ``within_bits`` (all when
    ``within_bits`` is 0)."""
    prefixes = set(within)
    out: dict[int, tuple[int, int]] = {}
    for top, digest in keys:
        bucket = top >> (BUCKET_BITS_MAX - bits)
        if within_bits and (bucket >> (bits - within_bits)) not in prefixes:
            continue
        count, total = out.get(bucket, (0, 0))
        out[bucket] = (count + 1, (total + digest) & _MASK64)
    return out


@dataclass(frozen=True)
class ReconcileLimits:
    """The server's request limits the client splits its requests by: the configuration keys
    ``reconcile_digests_max``, ``reconcile_list_max`` and ``fetch_ids_max`` (defaults here are
    the server's). Lower them if the server is configured lower."""

    digests_max: int = 65_536
    list_max: int = 10_000
    fetch_ids_max: int = 1_000


@dataclass
class ReconcileResult:
    """What a reconcile found.

    Apply it to the local copy: store every document of ``upserts`` (live documents, at the
    server's state), drop every id of ``removed`` (held ids the server no longer has live for
    this caller: deleted, purged, or not visible), then continue pulling or subscribing from
    ``checkpoint`` (C0). The counters say what it cost: ``fetched`` documents transferred,
    ``listed`` (id, revision) pairs listed, ``requests`` calls made.
    """

    upserts: list[Doc]
    removed: list[str]
    checkpoint: str
    fetched: int = 0
    listed: int = 0
    requests: int = 0
    #: Per level, how many buckets differed (diagnostics).
    differing: dict[int, int] = field(default_factory=dict)


def _bucket_digests(pb: Any, d: Mapping[int, tuple[int, int]]) -> Any:
    buckets = sorted(d)
    return pb.BucketDigests(
        buckets=buckets, counts=[d[b][0] for b in buckets], sums=[d[b][1] for b in buckets]
    )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


def run(
    pb: Any,
    call: Callable[[str, Any], Any],
    collection: str,
    held: Mapping[str, str],
    limits: ReconcileLimits,
    doc_from_proto: Callable[[Any], Doc],
) -> ReconcileResult:
    """The client algorithm (README "Reconcile"); ``call(method_name, request)`` makes one
    unary call and raises the typed error."""
    keys = {doc_id: key(doc_id, revision) for doc_id, revision in held.items()}
    result = ReconcileResult(upserts=[], removed=[], checkpoint="")
    removed: set[str] = set()
    # Round 1 compares every bucket, so 2^bits of them must fit one request.
    first = min(_FIRST_BITS, max(limits.digests_max.bit_length() - 1, 0))
    reply = call(
        "Reconcile",
        pb.ReconcileRequest(
            collection=collection,
            bucket_bits=first,
            digests=_bucket_digests(pb, digests(keys.values(), first)),
        ),
    )
    result.requests += 1
    result.checkpoint = reply.checkpoint.token
    # Buckets still to resolve at the current level: {bucket: server count}.
    level = first
    pending = dict(zip(reply.differing.buckets, reply.differing.counts))
    result.differing[level] = len(pending)
    to_list: dict[int, dict[int, int]] = {}  # level -> {bucket to list: server count}
    while pending:
        deeper = []
        for bucket, count in pending.items():
            if count == 0:
                # The server holds nothing there (as of a snapshot at or after C0): every held
                # id of the bucket is gone; anything created since comes with the pull from C0.
                continue
            if count <= _LIST_AT_MOST or level >= BUCKET_BITS_MAX:
                to_list.setdefault(level, {})[bucket] = count
            else:
                deeper.append(bucket)
        _drop_empty(keys, level, [b for b, c in pending.items() if c == 0], removed)
        if not deeper:
            break
        # A prefix compares 2^(bits - level) buckets, which must fit one request.
        step = min(_STEP_BITS, max(limits.digests_max.bit_length() - 1, 1))
        bits = min(level + step, BUCKET_BITS_MAX)
        per_request = max(limits.digests_max >> (bits - level), 1)
        next_pending: dict[int, int] = {}
        for within in _chunks(deeper, per_request):
            reply = call(
                "Reconcile",
                pb.ReconcileRequest(
                    collection=collection,
                    bucket_bits=bits,
                    within_bits=level,
                    within=within,
                    digests=_bucket_digests(pb, digests(keys.values(), bits, level, within)),
                ),
            )
            result.requests += 1
            next_pending.update(zip(reply.differing.buckets, reply.differing.counts))
        level, pending = bits, next_pending
        result.differing[level] = len(pending)

    to_fetch: list[str] = []
    for bits, buckets in sorted(to_list.items()):
        for batch in _list_batches(buckets, limits):
            _list(pb, call, collection, bits, batch, held, keys, removed, to_fetch, result)

    fetched = _fetch(pb, call, collection, to_fetch, limits, held, removed, result, doc_from_proto)
    result.upserts = fetched
    result.fetched = len(fetched)
    result.removed = sorted(removed)
    return result


def _drop_empty(
    keys: Mapping[str, tuple[int, int]], bits: int, buckets: Sequence[int], removed: set[str]
) -> None:
    if not buckets:
        return
    empty = set(buckets)
    shift = BUCKET_BITS_MAX - bits
    removed.update(doc_id for doc_id, (top, _) in keys.items() if (top >> shift) in empty)


def _list_batches(buckets: Mapping[int, int], limits: ReconcileLimits) -> Iterable[list[int]]:
    """Batches of buckets whose server counts (from the last digests) add up to at most
    ``list_max``; writes racing in may still overfill one (then :func:`_list` splits it)."""
    batch: list[int] = []
    total = 0
    for bucket in sorted(buckets):
        count = buckets[bucket]
        if batch and (total + count > limits.list_max or len(batch) >= limits.digests_max):
            yield batch
            batch, total = [], 0
        batch.append(bucket)
        total += count
    if batch:
        yield batch


def _list(
    pb: Any,
    call: Callable[[str, Any], Any],
    collection: str,
    bits: int,
    buckets: list[int],
    held: Mapping[str, str],
    keys: Mapping[str, tuple[int, int]],
    removed: set[str],
    to_fetch: list[str],
    result: ReconcileResult,
) -> None:
    try:
        reply = call(
            "ReconcileList",
            pb.ReconcileListRequest(collection=collection, bucket_bits=bits, buckets=buckets),
        )
    except LimitExceeded:
        # Writes since the digests filled these buckets beyond the server's list_max: halve.
        if len(buckets) < 2:
            raise
        middle = len(buckets) // 2
        for half in (buckets[:middle], buckets[middle:]):
            _list(pb, call, collection, bits, half, held, keys, removed, to_fetch, result)
        return
    result.requests += 1
    result.listed += len(reply.documents)
    live = {entry.id: entry.revision for entry in reply.documents}
    listed = set(buckets)
    shift = BUCKET_BITS_MAX - bits
    # Held ids of these buckets that the server does not list are no longer live for us.
    removed.update(
        doc_id
        for doc_id, (top, _) in keys.items()
        if (top >> shift) in listed and doc_id not in live
    )
    to_fetch.extend(doc_id for doc_id, revision in live.items() if held.get(doc_id) != revision)


def _fetch(
    pb: Any,
    call: Callable[[str, Any], Any],
    collection: str,
    ids: list[str],
    limits: ReconcileLimits,
    held: Mapping[str, str],
    removed: set[str],
    result: ReconcileResult,
    doc_from_proto: Callable[[Any], Doc],
) -> list[Doc]:
    docs: list[Doc] = []
    rest = ids
    while rest:
        ask = rest[: max(limits.fetch_ids_max, 1)]
        reply = call("Fetch", pb.FetchRequest(collection=collection, ids=ask))
        result.requests += 1
        answered = reply.answered
        if not 1 <= answered <= len(ask):
            # The server always answers at least one id; anything else would loop forever.
            raise RuntimeError(
                f"syncline: Fetch of {collection!r} answered {answered} of {len(ask)} ids"
            )
        got = {d.id for d in reply.documents}
        for doc_id in ask[:answered]:
            # Listed a moment ago, gone now (deleted or purged since): drop it like a listed gap.
            if doc_id not in got and doc_id in held:
                removed.add(doc_id)
        docs.extend(doc_from_proto(d) for d in reply.documents)
        rest = rest[answered:]
    return docs
