"""Reconcile against the real server: a stale local copy comes back to exactly the server's live
set, transferring only what differs; an expired checkpoint goes through `resume` (the `purged`
collection keeps tombstones for one second and the server purges every second, see
scripts/test-python.sh); the client's hashes equal the server's."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from support import StreamReader, uid
from syncline_client import (
    ChangeRow,
    CheckpointExpired,
    CheckpointInvalid,
    Doc,
    ReconcileLimits,
    ResyncRequired,
    SynclineClient,
)
from syncline_client.reconcile import bucket_of, item_hash

Copy = dict[str, Doc]
ITEM_HASH_A_1X = 0x2A9F1CB3B504FBF4


def live(client: SynclineClient, collection: str) -> Copy:
    """The server's live set, read from the beginning."""
    docs, _ = client.pull_all(collection)
    return {d.id: d for d in docs if not d.deleted}


def held(copy: Copy) -> dict[str, str]:
    return {doc_id: d.revision for doc_id, d in copy.items()}


def apply(copy: Copy, upserts: list[Doc], removed: list[str]) -> None:
    for doc_id in removed:
        copy.pop(doc_id, None)
    for doc in upserts:
        assert not doc.deleted, "reconcile hands over live documents only"
        copy[doc.id] = doc


def same(a: Copy, b: Copy) -> None:
    """Equal as id -> (revision, body)."""
    assert {i: (d.revision, d.body) for i, d in a.items()} == {
        i: (d.revision, d.body) for i, d in b.items()
    }


def create(client: SynclineClient, collection: str, n: int, prefix: str) -> list[str]:
    ids = [uid(prefix) for _ in range(n)]
    assert client.push(collection, [ChangeRow(Doc(i, {"v": 0})) for i in ids]) == []
    return ids


def change(client: SynclineClient, collection: str, copy: Copy, ids: list[str]) -> None:
    rows = [ChangeRow(Doc(i, {"v": copy[i].body["v"] + 1}), assumed=copy[i]) for i in ids]
    assert client.push(collection, rows) == []


def delete(client: SynclineClient, collection: str, copy: Copy, ids: list[str]) -> None:
    rows = [ChangeRow(Doc(i, copy[i].body, deleted=True), assumed=copy[i]) for i in ids]
    assert client.push(collection, rows) == []


def wait_purged(client: SynclineClient, collection: str, ids: list[str]) -> None:
    """Bounded wait until the tombstones of `ids` are purged (retention 1 s, a round a second)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        docs, _ = client.pull_all(collection)
        if not set(ids) & {d.id for d in docs}:
            return
        time.sleep(0.5)
    pytest.fail("the tombstones were not purged within 20 s")


class Recording:
    """Forwards to the real stub and records each request and reply by method name."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.requests: dict[str, list[Any]] = {}
        self.replies: dict[str, list[Any]] = {}

    def __getattr__(self, method: str) -> Any:
        target = getattr(self._stub, method)

        def call(request: Any, **kwargs: Any) -> Any:
            self.requests.setdefault(method, []).append(request)
            reply = target(request, **kwargs)
            self.replies.setdefault(method, []).append(reply)
            return reply

        return call


def test_the_hashes_are_the_servers(client: SynclineClient) -> None:
    create(client, "tasks", 20, "same")
    copy = live(client, "tasks")
    assert len(copy) >= 20
    result = client.reconcile("tasks", held(copy))
    assert result.requests == 1, "equal digests: one round, nothing listed or fetched"
    assert result.listed == 0 and result.fetched == 0
    assert result.upserts == [] and result.removed == []
    assert result.checkpoint
    # sha256("a") = ca978112ca1bbdca...: the bucket is its top bits, big-endian.
    assert bucket_of("a", 24) == 0xCA9781 and bucket_of("a", 4) == 0xC and bucket_of("a", 0) == 0
    # sha256("a\n1-x") starts with these 8 bytes (the separator is one newline).
    assert item_hash("a", "1-x") == ITEM_HASH_A_1X


def test_a_stale_copy_reconciles_to_the_live_set_and_pulls_on_from_c0(
    client: SynclineClient,
) -> None:
    collection = "notes"
    create(client, collection, 40, "stale")
    copy = live(client, collection)
    ids = sorted(i for i in copy if i.startswith("stale-"))
    changed, deleted = ids[:3], ids[3:6]
    change(client, collection, copy, changed)
    delete(client, collection, copy, deleted)
    new = create(client, collection, 3, "new")
    never = uid("never")  # the client holds a document the server never had
    copy[never] = Doc(never, {"v": 9}, revision="1-0123456789abcdef")

    result = client.reconcile(collection, held(copy))

    assert sorted(d.id for d in result.upserts) == sorted(changed + new)
    assert sorted(result.removed) == sorted(deleted + [never])
    assert result.fetched == 6
    apply(copy, result.upserts, result.removed)
    same(copy, live(client, collection))

    # Pulling on from C0 sees a later write (and anything else after the first round).
    later = create(client, collection, 1, "later")[0]
    docs, _ = client.pull_all(collection, result.checkpoint)
    assert later in {d.id for d in docs}
    apply(copy, [d for d in docs if not d.deleted], [d.id for d in docs if d.deleted])
    same(copy, live(client, collection))


def test_requests_are_split_by_the_limits_and_still_exact(client: SynclineClient) -> None:
    collection = "notes"
    create(client, collection, 150, "split")
    copy = live(client, collection)
    ids = sorted(i for i in copy if i.startswith("split-"))
    change(client, collection, copy, ids[:20])
    delete(client, collection, copy, ids[20:30])
    create(client, collection, 10, "split-new")
    # A copy that lost a third of its documents: many buckets differ at every level (16
    # buckets of more than 8 documents at first: compared deeper, one prefix per request).
    for doc_id in sorted(copy)[::3]:
        del copy[doc_id]
    limits = ReconcileLimits(digests_max=16, list_max=16, fetch_ids_max=3)
    recording = Recording(client._stub)
    client._stub = recording
    try:
        result = client.reconcile(collection, held(copy), limits=limits)
    finally:
        client._stub = recording._stub

    apply(copy, result.upserts, result.removed)
    same(copy, live(client, collection))
    rounds = recording.requests["Reconcile"]
    assert rounds[0].bucket_bits == 4, "round 1 compares 2^bits <= digests_max buckets"
    assert len(rounds) > 2, "deeper rounds, split by prefixes"
    for r in rounds:
        compared = len(r.within) << (r.bucket_bits - r.within_bits) if r.within_bits else 1 << r.bucket_bits
        assert compared <= 16 and len(r.digests.buckets) <= 16
    lists = recording.replies["ReconcileList"]
    assert len(lists) >= 2 and all(len(r.documents) <= 16 for r in lists), "batched by counts"
    fetches = recording.requests["Fetch"]
    assert len(fetches) >= result.fetched / 3 and all(len(r.ids) <= 3 for r in fetches)


def test_fetch_answers_partially_at_the_byte_budget_and_the_client_asks_again(
    client: SynclineClient,
) -> None:
    # Eight documents of 700 KB: more than one Fetch reply may carry (page_bytes_max, 4 MiB).
    collection = "notes"
    big = [uid("big") for _ in range(8)]
    for doc_id in big:
        assert client.push(collection, [ChangeRow(Doc(doc_id, {"pad": "x" * 700_000}))]) == []
    copy = live(client, collection)
    for doc_id in big:
        del copy[doc_id]
    recording = Recording(client._stub)
    client._stub = recording
    try:
        result = client.reconcile(collection, held(copy))
    finally:
        client._stub = recording._stub
    assert sorted(d.id for d in result.upserts) == sorted(big)
    assert result.removed == []
    fetches = recording.requests["Fetch"]
    assert len(fetches) >= 2, "the server cut the reply short and the client asked again"


def test_an_expired_checkpoint_resumes_through_reconcile_fetching_only_what_changed(
    client: SynclineClient,
) -> None:
    collection = "purged"
    create(client, collection, 60, "away")
    docs, checkpoint = client.pull_all(collection)
    copy = {d.id: d for d in docs if not d.deleted}
    ids = sorted(i for i in copy if i.startswith("away-"))
    changed, deleted = ids[:2], ids[2:5]
    change(client, collection, copy, changed)
    delete(client, collection, copy, deleted)
    new = create(client, collection, 2, "back")
    wait_purged(client, collection, deleted)
    with pytest.raises(CheckpointExpired):
        client.pull(collection, checkpoint)

    result = client.resume(collection, checkpoint, held(copy))

    assert result.reconciled is not None, "the refused checkpoint went through a reconcile"
    apply(copy, result.upserts, result.removed)
    same(copy, live(client, collection))
    assert set(deleted) <= set(result.removed)
    assert sorted(d.id for d in result.reconciled.upserts) == sorted(changed + new)
    full, _ = client.pull_all(collection)
    transferred = result.reconciled.fetched + result.pulled
    assert transferred <= 6 and transferred * 10 <= len(full), (transferred, len(full))
    assert result.reconciled.listed <= 8, "only the few differing buckets were listed"

    # Resuming from the new checkpoint is an ordinary pull again.
    later = create(client, collection, 1, "later")[0]
    again = client.resume(collection, result.checkpoint, held(copy))
    assert again.reconciled is None
    assert [d.id for d in again.upserts] == [later] and again.removed == []


def test_a_subscription_told_to_resync_reconciles_and_subscribes_again(
    client: SynclineClient,
) -> None:
    collection = "purged"
    create(client, collection, 10, "sub")
    docs, checkpoint = client.pull_all(collection)
    copy = {d.id: d for d in docs if not d.deleted}
    gone = sorted(i for i in copy if i.startswith("sub-"))[:2]
    delete(client, collection, copy, gone)
    wait_purged(client, collection, gone)

    # The recipe of the README: on ResyncRequired, reconcile and subscribe from C0.
    with pytest.raises(ResyncRequired):
        with client.subscribe(collection, checkpoint) as stream:
            for batch, _ in stream:
                apply(copy, [d for d in batch if not d.deleted], [d.id for d in batch if d.deleted])
    result = client.reconcile(collection, held(copy))
    apply(copy, result.upserts, result.removed)
    assert not set(gone) & set(copy)
    later = create(client, collection, 1, "later")[0]
    reader = StreamReader(client.subscribe(collection, result.checkpoint))
    try:
        reader.wait_for(lambda d: d.id == later, timeout=15)
    finally:
        reader.close()
    apply(copy, [d for d in reader.docs if not d.deleted], [d.id for d in reader.docs if d.deleted])
    same(copy, live(client, collection))


def test_writes_racing_the_reconcile_are_never_missed(client: SynclineClient, addr: str) -> None:
    collection = "tasks"
    raced = 0
    for round_ in range(5):
        copy = live(client, collection)
        # A stale copy: it lost a quarter of the documents; the writer changes more meanwhile.
        for doc_id in sorted(copy)[round_::4]:
            del copy[doc_id]
        stop, started = threading.Event(), threading.Event()
        writes = [0]
        errors: list[BaseException] = []

        def write() -> None:
            try:
                _write()
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)
            finally:
                started.set()

        def _write() -> None:
            own: dict[str, int] = {}
            with SynclineClient(addr, timeout=15) as writer:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    # Creates, updates and deletes that leave lasting changes (the live set
                    # grows by one document every four writes).
                    if i % 4 < 2 or len(own) < 2:
                        doc_id = uid("race")
                        rows = [ChangeRow(Doc(doc_id, {"v": 0}))]
                        own[doc_id] = 0
                    elif i % 4 == 2:
                        doc_id = list(own)[-2]
                        v = own[doc_id]
                        rows = [ChangeRow(Doc(doc_id, {"v": v + 1}), assumed=Doc(doc_id, {"v": v}))]
                        own[doc_id] = v + 1
                    else:
                        doc_id = next(iter(own))
                        v = own.pop(doc_id)
                        rows = [ChangeRow(Doc(doc_id, {"v": v}, deleted=True), assumed=Doc(doc_id, {"v": v}))]
                    assert writer.push(collection, rows) == []
                    writes[0] += 1
                    started.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            assert started.wait(10), "the writer started"
            before = writes[0]
            result = client.reconcile(collection, held(copy))
            during = writes[0] - before
        finally:
            stop.set()
            writer.join(timeout=30)
        assert not writer.is_alive() and not errors, errors
        apply(copy, result.upserts, result.removed)
        docs, _ = client.pull_all(collection, result.checkpoint)
        apply(copy, [d for d in docs if not d.deleted], [d.id for d in docs if d.deleted])
        same(copy, live(client, collection))
        raced += during
    assert raced > 0, "writes committed while the reconciles ran"


def test_resume_reconciles_a_refused_or_empty_checkpoint(client: SynclineClient) -> None:
    collection = "notes"
    create(client, collection, 5, "refused")
    copy = live(client, collection)
    gone = uid("gone")  # held, but the server never had it: a pull would never mention it
    copy[gone] = Doc(gone, {"v": 1}, revision="1-00")
    _, foreign = client.pull_all("tasks")  # a checkpoint of another collection
    with pytest.raises(CheckpointInvalid):
        client.pull(collection, foreign)

    for checkpoint in (foreign, ""):
        local = dict(copy)
        result = client.resume(collection, checkpoint, held(local))
        assert result.reconciled is not None
        assert result.removed == [gone] and result.upserts == []
        apply(local, result.upserts, result.removed)
        same(local, live(client, collection))
