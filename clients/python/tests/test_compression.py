"""Compression: gzip requests when asked, compressed replies always understood.

The server compresses replies of at least ``compression_min_bytes`` with an encoding the
client offers in ``grpc-accept-encoding``; it accepts requests compressed with gzip or zstd.
"""

from __future__ import annotations

import pytest

from support import TcpProxy, call_within, uid
from syncline_client import ChangeRow, Doc, SynclineClient

# Far above any sensible compression_min_bytes, and very compressible.
BIG = "replicate me " * 2000


def test_gzip_requests_round_trip(addr: str, client: SynclineClient) -> None:
    start = client.pull_all("notes")[1]
    with SynclineClient(addr, compression="gzip", timeout=15) as gz:
        ids = [uid("gz") for _ in range(5)]
        rows = [ChangeRow(Doc(i, {"text": BIG, "n": n})) for n, i in enumerate(ids)]
        assert gz.push("notes", rows) == []
        with gz.subscribe("notes", start) as stream:
            seen: dict[str, Doc] = {}

            def read_all() -> None:
                for docs, _ in stream:
                    seen.update((d.id, d) for d in docs if d.id in ids)
                    if len(seen) == len(ids):
                        return

            call_within(read_all, timeout=15)
        pulled = {d.id: d for d in gz.pull_all("notes", start)[0] if d.id in ids}
    plain = {d.id: d for d in client.pull_all("notes", start)[0] if d.id in ids}
    assert plain.keys() == set(ids)
    # The same documents whichever way they travelled.
    assert pulled == plain
    assert seen == plain
    assert plain[ids[3]].body == {"text": BIG, "n": 3}


def test_replies_are_compressed_on_the_wire(addr: str, client: SynclineClient) -> None:
    ids = [uid("wire") for _ in range(20)]
    assert client.push("notes", [ChangeRow(Doc(i, {"text": BIG})) for i in ids]) == []
    docs = {d.id for d in client.pull_all("notes")[0]}
    assert set(ids) <= docs

    def bytes_for_pull(options: list[tuple[str, int]]) -> tuple[int, list[Doc]]:
        proxy = TcpProxy(addr)
        try:
            with SynclineClient(proxy.addr, options=options, timeout=15) as c:
                c.wait_ready()
                before = proxy.downstream_bytes
                page = [d for d in c.pull_all("notes")[0] if d.id in ids]
                return proxy.downstream_bytes - before, page
        finally:
            proxy.close()

    # Bit 0 alone: the channel offers only identity, so the server must answer uncompressed.
    identity_bytes, identity_docs = bytes_for_pull([("grpc.compression_enabled_algorithms_bitset", 1)])
    default_bytes, default_docs = bytes_for_pull([])
    assert default_docs == identity_docs and len(default_docs) == len(ids)
    assert identity_bytes > len(BIG) * len(ids), identity_bytes
    # The text repeats: gzip shrinks it by far more than half.
    assert default_bytes * 4 < identity_bytes, (default_bytes, identity_bytes)


def test_unknown_compression_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="compression must be one of"):
        SynclineClient("127.0.0.1:1", compression="zstd")


def test_uncompressed_by_default(addr: str) -> None:
    # A plain client must work with any server, compression configured or not.
    with SynclineClient(addr) as c:
        assert c.push("notes", [ChangeRow(Doc(uid("plain"), {"text": BIG}))]) == []
