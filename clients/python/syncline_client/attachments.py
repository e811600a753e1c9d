"""Attachment transfers (``syncline.v1.AttachmentService``) to and from files, in chunks.

:meth:`SynclineClient.put_attachment <syncline_client.SynclineClient.put_attachment>` and
:meth:`~syncline_client.SynclineClient.get_attachment` call these. Memory stays bounded by one
chunk whatever the file's size: files are read and written chunk by chunk, and the digest is
hashed on the way.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import time
from collections.abc import Iterator
from typing import IO, Any, BinaryIO, Callable, Optional, Union

import grpc

from .errors import AttachmentCorrupted, SynclineError, from_rpc_error

try:
    from ._gen.syncline.v1 import attachments_pb2 as apb
except ImportError as exc:  # pragma: no cover - depends on the checkout
    raise ImportError(
        "syncline_client: the generated gRPC stubs are missing: install the package "
        "(`pip install ./clients/python`) or run `python clients/python/generate.py`"
    ) from exc

#: The server's default ``attachments.chunk_bytes_max`` (1 MiB): the largest chunk it accepts
#: unless configured otherwise. A server configured lower needs ``chunk_bytes`` lowered to match.
CHUNK_BYTES = 1024 * 1024

#: Download failures after which the transfer resumes from the bytes already written: a
#: connection lost or reset, a server restarting or draining.
RESUMABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)

Source = Union[str, "os.PathLike[str]", BinaryIO, IO[bytes]]


def file_digest(source: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, int]:
    """The digest (lowercase hex SHA-256, what RxDB's default ``hashFunction`` writes into
    ``_attachments.<name>.digest``) and length of ``source`` read from where it is to its end."""
    hash_ = hashlib.sha256()
    length = 0
    while True:
        chunk = source.read(chunk_bytes)
        if not chunk:
            return hash_.hexdigest(), length
        hash_.update(chunk)
        length += len(chunk)


def _chunks(source: BinaryIO, start: apb.UploadStart, chunk_bytes: int) -> Iterator[Any]:
    # grpc consumes this on its own thread, one message at a time (it waits for each to be
    # sent before asking for the next), so one chunk is held at a time.
    yield apb.UploadRequest(start=start)
    while True:
        chunk = source.read(chunk_bytes)
        if not chunk:
            return
        yield apb.UploadRequest(chunk=chunk)


def put(
    stub: Any,
    metadata: Callable[[], Any],
    timeout: Optional[float],
    collection: str,
    source: Source,
    content_type: Optional[str],
    chunk_bytes: int,
) -> tuple[str, int]:
    """See :meth:`SynclineClient.put_attachment`."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes!r}")
    if isinstance(source, (str, os.PathLike)):
        if content_type is None:
            content_type = mimetypes.guess_type(os.fspath(source))[0]
        with open(source, "rb") as file:
            return put(stub, metadata, timeout, collection, file, content_type, chunk_bytes)
    if not source.seekable():
        raise ValueError(
            "put_attachment reads the file twice (its digest first, to skip blobs the server "
            "holds): pass a path or a seekable binary file"
        )
    begin = source.tell()
    digest, length = file_digest(source, chunk_bytes)
    try:
        missing = stub.Missing(
            apb.MissingRequest(collection=collection, digests=[digest]),
            metadata=metadata(),
            timeout=timeout,
        )
        if digest not in missing.digests:
            return digest, length
        source.seek(begin)
        start = apb.UploadStart(
            collection=collection,
            digest=digest,
            length=length,
            content_type=content_type or "application/octet-stream",
        )
        # No deadline: a large file takes as long as it takes (like a stream).
        done = stub.Upload(_chunks(source, start, chunk_bytes), metadata=metadata())
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
    return done.digest, done.length


def _open_dest(dest: Union[str, "os.PathLike[str]"], offset: int) -> BinaryIO:
    if offset == 0:
        return open(dest, "wb")
    return open(dest, "r+b")


def _hash_prefix(dest: BinaryIO, offset: int, chunk_bytes: int) -> Any:
    """The hash of ``dest``'s first ``offset`` bytes (what an earlier transfer wrote)."""
    hash_ = hashlib.sha256()
    dest.seek(0)
    left = offset
    while left > 0:
        chunk = dest.read(min(left, chunk_bytes))
        if not chunk:
            raise ValueError(
                f"offset {offset} is past the end of the destination ({offset - left} bytes)"
            )
        hash_.update(chunk)
        left -= len(chunk)
    dest.seek(offset)
    if hasattr(dest, "truncate"):
        dest.truncate()
    return hash_


def get(
    stub: Any,
    metadata: Callable[[], Any],
    collection: str,
    digest: str,
    dest: Source,
    offset: int,
    retries: int,
    backoff: float,
) -> int:
    """See :meth:`SynclineClient.get_attachment`."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset!r}")
    if isinstance(dest, (str, os.PathLike)):
        with _open_dest(dest, offset) as file:
            return get(stub, metadata, collection, digest, file, offset, retries, backoff)
    hash_ = _hash_prefix(dest, offset, CHUNK_BYTES) if offset else hashlib.sha256()
    position = offset
    total: Optional[int] = None
    failures = 0
    while total is None or position < total:
        before = position
        try:
            request = apb.DownloadRequest(collection=collection, digest=digest, offset=position)
            for message in stub.Download(request, metadata=metadata()):
                if message.offset != position:
                    raise ValueError(
                        f"the server sent bytes from offset {message.offset}, expected {position}"
                    )
                total = message.total_length
                if message.chunk:
                    dest.write(message.chunk)
                    hash_.update(message.chunk)
                    position += len(message.chunk)
            if total is None or position >= total:
                break
            # The stream ended early without an error (a proxy cut it): resume like a failure.
            failure: Optional[SynclineError] = None
        except grpc.RpcError as err:
            failure = from_rpc_error(err)
            if failure.code() not in RESUMABLE_CODES:
                raise failure from err
        # Only failures without progress count: a flaky link still finishes a large file.
        failures = 0 if position > before else failures + 1
        if failures > retries:
            if failure is not None:
                raise failure
            raise ValueError(
                f"the download of {digest[:64]} keeps ending at byte {position} of {total}"
            )
        time.sleep(min(backoff * (2 ** max(failures - 1, 0)), 2.0))
    dest.flush()
    actual = hash_.hexdigest()
    if actual != digest:
        raise AttachmentCorrupted(digest, actual)
    return position
