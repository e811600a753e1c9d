// Unit tests of the reconcile (no server needed). The hashes must equal the server's
// reference, src/protocol/reconcile.rs, bit for bit, or every bucket would differ: expected
// values are the Rust unit test's (hashes_are_sha256_prefixes) and `printf ... | sha256sum`.
// The rounds run against an in-memory server that enforces tight request bounds.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, createRouterTransport } from "@connectrpc/connect";

import { ReplicationService } from "../src/gen/syncline/v1/replication_pb.js";
import { bucketOf, digestsOf, heldKey, itemHash, reconcile, type ReconcileBounds } from "../src/reconcile.js";

test("bucket and item hashes are the first 8 bytes of sha256, as in reconcile.rs", async () => {
    // printf 'a' | sha256sum -> ca978112ca1bbdca...
    assert.equal(await bucketOf("a", 12), 0xca9);
    assert.equal(await bucketOf("a", 24), 0xca9781);
    assert.equal(await bucketOf("a", 1), 1);
    assert.equal(await bucketOf("a", 0), 0);
    // printf 'a\n1-x' | sha256sum -> 2a9f1cb3b504fbf4...
    assert.equal(await itemHash("a", "1-x"), 0x2a9f1cb3b504fbf4n);
    // UTF-8 bytes, not UTF-16 code units:
    // printf 'tâche-é' | sha256sum -> ffc42fcb0e2e9261...
    assert.equal(await bucketOf("tâche-é", 24), 0xffc42f);
    // printf 'tâche-é\n2-00ff' | sha256sum -> 2cc5b8c35987ba92...
    assert.equal(await itemHash("tâche-é", "2-00ff"), 0x2cc5b8c35987ba92n);
    // An unknown revision hashes as an empty one: printf 'a\n' | sha256sum.
    const key = await heldKey("a", "");
    assert.equal(key.top, 0xca9781);
    assert.equal(key.hash, await itemHash("a", ""));
});

test("digests count, sum modulo 2^64 and nest like digests_of_keys", async () => {
    const keys = await Promise.all(
        [["a", "1"], ["b", "1"], ["c", "2"], ["d", "3"], ["tâche-é", "2-00ff"]].map(([id, rev]) => heldKey(id, rev)),
    );
    const top = digestsOf(keys, 4);
    assert.equal([...top.values()].reduce((n, d) => n + d.count, 0), 5);
    for (const [bucket, d] of top) {
        const sub = digestsOf(keys, 8, 4, new Set([bucket]));
        assert.ok([...sub.keys()].every((s) => s >>> 4 === bucket));
        const count = [...sub.values()].reduce((n, x) => n + x.count, 0);
        const sum = [...sub.values()].reduce((s, x) => (s + x.sum) % 2n ** 64n, 0n);
        assert.deepEqual({ count, sum }, { count: d.count, sum: d.sum });
    }
    // The sum wraps at 2^64 (two large hashes in one bucket).
    const big = [
        { id: "x", revision: "", top: 0, hash: 0xffffffffffffffffn },
        { id: "y", revision: "", top: 0, hash: 2n },
    ];
    assert.deepEqual(digestsOf(big, 12).get(0), { count: 2, sum: 1n });
    // Outside the `within` prefixes nothing is counted.
    assert.equal(digestsOf(keys, 8, 4, new Set<number>()).size, 0);
});

/**
 * An in-memory server for the reconcile RPCs, with the semantics of src/protocol/reconcile.rs
 * (digests of the live documents, the differing ones with the server's side, lists by bucket,
 * Fetch answering a prefix), that fails a request exceeding `bounds`.
 */
function fakeServer(live: Map<string, string>, bounds: ReconcileBounds, fetchAnswersAtMost: number) {
    const calls = { reconcile: 0, list: 0, fetch: 0 };
    const keys = Promise.all([...live].map(([id, rev]) => heldKey(id, rev)));
    const transport = createRouterTransport(({ service }) => {
        service(ReplicationService, {
            async reconcile(req) {
                calls.reconcile += 1;
                const bits = req.bucketBits;
                const compared = req.withinBits === 0 ? 2 ** bits : req.within.length * 2 ** (bits - req.withinBits);
                assert.ok(compared <= bounds.comparedMax, `a round compares ${compared} buckets`);
                const within = new Set(req.within);
                const server = digestsOf(await keys, bits, req.withinBits, within);
                const d = req.digests!;
                const client = new Map(d.buckets.map((b, i) => [b, { count: d.counts[i], sum: d.sums[i] }]));
                const differing = [...new Set([...server.keys(), ...client.keys()])]
                    .filter((b) => server.get(b)?.count !== client.get(b)?.count || server.get(b)?.sum !== client.get(b)?.sum)
                    .sort((x, y) => x - y);
                return {
                    differing: {
                        buckets: differing,
                        counts: differing.map((b) => server.get(b)?.count ?? 0),
                        sums: differing.map((b) => server.get(b)?.sum ?? 0n),
                    },
                    checkpoint: { token: "C0" },
                };
            },
            async reconcileList(req) {
                calls.list += 1;
                const buckets = new Set(req.buckets);
                const documents = (await keys)
                    .filter((k) => buckets.has(k.top >>> (24 - req.bucketBits)))
                    .map((k) => ({ id: k.id, revision: k.revision }));
                assert.ok(documents.length <= bounds.listMax, `a list of ${documents.length}`);
                return { documents };
            },
            fetch(req) {
                calls.fetch += 1;
                assert.ok(req.ids.length <= bounds.fetchMax, `a fetch of ${req.ids.length} ids`);
                const answered = Math.min(req.ids.length, fetchAnswersAtMost);
                const documents = req.ids
                    .slice(0, answered)
                    .filter((id) => live.has(id))
                    .map((id) => ({ id, revision: live.get(id)!, json: new TextEncoder().encode("{}") }));
                return { documents, answered };
            },
        });
    });
    return { client: createClient(ReplicationService, transport), calls };
}

test("reconcile finds exactly what differs, within its bounds, through deeper rounds and partial Fetch answers", async () => {
    const live = new Map<string, string>();
    for (let i = 0; i < 400; i += 1) {
        live.set(`doc-${i}`, `1-${i}`);
    }
    const held: Array<[string, string]> = [...live];
    // Server side changes: 7 updated, 6 new; client side: 5 the server no longer has.
    const changed = ["doc-3", "doc-50", "doc-99", "doc-150", "doc-222", "doc-301", "doc-399"];
    for (const id of changed) {
        live.set(id, "2-new");
    }
    const added = Array.from({ length: 6 }, (_, i) => `new-${i}`);
    for (const id of added) {
        live.set(id, "1-new");
    }
    const gone = Array.from({ length: 5 }, (_, i) => `gone-${i}`);
    held.push(...gone.map((id) => [id, "1-old"] as [string, string]));
    // Tight bounds: a first round of 64 buckets, every list of at most 1 document (so crowded
    // buckets go deeper, down to 24 bits), Fetch of 4 ids answered 3 at a time.
    const bounds: ReconcileBounds = { comparedMax: 64, listMax: 1, fetchMax: 4 };
    const { client, calls } = fakeServer(live, bounds, 3);
    const result = await reconcile(client, "c", held, () => ({}), bounds);
    assert.equal(result.checkpoint, "C0");
    assert.deepEqual(result.documents.map((d) => d.id).sort(), [...changed, ...added].sort());
    assert.deepEqual([...result.dropped].sort(), [...gone].sort());
    assert.ok(calls.fetch >= Math.ceil(13 / 3), `${calls.fetch} fetches`);
    assert.ok(calls.reconcile > 2, `${calls.reconcile} rounds: the crowded buckets went deeper`);

    // Nothing differs: one round, no list, no fetch.
    const same = fakeServer(new Map(held.filter(([id]) => !id.startsWith("gone"))), bounds, 3);
    const none = await reconcile(same.client, "c", held.filter(([id]) => !id.startsWith("gone")), () => ({}), bounds);
    assert.deepEqual([none.documents.length, none.dropped.length], [0, 0]);
    assert.deepEqual(same.calls, { reconcile: 1, list: 0, fetch: 0 });
});
