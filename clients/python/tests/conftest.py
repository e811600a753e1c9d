"""Fixtures for tests against a real Syncline server.

The server's address comes from ``SYNCLINE_ADDR`` (``host:port``); ``scripts/test-python.sh``
starts a server and sets it. Without a reachable server every test fails (never skips).
The server must declare the collections ``tasks`` and ``notes`` (no schema) and should send
heartbeats every couple of seconds.
"""

from __future__ import annotations

import os
from typing import Iterator

import grpc
import pytest

from syncline_client import SynclineClient


@pytest.fixture(scope="session")
def addr() -> str:
    value = os.environ.get("SYNCLINE_ADDR", "").strip()
    if not value:
        pytest.fail(
            "SYNCLINE_ADDR is not set: these tests need a running Syncline server "
            "(host:port). Run scripts/test-python.sh, which starts one.",
            pytrace=False,
        )
    probe = SynclineClient(value)
    try:
        probe.wait_ready(timeout=10)
    except grpc.FutureTimeoutError:
        pytest.fail(
            f"no Syncline server reachable at SYNCLINE_ADDR={value} within 10 s",
            pytrace=False,
        )
    finally:
        probe.close()
    return value


@pytest.fixture(scope="session")
def client(addr: str) -> Iterator[SynclineClient]:
    with SynclineClient(addr, timeout=15) as c:
        yield c
