"""Attachments: put_attachment / get_attachment against the real server (PostgreSQL back end).

Transfer counts come from the server's own metrics (``SYNCLINE_METRICS_ADDR``, the test
server's ``/metrics``): "nothing was sent" is what the server counted, not a timing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

from support import TcpProxy, call_within, latest, uid
from syncline_client import (
    AttachmentCorrupted,
    AttachmentNotFound,
    ChangeRow,
    Doc,
    InvalidDocument,
    InvalidRequest,
    SynclineClient,
    file_digest,
)

COLLECTION = "notes"
MIB = 1024 * 1024


def metric(name: str, **labels: str) -> float:
    """The value of one series on the test server's ``/metrics`` (0 when absent)."""
    addr = os.environ.get("SYNCLINE_METRICS_ADDR", "").strip()
    if not addr:
        pytest.fail("SYNCLINE_METRICS_ADDR is not set (scripts/test-python.sh sets it)", pytrace=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-z_]+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def uploaded_bytes() -> float:
    return metric("syncline_attachment_bytes_uploaded_total", collection=COLLECTION)


def downloaded_bytes() -> float:
    return metric("syncline_attachment_bytes_downloaded_total", collection=COLLECTION)


def uploads() -> float:
    return metric("syncline_attachment_uploads_total", collection=COLLECTION)


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def attach(client: SynclineClient, digest: str, length: int, type_: str = "application/octet-stream") -> Doc:
    """Pushes a new document referencing the blob; returns it."""
    doc_id = uid("att")
    body = {"id": doc_id, "_attachments": {"file.bin": {"digest": digest, "length": length, "type": type_}}}
    assert client.push(COLLECTION, [ChangeRow(Doc(doc_id, body))]) == []
    return Doc(doc_id, body)


def test_multi_mib_round_trip_is_byte_identical(client: SynclineClient, tmp_path: Path) -> None:
    # Not a multiple of the chunk size: the last chunk is short.
    data = random_file(tmp_path / "in.bin", 5 * MIB + 12_345)
    before = uploaded_bytes()
    digest, length = client.put_attachment(COLLECTION, tmp_path / "in.bin")
    assert (digest, length) == (hashlib.sha256(data).hexdigest(), len(data))
    assert uploaded_bytes() - before == len(data)
    attach(client, digest, length)

    assert client.get_attachment(COLLECTION, digest, tmp_path / "out.bin") == len(data)
    assert (tmp_path / "out.bin").read_bytes() == data


def test_a_held_blob_is_not_sent_again(client: SynclineClient, tmp_path: Path) -> None:
    data = random_file(tmp_path / "a.bin", 2 * MIB + 1)
    (tmp_path / "copy.bin").write_bytes(data)
    first = client.put_attachment(COLLECTION, tmp_path / "a.bin")
    sent, calls = uploaded_bytes(), uploads()

    # The same bytes again, from another file and from an open file: Missing says the server
    # holds them, so no Upload call is made and no byte is sent.
    assert client.put_attachment(COLLECTION, tmp_path / "copy.bin") == first
    with open(tmp_path / "a.bin", "rb") as f:
        assert client.put_attachment(COLLECTION, f) == first
    assert uploaded_bytes() == sent
    assert uploads() == calls
    assert client.missing_attachments(COLLECTION, [first[0]]) == []


def test_download_resumes_from_an_offset(client: SynclineClient, tmp_path: Path) -> None:
    data = random_file(tmp_path / "in.bin", 3 * MIB + 7)
    digest, length = client.put_attachment(COLLECTION, tmp_path / "in.bin")
    attach(client, digest, length)
    # What an earlier, interrupted transfer left (and some garbage after it, cut away).
    offset = MIB + 3
    (tmp_path / "out.bin").write_bytes(data[:offset] + b"garbage")

    before = downloaded_bytes()
    assert client.get_attachment(COLLECTION, digest, tmp_path / "out.bin", offset=offset) == length
    assert (tmp_path / "out.bin").read_bytes() == data
    assert downloaded_bytes() - before == length - offset

    # A resumed file whose kept bytes are wrong fails the final check.
    (tmp_path / "bad.bin").write_bytes(b"x" * offset)
    with pytest.raises(AttachmentCorrupted) as caught:
        client.get_attachment(COLLECTION, digest, tmp_path / "bad.bin", offset=offset)
    assert caught.value.digest == digest


class SeverAfterFirstChunk(io.BytesIO):
    """A destination that cuts the connection once, right after the first chunk arrives."""

    def __init__(self, proxy: TcpProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.severed = 0

    def write(self, data) -> int:  # type: ignore[override]
        n = super().write(data)
        if not self.severed:
            self.severed = self.proxy.sever()
        return n


def test_a_broken_download_resumes_where_it_stopped(addr: str, tmp_path: Path) -> None:
    data = random_file(tmp_path / "in.bin", 6 * MIB)
    proxy = TcpProxy(addr)
    try:
        with SynclineClient(proxy.addr, timeout=15) as client:
            digest, length = client.put_attachment(COLLECTION, tmp_path / "in.bin")
            attach(client, digest, length)
            dest = SeverAfterFirstChunk(proxy)
            got = call_within(
                lambda: client.get_attachment(COLLECTION, digest, dest, backoff=0.05), timeout=60
            )
    finally:
        proxy.close()
    assert dest.severed >= 1, "the connection was never cut"
    assert got == length
    assert dest.getvalue() == data


def test_a_pushed_document_references_the_blob_and_pulls_with_it(
    client: SynclineClient, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "photo.png", 300_000)
    digest, length = client.put_attachment(COLLECTION, tmp_path / "photo.png")
    doc = attach(client, digest, length, "image/png")

    pulled = latest(client, COLLECTION, doc.id)
    meta = pulled.body["_attachments"]["file.bin"]
    assert meta == {"digest": digest, "length": length, "type": "image/png"}
    sink = io.BytesIO()
    assert client.get_attachment(COLLECTION, meta["digest"], sink) == len(data)
    assert sink.getvalue() == data


def test_wrong_digests_are_refused(client: SynclineClient, tmp_path: Path) -> None:
    # A file that changes between the hash and the send: the server hashes what it receives
    # and refuses, naming start.digest; nothing is stored.
    class Changing(io.BytesIO):
        def seek(self, *args):  # type: ignore[override]
            # put_attachment rewinds once, after hashing: the bytes change then.
            self.getbuffer()[0] ^= 0xFF
            return super().seek(*args)

    original = os.urandom(100_000)
    changing = Changing(original)
    with pytest.raises(InvalidRequest) as caught:
        client.put_attachment(COLLECTION, changing)
    assert caught.value.field == "start.digest"
    assert client.missing_attachments(COLLECTION, [hashlib.sha256(original).hexdigest()]) != []

    # A document referencing a digest the server does not hold is refused, naming the row.
    unknown = hashlib.sha256(b"never uploaded " + os.urandom(8)).hexdigest()
    doc_id = uid("att")
    body = {"id": doc_id, "_attachments": {"a.txt": {"digest": unknown, "length": 3, "type": "text/plain"}}}
    with pytest.raises(InvalidDocument) as refused:
        client.push(COLLECTION, [ChangeRow(Doc(doc_id, body))])
    assert "_attachments" in refused.value.field
    # And such a digest is not there to download.
    with pytest.raises(AttachmentNotFound):
        client.get_attachment(COLLECTION, unknown, tmp_path / "nothing.bin")


def test_another_owners_blob_is_not_found(auth_server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "mine.bin", 10_000)
    with auth_server.client(uid("alice")) as alice, auth_server.client(uid("bob")) as bob:
        digest, length = alice.put_attachment("tasks", tmp_path / "mine.bin")
        doc_id = uid("att")
        body = {"id": doc_id, "_attachments": {"f": {"digest": digest, "length": length, "type": "x/y"}}}
        assert alice.push("tasks", [ChangeRow(Doc(doc_id, body))]) == []
        sink = io.BytesIO()
        assert alice.get_attachment("tasks", digest, sink) == len(data)
        with pytest.raises(AttachmentNotFound):
            bob.get_attachment("tasks", digest, io.BytesIO())
        # Bob must send the bytes himself: knowing the digest is not holding the blob.
        assert bob.missing_attachments("tasks", [digest]) == [digest]


def test_memory_stays_bounded_by_the_chunk(client: SynclineClient, tmp_path: Path) -> None:
    data_len = 24 * MIB
    random_file(tmp_path / "big.bin", data_len)
    with open(tmp_path / "big.bin", "rb") as f:
        digest, length = file_digest(f)
    tracemalloc.start()
    try:
        assert client.put_attachment(COLLECTION, tmp_path / "big.bin", chunk_bytes=256 * 1024) == (
            digest,
            length,
        )
        attach(client, digest, length)
        client.get_attachment(COLLECTION, digest, tmp_path / "back.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A few chunks (1 MiB downloads, 256 KiB uploads) in flight, never the 24 MiB file.
    assert peak < 8 * MIB, f"peak Python allocations {peak} bytes"
    with open(tmp_path / "back.bin", "rb") as f:
        assert file_digest(f)[0] == digest
