"""Fixtures for tests against a real Syncline server.

The server's address comes from ``SYNCLINE_ADDR`` (``host:port``); ``scripts/test-python.sh``
starts a server and sets it. Without a reachable server every test fails (never skips).
The server must declare the collections ``tasks`` and ``notes`` (no schema), ``counters``
(``conflict = "crdt"``, ``crdt_fields = { count = "counter" }``) and ``overwritten``
(``conflict = "last-write-wins"``, ``keep_overwritten = "1h"``) and ``selective``
(``filter_fields = { done = "boolean", team = "string", priority = "number" }``), and should
send heartbeats every couple of seconds.

The tests of authentication, owners and error details use a second server with JWT
authentication: ``SYNCLINE_AUTH_ADDR`` and ``SYNCLINE_AUTH_SECRET`` (its ``auth.hs256_secret``);
scripts/test-python.sh starts it with ``leeway_seconds = 0``, ``push_rows_max = 50``,
``streams_per_principal_max = 2`` and the collections ``tasks``, ``checked`` (a schema whose
``title`` must be a string), ``guarded`` (``write_scopes = ["writer"]``) and ``overwritten``
(as on the first server).

The attachment tests also read the first server's Prometheus metrics at
``SYNCLINE_METRICS_ADDR`` (``host:port``; scripts/test-python.sh enables them).
"""

from __future__ import annotations

import os
from typing import Iterator

import grpc
import pytest

from support import hs256_token
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


def _wait_ready(value: str, variable: str) -> None:
    probe = SynclineClient(value)
    try:
        probe.wait_ready(timeout=10)
    except grpc.FutureTimeoutError:
        pytest.fail(f"no Syncline server reachable at {variable}={value} within 10 s", pytrace=False)
    finally:
        probe.close()


class AuthServer:
    """The JWT server: its address and a way to mint tokens for it."""

    def __init__(self, addr: str, secret: str) -> None:
        self.addr = addr
        self.secret = secret

    def token(self, sub: str, *, scope: str = "", ttl: float = 300.0) -> str:
        """A valid token for ``sub`` (negative ``ttl``: expired)."""
        return hs256_token(self.secret, sub, scope=scope, ttl=ttl)

    def client(self, sub: str, *, scope: str = "", **kwargs: object) -> SynclineClient:
        """A client calling as ``sub``; close it (or use ``with``)."""
        return SynclineClient(self.addr, token=self.token(sub, scope=scope), timeout=15, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def auth_server() -> AuthServer:
    value = os.environ.get("SYNCLINE_AUTH_ADDR", "").strip()
    secret = os.environ.get("SYNCLINE_AUTH_SECRET", "")
    if not value or not secret:
        pytest.fail(
            "SYNCLINE_AUTH_ADDR / SYNCLINE_AUTH_SECRET are not set: these tests need a Syncline "
            "server with JWT authentication. Run scripts/test-python.sh, which starts one.",
            pytrace=False,
        )
    _wait_ready(value, "SYNCLINE_AUTH_ADDR")
    return AuthServer(value, secret)


@pytest.fixture(scope="session")
def client(addr: str) -> Iterator[SynclineClient]:
    with SynclineClient(addr, timeout=15) as c:
        yield c
