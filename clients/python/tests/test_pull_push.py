"""Push and pull against the real server."""

from __future__ import annotations

from datetime import datetime

from support import head, latest, uid
from syncline_client import ChangeRow, Doc, SynclineClient


def test_push_then_pull_all(client: SynclineClient) -> None:
    start = head(client, "tasks")
    ids = [uid("task") for _ in range(3)]
    rows = [ChangeRow(Doc(i, {"title": f"task {n}", "done": False, "n": n})) for n, i in enumerate(ids)]

    assert client.push("tasks", rows) == []

    docs, checkpoint = client.pull_all("tasks", start, limit=2)  # pages of two: several pages
    mine = [d for d in docs if d.id in ids]
    assert [d.id for d in mine] == ids, "pull returns the writes in change (push) order"
    for n, doc in enumerate(mine):
        assert doc.body == {"title": f"task {n}", "done": False, "n": n}
        assert doc.deleted is False
        assert doc.revision, "the server assigns a revision"
        assert isinstance(doc.updated_at, datetime) and doc.updated_at.tzinfo is not None
    assert checkpoint and checkpoint != start

    # Nothing new after the final checkpoint: an empty page with the same checkpoint.
    page, again = client.pull("tasks", checkpoint)
    assert page == []
    assert again == checkpoint


def test_pull_from_the_beginning_includes_new_documents(client: SynclineClient) -> None:
    doc_id = uid("note")
    assert client.push("notes", [ChangeRow(Doc(doc_id, {"text": "héllo ✓", "nested": {"a": [1, 2]}}))]) == []
    doc = latest(client, "notes", doc_id)
    assert doc.body == {"text": "héllo ✓", "nested": {"a": [1, 2]}}


def test_collections_are_separate(client: SynclineClient) -> None:
    doc_id = uid("sep")
    start = head(client, "notes")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"where": "tasks"}))]) == []
    docs, _ = client.pull_all("notes", start)
    assert doc_id not in {d.id for d in docs}


def test_pull_returns_each_document_once_at_its_latest_state(client: SynclineClient) -> None:
    doc_id = uid("task")
    start = head(client, "tasks")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 1}))]) == []
    first = latest(client, "tasks", doc_id, start)
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"v": 2}), assumed=first)]) == []

    # Page by one so no client-side de-duplication can hide a repeat.
    checkpoint, seen = start, []
    while True:
        page, checkpoint = client.pull("tasks", checkpoint, limit=1)
        if not page:
            break
        assert len(page) <= 1
        seen += [d for d in page if d.id == doc_id]
    assert len(seen) == 1
    assert seen[0].body == {"v": 2}
    assert seen[0].revision != first.revision


def test_rows_in_one_push_see_earlier_rows(client: SynclineClient) -> None:
    doc_id = uid("task")
    rows = [
        ChangeRow(Doc(doc_id, {"step": 1})),
        ChangeRow(Doc(doc_id, {"step": 2}), assumed=Doc(doc_id, {"step": 1})),
    ]
    assert client.push("tasks", rows) == []
    assert latest(client, "tasks", doc_id).body == {"step": 2}


def test_tombstone_is_delivered_through_pull(client: SynclineClient) -> None:
    doc_id = uid("task")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"title": "to delete"}))]) == []
    before_delete = head(client, "tasks")
    live = latest(client, "tasks", doc_id)

    tombstone = Doc(doc_id, {"title": "to delete"}, deleted=True)
    assert client.push("tasks", [ChangeRow(tombstone, assumed=live)]) == []

    docs, _ = client.pull_all("tasks", before_delete)
    deleted = [d for d in docs if d.id == doc_id]
    assert len(deleted) == 1
    assert deleted[0].deleted is True
    assert deleted[0].revision and deleted[0].revision != live.revision
    # From the beginning, too, the document shows once, as a tombstone.
    assert latest(client, "tasks", doc_id).deleted is True


def test_token_is_accepted(addr: str) -> None:
    # The server does not check tokens yet; a client that sends one must keep working.
    with SynclineClient(addr, token="test-token") as authed:
        assert authed.metadata == (("authorization", "Bearer test-token"),)
        doc_id = uid("task")
        assert authed.push("tasks", [ChangeRow(Doc(doc_id, {"t": 1}))]) == []
        assert latest(authed, "tasks", doc_id).body == {"t": 1}


def test_a_service_principal_assigns_owners_and_reads_them_back(client: SynclineClient) -> None:
    # The test server runs without authentication: every caller is a service principal.
    start = head(client, "tasks")
    doc_id = uid("owned")
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"title": "t"}, owner="team-a"))]) == []
    docs, _ = client.pull_all("tasks", start)
    mine = [d for d in docs if d.id == doc_id]
    assert len(mine) == 1 and mine[0].owner == "team-a"
    # An update keeps the owner, whatever it names.
    assert client.push("tasks", [ChangeRow(Doc(doc_id, {"title": "u"}, owner="other"), assumed=mine[0])]) == []
    docs, _ = client.pull_all("tasks", start)
    assert [d.owner for d in docs if d.id == doc_id] == ["team-a"]
