"""Helpers shared by the tests: unique ids, reading the head, a stream reader, a TCP proxy."""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from typing import Callable, List, Optional, Tuple, TypeVar

from syncline_client import Doc, Subscription, SynclineClient

T = TypeVar("T")


def uid(prefix: str = "py") -> str:
    """A document id no other test uses (tests share one database)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def head(client: SynclineClient, collection: str) -> str:
    """The checkpoint after everything currently in ``collection``."""
    _, checkpoint = client.pull_all(collection)
    return checkpoint


def latest(client: SynclineClient, collection: str, doc_id: str, checkpoint: str = "") -> Doc:
    """The server's current state of one document, read through pull."""
    docs, _ = client.pull_all(collection, checkpoint)
    found = [d for d in docs if d.id == doc_id]
    assert len(found) == 1, f"{doc_id} pulled {len(found)} times"
    return found[0]


class StreamReader:
    """Iterates a subscription on a background thread and collects its batches."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.batches: "queue.Queue[Tuple[List[Doc], str]]" = queue.Queue()
        self.docs: List[Doc] = []
        self.checkpoints: List[str] = []
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self.subscription:
                self.batches.put(batch)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def wait_for(self, predicate: Callable[[Doc], bool], timeout: float = 10.0) -> Doc:
        """Returns the first document (received so far or within ``timeout``) matching."""
        for doc in self.docs:
            if predicate(doc):
                return doc
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                docs, checkpoint = self.batches.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.error is not None:
                    raise AssertionError(f"the stream failed: {self.error!r}") from self.error
                continue
            self.docs.extend(docs)
            self.checkpoints.append(checkpoint)
            for doc in docs:
                if predicate(doc):
                    return doc
        raise AssertionError(
            f"no matching document on the stream within {timeout} s "
            f"(received {[(d.id, d.deleted) for d in self.docs]}, error {self.error!r})"
        )

    def join(self, timeout: float = 5.0) -> None:
        """Waits for the iteration to end; fails if it is still running after ``timeout``."""
        self._thread.join(timeout=timeout)
        assert not self._thread.is_alive(), "the subscription is still running"

    def close(self) -> None:
        self.subscription.close()
        self.join()


class TcpProxy:
    """A plain TCP forwarder to the server whose connections can be cut on demand.

    It stands in for a network failure or a load balancer dropping connections; the bytes
    are the real server's.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.addr = "127.0.0.1:%d" % self._listener.getsockname()[1]
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._downstream_bytes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                if self._closed:
                    downstream.close()
                    upstream.close()
                    return
                self._sockets += [downstream, upstream]
            for a, b, count in ((downstream, upstream, False), (upstream, downstream, True)):
                threading.Thread(target=self._pump, args=(a, b, count), daemon=True).start()

    @property
    def downstream_bytes(self) -> int:
        """Bytes forwarded from the server to clients so far."""
        with self._lock:
            return self._downstream_bytes

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                if count:
                    with self._lock:
                        self._downstream_bytes += len(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def sever(self) -> int:
        """Cuts every open connection (both sides); returns how many were cut."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(sockets) // 2

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._listener.close()
        self.sever()


def call_within(function: Callable[[], T], timeout: float = 10.0) -> T:
    """Runs ``function`` on a helper thread and returns its result or raises its exception;
    fails the test if it has not finished after ``timeout`` seconds (a stream that never
    answers must not hang the suite)."""
    outcome: "queue.Queue[Tuple[bool, object]]" = queue.Queue()

    def run() -> None:
        try:
            outcome.put((True, function()))
        except BaseException as exc:
            outcome.put((False, exc))

    threading.Thread(target=run, daemon=True).start()
    try:
        ok, value = outcome.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no answer within {timeout} s") from None
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def hs256_token(
    secret: str,
    sub: str,
    *,
    scope: str = "",
    ttl: float = 300.0,
    signing_secret: Optional[str] = None,
    claims: Optional[dict] = None,
) -> str:
    """A JWT signed with HS256, as the server's ``auth.hs256_secret`` verifies it. ``ttl`` may
    be negative (an expired token); ``signing_secret`` signs with another key (a forged one);
    ``claims`` adds claims (for the collections' access rules, e.g. ``{"team": "blue"}``)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = dict(claims or {})
    payload.update({"sub": sub, "exp": int(time.time() + ttl)})
    if scope:
        payload["scope"] = scope
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    key = (signing_secret if signing_secret is not None else secret).encode()
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"
