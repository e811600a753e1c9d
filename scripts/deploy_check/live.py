"""Runs the server binary on a fresh database with a little traffic and saves its /metrics.

    python -m deploy_check.live --syncline-bin BIN --admin-url URL --out FILE

URL: a PostgreSQL cluster where this may CREATE DATABASE (TEST_DATABASE_ADMIN_URL). The
server listens on 127.0.0.1 only, on free ports, with gRPC-Web on (the traffic speaks it) and
authentication off; it is stopped and the database dropped at the end, whatever happens.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from deploy_check.traffic import make_traffic

TASKS_SCHEMA = """{
  "title": "tasks", "version": 0, "primaryKey": "id", "type": "object",
  "properties": {"id": {"type": "string", "maxLength": 100}, "title": {"type": "string"}},
  "required": ["id", "title"]
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(admin_url, sql):
    subprocess.run(["psql", admin_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def database_url(admin_url, name):
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def fetch(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def wait_until_serving(proc, grpc_port, metrics_url, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before serving")
        try:
            socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
            fetch(metrics_url)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not serve within {seconds} s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(syncline_bin, admin_url, out):
    db = f"syncline_metrics_check_{os.getpid()}_{int(time.time())}"
    grpc_port, metrics_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with tempfile.TemporaryDirectory(prefix="syncline-metrics-check.") as tmp:
        with open(os.path.join(tmp, "tasks.json"), "w") as f:
            f.write(TASKS_SCHEMA)
        with open(os.path.join(tmp, "syncline.toml"), "w") as f:
            f.write(f'listen = "127.0.0.1:{grpc_port}"\n'
                    f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
                    'heartbeat_seconds = 1\ngrpc_web = true\ndrain_seconds = 0\n'
                    '[auth]\nmode = "none"\n'
                    '[[collections]]\nname = "tasks"\nschema = "tasks.json"\n')
        # The server reads SYNCLINE_* variables as configuration: the file says everything.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLINE_")}
        env.update(DATABASE_URL=database_url(admin_url, db), NO_COLOR="1", RUST_LOG="warn")
        psql(admin_url, f'CREATE DATABASE "{db}"')
        log = open(os.path.join(tmp, "server.log"), "w+")
        proc = None
        try:
            proc = subprocess.Popen([syncline_bin, "serve", "--config", os.path.join(tmp, "syncline.toml")],
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            wait_until_serving(proc, grpc_port, metrics_url)
            seen = make_traffic("127.0.0.1", grpc_port)
            expected = {"push": 0, "push_conflict": 0, "push_invalid": 3, "pull": 0,
                        "pull_unknown_collection": 5}
            wrong = {k: v for k, v in seen.items() if k in expected and v != expected[k]}
            if wrong or (seen.get("subscribe_frames") or 0) < 3:
                raise RuntimeError(f"unexpected traffic results {seen} (grpc-status expected: {expected}, "
                                   "and at least 3 frames on the stream)")
            print(f"ok    traffic: grpc-status by call {seen}")
            text = fetch(metrics_url)
            with open(out, "w") as f:
                f.write(text)
            print(f"ok    /metrics of {syncline_bin}: {len(text.splitlines())} lines saved")
        except Exception:
            log.seek(0)
            sys.stderr.write("== server log\n" + log.read())
            raise
        finally:
            if proc is not None:
                stop(proc)
            log.close()
            psql(admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syncline-bin", required=True)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run(args.syncline_bin, args.admin_url, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
