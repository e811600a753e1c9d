// selector.ts without a server: the selector's wire form, starting a filtered replication over
// (every page from the beginning, local documents the server did not send deleted), removals
// with the local copy's fields, and push results outside the selector.

import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { fillWithDefaultSettings } from "rxdb";

import { DocumentSchema, PullResponseSchema, type PullResponse } from "../src/gen/syncline/v1/replication_pb.js";
import { encodeSelector, OutOfScopeStates, startOver, withLocalFields } from "../src/selector.js";
import { taskSchema } from "./support/helpers.js";

const text = (bytes: Uint8Array | undefined): string | undefined => (bytes === undefined ? undefined : new TextDecoder().decode(bytes));

test("a selector is sent as its JSON text; none and {} are sent as nothing; anything but an object throws", () => {
    assert.equal(text(encodeSelector({ done: false, n: { $gte: 2 } })), '{"done":false,"n":{"$gte":2}}');
    assert.equal(text(encodeSelector({ "meta.région": "eu" })), '{"meta.région":"eu"}');
    assert.equal(encodeSelector(undefined), undefined);
    assert.equal(encodeSelector({}), undefined);
    for (const bad of [null, [], ["done"], "done", 3, true]) {
        assert.throws(() => encodeSelector(bad), /selector must be a Mango selector object/, String(bad));
    }
});

test("a body-less deletion takes the local copy's fields; states with a body, and ids held nowhere, are kept", async () => {
    const asked: string[][] = [];
    const local = async (ids: string[]) => {
        asked.push(ids);
        return [
            { id: "r", title: "held", done: false, owner: "alice", _meta: { lwt: 1 }, _rev: "1-a", _attachments: {}, _deleted: false },
        ].filter((d) => ids.includes(d.id));
    };
    const states = [
        { id: "r", owner: "", _deleted: true },
        { id: "gone", _deleted: true },
        { id: "t", title: "tombstone with its body", _deleted: true },
        { id: "live", title: "live", _deleted: false },
    ];
    const out = await withLocalFields(states, "id", "owner", local);
    assert.deepEqual(asked, [["r", "gone"]]);
    assert.deepEqual(out, [
        { id: "r", title: "held", done: false, owner: "alice", _deleted: true },
        { id: "gone", _deleted: true },
        { id: "t", title: "tombstone with its body", _deleted: true },
        { id: "live", title: "live", _deleted: false },
    ]);
    // Nothing body-less: no lookup at all.
    const untouched = [{ id: "live", title: "live", _deleted: false }];
    assert.equal(await withLocalFields(untouched, "id", undefined, local), untouched);
    assert.equal(asked.length, 1);
});

function page(ids: string[], token: string): PullResponse {
    return create(PullResponseSchema, {
        documents: ids.map((id) => create(DocumentSchema, { id, json: new TextEncoder().encode(`{"v":"${token}"}`) })),
        checkpoint: { token },
    });
}

test("starting over pages from the beginning, keeps each document's latest state, and deletes the local documents not sent", async () => {
    const pages = [page(["a", "b"], "t1"), page(["c", "a"], "t2"), page([], "t2")];
    const asked: Array<string | undefined> = [];
    const result = await startOver(
        async (token) => {
            asked.push(token);
            return pages[asked.length - 1];
        },
        async () => ["a", "x", "c", "y"],
    );
    assert.deepEqual(asked, [undefined, "t1", "t2"]);
    assert.equal(result.token, "t2");
    assert.equal(result.dropped, 2);
    assert.deepEqual(
        result.documents.map((d) => [d.id, d.deleted, new TextDecoder().decode(d.json)]),
        [
            ["b", false, '{"v":"t1"}'],
            ["c", false, '{"v":"t2"}'],
            ["a", false, '{"v":"t2"}'],
            ["x", true, ""],
            ["y", true, ""],
        ],
    );
});

test("starting over refuses a page that does not advance the checkpoint instead of looping", async () => {
    await assert.rejects(startOver(async () => page(["a"], "same"), async () => []), /without advancing the checkpoint/);
    await assert.rejects(startOver(async () => page(["a"], ""), async () => []), /without advancing the checkpoint/);
});

test("a server state outside the selector is handed over deleted, once per revision; a matching one as it is", () => {
    const schema = fillWithDefaultSettings(taskSchema);
    const states = new OutOfScopeStates(schema, { done: false, n: { $gte: 2 } });
    const inside = { id: "a", title: "t", done: false, n: 3, _deleted: false };
    assert.equal(states.masterState("a", "2-x", inside), inside);
    const outside = { id: "a", title: "t", done: true, n: 3, _deleted: false };
    assert.deepEqual(states.masterState("a", "3-y", outside), { ...outside, _deleted: true });
    // The same server state again (a handler kept the document alive and pushed): as it is,
    // so that push can succeed instead of conflicting forever; a later revision: deleted again.
    assert.equal(states.masterState("a", "3-y", outside), outside);
    assert.deepEqual(states.masterState("a", "4-z", outside), { ...outside, _deleted: true });
    // A server tombstone stays a tombstone.
    const tombstone = { id: "b", title: "t", _deleted: true };
    assert.equal(states.masterState("b", "5-w", tombstone), tombstone);
});
