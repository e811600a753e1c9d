"""Expired checkpoints against the real server: the `purged` collection keeps tombstones for one
second and the server purges every second (scripts/test-python.sh)."""

from __future__ import annotations

import time

import pytest

from support import uid
from syncline_client import ChangeRow, CheckpointExpired, Doc, ResyncRequired, SynclineClient

COLLECTION = "purged"


def _checkpoint_before_a_purged_delete(client: SynclineClient) -> tuple[str, str, str]:
    """Returns (checkpoint, deleted id, kept id): the checkpoint was taken before `deleted`
    was deleted, and the tombstone has since been purged."""
    deleted, kept = uid("gone"), uid("kept")
    assert client.push(COLLECTION, [ChangeRow(Doc(deleted, {"v": 1})), ChangeRow(Doc(kept, {"v": 1}))]) == []
    docs, checkpoint = client.pull_all(COLLECTION)
    current = next(d for d in docs if d.id == deleted)
    tombstone = Doc(deleted, {"v": 1}, deleted=True)
    assert client.push(COLLECTION, [ChangeRow(tombstone, assumed=current)]) == []
    # Bounded wait for the purge (retention 1 s, a round every second).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        docs, _ = client.pull_all(COLLECTION)
        if deleted not in {d.id for d in docs}:
            return checkpoint, deleted, kept
        time.sleep(0.5)
    pytest.fail("the tombstone was not purged within 20 s")


def test_an_expired_checkpoint_is_refused_and_restarting_gives_the_live_set(client: SynclineClient) -> None:
    checkpoint, deleted, kept = _checkpoint_before_a_purged_delete(client)

    with pytest.raises(CheckpointExpired) as refused:
        client.pull(COLLECTION, checkpoint)
    assert refused.value.reason == "CHECKPOINT_EXPIRED"

    docs, fresh, restarted = client.pull_all_or_restart(COLLECTION, checkpoint)
    assert restarted, "an expired checkpoint starts over from the beginning"
    ids = {d.id for d in docs}
    assert kept in ids and deleted not in ids
    page, same = client.pull(COLLECTION, fresh)
    assert page == [] and same == fresh, "the fresh checkpoint resumes normally"


def test_a_stream_from_an_expired_checkpoint_raises_resync_required(client: SynclineClient) -> None:
    checkpoint, _, _ = _checkpoint_before_a_purged_delete(client)
    stream = client.subscribe(COLLECTION, checkpoint)
    with pytest.raises(ResyncRequired) as resync:
        for _ in stream:
            pass
    assert resync.value.checkpoint == checkpoint
    assert stream.closed, "a resync ends the subscription instead of reconnecting forever"
