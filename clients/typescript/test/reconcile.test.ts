// Unit tests of the reconcile hashes (no server needed): they must equal the server's
// reference, src/protocol/reconcile.rs, bit for bit, or every bucket would differ. Expected
// values are the Rust unit test's (hashes_are_sha256_prefixes) and `printf ... | sha256sum`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { bucketOf, digestsOf, heldKey, itemHash } from "../src/reconcile.js";

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
