"""Per-row pushes: refused rows are reported with their reason, the others written."""

from __future__ import annotations

import pytest

from conftest import AuthServer
from support import uid
from syncline_client import ChangeRow, CollectionNotFound, Doc, InvalidDocument, SynclineClient


def _ids(client: SynclineClient, collection: str) -> dict[str, Doc]:
    return {d.id: d for d in client.pull_all(collection)[0]}


def test_mixed_batch_writes_the_rest_and_reports_each_refusal(auth_server: AuthServer) -> None:
    new_a, bad_new, bobs, conflicted, own, new_b = (uid(p) for p in "a b c d e f".split())
    with auth_server.client("alice") as alice, auth_server.client("bob") as bob:
        assert bob.push("checked", [ChangeRow(Doc(bobs, {"title": "bob's"}))]) == []
        assert alice.push("checked", [ChangeRow(Doc(conflicted, {"title": "v1"}))]) == []
        assert alice.push("checked", [ChangeRow(Doc(own, {"title": "mine"}))]) == []
        own_state = _ids(alice, "checked")[own]
        conflicted_state = _ids(alice, "checked")[conflicted]
        rows = [
            ChangeRow(Doc(new_a, {"title": "new"})),
            ChangeRow(Doc(bad_new, {"title": 5})),  # schema: title is a string
            ChangeRow(Doc(bobs, {"title": "alice's now"})),  # another owner's id
            ChangeRow(Doc(conflicted, {"title": "v2"})),  # assumes new: conflicts
            ChangeRow(Doc(own, {"title": 7}), assumed=own_state),  # own, invalid update
            ChangeRow(Doc(new_b, {"title": "also new"})),
        ]
        result = alice.push("checked", rows, per_row=True)

        assert result.written == [0, 5]
        assert [(d.id, d.body) for d in result.conflicts] == [(conflicted, conflicted_state.body)]
        refused = {r.index: r for r in result.refused}
        assert sorted(refused) == [1, 2, 4]
        assert [r.index for r in result.refused] == [1, 2, 4]  # row order
        assert (refused[1].id, refused[1].reason) == (bad_new, "INVALID_DOCUMENT")
        assert refused[1].field == "rows[1].new_document_state.json"
        assert refused[1].message and refused[1].current is None  # it does not exist
        assert (refused[2].id, refused[2].reason) == (bobs, "NOT_OWNER")
        assert refused[2].current is None  # never reveals another owner's document
        assert (refused[4].id, refused[4].reason) == (own, "INVALID_DOCUMENT")
        assert refused[4].field == "rows[4].new_document_state.json"
        assert refused[4].current is not None and refused[4].current.body == {"title": "mine"}
        assert refused[4].row is rows[4]
        assert not result.ok

        seen = _ids(alice, "checked")
        assert seen[new_a].body == {"title": "new"} and seen[new_b].body == {"title": "also new"}
        assert bad_new not in seen and bobs not in seen
        assert seen[own].body == {"title": "mine"}
        assert seen[conflicted].body == {"title": "v1"}
        assert _ids(bob, "checked")[bobs].body == {"title": "bob's"}


def test_the_same_batch_fails_whole_without_per_row(auth_server: AuthServer) -> None:
    fine, bad = uid("fine"), uid("bad")
    rows = [ChangeRow(Doc(fine, {"title": "ok"})), ChangeRow(Doc(bad, {"title": 5}))]
    with auth_server.client("alice") as alice:
        with pytest.raises(InvalidDocument) as err:
            alice.push("checked", rows)
        assert err.value.field == "rows[1].new_document_state.json"
        assert fine not in _ids(alice, "checked")


def test_a_refused_row_does_not_block_later_writes(auth_server: AuthServer) -> None:
    # The wedge: a client whose queue holds a row it may never write keeps replicating.
    taken = uid("taken")
    with auth_server.client("bob") as bob, auth_server.client("carol") as carol:
        assert bob.push("tasks", [ChangeRow(Doc(taken, {}))]) == []
        result = carol.push(
            "tasks", [ChangeRow(Doc(taken, {"by": "carol"})), ChangeRow(Doc(uid("r0"), {"round": 0}))],
            per_row=True,
        )
        assert [(r.index, r.id, r.reason) for r in result.refused] == [(0, taken, "NOT_OWNER")]
        assert result.written == [1]
        # The client drops the refused row (current is None: not its document) and goes on.
        for round_ in (1, 2):
            result = carol.push("tasks", [ChangeRow(Doc(uid(f"r{round_}"), {"round": round_}))], per_row=True)
            assert result.ok and result.written == [0]
        mine = _ids(carol, "tasks")
    assert {d.body.get("round") for d in mine.values()} >= {0, 1, 2}


def test_request_level_errors_still_raise_in_per_row_mode(client: SynclineClient) -> None:
    with pytest.raises(CollectionNotFound):
        client.push("no_such_collection", [ChangeRow(Doc(uid(), {}))], per_row=True)


def test_per_row_without_refusals_writes_everything(client: SynclineClient) -> None:
    ids = [uid("all") for _ in range(4)]
    result = client.push("notes", [ChangeRow(Doc(i, {"n": n})) for n, i in enumerate(ids)], per_row=True)
    assert result.ok and result.written == [0, 1, 2, 3]
    assert set(ids) <= set(_ids(client, "notes"))
