"""Claim-based access rules from the Python client: a team reads its documents whoever wrote
them, a write across the team boundary raises :class:`OutsideWriteFilter`, and a token whose
team claim changed finds its checkpoint expired: :meth:`SynclineClient.resume` then mends the
copy within the new scope (the old team's documents removed, the new team's arriving).

The JWT server's collection ``teams`` has ``access = "claims"`` and read and write rules on
the ``team`` claim (scripts/test-python.sh). Each test uses teams of its own.
"""

from __future__ import annotations

import pytest

from conftest import AuthServer
from support import hs256_token, uid
from syncline_client import ChangeRow, Doc, OutsideWriteFilter, SynclineClient

COLLECTION = "teams"


def member(auth_server: AuthServer, sub: str, team: str) -> SynclineClient:
    """A client calling as ``sub`` with the claim ``team``."""
    token = hs256_token(auth_server.secret, sub, claims={"team": team})
    return SynclineClient(auth_server.addr, token=token, timeout=15)


def test_a_team_reads_its_documents_and_cannot_write_across(auth_server: AuthServer) -> None:
    blue, red = uid("blue"), uid("red")
    a, b = uid("doc"), uid("doc")
    with member(auth_server, uid("alice"), blue) as alice, member(
        auth_server, uid("bob"), blue
    ) as bob, member(auth_server, uid("carol"), red) as carol:
        assert alice.push(COLLECTION, [ChangeRow(Doc(a, {"team": blue, "title": "plan"}))]) == []
        assert carol.push(COLLECTION, [ChangeRow(Doc(b, {"team": red, "title": "secret"}))]) == []
        docs, _ = bob.pull_all(COLLECTION)
        assert [d.id for d in docs if d.body.get("team") == blue] == [a]
        assert all(d.body.get("team") == blue for d in docs), "only the team's documents"
        with pytest.raises(OutsideWriteFilter) as refused:
            carol.push(COLLECTION, [ChangeRow(Doc(uid("doc"), {"team": blue}))])
        assert refused.value.field == "rows[0].new_document_state.json"


def test_a_changed_team_expires_the_checkpoint_and_resume_mends_the_copy(
    auth_server: AuthServer,
) -> None:
    sub, blue, red = uid("eve"), uid("blue"), uid("red")
    b1, b2, r1 = uid("doc"), uid("doc"), uid("doc")
    with member(auth_server, uid("w"), blue) as w_blue, member(auth_server, uid("w"), red) as w_red:
        assert w_blue.push(COLLECTION, [ChangeRow(Doc(b1, {"team": blue})), ChangeRow(Doc(b2, {"team": blue}))]) == []
        assert w_red.push(COLLECTION, [ChangeRow(Doc(r1, {"team": red}))]) == []
    with member(auth_server, sub, blue) as as_blue:
        docs, checkpoint = as_blue.pull_all(COLLECTION)
        held = {d.id: d.revision for d in docs if not d.deleted}
        assert {b1, b2} <= set(held) and r1 not in held
    # Eve moves to the red team: her copy is reconciled within the new scope.
    with member(auth_server, sub, red) as as_red:
        result = as_red.resume(COLLECTION, checkpoint, held)
        assert result.reconciled is not None, "the old checkpoint is expired under new claims"
        assert {b1, b2} <= set(result.removed)
        assert r1 in {d.id for d in result.upserts}
        assert all(d.body.get("team") == red for d in result.upserts)
        # The new checkpoint is the new scope's: pulling from it works.
        as_red.pull(COLLECTION, result.checkpoint)
