"""A Python service incrementing one counter through the Python client (syncline_client), for
the TypeScript resolution suite (test/resolution-suite.ts), which runs it beside an RxDB app.

Usage: python counter_client.py HOST:PORT COLLECTION ID FIELD INCREMENTS EXPECTED_TOTAL

Waits until the document exists, prints "ready", then pushes INCREMENTS increments of FIELD one
by one, each assuming the state it last knew (the server's resolved state when it resolved the
push), sleeping 0 to 10 ms in between so that they interleave with the other writer's. Then
polls the server until FIELD equals EXPECTED_TOTAL (30 s at most) and prints one JSON line:
what it pushed and the final value it read.
"""

from __future__ import annotations

import json
import random
import sys
import time

from syncline_client import ChangeRow, Doc, SynclineClient


def read(client: SynclineClient, collection: str, doc_id: str) -> Doc | None:
    docs, _ = client.pull_all(collection)
    return next((d for d in docs if d.id == doc_id), None)


def main() -> int:
    addr, collection, doc_id, field, increments, expected = sys.argv[1:7]
    rng = random.Random(doc_id)
    with SynclineClient(addr, timeout=15) as client:
        deadline = time.monotonic() + 30
        doc = read(client, collection, doc_id)
        while doc is None:
            if time.monotonic() > deadline:
                print(json.dumps({"error": f"{doc_id} never appeared"}))
                return 1
            time.sleep(0.05)
            doc = read(client, collection, doc_id)
        # The other writer starts its increments when it reads this line.
        print("ready", flush=True)
        resolved = conflicts = 0
        for _ in range(int(increments)):
            while True:
                new = Doc(doc_id, {**doc.body, field: doc.body.get(field, 0) + 1})
                result = client.push_result(collection, [ChangeRow(new, assumed=doc)])
                if result.resolved:
                    resolved += 1
                    doc = result.resolved[0].doc
                    break
                if result.conflicts:
                    # Not expected under crdt; adopt the server's state and try again.
                    conflicts += 1
                    doc = result.conflicts[0]
                    continue
                doc = new
                break
            time.sleep(rng.uniform(0, 0.01))
        final = None
        while time.monotonic() < deadline + 30:
            final = read(client, collection, doc_id)
            if final is not None and final.body.get(field) == int(expected):
                break
            time.sleep(0.05)
        print(
            json.dumps(
                {
                    "pushed": int(increments),
                    "resolved": resolved,
                    "conflicts": conflicts,
                    "final": None if final is None else final.body.get(field),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
