"""Status codes: INVALID_ARGUMENT for bad input, NOT_FOUND for unknown collections."""

from __future__ import annotations

import grpc
import pytest

from support import call_within, uid
from syncline_client import ChangeRow, Doc, SynclineClient
from syncline_client.client import pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_empty_id_is_invalid_argument(client: SynclineClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.push("tasks", [ChangeRow(Doc("", {"title": "no id"}))])
    assert err.value.code() == INVALID
    assert "rows[0]" in err.value.details()


def test_primary_key_field_must_match_id(client: SynclineClient) -> None:
    doc_id = uid("task")
    with pytest.raises(grpc.RpcError) as err:
        client.push("tasks", [ChangeRow(Doc(uid("ok"), {})), ChangeRow(Doc(doc_id, {"id": "other"}))])
    assert err.value.code() == INVALID
    assert "rows[1]" in err.value.details()


def test_body_must_be_a_json_object(client: SynclineClient) -> None:
    for body in (b"[1, 2]", b"{not json", b""):
        request = pb.PushRequest(
            collection="tasks",
            rows=[pb.ChangeRow(new_document_state=pb.Document(id=uid("raw"), json=body))],
        )
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Push(request, metadata=client.metadata, timeout=10)
        assert err.value.code() == INVALID, body


def test_row_without_new_state_is_invalid_argument(client: SynclineClient) -> None:
    request = pb.PushRequest(collection="tasks", rows=[pb.ChangeRow()])
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Push(request, metadata=client.metadata, timeout=10)
    assert err.value.code() == INVALID


def test_assumed_state_for_another_id_is_invalid_argument(client: SynclineClient) -> None:
    doc_id = uid("task")
    with pytest.raises(grpc.RpcError) as err:
        client.push("tasks", [ChangeRow(Doc(doc_id, {}), assumed=Doc(uid("other"), {}))])
    assert err.value.code() == INVALID


def test_foreign_checkpoint_is_invalid_argument(client: SynclineClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.pull("tasks", "not-a-checkpoint")
    assert err.value.code() == INVALID
    subscription = client.subscribe("tasks", "not-a-checkpoint")
    with pytest.raises(grpc.RpcError) as err:
        call_within(lambda: next(subscription))
    assert err.value.code() == INVALID
    assert subscription.closed


def test_unknown_collection_is_not_found(client: SynclineClient) -> None:
    missing = "no_such_collection"
    with pytest.raises(grpc.RpcError) as err:
        client.pull(missing)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        client.push(missing, [ChangeRow(Doc(uid(), {"x": 1}))])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    subscription = client.subscribe(missing)  # not retried: NOT_FOUND is not UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        call_within(lambda: next(subscription))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert subscription.closed
