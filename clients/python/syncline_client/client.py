"""A small typed client for the Syncline replication service (``syncline.v1``).

The helpers wrap the generated stubs: documents are :class:`Doc` dataclasses with a decoded
JSON ``body``; checkpoints are the server's opaque token strings (``""`` = from the
beginning). Failed calls raise a :class:`~syncline_client.errors.SynclineError` subclass
chosen by the server's reason (a ``grpc.RpcError``: ``err.code()`` and ``err.details()`` work
too); see :mod:`syncline_client.errors`.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Optional, Union, overload

import grpc

from . import attachments as _attachments
from . import reconcile as _reconcile
from .errors import (
    CheckpointExpired,
    CheckpointInvalid,
    SynclineError,
    TokenExpired,
    from_rpc_error,
)
from .reconcile import ReconcileLimits, ReconcileResult

try:
    from ._gen.syncline.v1 import replication_pb2 as pb
    from ._gen.syncline.v1 import replication_pb2_grpc as pb_grpc
    from ._gen.syncline.v1 import attachments_pb2_grpc as apb_grpc
except ImportError as exc:  # pragma: no cover - depends on the checkout
    raise ImportError(
        "syncline_client: the generated gRPC stubs are missing: install the package "
        "(`pip install ./clients/python`, which generates them) instead of importing it from "
        "the source tree, or run `python clients/python/generate.py` (needs grpcio-tools)"
    ) from exc

__all__ = [
    "ChangeRow",
    "Doc",
    "OverwrittenVersion",
    "PushResult",
    "ReconcileLimits",
    "ReconcileResult",
    "RefusedRow",
    "ResolvedRow",
    "ResumeResult",
    "ResyncRequired",
    "Subscription",
    "SynclineClient",
    "UnresolvedConflict",
]


@dataclass
class Doc:
    """One document as the server stores it.

    ``revision`` and ``updated_at`` are assigned by the server; they are ignored in a new
    document state. In an assumed master state a non-empty ``revision`` is what the server's
    conflict check compares; with an empty one it compares ``body`` (by JSON value) and
    ``deleted``. ``owner`` is the principal the document belongs to: a service principal may
    set it on a new document (others may leave it empty or name themselves); updates keep it.

    ``left_scope`` is set only in a filtered read (a ``selector``): the document still exists
    but no longer matches the selector. ``deleted`` is then true for this reader only, ``body``
    is ``{}`` and ``revision`` empty: drop the local copy, and do not push the removal back
    (that would delete the document for everyone). The server ignores it in pushes.
    """

    id: str
    body: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False
    revision: str = ""
    updated_at: Optional[datetime] = None
    owner: str = ""
    left_scope: bool = False

    def to_proto(self) -> pb.Document:
        """Encodes the document as a ``syncline.v1.Document`` (``body`` as compact UTF-8 JSON)."""
        message = pb.Document(
            id=self.id,
            json=json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode(),
            deleted=self.deleted,
            revision=self.revision,
            owner=self.owner,
            left_scope=self.left_scope,
        )
        if self.updated_at is not None:
            updated_at = self.updated_at
            if updated_at.tzinfo is None:
                updated_at = updated_at.replace(tzinfo=timezone.utc)
            message.updated_at.FromDatetime(updated_at)
        return message

    @classmethod
    def from_proto(cls, message: pb.Document) -> Doc:
        """Decodes a ``syncline.v1.Document``; an empty ``json`` (a bare tombstone) gives ``{}``."""
        body = json.loads(message.json) if message.json else {}
        updated_at = (
            message.updated_at.ToDatetime(tzinfo=timezone.utc)
            if message.HasField("updated_at")
            else None
        )
        return cls(
            id=message.id,
            body=body,
            deleted=message.deleted,
            revision=message.revision,
            updated_at=updated_at,
            owner=message.owner,
            left_scope=message.left_scope,
        )


@dataclass
class ChangeRow:
    """One write in a push: the wanted state and the state the client believes the server has.

    ``assumed=None`` means the client believes the document is new.
    """

    new: Doc
    assumed: Optional[Doc] = None

    def to_proto(self) -> pb.ChangeRow:
        """Encodes the row as a ``syncline.v1.ChangeRow``."""
        row = pb.ChangeRow(new_document_state=self.new.to_proto())
        if self.assumed is not None:
            row.assumed_master_state.CopyFrom(self.assumed.to_proto())
        return row


@dataclass
class RefusedRow:
    """A row of a per-row push that the server refused (not written).

    ``index`` is its position in the pushed rows and ``row`` the row itself; ``reason`` the
    stable code (``INVALID_DOCUMENT``, ``NOT_OWNER``, ``LIMIT_EXCEEDED``, ...), ``field`` the
    offending field's path (``rows[3].new_document_state.json``) and ``message`` the words for
    people. ``current`` is the server's state of the document when the caller may read it; it
    is ``None`` when the document does not exist or is someone else's: drop the local copy
    then, instead of pushing it again.
    """

    index: int
    id: str
    reason: str
    field: str
    message: str
    current: Optional[Doc]
    row: Optional[ChangeRow] = None


class ResolvedRow(NamedTuple):
    """A conflicting row the server resolved under the collection's conflict strategy and wrote.

    ``index`` is its position in the pushed rows, ``doc`` the document as stored (with its new
    revision: adopt it as the server's state) and ``strategy`` the strategy that resolved it
    (``"last-write-wins"``, ``"field-merge"`` or ``"crdt"``). A tuple: ``for index, doc,
    strategy in result.resolved`` works.
    """

    index: int
    doc: Doc
    strategy: str


class UnresolvedConflict(NamedTuple):
    """Why the collection's strategy could not resolve a conflict (no assumed state to merge
    against, a merged document the collection's schema refuses, ...): ``conflict`` is its
    position in :attr:`PushResult.conflicts`, ``message`` the reason, for people."""

    conflict: int
    message: str


@dataclass
class PushResult:
    """The whole outcome of a push (:meth:`SynclineClient.push_result`, or
    :meth:`SynclineClient.push` with ``per_row=True``).

    ``conflicts``: the server's state of each conflicting row that was not written, in row
    order. ``refused``: the refused rows (not written; per-row pushes only), in row order.
    ``resolved``: the conflicting rows the server resolved and wrote (collections with a
    ``conflict`` strategy other than first-write-wins), in row order: adopt each ``doc``.
    ``unresolved``: for conflicts the strategy tried and could not resolve, why
    (:class:`UnresolvedConflict`; a conflict without one simply lost).
    ``written``: the indices of every row written, as sent or as resolved, in one transaction
    (conflicts come back as documents, not indices: a row whose id is among them is not
    counted as written). ``replayed``: the server answered a retry of an already applied push
    (same idempotency key) with the first push's outcome, and wrote nothing this time.
    ``idempotency_key``: the key the push was sent with (pass it to a later retry, e.g. after
    a restart, as ``idempotency_key=``).
    """

    written: list[int]
    conflicts: list[Doc]
    refused: list[RefusedRow]
    resolved: list[ResolvedRow] = field(default_factory=list)
    unresolved: list[UnresolvedConflict] = field(default_factory=list)
    replayed: bool = False
    idempotency_key: str = ""

    @property
    def ok(self) -> bool:
        """True when every row was written as sent (nothing conflicted, refused or resolved)."""
        return not self.conflicts and not self.refused and not self.resolved


@dataclass
class OverwrittenVersion:
    """A version of a document that lost an automatic conflict resolution
    (:meth:`SynclineClient.list_overwritten`).

    ``doc`` is the losing state: its ``revision`` is the one it had on the server (``source ==
    "server"``: a stored state the resolution replaced) or the one the pushing client had
    assumed (``source == "client"``: a pushed state not written as sent; empty when it
    assumed none), and ``updated_at`` when it lost. ``strategy`` decided it,
    ``resolved_revision`` is the revision of the state the resolution stored, and
    ``pushed_by`` the subject of the principal whose push was resolved.
    """

    doc: Doc
    source: str
    strategy: str
    resolved_revision: str
    pushed_by: str


@dataclass
class ResumeResult:
    """The changes that bring a local copy up to date (:meth:`SynclineClient.resume`).

    Store every document of ``upserts`` (live, at the server's latest state), drop every id of
    ``removed`` (deleted, purged or no longer visible), and keep ``checkpoint`` for the next
    pull or subscription. ``reconciled`` is the :class:`ReconcileResult` of the reconcile that
    replaced the refused checkpoint (``None`` when pulling from it worked); ``pulled`` counts
    the documents the pulls transferred.
    """

    upserts: list[Doc]
    removed: list[str]
    checkpoint: str
    reconciled: Optional[ReconcileResult] = None
    pulled: int = 0


class ResyncRequired(Exception):
    """Raised by a :class:`Subscription` when the server sends ``Resync``: its checkpoint
    expired (tombstones purged past it, or a restore), so resuming from it could miss deletes.
    Call :meth:`SynclineClient.reconcile` (or :meth:`SynclineClient.resume`) with the ids and
    revisions you hold, apply the result and subscribe again from its checkpoint; without a
    local copy worth keeping, start over with :meth:`SynclineClient.pull_all_or_restart`.
    :attr:`checkpoint` is the expired one."""

    def __init__(self, reason: str, checkpoint: str) -> None:
        super().__init__(f"the server asked for a resync: {reason}")
        self.reason = reason
        self.checkpoint = checkpoint


_COMPRESSIONS = {
    "gzip": grpc.Compression.Gzip,
    "none": grpc.Compression.NoCompression,
    "identity": grpc.Compression.NoCompression,
}


def _compression(value: Union[str, grpc.Compression, None]) -> Optional[grpc.Compression]:
    """Maps the ``compression`` argument to ``grpc.Compression``; a clear error for others."""
    if value is None or isinstance(value, grpc.Compression):
        return value
    if isinstance(value, str) and value.lower() in _COMPRESSIONS:
        return _COMPRESSIONS[value.lower()]
    raise ValueError(
        f"compression must be one of {sorted(_COMPRESSIONS)} or a grpc.Compression, "
        f"not {value!r:.40}"
    )


#: What ``selector=`` accepts: a Mango selector as a dict, or its JSON text.
Selector = Union[Mapping[str, Any], str, None]


def _selector_bytes(selector: Selector) -> bytes:
    """The wire form of ``selector`` (UTF-8 JSON; ``b""`` for none). The server parses and
    checks it (INVALID_ARGUMENT naming the path); here only the Python type is checked."""
    if selector is None:
        return b""
    if isinstance(selector, str):
        return selector.encode()
    if isinstance(selector, Mapping):
        return json.dumps(selector, separators=(",", ":"), ensure_ascii=False).encode()
    raise TypeError(
        f"selector must be a dict (a Mango selector), its JSON text or None, "
        f"not {type(selector).__name__}"
    )


class SynclineClient:
    """A connection to a Syncline server.

    ``target`` is ``host:port``. Without ``credentials`` the channel is plaintext; pass
    ``grpc.ssl_channel_credentials()`` (or any ``grpc.ChannelCredentials``) for TLS. When
    ``token`` is given every call carries ``authorization: Bearer <token>``; ``token`` may
    also be a function returning the current token, called for every call and every stream
    (re)connection, so a subscription whose token expires (``TokenExpired``) reconnects with a
    fresh one instead of failing. ``timeout``
    (seconds) bounds each unary call; streams are not bounded by it.

    ``compression="gzip"`` (or a ``grpc.Compression``) compresses the requests; the default
    sends them uncompressed, because a server without compression refuses compressed requests
    (UNIMPLEMENTED). Syncline accepts gzip and zstd; grpc Python has no zstd. Replies are accepted compressed either way
    (the channel offers gzip and deflate in ``grpc-accept-encoding``; the server decides).

    Pushes are retried, and only pushes: every push carries an idempotency key (see
    :meth:`push_result`), so after ``UNAVAILABLE`` (the server restarting or draining, a lost
    connection) or ``DEADLINE_EXCEEDED`` (perhaps after the server committed) the client sends
    the same request with the same key again, up to ``push_retries`` times, waiting with
    jittered exponential backoff (or the server's ``retry_after``). The server applies the
    push at most once and answers the retry with the first outcome (``replayed``). Other
    calls are not retried (pulls are cheap to repeat yourself; streams reconnect on their
    own). ``push_retries=0`` turns this off.

    ``interceptors``: gRPC client interceptors (``grpc.UnaryUnaryClientInterceptor``, ...)
    every call goes through, e.g. for logging or tracing.

    Use as a context manager, or call :meth:`close`, to release the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        token: Union[str, Callable[[], str], None] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        timeout: Optional[float] = 30.0,
        options: Optional[Sequence[tuple[str, Any]]] = None,
        compression: Union[str, grpc.Compression, None] = None,
        push_retries: int = 3,
        interceptors: Sequence[Any] = (),
    ) -> None:
        algorithm = _compression(compression)
        if isinstance(push_retries, bool) or not isinstance(push_retries, int) or push_retries < 0:
            raise ValueError(f"push_retries must be a non-negative int, not {push_retries!r:.40}")
        if credentials is None:
            self._channel = grpc.insecure_channel(
                target, options=options, compression=algorithm
            )
        else:
            self._channel = grpc.secure_channel(
                target, credentials, options=options, compression=algorithm
            )
        calls = (
            grpc.intercept_channel(self._channel, *interceptors) if interceptors else self._channel
        )
        self._stub = pb_grpc.ReplicationServiceStub(calls)
        self._attachment_stub = apb_grpc.AttachmentServiceStub(calls)
        self._token = token
        self._timeout = timeout
        self._push_retries = push_retries
        self._closed = False
        self.target = target

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; open subscriptions end (their iteration stops)."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> SynclineClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected; raises ``grpc.FutureTimeoutError`` after
        ``timeout`` seconds."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    @property
    def stub(self) -> pb_grpc.ReplicationServiceStub:
        """The generated stub, for calls the helpers do not cover (pass :attr:`metadata`)."""
        return self._stub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata for a call now (the bearer token, if any)."""
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),) if token else ()

    @property
    def refreshes_token(self) -> bool:
        """True when ``token`` is a function (expired tokens on streams are then renewed)."""
        return callable(self._token)

    # -- calls -------------------------------------------------------------------------------

    def pull(
        self,
        collection: str,
        checkpoint: str = "",
        limit: int = 0,
        *,
        selector: Selector = None,
    ) -> tuple[list[Doc], str]:
        """Returns one page of documents changed after ``checkpoint`` and the checkpoint after
        them (the same checkpoint when nothing is new). ``limit=0`` uses the server default.

        ``selector`` (selective sync): a Mango selector over the collection's declared
        ``filter_fields``, as a dict or its JSON text, e.g. ``{"done": False, "priority":
        {"$gte": 3}}``. The page then holds the documents that match it at their latest state,
        and a removal for each document that matched after ``checkpoint`` and no longer does:
        ``deleted`` set, with ``left_scope`` when the document still exists (an edit moved it
        out). The checkpoint returned is bound to the selector: using it with another selector
        (or none) raises :class:`~syncline_client.errors.CheckpointInvalid`. A malformed
        selector, or one naming an undeclared field, raises
        :class:`~syncline_client.errors.InvalidRequest` (``err.field`` names the path).
        """
        response = self._unary(
            self._stub.Pull,
            pb.PullRequest(
                collection=collection,
                checkpoint=pb.Checkpoint(token=checkpoint),
                limit=limit,
                selector=_selector_bytes(selector),
            ),
        )
        return [Doc.from_proto(d) for d in response.documents], response.checkpoint.token

    def pull_all(
        self,
        collection: str,
        checkpoint: str = "",
        limit: int = 500,
        *,
        selector: Selector = None,
    ) -> tuple[list[Doc], str]:
        """Pulls page after page until a page comes back empty.

        Returns every document changed after ``checkpoint``, each once at the latest state
        seen (a document written again while paging appears once, at its later position), in
        change order, and the final checkpoint. ``selector`` as in :meth:`pull`.
        """
        docs: dict[str, Doc] = {}
        while True:
            page, next_checkpoint = self.pull(collection, checkpoint, limit, selector=selector)
            if not page:
                return list(docs.values()), next_checkpoint
            if next_checkpoint == checkpoint:
                raise RuntimeError(
                    f"syncline: pull of {collection!r} returned {len(page)} documents without "
                    "advancing the checkpoint"
                )
            for doc in page:
                docs.pop(doc.id, None)
                docs[doc.id] = doc
            checkpoint = next_checkpoint

    def pull_all_or_restart(
        self,
        collection: str,
        checkpoint: str = "",
        limit: int = 500,
        *,
        selector: Selector = None,
    ) -> tuple[list[Doc], str, bool]:
        """:meth:`pull_all`, starting over from the beginning when the server refuses
        ``checkpoint`` as :class:`~syncline_client.errors.CheckpointInvalid` (issued for
        another collection or caller, or altered: it can never work again) or
        :class:`~syncline_client.errors.CheckpointExpired` (tombstones purged past it, or a
        restore).

        Returns ``(docs, checkpoint, restarted)``. When ``restarted`` is true, ``docs`` is the
        whole collection as the caller may see it (tombstones included): replace the local
        copy with it rather than merging, and store the new checkpoint.

        A client that keeps a local copy should call :meth:`resume` instead: it reconciles
        that copy (transferring only what differs) rather than downloading everything again.

        With a ``selector`` (see :meth:`pull`) this is how a filtered copy starts over, e.g.
        after its selector changed (the old checkpoint is ``CheckpointInvalid``): ``docs`` is
        then every document matching the selector, and the local copy is replaced by it.
        (:meth:`resume` with the same ``selector`` keeps a filtered local copy instead.)
        """
        try:
            docs, next_checkpoint = self.pull_all(collection, checkpoint, limit, selector=selector)
            return docs, next_checkpoint, False
        except (CheckpointInvalid, CheckpointExpired):
            if not checkpoint:
                raise
        docs, next_checkpoint = self.pull_all(collection, "", limit, selector=selector)
        return docs, next_checkpoint, True

    def reconcile(
        self,
        collection: str,
        held: Mapping[str, str],
        *,
        limits: Optional[ReconcileLimits] = None,
        selector: Selector = None,
    ) -> ReconcileResult:
        """Compares the local copy with the server's live documents and returns what differs.

        ``held`` maps each id of the local copy to its revision (live documents only: leave
        tombstones out). Runs the ``Reconcile`` rounds (bucket digests, deeper only where they
        differ), ``ReconcileList`` and ``Fetch`` in requests split by ``limits`` (the server's
        defaults; pass lower ones if the server is configured lower) and returns a
        :class:`ReconcileResult`: store its ``upserts``, drop its ``removed``, then pull or
        subscribe from its ``checkpoint`` (C0), which sees every change the reconcile may
        have missed. Use it when the checkpoint expired (``CheckpointExpired``,
        ``ResyncRequired``) or was lost; :meth:`resume` does the whole sequence.

        ``selector`` (selective sync, see :meth:`pull`): a filtered copy reconciles within its
        selector; every round, list and fetch carries it, and the checkpoint is bound to it.
        """
        wire = _selector_bytes(selector)

        def call(method: str, request: Any) -> Any:
            if wire:
                request.selector = wire
            return self._unary(getattr(self._stub, method), request)

        return _reconcile.run(
            pb,
            call,
            collection,
            held,
            limits or ReconcileLimits(),
            Doc.from_proto,
        )

    def resume(
        self,
        collection: str,
        checkpoint: str,
        held: Mapping[str, str],
        *,
        limit: int = 500,
        limits: Optional[ReconcileLimits] = None,
        selector: Selector = None,
    ) -> ResumeResult:
        """Brings a local copy up to date: pulls from ``checkpoint`` and, when the server
        refuses it (``CheckpointExpired``: tombstones purged past it or a restore;
        ``CheckpointInvalid``), reconciles ``held`` (id -> revision of the live documents held)
        and pulls on from the reconcile's checkpoint.

        An empty ``checkpoint`` with a non-empty ``held`` also reconciles: a pull from the
        beginning would not mention documents purged while away. Returns a
        :class:`ResumeResult`, a delta to apply to the local copy in either case. When a purge
        overtakes the reconcile's own checkpoint before the pull (a very short retention),
        it reconciles again, at most 3 times. With a ``selector`` (see :meth:`pull`) the pulls
        and the reconcile stay within it: ``removed`` then also holds the ids that left it.
        """
        changes: dict[str, Optional[Doc]] = {}
        pulled = 0
        if checkpoint or not held:
            try:
                docs, next_checkpoint = self.pull_all(
                    collection, checkpoint, limit, selector=selector
                )
                _apply_pulled(changes, docs)
                return _resume_result(changes, next_checkpoint, None, len(docs))
            except (CheckpointInvalid, CheckpointExpired):
                pass
        local = dict(held)
        for attempt in range(3):
            reconciled = self.reconcile(collection, local, limits=limits, selector=selector)
            for doc in reconciled.upserts:
                changes[doc.id] = doc
                local[doc.id] = doc.revision
            for doc_id in reconciled.removed:
                changes[doc_id] = None
                local.pop(doc_id, None)
            try:
                docs, next_checkpoint = self.pull_all(
                    collection, reconciled.checkpoint, limit, selector=selector
                )
            except CheckpointExpired:
                if attempt == 2:
                    raise
                continue
            pulled += len(docs)
            _apply_pulled(changes, docs)
            return _resume_result(changes, next_checkpoint, reconciled, pulled)
        raise AssertionError("unreachable")  # pragma: no cover

    @overload
    def push(
        self,
        collection: str,
        rows: Sequence[ChangeRow],
        *,
        per_row: Literal[False] = ...,
        idempotency_key: Optional[str] = ...,
    ) -> list[Doc]: ...

    @overload
    def push(
        self,
        collection: str,
        rows: Sequence[ChangeRow],
        *,
        per_row: Literal[True],
        idempotency_key: Optional[str] = ...,
    ) -> PushResult: ...

    def push(
        self,
        collection: str,
        rows: Sequence[ChangeRow],
        *,
        per_row: bool = False,
        idempotency_key: Optional[str] = None,
    ) -> Union[list[Doc], PushResult]:
        """Writes ``rows`` in one transaction.

        By default (atomic) any refused row fails the whole call with its typed error
        (:class:`~syncline_client.errors.InvalidDocument`, ``NotOwner``, ...) and nothing is
        written; it returns the server's current state of every row that conflicted and was
        not written, in row order: ``[]`` when nothing conflicted. Rows the server resolved
        (a collection with a ``conflict`` strategy) were written and are not in that list:
        call :meth:`push_result` to receive their merged state.

        With ``per_row=True`` the rows the server refuses are skipped and reported instead,
        and every other row is written (or conflicts) in the same single transaction: it
        returns a :class:`PushResult`, as :meth:`push_result` does. Errors about the request as
        a whole (authentication, unknown collection, request-size limits) still raise.

        Retried with the same idempotency key after ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED``;
        ``idempotency_key`` as in :meth:`push_result`.
        """
        result = self.push_result(
            collection, rows, per_row=per_row, idempotency_key=idempotency_key
        )
        return result if per_row else result.conflicts

    def push_result(
        self,
        collection: str,
        rows: Sequence[ChangeRow],
        *,
        per_row: bool = False,
        idempotency_key: Optional[str] = None,
    ) -> PushResult:
        """:meth:`push` returning the whole :class:`PushResult`, in either mode: the conflicts
        (not written), the rows the server resolved and wrote (``resolved``: adopt their
        ``doc``), the refused rows (``per_row=True`` only; an atomic push raises instead),
        ``written`` and ``replayed``.

        Every push carries an idempotency key: a new random one (``uuid4().hex``) unless
        ``idempotency_key`` is given. The client's own retries (after ``UNAVAILABLE`` or
        ``DEADLINE_EXCEEDED``, see :class:`SynclineClient`) resend it, so the server applies the
        push at most once. To retry across a process restart, store
        ``result.idempotency_key`` (or your own key, up to 128 printable ASCII characters)
        before pushing and pass it again: a push the server already applied comes back with
        ``replayed=True`` and the first outcome, nothing written twice. A key names one
        logical push: reusing it with different rows or collection raises
        :class:`~syncline_client.errors.IdempotencyKeyReused`.
        """
        key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
        mode = pb.PUSH_MODE_PER_ROW if per_row else pb.PUSH_MODE_UNSPECIFIED
        request = pb.PushRequest(
            collection=collection,
            rows=[r.to_proto() for r in rows],
            mode=mode,
            idempotency_key=key,
        )
        response = self._push_with_retries(request)
        conflicts = [Doc.from_proto(d) for d in response.conflicts]
        refused = [
            RefusedRow(
                index=r.index,
                id=r.id,
                reason=r.reason,
                field=r.field,
                message=r.message,
                current=Doc.from_proto(r.current) if r.HasField("current") else None,
                row=rows[r.index] if r.index < len(rows) else None,
            )
            for r in response.refused
        ]
        resolved = [
            ResolvedRow(index=r.index, doc=Doc.from_proto(r.document), strategy=r.strategy)
            for r in response.resolved
        ]
        refused_indices = {r.index for r in refused}
        conflicting_ids = {d.id for d in conflicts}
        written = [
            i
            for i, row in enumerate(rows)
            if i not in refused_indices and row.new.id not in conflicting_ids
        ]
        return PushResult(
            written=written,
            conflicts=conflicts,
            refused=refused,
            resolved=resolved,
            unresolved=[UnresolvedConflict(u.conflict, u.message) for u in response.unresolved],
            replayed=response.replayed,
            idempotency_key=key,
        )

    #: Codes after which a push is sent again (with the same idempotency key).
    PUSH_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
    #: First and largest wait between push attempts, in seconds.
    PUSH_RETRY_INITIAL_BACKOFF = 0.1
    PUSH_RETRY_MAX_BACKOFF = 2.0

    def _push_with_retries(self, request: pb.PushRequest) -> pb.PushResponse:
        # Safe only because the request carries an idempotency key: the server applies it at
        # most once, and a retry after a lost acknowledgement gets the first response back.
        backoff = self.PUSH_RETRY_INITIAL_BACKOFF
        attempt = 0
        while True:
            try:
                return self._unary(self._stub.Push, request)
            except SynclineError as err:
                if (
                    attempt >= self._push_retries
                    or self._closed
                    or err.code() not in self.PUSH_RETRY_CODES
                ):
                    raise
                delay = random.uniform(backoff / 2, backoff)
                if err.retry_after is not None:
                    delay = max(delay, min(err.retry_after, self.PUSH_RETRY_MAX_BACKOFF))
                time.sleep(delay)
                backoff = min(backoff * 2, self.PUSH_RETRY_MAX_BACKOFF)
                attempt += 1

    def list_overwritten(
        self, collection: str, id: str, limit: int = 0
    ) -> list[OverwrittenVersion]:
        """The recent versions of document ``id`` that lost an automatic conflict resolution,
        newest first (at most ``limit``; 0 means the server's maximum, 100), to show the user
        after the fact (the guide's conflict dialog).

        Only for collections with ``keep_overwritten`` (otherwise
        :class:`~syncline_client.errors.OverwrittenNotKept`); versions are kept that long. The
        document's owner and service principals see them; for anyone else the list is empty,
        as for an id that never lost anything.
        """
        response = self._unary(
            self._stub.ListOverwritten,
            pb.ListOverwrittenRequest(collection=collection, id=id, limit=limit),
        )
        return [
            OverwrittenVersion(
                doc=Doc.from_proto(v.document),
                source=v.source,
                strategy=v.strategy,
                resolved_revision=v.resolved_revision,
                pushed_by=v.pushed_by,
            )
            for v in response.versions
        ]

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def put_attachment(
        self,
        collection: str,
        source: _attachments.Source,
        *,
        content_type: Optional[str] = None,
        chunk_bytes: int = _attachments.CHUNK_BYTES,
    ) -> tuple[str, int]:
        """Uploads a file as an attachment blob of ``collection``; returns ``(digest, length)``
        for the document's ``_attachments.<name>`` (``{"digest": ..., "length": ...,
        "type": ...}``), to push after this returns.

        ``source`` is a path or a seekable binary file (read from its current position to its
        end). The file is read twice, chunk by chunk: once to hash it, then, only if the
        server's ``Missing`` says it lacks the blob for this caller, to send it in chunks of
        ``chunk_bytes`` (at most the server's ``attachments.chunk_bytes_max``, 1 MiB by
        default). A blob the caller already holds is not sent again. Memory stays at about one
        chunk. ``content_type`` defaults to a guess from the path, else
        ``application/octet-stream``.

        Raises :class:`~syncline_client.errors.InvalidRequest` (field ``start.digest`` or
        ``start.length``) when the bytes sent are not the ones hashed (the file changed
        meanwhile; nothing is stored), :class:`~syncline_client.errors.LimitExceeded` beyond
        ``attachment_bytes_max`` or the uploads in flight per caller, and
        :class:`~syncline_client.errors.ScopeMissing` without the collection's write scopes.
        Uploads are not retried (run it again: nothing half-sent is kept).
        """
        return _attachments.put(
            self._attachment_stub,
            lambda: self.metadata,
            self._timeout,
            collection,
            source,
            content_type,
            chunk_bytes,
        )

    def get_attachment(
        self,
        collection: str,
        digest: str,
        dest: _attachments.Source,
        offset: int = 0,
        *,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> int:
        """Downloads the blob ``digest`` of ``collection`` into ``dest`` (a path, or a
        writable binary file); returns its length.

        ``offset`` > 0 resumes an earlier transfer: ``dest``'s first ``offset`` bytes are kept
        (and read back, so a file object must then be readable and seekable) and only the rest
        is fetched. A stream broken on the way (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
        ``ABORTED``, or cut short) resumes from the bytes written, after ``backoff`` seconds
        doubling per attempt; ``retries`` attempts in a row that bring no new byte raise the
        last error. At the end the SHA-256 of the whole file is checked against ``digest``
        (:class:`~syncline_client.errors.AttachmentCorrupted` otherwise). Raises
        :class:`~syncline_client.errors.AttachmentNotFound` when the blob does not exist or no
        live document the caller may read references it.
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r:.40}")
        return _attachments.get(
            self._attachment_stub,
            lambda: self.metadata,
            collection,
            digest,
            dest,
            offset,
            retries,
            backoff,
        )

    def missing_attachments(self, collection: str, digests: Sequence[str]) -> list[str]:
        """Which of ``digests`` the caller must upload before pushing documents referencing
        them (in request order, each once)."""
        response = self._unary(
            self._attachment_stub.Missing,
            _attachments.apb.MissingRequest(collection=collection, digests=list(digests)),
        )
        return list(response.digests)

    def subscribe(
        self,
        collection: str,
        checkpoint: str = "",
        *,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        selector: Selector = None,
    ) -> Subscription:
        """Opens a live change stream: an iterator of ``(docs, checkpoint)`` batches.

        ``selector`` (selective sync, see :meth:`pull`): the stream carries the documents
        matching it and removals (``deleted``, with ``left_scope`` when an edit moved the
        document out), and its checkpoints are those of a filtered :meth:`pull` under the same
        selector. A checkpoint of another selector raises ``CheckpointInvalid`` from the first
        ``next()``. The selector is checked when the subscription is created (``TypeError``),
        and by the server at the first ``next()`` (``InvalidRequest``).

        Heartbeats are skipped. With ``reconnect=True`` the stream is reopened from the last
        checkpoint received after ``UNAVAILABLE`` and after the server ends the stream,
        waiting with exponential backoff (capped at ``max_backoff`` seconds) between
        attempts, and after ``TokenExpired`` when the client's ``token`` is a function; other
        errors are raised (typed, see :mod:`syncline_client.errors`). A server ``Resync`` (the
        checkpoint expired) raises :class:`ResyncRequired`: reconcile (:meth:`reconcile`) and
        subscribe again from its checkpoint. Stop it with :meth:`Subscription.close` (safe from
        another thread) or by leaving its ``with`` block.
        """
        return Subscription(
            self,
            collection,
            checkpoint,
            reconnect=reconnect,
            max_backoff=max_backoff,
            selector=selector,
        )


def _apply_pulled(changes: dict[str, Optional[Doc]], docs: Sequence[Doc]) -> None:
    # Pulled documents are later than anything the reconcile saw (they are after C0).
    for doc in docs:
        changes[doc.id] = None if doc.deleted else doc


def _resume_result(
    changes: Mapping[str, Optional[Doc]],
    checkpoint: str,
    reconciled: Optional[ReconcileResult],
    pulled: int,
) -> ResumeResult:
    return ResumeResult(
        upserts=[d for d in changes.values() if d is not None],
        removed=[i for i, d in changes.items() if d is None],
        checkpoint=checkpoint,
        reconciled=reconciled,
        pulled=pulled,
    )


class Subscription(Iterator[tuple[list[Doc], str]]):
    """A (re)connecting ``Subscribe`` stream; see :meth:`SynclineClient.subscribe`.

    :attr:`checkpoint` is the checkpoint after the last batch handed out; store it to resume
    (with the same :attr:`selector`). :attr:`reconnects` counts how many times the stream was
    reopened.
    """

    INITIAL_BACKOFF = 0.1
    #: Token renewals in a row (no event received in between) before ``TokenExpired`` is raised.
    TOKEN_RENEWALS_MAX = 3

    def __init__(
        self,
        client: SynclineClient,
        collection: str,
        checkpoint: str = "",
        *,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        selector: Selector = None,
    ) -> None:
        self.collection = collection
        self.checkpoint = checkpoint
        #: The selector's wire form (``b""``: unfiltered), sent on every (re)connection.
        self.selector = _selector_bytes(selector)
        self.reconnects = 0
        self._client = client
        self._reconnect = reconnect
        self._max_backoff = max(max_backoff, 0.0)
        self._backoff = min(self.INITIAL_BACKOFF, self._max_backoff)
        self._call: Any = None
        self._token_renewals = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def __iter__(self) -> Subscription:
        return self

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the stream ended without reconnecting)."""
        return self._closed.is_set()

    def close(self) -> None:
        """Stops the stream; a blocked ``next()`` (in any thread) ends with ``StopIteration``."""
        with self._lock:
            self._closed.set()
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _open(self) -> Any:
        with self._lock:
            if self._client._closed:
                self._closed.set()
            if self._closed.is_set():
                return None
            if self._call is None:
                self._call = self._client._stub.Subscribe(
                    pb.SubscribeRequest(
                        collection=self.collection,
                        checkpoint=pb.Checkpoint(token=self.checkpoint),
                        selector=self.selector,
                    ),
                    metadata=self._client.metadata,
                )
            return self._call

    def _drop(self, call: Any) -> None:
        with self._lock:
            if self._call is call:
                self._call = None
        call.cancel()

    def _wait_before_reconnect(self) -> None:
        # Jitter (half to full delay) keeps many clients from reconnecting in step after a restart.
        delay = random.uniform(self._backoff / 2, self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff)
        self._closed.wait(delay)
        self.reconnects += 1

    def __next__(self) -> tuple[list[Doc], str]:
        while True:
            call = self._open()
            if call is None:
                raise StopIteration
            try:
                response = next(call)
            except StopIteration:
                # The server ended the stream (e.g. draining): resume from our checkpoint.
                self._drop(call)
                if not self._reconnect:
                    self.close()
                    raise
                self._wait_before_reconnect()
                continue
            except grpc.RpcError as err:
                self._drop(call)
                if self._client._closed:
                    self.close()
                if self._closed.is_set():
                    raise StopIteration from None
                if self._reconnect and err.code() == grpc.StatusCode.UNAVAILABLE:
                    self._wait_before_reconnect()
                    continue
                typed = from_rpc_error(err)
                # A token that expires on an open stream is routine: reconnect with a fresh one.
                # Expiring again and again with no event in between means the token function
                # hands out stale tokens: give up after a few tries.
                if (
                    self._reconnect
                    and isinstance(typed, TokenExpired)
                    and self._client.refreshes_token
                    and self._token_renewals < self.TOKEN_RENEWALS_MAX
                ):
                    self._token_renewals += 1
                    if self._token_renewals > 1:
                        self._wait_before_reconnect()
                    else:
                        self.reconnects += 1
                    continue
                self.close()
                raise typed from err
            event = response.WhichOneof("event")
            self._token_renewals = 0
            if event == "changes":
                self._backoff = min(self.INITIAL_BACKOFF, self._max_backoff)
                docs = [Doc.from_proto(d) for d in response.changes.documents]
                self.checkpoint = response.changes.checkpoint.token
                return docs, self.checkpoint
            if event == "heartbeat":
                self._backoff = min(self.INITIAL_BACKOFF, self._max_backoff)
                continue
            if event == "resync":
                # The checkpoint expired: reconnecting from it would only be told so again.
                self._drop(call)
                self.close()
                raise ResyncRequired(response.resync.reason, self.checkpoint)
            # An event this client does not know (a newer server): ignore it.
