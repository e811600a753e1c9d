// Unit tests of the RxDB <-> Syncline document mapping (no server needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { DocumentSchema, fromServerDocument, toServerDocument } from "../src/index.js";

const text = (b: Uint8Array): string => new TextDecoder().decode(b);

test("toServerDocument strips RxDB's fields and maps _deleted", () => {
    const doc = toServerDocument(
        { id: "t1", title: "x", nested: { a: 1 }, _deleted: true, _meta: { lwt: 1 }, _rev: "1-a", _attachments: {} },
        "id",
    );
    assert.equal(doc.id, "t1");
    assert.equal(doc.deleted, true);
    assert.equal(doc.revision, "");
    assert.deepEqual(JSON.parse(text(doc.json)), { id: "t1", title: "x", nested: { a: 1 } });
});

test("toServerDocument needs a string primary key", () => {
    assert.throws(() => toServerDocument({ title: "no id", _deleted: false }, "id"), /primary key/);
});

test("fromServerDocument restores the primary key and _deleted", () => {
    const state = fromServerDocument(
        create(DocumentSchema, { id: "k1", json: new TextEncoder().encode('{"title":"t","n":2}'), deleted: false, revision: "3-abc" }),
        "key",
    );
    assert.deepEqual(state, { title: "t", n: 2, key: "k1", _deleted: false });
});

test("fromServerDocument drops RxDB's own fields from a body, keeping the order of the rest", () => {
    const state = fromServerDocument(
        create(DocumentSchema, {
            id: "k1",
            json: new TextEncoder().encode('{"b":1,"_rev":"9-x","a":{"_meta":2},"_deleted":true,"_meta":{},"_attachments":{},"c":3}'),
            deleted: false,
        }),
        "id",
    );
    assert.deepEqual(state, { b: 1, a: { _meta: 2 }, c: 3, id: "k1", _deleted: false });
    assert.deepEqual(Object.keys(state), ["b", "a", "c", "id", "_deleted"]);
});

test("fromServerDocument accepts a tombstone with an empty body", () => {
    const state = fromServerDocument(create(DocumentSchema, { id: "k2", deleted: true }), "id");
    assert.deepEqual(state, { id: "k2", _deleted: true });
});

test("fromServerDocument rejects a body that is not an object", () => {
    assert.throws(
        () => fromServerDocument(create(DocumentSchema, { id: "k3", json: new TextEncoder().encode("[1]") }), "id"),
        /not a JSON object/,
    );
});

test("ownerField: owner travels in Document.owner, never in the body", () => {
    const doc = toServerDocument({ id: "t1", title: "x", owner: "alice", _deleted: false }, "id", "owner");
    assert.equal(doc.owner, "alice");
    assert.deepEqual(JSON.parse(text(doc.json)), { id: "t1", title: "x" });
    const unset = toServerDocument({ id: "t2", title: "x", _deleted: false }, "id", "owner");
    assert.equal(unset.owner, "");
    const state = fromServerDocument(
        create(DocumentSchema, { id: "t1", json: new TextEncoder().encode('{"title":"x"}'), owner: "bob" }),
        "id",
        "owner",
    );
    assert.deepEqual(state, { title: "x", id: "t1", owner: "bob", _deleted: false });
});

test("without ownerField, owner is neither read nor sent", () => {
    const doc = toServerDocument({ id: "t1", owner: "alice", _deleted: false }, "id");
    assert.equal(doc.owner, "");
    assert.deepEqual(JSON.parse(text(doc.json)), { id: "t1", owner: "alice" });
    const state = fromServerDocument(create(DocumentSchema, { id: "t1", json: new TextEncoder().encode("{}"), owner: "bob" }), "id");
    assert.deepEqual(state, { id: "t1", _deleted: false });
});
