"""Typed errors: every failed call raises a :class:`SynclineError` (a ``grpc.RpcError``).

The server attaches ``google.rpc`` details to its statuses (the ``grpc-status-details-bin``
trailer): ``ErrorInfo`` with a stable ``reason`` (``INVALID_DOCUMENT``, ``NOT_OWNER``, ...),
``BadRequest`` field violations for bad input and ``RetryInfo`` when waiting helps. They are
decoded here into attributes, and the reason picks the subclass, so a program can write
``except NotOwner:`` instead of parsing messages. ``code()`` and ``details()`` work as on any
``grpc.RpcError``, so code written against plain gRPC errors keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "AttachmentCorrupted",
    "AttachmentNotFound",
    "CheckpointExpired",
    "CheckpointInvalid",
    "CollectionNotFound",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InvalidDocument",
    "InvalidRequest",
    "LimitExceeded",
    "NotOwner",
    "OutsideWriteFilter",
    "OverwrittenNotKept",
    "ScopeMissing",
    "SynclineError",
    "TokenExpired",
    "TokenInvalid",
    "Unavailable",
    "from_rpc_error",
]


@dataclass(frozen=True)
class FieldViolation:
    """One ``google.rpc.BadRequest`` field violation: the field's path in the request (e.g.
    ``rows[3].new_document_state.json``) and what is wrong with it."""

    field: str
    description: str


class SynclineError(grpc.RpcError):
    """A failed call, with the server's machine-readable details.

    - ``code()`` / ``details()``: the gRPC status code and message (as ``grpc.RpcError``).
    - ``reason``: the ``ErrorInfo`` reason (``""`` when the server sent none, e.g. a proxy
      answered); ``domain`` is ``"syncline"`` for the server's own reasons; ``metadata`` is
      the ``ErrorInfo`` metadata (e.g. ``field``).
    - ``field_violations``: the ``BadRequest`` violations (:class:`FieldViolation`).
    - ``retry_after``: seconds to wait before retrying (``RetryInfo``), or ``None``.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Optional[dict[str, str]] = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self._code = code
        self._message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_after = retry_after

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The status message, for people."""
        return self._message

    @property
    def field(self) -> str:
        """The first offending field's path, or ``""``."""
        if self.field_violations:
            return self.field_violations[0].field
        return self.metadata.get("field", "")


class InvalidRequest(SynclineError):
    """``INVALID_REQUEST``: a malformed request field (INVALID_ARGUMENT)."""


class InvalidDocument(SynclineError):
    """``INVALID_DOCUMENT``: a document the collection refuses (not a JSON object, schema,
    primary key, id) (INVALID_ARGUMENT); :attr:`field` names the row and field."""


class LimitExceeded(SynclineError):
    """``LIMIT_EXCEEDED``: a size or count limit (INVALID_ARGUMENT or RESOURCE_EXHAUSTED);
    :attr:`retry_after` is set when waiting can help (e.g. too many open streams)."""


class CheckpointInvalid(SynclineError):
    """``CHECKPOINT_INVALID``: the checkpoint was issued for another collection or caller, or
    was altered. It can never become valid: reconcile the local copy
    (:meth:`SynclineClient.resume`) or start over from ``""``
    (:meth:`SynclineClient.pull_all_or_restart`)."""


class CheckpointExpired(SynclineError):
    """``CHECKPOINT_EXPIRED``: the server purged tombstones past the checkpoint (the collection's
    ``tombstone_retention``), or the database was restored into another cluster
    (FAILED_PRECONDITION). Resuming could miss deletes: reconcile the local copy
    (:meth:`SynclineClient.resume` does that, transferring only what differs), or start over
    from ``""`` and replace it (:meth:`SynclineClient.pull_all_or_restart`)."""


class CollectionNotFound(SynclineError):
    """``COLLECTION_NOT_FOUND``: the server declares no such collection (NOT_FOUND)."""


class NotOwner(SynclineError):
    """``NOT_OWNER``: the document belongs to another principal (PERMISSION_DENIED)."""


class OutsideWriteFilter(SynclineError):
    """``OUTSIDE_WRITE_FILTER``: a row's new state, or the stored state it would replace, is
    outside the collection's ``write_filter`` for the token's claims (PERMISSION_DENIED)."""


class ScopeMissing(SynclineError):
    """``SCOPE_MISSING``: the token lacks a scope the call needs (PERMISSION_DENIED)."""


class TokenExpired(SynclineError):
    """``TOKEN_EXPIRED``: the token was valid but has expired: refresh it and retry."""


class TokenInvalid(SynclineError):
    """``TOKEN_INVALID``: no token, or one the server does not accept (UNAUTHENTICATED)."""


class IdempotencyKeyReused(InvalidRequest):
    """``IDEMPOTENCY_KEY_REUSED``: the push's ``idempotency_key`` is remembered for a different
    request (INVALID_ARGUMENT, field ``idempotency_key``). A key names one logical push: reuse
    it only to retry that same push, and pick a new one for anything else."""


class OverwrittenNotKept(SynclineError):
    """``OVERWRITTEN_NOT_KEPT``: ``list_overwritten`` on a collection that keeps no overwritten
    versions (FAILED_PRECONDITION, field ``collection``): the server's collection needs
    ``keep_overwritten``."""


class AttachmentNotFound(SynclineError):
    """``ATTACHMENT_NOT_FOUND`` (NOT_FOUND, field ``digest``): no such blob in the collection, or
    none that a live document the caller may read references (the server answers both alike)."""


class AttachmentCorrupted(Exception):
    """A downloaded attachment's bytes do not hash to the digest asked for (raised by the
    client after the transfer; no RPC failed). ``digest`` is the one asked for, ``actual`` the
    SHA-256 of the bytes written."""

    def __init__(self, digest: str, actual: str) -> None:
        super().__init__(f"attachment {digest[:64]} downloaded as bytes hashing to {actual}")
        self.digest = digest
        self.actual = actual


class Unavailable(SynclineError):
    """UNAVAILABLE (``DATABASE_UNAVAILABLE``, ``CONTENTION``, ``SHUTTING_DOWN``, or no reason):
    retryable, after :attr:`retry_after` when given."""


_BY_REASON: dict[str, type[SynclineError]] = {
    "INVALID_REQUEST": InvalidRequest,
    "INVALID_DOCUMENT": InvalidDocument,
    "LIMIT_EXCEEDED": LimitExceeded,
    "CHECKPOINT_INVALID": CheckpointInvalid,
    "CHECKPOINT_EXPIRED": CheckpointExpired,
    "COLLECTION_NOT_FOUND": CollectionNotFound,
    "NOT_OWNER": NotOwner,
    "SCOPE_MISSING": ScopeMissing,
    "OUTSIDE_WRITE_FILTER": OutsideWriteFilter,
    "TOKEN_EXPIRED": TokenExpired,
    "TOKEN_INVALID": TokenInvalid,
    "DATABASE_UNAVAILABLE": Unavailable,
    "CONTENTION": Unavailable,
    "SHUTTING_DOWN": Unavailable,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReused,
    "OVERWRITTEN_NOT_KEPT": OverwrittenNotKept,
    "ATTACHMENT_NOT_FOUND": AttachmentNotFound,
}

# Without a reason (an older server, a proxy), the code still picks a useful class.
_BY_CODE: dict[grpc.StatusCode, type[SynclineError]] = {
    grpc.StatusCode.NOT_FOUND: CollectionNotFound,
    grpc.StatusCode.UNAUTHENTICATED: TokenInvalid,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(err: grpc.RpcError) -> SynclineError:
    """The typed error for ``err`` (returned as is when it already is one).

    Details that do not decode are ignored: the code and message always survive.
    """
    if isinstance(err, SynclineError):
        return err
    code = _call(err, "code") or grpc.StatusCode.UNKNOWN
    message = _call(err, "details") or ""
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: Optional[float] = None
    try:
        status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    except Exception:  # a malformed or inconsistent trailer: no details, the status stands
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, SynclineError)
    typed = cls(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_after=retry_after,
    )
    typed.__cause__ = err
    return typed


def _call(err: grpc.RpcError, name: str) -> object:
    method = getattr(err, name, None)
    return method() if callable(method) else None
