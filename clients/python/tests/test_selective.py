"""Selective sync: pulls and subscriptions with a selector, removals (``left_scope``), and
checkpoints bound to their selector.

The collection ``selective`` declares ``filter_fields = { done = "boolean", team = "string",
priority = "number" }`` (scripts/test-python.sh). The tests share one database, so each one
selects on a team of its own: no other test's documents can match its selectors.
"""

from __future__ import annotations

import json

import pytest

from support import StreamReader, uid
from syncline_client import (
    ChangeRow,
    CheckpointInvalid,
    Doc,
    InvalidRequest,
    SynclineClient,
)

COLLECTION = "selective"


def current(client: SynclineClient, doc_id: str) -> Doc:
    """The server's state of ``doc_id``, read by an unfiltered pull."""
    docs, _ = client.pull_all(COLLECTION)
    found = [d for d in docs if d.id == doc_id]
    assert len(found) == 1, f"{doc_id} pulled {len(found)} times"
    return found[0]


def edit(client: SynclineClient, doc_id: str, body: dict) -> None:
    """Replaces ``doc_id``'s body, assuming its current state."""
    assumed = current(client, doc_id)
    assert client.push(COLLECTION, [ChangeRow(Doc(doc_id, body), assumed=assumed)]) == []


def is_removal(doc: Doc) -> bool:
    return doc.deleted and doc.left_scope and doc.body == {} and doc.revision == ""


def test_a_filtered_pull_returns_only_the_matching_documents(client: SynclineClient) -> None:
    team = uid("team")
    a, b, c = uid("sel"), uid("sel"), uid("sel")
    rows = [
        ChangeRow(Doc(a, {"team": team, "done": False, "priority": 3})),
        ChangeRow(Doc(b, {"team": team, "done": True, "priority": 5})),
        ChangeRow(Doc(c, {"team": team, "done": False, "priority": 1})),
    ]
    assert client.push(COLLECTION, rows) == []

    selector = {"team": team, "done": False, "priority": {"$gte": 2}}
    docs, checkpoint = client.pull_all(COLLECTION, selector=selector, limit=1)
    assert [d.id for d in docs] == [a]
    assert docs[0].body == {"team": team, "done": False, "priority": 3}
    assert not docs[0].deleted and not docs[0].left_scope and docs[0].revision
    # The same selector as JSON text is the same selector: the checkpoint continues.
    page, same = client.pull(COLLECTION, checkpoint, selector=json.dumps(selector))
    assert page == [] and same == checkpoint

    # `$in` and `$or` over the same documents.
    docs, _ = client.pull_all(
        COLLECTION, selector={"$or": [{"team": team, "priority": {"$in": [1, 5]}}]}
    )
    assert sorted(d.id for d in docs) == sorted([b, c])


def test_an_edit_out_of_the_selector_arrives_as_a_left_scope_removal(client: SynclineClient) -> None:
    team = uid("team")
    a, b = uid("sel"), uid("sel")
    assert client.push(
        COLLECTION,
        [
            ChangeRow(Doc(a, {"team": team, "done": False})),
            ChangeRow(Doc(b, {"team": team, "done": False})),
        ],
    ) == []
    selector = {"team": team, "done": False}
    first, checkpoint = client.pull_all(COLLECTION, selector=selector)
    assert sorted(d.id for d in first) == sorted([a, b])

    # While the reader is away: a is edited out, then edited again (still out).
    edit(client, a, {"team": team, "done": True})
    edit(client, a, {"team": team, "done": True, "priority": 9})
    changes, checkpoint = client.pull_all(COLLECTION, checkpoint, selector=selector)
    assert len(changes) == 1, changes
    assert changes[0].id == a and is_removal(changes[0]), changes[0]
    # The document itself still exists, unchanged by the filtered read.
    assert current(client, a).body == {"team": team, "done": True, "priority": 9}
    assert not current(client, a).deleted

    # Moved back in: the document comes again, whole.
    edit(client, a, {"team": team, "done": False, "priority": 1})
    again, _ = client.pull_all(COLLECTION, checkpoint, selector=selector)
    assert [(d.id, d.deleted, d.left_scope) for d in again] == [(a, False, False)]
    assert again[0].body == {"team": team, "done": False, "priority": 1}

    # Deleting a matching document is a deletion, not a move.
    edit(client, b, {"team": team, "done": False, "priority": 2})
    checkpoint = client.pull_all(COLLECTION, checkpoint, selector=selector)[1]
    b_state = current(client, b)
    assert client.push(COLLECTION, [ChangeRow(Doc(b, {}, deleted=True), assumed=b_state)]) == []
    gone, _ = client.pull_all(COLLECTION, checkpoint, selector=selector)
    assert [(d.id, d.deleted, d.left_scope) for d in gone] == [(b, True, False)]


def test_a_filtered_subscription_receives_a_removal_live(client: SynclineClient) -> None:
    team = uid("team")
    a, b, outside = uid("sel"), uid("sel"), uid("sel")
    assert client.push(
        COLLECTION,
        [
            ChangeRow(Doc(a, {"team": team, "done": False})),
            ChangeRow(Doc(outside, {"team": team, "done": True})),
        ],
    ) == []
    selector = {"team": team, "done": False}
    with client.subscribe(COLLECTION, selector=selector) as subscription:
        reader = StreamReader(subscription)
        try:
            reader.wait_for(lambda d: d.id == a and not d.deleted, timeout=10)
            # Live: a leaves the selector, b arrives.
            edit(client, a, {"team": team, "done": True})
            removal = reader.wait_for(lambda d: d.id == a and d.deleted, timeout=10)
            assert is_removal(removal), removal
            assert client.push(COLLECTION, [ChangeRow(Doc(b, {"team": team, "done": False}))]) == []
            reader.wait_for(lambda d: d.id == b, timeout=10)
            assert outside not in {d.id for d in reader.docs}, "never matched: never named"
            assert reader.error is None
            checkpoint = subscription.checkpoint
        finally:
            reader.close()
    # The stream's checkpoint is a filtered pull's under the same selector.
    page, _ = client.pull(COLLECTION, checkpoint, selector=selector)
    assert page == []


def test_a_checkpoint_of_another_selector_is_refused(client: SynclineClient) -> None:
    team = uid("team")
    doc_id = uid("sel")
    assert client.push(COLLECTION, [ChangeRow(Doc(doc_id, {"team": team, "done": False}))]) == []
    selector = {"team": team, "done": False}
    _, checkpoint = client.pull_all(COLLECTION, selector=selector)
    assert checkpoint

    for other in ({"team": team}, {"team": team, "done": True}, None):
        with pytest.raises(CheckpointInvalid) as refused:
            client.pull(COLLECTION, checkpoint, selector=other)
        assert refused.value.reason == "CHECKPOINT_INVALID"
    # And an unfiltered checkpoint under a selector.
    _, plain = client.pull_all(COLLECTION)
    with pytest.raises(CheckpointInvalid):
        client.pull(COLLECTION, plain, selector=selector)
    # A subscription raises it from its first next().
    with client.subscribe(COLLECTION, checkpoint, selector={"team": team}) as subscription:
        with pytest.raises(CheckpointInvalid):
            next(subscription)

    # Starting over under the new selector: its documents, from the beginning.
    docs, _, restarted = client.pull_all_or_restart(COLLECTION, checkpoint, selector={"team": team})
    assert restarted and [d.id for d in docs] == [doc_id]


def test_bad_selectors_are_refused_naming_the_path(client: SynclineClient) -> None:
    for selector, path in [
        ({"secret": 1}, "selector.secret"),
        ({"priority": "high"}, "selector.priority"),
        ('{"team": {"$regex": "r.*"}}', "selector.team.$regex"),
        ("{not json", "selector"),
    ]:
        with pytest.raises(InvalidRequest) as refused:
            client.pull(COLLECTION, selector=selector)
        assert path in str(refused.value.details()), (selector, refused.value.details())
        assert refused.value.field.startswith("selector"), refused.value.field
    with pytest.raises(TypeError, match="selector must be"):
        client.pull(COLLECTION, selector=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="selector must be"):
        client.subscribe(COLLECTION, selector=["team"])  # type: ignore[arg-type]


def test_a_filtered_copy_resumes_within_its_selector(client: SynclineClient) -> None:
    team = uid("team")
    a, b, c, d = uid("sel"), uid("sel"), uid("sel"), uid("sel")
    rows = [
        ChangeRow(Doc(a, {"team": team, "done": False})),
        ChangeRow(Doc(b, {"team": team, "done": False})),
        ChangeRow(Doc(c, {"team": team, "done": True})),
    ]
    assert client.push(COLLECTION, rows) == []
    selector = {"team": team, "done": False}
    docs, _ = client.pull_all(COLLECTION, selector=selector)
    held = {doc.id: doc.revision for doc in docs}
    assert set(held) == {a, b}
    # While the copy's checkpoint is lost: b leaves the selector, d arrives in it.
    edit(client, b, {"team": team, "done": True})
    assert client.push(COLLECTION, [ChangeRow(Doc(d, {"team": team, "done": False}))]) == []

    result = client.resume(COLLECTION, "", held, selector=selector)
    assert result.reconciled is not None, "no checkpoint: the copy is reconciled"
    assert {doc.id for doc in result.upserts} == {d}, "only the new match; a is unchanged"
    assert result.removed == [b]
    assert all(doc.body["done"] is False for doc in result.upserts)
    # The checkpoint is the selector's: a filtered pull continues from it, an unfiltered
    # one is refused.
    more, _ = client.pull_all(COLLECTION, result.checkpoint, selector=selector)
    assert all(doc.body.get("team") == team and doc.body.get("done") is False for doc in more if not doc.deleted)
    with pytest.raises(CheckpointInvalid):
        client.pull(COLLECTION, result.checkpoint)
