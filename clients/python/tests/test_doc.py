"""Doc <-> Document conversion (no server involved)."""

from __future__ import annotations

from datetime import datetime, timezone

from syncline_client import ChangeRow, Doc
from syncline_client.client import pb


def test_doc_round_trips_through_the_proto() -> None:
    when = datetime(2026, 11, 3, 12, 30, 15, 123456, tzinfo=timezone.utc)
    doc = Doc(
        "d-1",
        {"title": "ü", "tags": ["a"], "n": 1.5},
        deleted=True,
        revision="2-abc",
        updated_at=when,
        owner="team-a",
    )
    message = doc.to_proto()
    assert isinstance(message, pb.Document)
    assert message.owner == "team-a"
    assert message.json == '{"title":"ü","tags":["a"],"n":1.5}'.encode()
    assert Doc.from_proto(message) == doc


def test_empty_body_and_missing_timestamp() -> None:
    doc = Doc.from_proto(pb.Document(id="t", deleted=True))
    assert doc == Doc("t", {}, deleted=True, revision="", updated_at=None)


def test_change_row_without_assumed_state() -> None:
    row = ChangeRow(Doc("x", {"a": 1})).to_proto()
    assert row.HasField("new_document_state")
    assert not row.HasField("assumed_master_state")
    row = ChangeRow(Doc("x", {"a": 2}), assumed=Doc("x", {"a": 1}, revision="1-a")).to_proto()
    assert row.assumed_master_state.revision == "1-a"
