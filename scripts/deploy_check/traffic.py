"""A little replication traffic against a running server, so that /metrics holds the labelled
series (RPC counts and latencies, pushes, conflicts, streams, lag, heartbeats) that dashboards
and alerts use.

It speaks gRPC-Web over HTTP/1.1 (the server must run with `grpc_web = true`) with messages
encoded by hand: no grpcio, no generated stubs, only the standard library.
"""

import http.client
import json
import struct
import threading


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, value):
    """One protobuf field: bytes/str/nested message as length-delimited, int as varint."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def pull_request(collection, limit=100):
    return _field(1, collection) + _field(3, limit)


def push_request(collection, documents):
    """A PushRequest that writes each document (a dict with `id`) with no assumed master state,
    so a document that already exists comes back as a conflict."""
    rows = b""
    for doc in documents:
        document = _field(1, doc["id"]) + _field(2, json.dumps(doc).encode())
        rows += _field(2, _field(1, document))
    return _field(1, collection) + rows


def subscribe_request(collection):
    return _field(1, collection)


def _frames(data):
    """Splits a gRPC-Web body into (flag, payload) frames; a cut-off tail is dropped."""
    frames = []
    while len(data) >= 5:
        flag, length = data[0], struct.unpack(">I", data[1:5])[0]
        if len(data) < 5 + length:
            break
        frames.append((flag, data[5:5 + length]))
        data = data[5 + length:]
    return frames


def grpc_status(frames, headers):
    """The call's grpc-status: from the trailers frame, else from the headers (trailers-only
    responses put it there)."""
    for flag, payload in frames:
        if flag & 0x80:
            for line in payload.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "grpc-status":
                    return int(value.strip())
    value = headers.get("grpc-status")
    return int(value) if value is not None else None


class Client:
    """Unary and server-streaming gRPC-Web calls to one host:port over HTTP/1.1."""

    SERVICE = "/syncline.v1.ReplicationService/"

    def __init__(self, host, port, timeout=10.0):
        self.host, self.port, self.timeout = host, port, timeout

    def _open(self, method, message):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        body = b"\x00" + struct.pack(">I", len(message)) + message
        conn.request("POST", self.SERVICE + method, body=body, headers={
            "content-type": "application/grpc-web+proto", "x-grpc-web": "1",
            "accept": "application/grpc-web+proto"})
        return conn, conn.getresponse()

    def unary(self, method, message):
        """Returns (grpc status code, data frames)."""
        conn, resp = self._open(method, message)
        try:
            frames = _frames(resp.read())
            headers = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        return grpc_status(frames, headers), [p for f, p in frames if not f & 0x80]

    def stream(self, method, message, until):
        """Reads a server stream until `until(number of data frames read)` is true or the
        stream ends; then closes the connection (the server sees a cancelled stream)."""
        conn, resp = self._open(method, message)
        buf, count = b"", 0
        try:
            while not until(count):
                chunk = resp.read1(65536)
                if not chunk:
                    break
                buf += chunk
                frames = _frames(buf)
                count = sum(1 for f, _ in frames if not f & 0x80)
        finally:
            conn.close()
        return count


def make_traffic(host, port, collection="tasks"):
    """Subscribe, Push (a write, a conflict, an invalid row), Pull (good and bad), with a stream
    open while the write lands and a heartbeat on it. Returns the statuses seen, by call."""
    client = Client(host, port)
    seen = {}
    live = threading.Event()
    stream_frames = []

    def follow():
        def until(count):
            # On a fresh database the first frame is a heartbeat (the server's heartbeat_seconds
            # should be small): the stream is then live, so the write below reaches it as a live
            # change, which is what the lag histogram counts (catch-up pages are not). Then the
            # pushed document and one more heartbeat.
            if count >= 1:
                live.set()
            return count >= 3
        stream_frames.append(client.stream("Subscribe", subscribe_request(collection), until))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    live.wait(10)
    doc = {"id": "deploy-check-1", "title": "metrics"}
    seen["push"] = client.unary("Push", push_request(collection, [doc]))[0]
    seen["push_conflict"] = client.unary("Push", push_request(collection, [doc]))[0]
    seen["push_invalid"] = client.unary("Push", push_request(collection, [{"id": "deploy-check-2"}]))[0]
    seen["pull"] = client.unary("Pull", pull_request(collection))[0]
    seen["pull_unknown_collection"] = client.unary("Pull", pull_request("no-such-collection"))[0]
    follower.join(30)
    seen["subscribe_frames"] = stream_frames[0] if stream_frames else None
    return seen
