// Unit tests of how attachments map between RxDB states and Syncline documents (no server).
import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { canonicalBody } from "../src/convert.js";
import { refusedMasterState } from "../src/refusals.js";
import { DocumentSchema, RefusedRowSchema, fromServerDocument, toServerDocument } from "../src/index.js";

const D = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const json = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));

test("a pushed body keeps attachment metadata and never the bytes", () => {
    const doc = toServerDocument(
        {
            id: "t1",
            title: "x",
            _deleted: false,
            _attachments: { "a.png": { digest: D, length: 5, type: "image/png", data: new Blob(["hello"]) } },
        },
        "id",
    );
    assert.deepEqual(JSON.parse(text(doc.json)), {
        id: "t1",
        title: "x",
        _attachments: { "a.png": { digest: D, length: 5, type: "image/png" } },
    });
    // An empty `_attachments` (every RxDB document of a collection with attachments) is left
    // out, so a document without attachments has the same body in every collection.
    const plain = toServerDocument({ id: "t2", title: "y", _deleted: false, _attachments: {} }, "id");
    assert.deepEqual(JSON.parse(text(plain.json)), { id: "t2", title: "y" });
    // The body compared for revisions is the same with or without the bytes.
    const meta = { id: "t1", _deleted: false, _attachments: { a: { digest: D, length: 5, type: "t" } } };
    const withData = {
        id: "t1",
        _deleted: false,
        _attachments: { a: { digest: D, length: 5, type: "t", data: new Blob(["hello"]) } },
    };
    assert.equal(canonicalBody(withData), canonicalBody(meta));
});

test("a pulled document keeps its attachments only in collections with attachments, and always has them there", () => {
    const body = { title: "t", _attachments: { "a.png": { digest: D, length: 5, type: "image/png" } } };
    const doc = create(DocumentSchema, { id: "k1", json: json(body) });
    assert.equal(fromServerDocument(doc, "id")._attachments, undefined);
    assert.deepEqual(fromServerDocument(doc, "id", undefined, true)._attachments, body._attachments);
    // RxDB refuses to push a document whose assumed master state lacks `_attachments` (AT4).
    const bare = create(DocumentSchema, { id: "k2", json: json({ title: "t" }) });
    assert.deepEqual(fromServerDocument(bare, "id", undefined, true)._attachments, {});
    const tombstone = create(DocumentSchema, { id: "k3", json: json(body), deleted: true });
    assert.deepEqual(fromServerDocument(tombstone, "id", undefined, true)._attachments, {});
});

test("a refused row's server state keeps its attachments in collections with attachments", () => {
    const current = create(DocumentSchema, {
        id: "k1",
        json: json({ title: "server", _attachments: { a: { digest: D, length: 5, type: "t" } } }),
    });
    const refused = create(RefusedRowSchema, { index: 0, id: "k1", reason: "NOT_OWNER", current });
    const state = refusedMasterState(refused, { id: "k1", title: "mine" }, "id", undefined, true);
    assert.deepEqual(state._attachments, { a: { digest: D, length: 5, type: "t" } });
    assert.equal(refusedMasterState(refused, { id: "k1" }, "id", undefined)._attachments, undefined);
});
