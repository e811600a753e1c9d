"""Conflict detection: the server returns its own state for conflicting rows."""

from __future__ import annotations

import grpc
import pytest

from support import latest, uid
from syncline_client import ChangeRow, Doc, SynclineClient


def test_insert_of_existing_id_returns_server_state(client: SynclineClient) -> None:
    doc_id = uid("task")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"owner": "server", "n": 1}))]) == []
    server = latest(client, "tasks", doc_id)

    conflicts = client.push("tasks", [ChangeRow(Doc(doc_id, {"owner": "client", "n": 2}))])

    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict.id == doc_id
    assert conflict.body == {"owner": "server", "n": 1}
    assert conflict.revision == server.revision
    assert conflict.deleted is False
    assert conflict.updated_at is not None
    # The conflicting row was not written.
    assert latest(client, "tasks", doc_id) == server


def test_update_with_stale_revision_conflicts(client: SynclineClient) -> None:
    doc_id = uid("task")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 1}))]) == []
    v1 = latest(client, "tasks", doc_id)
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 2}), assumed=v1)]) == []
    v2 = latest(client, "tasks", doc_id)
    assert v2.revision != v1.revision

    stale = Doc(doc_id, {"v": 2}, revision=v1.revision)  # body matches, revision is old
    conflicts = client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 3}), assumed=stale)])

    assert len(conflicts) == 1
    assert conflicts[0].id == doc_id
    assert conflicts[0].body == {"v": 2}
    assert conflicts[0].revision == v2.revision
    assert latest(client, "tasks", doc_id).body == {"v": 2}


def test_assumed_state_without_revision_is_compared_by_value(client: SynclineClient) -> None:
    doc_id = uid("note")
    assert client.push("notes", [ChangeRow(Doc(doc_id, {"a": 1, "b": {"c": [1, 2]}}))]) == []

    # Same JSON value, other key order: no conflict.
    same = Doc(doc_id, {"b": {"c": [1, 2]}, "a": 1})
    assert client.push("notes", [ChangeRow(Doc(doc_id, {"a": 2}), assumed=same)]) == []

    # A different value: conflict with the server's state.
    wrong = Doc(doc_id, {"a": 1})
    conflicts = client.push("notes", [ChangeRow(Doc(doc_id, {"a": 3}), assumed=wrong)])
    assert [(c.id, c.body) for c in conflicts] == [(doc_id, {"a": 2})]


def test_conflicts_come_in_row_order_and_the_rest_is_written(client: SynclineClient) -> None:
    a, b, fresh = uid("a"), uid("b"), uid("fresh")
    assert client.push("tasks", [ChangeRow(Doc(a, {"x": "a"})), ChangeRow(Doc(b, {"x": "b"}))]) == []

    conflicts = client.push(
        "tasks",
        [
            ChangeRow(Doc(b, {"x": "b2"})),
            ChangeRow(Doc(fresh, {"x": "fresh"})),
            ChangeRow(Doc(a, {"x": "a2"})),
        ],
    )

    assert [(c.id, c.body) for c in conflicts] == [(b, {"x": "b"}), (a, {"x": "a"})]
    assert latest(client, "tasks", fresh).body == {"x": "fresh"}


def test_update_of_a_tombstone_needs_the_tombstone_as_assumed_state(client: SynclineClient) -> None:
    doc_id = uid("task")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 1}))]) == []
    live = latest(client, "tasks", doc_id)
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 1}, deleted=True), assumed=live)]) == []

    # Re-creating it as if it were new conflicts with the tombstone.
    conflicts = client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 9}))])
    assert len(conflicts) == 1 and conflicts[0].deleted is True

    tombstone = latest(client, "tasks", doc_id)
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 2}), assumed=tombstone)]) == []
    revived = latest(client, "tasks", doc_id)
    assert revived.deleted is False and revived.body == {"v": 2}


def test_a_failed_push_applies_nothing(client: SynclineClient) -> None:
    good = uid("task")
    with pytest.raises(grpc.RpcError) as err:
        client.push("tasks", [ChangeRow(Doc(good, {"ok": True})), ChangeRow(Doc("", {"bad": True}))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The valid row was not written: inserting it as new does not conflict.
    assert client.push("tasks", [ChangeRow(Doc(good, {"ok": True}))]) == []
