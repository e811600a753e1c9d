"""Subscribe: catch-up, live changes, heartbeats skipped, reconnects."""

from __future__ import annotations

import time

from support import StreamReader, TcpProxy, head, latest, uid
from syncline_client import ChangeRow, Doc, SynclineClient


def test_subscribe_catches_up_then_receives_a_live_push(client: SynclineClient) -> None:
    before = uid("task")
    start = head(client, "tasks")
    assert client.push("tasks", [ChangeRow(Doc(before, {"when": "before"}))]) == []

    reader = StreamReader(client.subscribe("tasks", start))
    try:
        caught_up = reader.wait_for(lambda d: d.id == before, timeout=10)
        assert caught_up.body == {"when": "before"}

        # Stay idle past the heartbeat interval (2 s in test-python.sh): heartbeats are skipped.
        time.sleep(2.5)
        live = uid("task")
        pushed_at = time.monotonic()
        assert client.push("tasks", [ChangeRow(Doc(live, {"when": "live"}))]) == []
        doc = reader.wait_for(lambda d: d.id == live, timeout=5)
        assert time.monotonic() - pushed_at < 5
        assert doc.body == {"when": "live"} and doc.revision and doc.updated_at is not None
        assert reader.error is None
        assert reader.checkpoints[-1] == reader.subscription.checkpoint
        # The stream's checkpoint resumes a pull after the live document.
        page, _ = client.pull("tasks", reader.subscription.checkpoint)
        assert live not in {d.id for d in page}
    finally:
        reader.close()


def test_tombstone_is_delivered_through_subscribe(client: SynclineClient) -> None:
    start = head(client, "notes")
    caught_up_id, live_id = uid("note"), uid("note")
    assert client.push("notes", [ChangeRow(Doc(caught_up_id, {"t": 1})), ChangeRow(Doc(live_id, {"t": 2}))]) == []
    c = latest(client, "notes", caught_up_id, start)
    assert client.push("notes", [ChangeRow(Doc(caught_up_id, {}, deleted=True), assumed=c)]) == []

    with client.subscribe("notes", start) as subscription:
        reader = StreamReader(subscription)
        try:
            # Catch-up: the document at its latest state, a tombstone.
            doc = reader.wait_for(lambda d: d.id == caught_up_id, timeout=10)
            assert doc.deleted is True
            reader.wait_for(lambda d: d.id == live_id and not d.deleted, timeout=10)

            # Live: a tombstone pushed while the stream is open.
            l = latest(client, "notes", live_id, start)
            assert client.push("notes", [ChangeRow(Doc(live_id, {"t": 2}, deleted=True), assumed=l)]) == []
            doc = reader.wait_for(lambda d: d.id == live_id and d.deleted, timeout=5)
            assert doc.body == {"t": 2}
            assert [d.id for d in reader.docs].count(caught_up_id) == 1
        finally:
            reader.close()


def test_close_stops_a_blocked_iteration(client: SynclineClient) -> None:
    subscription = client.subscribe("tasks", head(client, "tasks"))
    reader = StreamReader(subscription)
    time.sleep(0.5)
    started = time.monotonic()
    reader.close()  # asserts the iterating thread ended
    assert time.monotonic() - started < 5
    assert subscription.closed
    assert reader.error is None


def test_subscribe_reconnects_from_its_checkpoint_after_the_connection_drops(
    client: SynclineClient, addr: str
) -> None:
    proxy = TcpProxy(addr)
    try:
        with SynclineClient(proxy.addr) as via_proxy:
            first, second = uid("task"), uid("task")
            reader = StreamReader(via_proxy.subscribe("tasks", head(client, "tasks"), max_backoff=1.0))
            try:
                assert client.push("tasks", [ChangeRow(Doc(first, {"n": 1}))]) == []
                reader.wait_for(lambda d: d.id == first, timeout=10)

                assert proxy.sever() >= 1
                assert client.push("tasks", [ChangeRow(Doc(second, {"n": 2}))]) == []

                reader.wait_for(lambda d: d.id == second, timeout=15)
                assert reader.subscription.reconnects >= 1
                assert reader.error is None
                # Resumed from its checkpoint: nothing delivered twice.
                ids = [d.id for d in reader.docs]
                assert ids.count(first) == 1 and ids.count(second) == 1
            finally:
                reader.close()
    finally:
        proxy.close()


def test_closing_the_client_ends_its_subscriptions(addr: str) -> None:
    own = SynclineClient(addr)
    subscription = own.subscribe("tasks", head(own, "tasks"))
    reader = StreamReader(subscription)
    time.sleep(0.5)
    own.close()
    reader.join()  # the iteration ended by itself
    assert reader.error is None
    assert subscription.closed
