// Unit tests of what the push handler remembers between calls (src/push-keys.ts; no server).
import assert from "node:assert/strict";
import { test } from "node:test";

import { AbsorbedStates, PendingPushKeys, newIdempotencyKey } from "../src/push-keys.js";

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

test("a new idempotency key is 32 random hex digits", () => {
    const keys = new Set(Array.from({ length: 1000 }, () => newIdempotencyKey()));
    assert.equal(keys.size, 1000);
    for (const key of keys) {
        assert.match(key, /^[0-9a-f]{32}$/);
    }
});

test("a batch keeps its key until a push of it succeeds; then the same batch is a new push", async () => {
    const keys = new PendingPushKeys();
    const first = await keys.keyFor(bytes("rows A"));
    // RxDB calls the handler again with the same rows after an error: the same key.
    const retry = await keys.keyFor(bytes("rows A"));
    assert.equal(retry.key, first.key);
    // Another batch meanwhile: its own key, the first one kept.
    const other = await keys.keyFor(bytes("rows B"));
    assert.notEqual(other.key, first.key);
    assert.equal((await keys.keyFor(bytes("rows A"))).key, first.key);

    keys.succeeded(first.digest);
    // The same edit made again later is another logical push: a new key.
    const again = await keys.keyFor(bytes("rows A"));
    assert.notEqual(again.key, first.key);
    assert.equal(keys.size, 2);
});

test("pending keys are bounded: the oldest batch is forgotten", async () => {
    const keys = new PendingPushKeys(3);
    const oldest = await keys.keyFor(bytes("0"));
    for (let i = 1; i <= 3; i += 1) {
        await keys.keyFor(bytes(String(i)));
    }
    assert.equal(keys.size, 3);
    assert.notEqual((await keys.keyFor(bytes("0"))).key, oldest.key);
    assert.equal(keys.size, 3);
});

test("a row that still assumes what RxDB assumed when the server resolved it is rebased on the absorbed state", () => {
    const absorbed = new AbsorbedStates<{ n: number }>();
    // Pushed n: 3 assuming n: 1 ("m1"); the server resolved it (merged the +2).
    absorbed.resolved("c", "m1", { n: 3 });
    // RxDB could not record the merged master state (the document changed meanwhile): its
    // next row still assumes m1, and is sent assuming n: 3, what the server already counted.
    assert.deepEqual(absorbed.rebase("c", "m1"), { n: 3 });
    // A retry of that push rebases the same way (the entry lives until a push succeeds).
    assert.deepEqual(absorbed.rebase("c", "m1"), { n: 3 });
    // Other ids are untouched.
    assert.equal(absorbed.rebase("d", "m1"), undefined);
    // A row assuming anything else: RxDB moved on, the entry is dropped.
    assert.equal(absorbed.rebase("c", "r1"), undefined);
    assert.equal(absorbed.rebase("c", "m1"), undefined);
    assert.equal(absorbed.size, 0);

    absorbed.resolved("c", "m1", { n: 3 });
    absorbed.forget("c");
    assert.equal(absorbed.rebase("c", "m1"), undefined);
});

test("absorbed states are bounded: the oldest id is forgotten", () => {
    const absorbed = new AbsorbedStates<number>(2);
    absorbed.resolved("a", "x", 1);
    absorbed.resolved("b", "x", 2);
    absorbed.resolved("c", "x", 3);
    assert.equal(absorbed.size, 2);
    assert.equal(absorbed.rebase("a", "x"), undefined);
    assert.equal(absorbed.rebase("c", "x"), 3);
});
