"""Typed errors: each refusal raises the SynclineError subclass its google.rpc reason names,
with the field violations and retry delay the server attached (a grpc.RpcError all the same).
"""

from __future__ import annotations

import time

import grpc
import pytest

from conftest import AuthServer
from support import StreamReader, call_within, uid
from syncline_client import (
    ChangeRow,
    CheckpointInvalid,
    CollectionNotFound,
    Doc,
    InvalidDocument,
    LimitExceeded,
    NotOwner,
    ScopeMissing,
    SynclineClient,
    SynclineError,
    TokenExpired,
    TokenInvalid,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_document_names_the_row_and_field(client: SynclineClient) -> None:
    rows = [ChangeRow(Doc(uid("ok"), {})), ChangeRow(Doc(uid("pk"), {"id": "something else"}))]
    with pytest.raises(InvalidDocument) as err:
        client.push("tasks", rows)
    assert isinstance(err.value, grpc.RpcError)  # code written for plain gRPC keeps working
    assert err.value.code() == INVALID
    assert err.value.reason == "INVALID_DOCUMENT"
    assert err.value.domain == "syncline"
    assert err.value.field.startswith("rows[1]"), err.value.field
    assert err.value.field_violations and err.value.field_violations[0].description
    assert "rows[1]" in err.value.details()


def test_schema_failure_is_invalid_document_at_its_row(auth_server: AuthServer) -> None:
    rows = [ChangeRow(Doc(uid("c"), {"title": "fine"})) for _ in range(3)]
    rows.append(ChangeRow(Doc(uid("c"), {"title": 5})))
    with auth_server.client("alice") as alice:
        with pytest.raises(InvalidDocument) as err:
            alice.push("checked", rows)
        assert err.value.field == "rows[3].new_document_state.json"
        # Atomic: nothing of the batch was written.
        ids = {d.id for d in alice.pull_all("checked")[0]}
    assert not ids & {r.new.id for r in rows}


def test_unknown_collection_is_collection_not_found(client: SynclineClient) -> None:
    with pytest.raises(CollectionNotFound) as err:
        client.pull("no_such_collection")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.reason == "COLLECTION_NOT_FOUND"


def test_bad_checkpoint_is_checkpoint_invalid_on_pull_and_stream(client: SynclineClient) -> None:
    with pytest.raises(CheckpointInvalid) as err:
        client.pull("tasks", "not-a-checkpoint")
    assert err.value.code() == INVALID
    assert err.value.reason == "CHECKPOINT_INVALID"
    subscription = client.subscribe("tasks", "not-a-checkpoint")
    with pytest.raises(CheckpointInvalid):
        call_within(lambda: next(subscription))
    assert subscription.closed


def test_pull_all_or_restart_starts_over_from_an_invalid_checkpoint(client: SynclineClient) -> None:
    doc_id = uid("restart")
    assert client.push("notes", [ChangeRow(Doc(doc_id, {"n": 1}))]) == []
    docs, checkpoint, restarted = client.pull_all_or_restart("notes", "not-a-checkpoint")
    assert restarted
    assert doc_id in {d.id for d in docs}
    # From the checkpoint it gave, nothing is new and nothing restarts.
    again, same, restarted = client.pull_all_or_restart("notes", checkpoint)
    assert (again, same, restarted) == ([], checkpoint, False)


def test_another_callers_checkpoint_is_invalid_and_restarts_as_the_caller(
    auth_server: AuthServer,
) -> None:
    alices, bobs = uid("alice"), uid("bob")
    with auth_server.client("alice") as alice, auth_server.client("bob") as bob:
        assert alice.push("tasks", [ChangeRow(Doc(alices, {}))]) == []
        assert bob.push("tasks", [ChangeRow(Doc(bobs, {}))]) == []
        _, alice_checkpoint = alice.pull_all("tasks")
        with pytest.raises(CheckpointInvalid):
            bob.pull("tasks", alice_checkpoint)
        docs, _, restarted = bob.pull_all_or_restart("tasks", alice_checkpoint)
    assert restarted
    ids = {d.id for d in docs}
    assert bobs in ids and alices not in ids


def test_another_owners_id_is_not_owner(auth_server: AuthServer) -> None:
    taken, mine = uid("taken"), uid("mine")
    with auth_server.client("alice") as alice, auth_server.client("bob") as bob:
        assert alice.push("tasks", [ChangeRow(Doc(taken, {"by": "alice"}))]) == []
        with pytest.raises(NotOwner) as err:
            bob.push("tasks", [ChangeRow(Doc(mine, {})), ChangeRow(Doc(taken, {"by": "bob"}))])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.value.reason == "NOT_OWNER"
        assert mine not in {d.id for d in bob.pull_all("tasks")[0]}
        assert [d.body for d in alice.pull_all("tasks")[0] if d.id == taken] == [{"by": "alice"}]


def test_missing_write_scope_is_scope_missing(auth_server: AuthServer) -> None:
    row = ChangeRow(Doc(uid("g"), {}))
    with auth_server.client("carol") as carol:
        with pytest.raises(ScopeMissing) as err:
            carol.push("guarded", [row])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.reason == "SCOPE_MISSING"
    with auth_server.client("carol", scope="reader writer") as writer:
        assert writer.push("guarded", [row]) == []


def test_expired_token_is_told_apart_from_a_bad_one(auth_server: AuthServer) -> None:
    expired = auth_server.token("dave", ttl=-120)
    forged = auth_server.token("dave").rsplit(".", 1)[0] + ".AAAA"
    outcomes = {}
    for name, token in (("expired", expired), ("forged", forged), ("none", None)):
        with SynclineClient(auth_server.addr, token=token, timeout=15) as c:
            with pytest.raises(SynclineError) as err:
                c.pull("tasks")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        outcomes[name] = err.value
    assert isinstance(outcomes["expired"], TokenExpired)
    assert outcomes["expired"].reason == "TOKEN_EXPIRED"
    for name in ("forged", "none"):
        assert isinstance(outcomes[name], TokenInvalid), name
        assert outcomes[name].reason == "TOKEN_INVALID"
    # A refused token reveals nothing more than "invalid".
    assert outcomes["forged"].details() == outcomes["none"].details()


def test_too_many_rows_is_limit_exceeded(auth_server: AuthServer) -> None:
    rows = [ChangeRow(Doc(uid("many"), {})) for _ in range(51)]  # push_rows_max = 50
    with auth_server.client("erin") as erin:
        with pytest.raises(LimitExceeded) as err:
            erin.push("tasks", rows)
    assert err.value.reason == "LIMIT_EXCEEDED"
    assert err.value.code() in (INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_stream_limit_is_limit_exceeded_with_a_retry_delay(auth_server: AuthServer) -> None:
    with auth_server.client("frank") as frank:
        assert frank.push("tasks", [ChangeRow(Doc(uid("f"), {}))]) == []
        readers = [StreamReader(frank.subscribe("tasks")) for _ in range(2)]  # the maximum
        try:
            for reader in readers:  # both streams are open once their catch-up arrived
                reader.wait_for(lambda d: True)
            third = frank.subscribe("tasks")
            with pytest.raises(LimitExceeded) as err:
                call_within(lambda: next(third))
        finally:
            for reader in readers:
                reader.close()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.retry_after is not None and err.value.retry_after > 0


def test_expiring_stream_token_is_renewed_quietly_with_a_token_function(
    auth_server: AuthServer,
) -> None:
    # Tokens that live 2 s: the stream outlives several of them, and sees every write.
    def token() -> str:
        return auth_server.token("gina", ttl=2)

    with SynclineClient(auth_server.addr, token=token, timeout=15) as gina:
        reader = StreamReader(gina.subscribe("tasks"))
        try:
            for n in range(3):
                doc_id = uid(f"renew{n}")
                assert gina.push("tasks", [ChangeRow(Doc(doc_id, {"n": n}))]) == []
                reader.wait_for(lambda d, i=doc_id: d.id == i)  # type: ignore[misc]
                # Past the stream's token: the next write needs a reconnected stream.
                time.sleep(2.5)
            assert reader.subscription.reconnects >= 2
            assert reader.error is None
        finally:
            reader.close()


def test_expiring_stream_token_is_raised_with_a_fixed_token(auth_server: AuthServer) -> None:
    with SynclineClient(auth_server.addr, token=auth_server.token("hank", ttl=2), timeout=15) as hank:
        subscription = hank.subscribe("tasks")

        def read_until_error() -> None:
            for _ in subscription:
                pass

        with pytest.raises(TokenExpired):
            call_within(read_until_error, timeout=20)
