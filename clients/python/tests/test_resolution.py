"""Conflict resolution on the server and idempotent pushes, as the Python client sees them.

Collections (scripts/test-python.sh): ``counters`` (``conflict = "crdt"``, ``count`` a
counter) and ``overwritten`` (``conflict = "last-write-wins"``, ``keep_overwritten = "1h"``).
A lost acknowledgement is simulated by a client interceptor that lets the push reach the
server, waits for its answer, and reports UNAVAILABLE instead: the server has committed, the
client does not know.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional

import grpc
import pytest

from support import latest, uid
from syncline_client import (
    ChangeRow,
    Doc,
    IdempotencyKeyReused,
    InvalidRequest,
    OverwrittenNotKept,
    PushResult,
    ResolvedRow,
    SynclineClient,
    Unavailable,
)


class _LostAck(grpc.RpcError):
    """What grpc raises when the connection drops before the answer arrives."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "acknowledgement lost (simulated by the test)"

    def trailing_metadata(self) -> None:
        return None


class _Failed:
    """A finished call that failed (what an interceptor returns instead of the real call)."""

    def __init__(self, err: grpc.RpcError) -> None:
        self._err = err

    def result(self, timeout: Optional[float] = None) -> Any:
        raise self._err

    def exception(self, timeout: Optional[float] = None) -> grpc.RpcError:
        return self._err

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback: Any) -> None:
        callback(self)


class PushRecorder(grpc.UnaryUnaryClientInterceptor):
    """Records every Push request; loses the acknowledgement of the first ``lose`` pushes
    (after the server answered them)."""

    def __init__(self, lose: int = 0) -> None:
        self.lose = lose
        self.requests: List[Any] = []
        self.outcomes: List[str] = []
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = continuation(details, request)
        if not details.method.endswith("/Push"):
            return call
        with self._lock:
            self.requests.append(request)
            drop = self.lose > 0
            if drop:
                self.lose -= 1
        if drop:
            try:
                call.result()
                self.outcomes.append("applied, acknowledgement lost")
            except grpc.RpcError as err:
                self.outcomes.append(f"failed: {err.code()}")
            return _Failed(_LostAck())
        return call

    @property
    def keys(self) -> List[str]:
        return [r.idempotency_key for r in self.requests]


def counter(client: SynclineClient, start: int = 0) -> Doc:
    """A new document in ``counters`` with ``count = start``, as the server stores it."""
    doc_id = uid("counter")
    assert client.push("counters", [ChangeRow(Doc(doc_id, {"count": start}))]) == []
    return latest(client, "counters", doc_id)


def increment(doc: Doc, by: int = 1) -> ChangeRow:
    return ChangeRow(Doc(doc.id, {**doc.body, "count": doc.body["count"] + by}), assumed=doc)


def test_every_push_carries_its_own_key(addr: str) -> None:
    recorder = PushRecorder()
    with SynclineClient(addr, timeout=15, interceptors=[recorder]) as client:
        base = counter(client)
        first = client.push_result("counters", [increment(base)])
        client.push("counters", [ChangeRow(Doc(uid("other"), {"count": 0}))])

    keys = recorder.keys
    assert len(keys) == 3 and all(len(k) == 32 for k in keys), keys
    assert len(set(keys)) == 3, "each logical push needs its own key"
    assert first.idempotency_key == keys[1]
    assert first.replayed is False
    assert first.ok and first.written == [0]


def test_a_push_whose_acknowledgement_was_lost_is_retried_with_its_key_and_applied_once(
    addr: str, client: SynclineClient
) -> None:
    base = counter(client, 10)
    other = SynclineClient(addr, timeout=15)
    recorder = PushRecorder(lose=1)
    with other, SynclineClient(addr, timeout=15, interceptors=[recorder]) as pusher:
        # Someone else adds 5 first, so our +1 conflicts and the server resolves it (crdt):
        # applied twice it would count twice.
        assert other.push("counters", [increment(base, 5)]) == []

        result = pusher.push_result("counters", [increment(base, 1)])

    assert recorder.outcomes == ["applied, acknowledgement lost"]
    assert len(recorder.keys) == 2, "the client retried once"
    assert recorder.keys[0] == recorder.keys[1], "the retry must resend the same key"
    assert result.replayed is True
    # The first outcome comes back: the row was resolved by the crdt strategy.
    assert [(r.index, r.strategy, r.doc.body["count"]) for r in result.resolved] == [(0, "crdt", 16)]
    assert latest(client, "counters", base.id).body["count"] == 16, "the increment counted twice"


def test_a_key_passed_by_the_caller_replays_across_clients(addr: str, client: SynclineClient) -> None:
    base = counter(client)
    key = uid("key")
    row = increment(base, 3)
    # A process that pushed, then crashed before it saw the answer...
    with SynclineClient(addr, timeout=15) as before_restart:
        first = before_restart.push_result("counters", [row], idempotency_key=key)
    # ...and its successor, retrying the stored push with its stored key.
    with SynclineClient(addr, timeout=15) as after_restart:
        again = after_restart.push_result("counters", [row], idempotency_key=key)

    assert first.replayed is False and first.idempotency_key == key
    assert again.replayed is True
    assert again.written == first.written == [0]
    assert latest(client, "counters", base.id).body["count"] == 3


def test_a_key_reused_for_another_push_is_refused(client: SynclineClient) -> None:
    base = counter(client)
    key = uid("key")
    assert client.push("counters", [increment(base, 1)], idempotency_key=key) == []

    with pytest.raises(IdempotencyKeyReused) as err:
        client.push("counters", [increment(base, 2)], idempotency_key=key)

    assert isinstance(err.value, InvalidRequest)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert err.value.field == "idempotency_key"
    assert latest(client, "counters", base.id).body["count"] == 1


def test_push_retries_are_bounded_and_only_for_retryable_codes(
    addr: str, client: SynclineClient
) -> None:
    base = counter(client)
    recorder = PushRecorder(lose=100)
    with SynclineClient(addr, timeout=15, interceptors=[recorder], push_retries=2) as lossy:
        with pytest.raises(Unavailable):
            lossy.push("counters", [increment(base, 1)])
    assert len(recorder.keys) == 3, "1 attempt + push_retries"
    assert len(set(recorder.keys)) == 1
    # Three attempts, one write: the server replayed the others.
    assert latest(client, "counters", base.id).body["count"] == 1

    recorder = PushRecorder(lose=100)
    with SynclineClient(addr, timeout=15, interceptors=[recorder], push_retries=0) as lossy:
        with pytest.raises(Unavailable):
            lossy.push("counters", [ChangeRow(Doc(uid("lost"), {"count": 0}))])
    assert len(recorder.keys) == 1

    recorder = PushRecorder()
    with SynclineClient(addr, timeout=15, interceptors=[recorder]) as plain:
        with pytest.raises(grpc.RpcError) as err:
            plain.push("counters", [ChangeRow(Doc(base.id, {"count": 1}), assumed=Doc(uid("x")))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(recorder.keys) == 1, "INVALID_ARGUMENT must not be retried"

    with pytest.raises(ValueError):
        SynclineClient(addr, push_retries=-1)


def test_resolved_rows_come_back_with_their_merged_state(addr: str, client: SynclineClient) -> None:
    base = counter(client, 1)
    fresh = uid("fresh")
    with SynclineClient(addr, timeout=15) as other:
        assert other.push("counters", [increment(base, 10)]) == []

    # The atomic push() lists conflicts only: the resolved row was written.
    assert client.push("counters", [increment(base, 2), ChangeRow(Doc(fresh, {"count": 7}))]) == []
    merged = latest(client, "counters", base.id)
    assert merged.body["count"] == 13

    result = client.push_result(
        "counters", [ChangeRow(Doc(fresh, {"count": 8}), assumed=Doc(fresh, {"count": 7})), increment(base, 4)]
    )
    assert isinstance(result, PushResult)
    assert result.conflicts == [] and result.refused == []
    assert result.written == [0, 1]
    assert not result.ok, "a resolved row was not written as sent"
    [resolved] = result.resolved
    assert isinstance(resolved, ResolvedRow)
    index, doc, strategy = resolved
    assert (index, strategy, doc.id, doc.body["count"]) == (1, "crdt", base.id, 17)
    assert doc.revision and doc.revision != merged.revision
    stored = latest(client, "counters", base.id)
    assert (stored.body, stored.revision, stored.deleted) == (doc.body, doc.revision, False)

    # per_row=True returns the same whole result.
    per_row = client.push("counters", [increment(doc, 1)], per_row=True)
    assert per_row.ok and per_row.resolved == [] and per_row.written == [0]


def test_list_overwritten_returns_the_losing_versions(client: SynclineClient) -> None:
    doc_id = uid("lww")
    assert client.push("overwritten", [ChangeRow(Doc(doc_id, {"title": "v1"}))]) == []
    v1 = latest(client, "overwritten", doc_id)
    assert client.push("overwritten", [ChangeRow(Doc(doc_id, {"title": "v2"}), assumed=v1)]) == []
    v2 = latest(client, "overwritten", doc_id)
    assert client.list_overwritten("overwritten", doc_id) == []

    # Another replica still assumes v1: without an lww_field the later push wins over v2.
    result = client.push_result("overwritten", [ChangeRow(Doc(doc_id, {"title": "v3"}), assumed=v1)])
    [resolved] = result.resolved
    assert resolved.strategy == "last-write-wins"
    assert resolved.doc.body == {"title": "v3"}
    assert latest(client, "overwritten", doc_id).body == {"title": "v3"}

    versions = client.list_overwritten("overwritten", doc_id)
    assert versions, "the state that lost (v2) must be kept"
    lost = [v for v in versions if v.source == "server"]
    assert [v.doc.body for v in lost] == [{"title": "v2"}]
    assert lost[0].doc.id == doc_id
    assert lost[0].doc.revision == v2.revision
    assert lost[0].doc.updated_at is not None
    assert lost[0].strategy == "last-write-wins"
    assert lost[0].resolved_revision == resolved.doc.revision
    assert all(v.source in ("server", "client") for v in versions)
    assert len(client.list_overwritten("overwritten", doc_id, limit=1)) == 1
    assert client.list_overwritten("overwritten", uid("never")) == []


def test_list_overwritten_needs_keep_overwritten(client: SynclineClient) -> None:
    with pytest.raises(OverwrittenNotKept) as err:
        client.list_overwritten("tasks", uid("task"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "OVERWRITTEN_NOT_KEPT"
    assert err.value.field == "collection"


def test_only_the_owner_sees_overwritten_versions(auth_server: Any) -> None:
    doc_id = uid("owned")
    with auth_server.client("alice") as alice, auth_server.client("bob") as bob:
        assert alice.push("overwritten", [ChangeRow(Doc(doc_id, {"title": "v1"}))]) == []
        v1 = latest(alice, "overwritten", doc_id)
        assert alice.push("overwritten", [ChangeRow(Doc(doc_id, {"title": "v2"}), assumed=v1)]) == []
        result = alice.push_result("overwritten", [ChangeRow(Doc(doc_id, {"title": "v3"}), assumed=v1)])
        assert [r.strategy for r in result.resolved] == ["last-write-wins"]

        mine = alice.list_overwritten("overwritten", doc_id)
        assert mine and all(v.pushed_by == "alice" for v in mine)
        assert bob.list_overwritten("overwritten", doc_id) == []


def test_a_conflict_the_strategy_cannot_resolve_says_why(client: SynclineClient) -> None:
    base = counter(client, 4)
    # No assumed state: nothing to merge against, so the row stays a conflict.
    result = client.push_result("counters", [ChangeRow(Doc(base.id, {"count": 9}))])

    assert [(d.id, d.body) for d in result.conflicts] == [(base.id, {"count": 4})]
    assert result.resolved == [] and result.written == []
    assert [u.conflict for u in result.unresolved] == [0]
    assert result.unresolved[0].message
    assert latest(client, "counters", base.id).body == {"count": 4}
