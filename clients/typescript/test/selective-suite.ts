// Selective sync end to end: RxDB databases (memory storage) replicating through a real
// Syncline server, one of them with a `selector`. Run once per transport
// (selective-grpc.test.ts, selective-grpc-web.test.ts).
//
// What must hold: only matching documents arrive; a document edited out of the selector by
// another client is deleted locally on the filtered replica and stays on the server (the
// removal is not pushed back); moving it back in brings it back; a changed selector starts the
// replication over with exactly the new selection.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { createRxDatabase, type RxCollection } from "rxdb";
import { getRxStorageMemory } from "rxdb/plugins/storage-memory";
import { wrappedValidateAjvStorage } from "rxdb/plugins/validate-ajv";

import { replicateSyncline as replicateSynclineBrowser } from "../src/browser.js";
import { replicateSyncline, type SynclineReplicationState, type SynclineTransportKind } from "../src/index.js";
import { CallLog, createTestDatabase, pullAll, sleep, snapshot, taskSchema, waitFor, type Task, type TestDatabase } from "./support/helpers.js";
import { serverSuite } from "./support/server.js";

const COLLECTIONS = ["sel_initial", "sel_moves", "sel_local", "sel_change", "sel_valid", "sel_conflict"];
const FILTER_FIELDS = 'filter_fields = { done = "boolean", n = "number" }';

export function defineSelectiveSuite(kind: SynclineTransportKind): void {
    describe(`selective sync over ${kind}`, { timeout: 240_000 }, () => {
        const suite = serverSuite({
            collections: COLLECTIONS,
            label: `selective_${kind}`,
            collectionSettings: Object.fromEntries(COLLECTIONS.map((c) => [c, FILTER_FIELDS])),
        }, 90_000);
        const { cleanups, serverTest } = suite;

        /** Starts a replication (over gRPC-Web, a filtered one uses the browser entry point). */
        function replicate(
            side: TestDatabase,
            collectionName: string,
            log: CallLog,
            extra: Partial<Parameters<typeof replicateSyncline<Task>>[0]> = {},
        ): SynclineReplicationState<Task> {
            const start = kind === "grpc-web" && extra.selector !== undefined ? replicateSynclineBrowser : replicateSyncline;
            const state = start<Task>({
                collection: side.tasks,
                url: suite.server.url,
                collectionName,
                transport: kind,
                retryTime: 300,
                reconnectInitialDelayMs: 100,
                reconnectMaxDelayMs: 1_000,
                interceptors: [log.interceptor],
                ...extra,
            });
            cleanups.push(async () => {
                await state.cancel();
                await side.db.close();
            });
            return state;
        }

        /** Ids of the live documents on the server. */
        async function liveOnServer(collection: string): Promise<string[]> {
            const docs = await pullAll(suite.server.url, kind, collection);
            return [...docs.values()].filter((d) => !d.deleted).map((d) => d.id).sort();
        }

        serverTest("only the documents matching the selector arrive on the initial sync", async () => {
            const a = await createTestDatabase("ia");
            const ra = replicate(a, "sel_initial", new CallLog());
            await ra.awaitInitialReplication();
            await a.tasks.bulkInsert([
                { id: "open1", title: "open", done: false, n: 1 },
                { id: "open5", title: "open", done: false, n: 5 },
                { id: "done5", title: "done", done: true, n: 5 },
                { id: "plain", title: "no done field" },
            ]);
            await ra.awaitInSync();

            const b = await createTestDatabase("ib");
            const logB = new CallLog();
            const rb = replicate(b, "sel_initial", logB, { selector: { done: false, n: { $gte: 2 } }, batchSize: 1 });
            await rb.awaitInitialReplication();
            await rb.awaitInSync();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()], ["open5"]);
            assert.equal(logB.pulledDocs, 1, "the server sent only the match");

            // Live: a new match arrives, a new non-match does not.
            await waitFor("B's stream open", 5_000, () => logB.subscribesOpened > 0);
            await a.tasks.bulkInsert([
                { id: "later-done", title: "done", done: true, n: 9 },
                { id: "later-open", title: "open", done: false, n: 9 },
            ]);
            await waitFor("the later match on B", 10_000, async () => (await b.tasks.findOne("later-open").exec()) !== null);
            await rb.awaitInSync();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()].sort(), ["later-open", "open5"]);
            assert.equal(logB.pushes, 0, "the filtered replica had nothing to push");
        });

        serverTest("a document another client edits out of the selector is dropped locally, stays on the server, and comes back when moved back in", async () => {
            const a = await createTestDatabase("ma");
            const b = await createTestDatabase("mb");
            const logA = new CallLog();
            const logB = new CallLog();
            const ra = replicate(a, "sel_moves", logA);
            const firstB = replicate(b, "sel_moves", logB, { selector: { done: false } });
            await Promise.all([ra.awaitInitialReplication(), firstB.awaitInitialReplication()]);
            await waitFor("B's stream open", 5_000, () => logB.subscribesOpened > 0);
            await a.tasks.bulkInsert([
                { id: "x", title: "moves", done: false },
                { id: "y", title: "stays", done: false },
            ]);
            await waitFor("x and y on B", 10_000, async () => (await b.tasks.count().exec()) === 2);

            // Live (the stream): A marks x done, out of B's selector.
            await (await a.tasks.findOne("x").exec())!.incrementalPatch({ done: true });
            await waitFor("x dropped on B", 10_000, async () => (await b.tasks.findOne("x").exec()) === null);
            await firstB.awaitInSync();
            await ra.awaitInSync();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()], ["y"]);
            const onServer = await pullAll(suite.server.url, kind, "sel_moves");
            assert.equal(onServer.get("x")?.deleted, false, "the filtered replica deleted x on the server");
            assert.deepEqual(onServer.get("x")?.body, { id: "x", title: "moves", done: true });
            assert.equal((await a.tasks.findOne("x").exec())?.done, true, "A still holds x");
            assert.deepEqual(logB.pushedIds, [], "B pushed the removal back");

            // Moved back in: x comes back to B, whole.
            await (await a.tasks.findOne("x").exec())!.incrementalPatch({ done: false, title: "back" });
            await waitFor("x back on B", 10_000, async () => (await b.tasks.findOne("x").exec())?.title === "back");
            assert.deepEqual((await b.tasks.findOne("x").exec())?.toJSON(), { id: "x", title: "back", done: false });

            // Offline (a Pull from B's stored checkpoint): y is edited out twice and deleted
            // nowhere; B's app starts again on the same database.
            await firstB.awaitInSync();
            await firstB.cancel();
            await (await a.tasks.findOne("y").exec())!.incrementalPatch({ done: true });
            await (await a.tasks.findOne("y").exec())!.incrementalPatch({ title: "still out" });
            await ra.awaitInSync();
            const logB2 = new CallLog();
            const rb = replicate(b, "sel_moves", logB2, { selector: { done: false } });
            await rb.awaitInitialReplication();
            await rb.awaitInSync();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()], ["x"], "y dropped on B by the Pull");
            assert.deepEqual(await liveOnServer("sel_moves"), ["x", "y"], "both still live on the server");
            assert.deepEqual([...logB.pushedIds, ...logB2.pushedIds], [], "B pushed a removal back");
            assert.equal(logB2.reconcileCalls, 0);
        });

        serverTest("a local edit out of the selector is pushed, then dropped locally; the server keeps the edit", async () => {
            const a = await createTestDatabase("la");
            const logA = new CallLog();
            const ra = replicate(a, "sel_local", logA, { selector: { done: false } });
            await ra.awaitInitialReplication();
            await waitFor("the stream open", 5_000, () => logA.subscribesOpened > 0);
            await a.tasks.insert({ id: "mine", title: "to do", done: false });
            await ra.awaitInSync();
            await (await a.tasks.findOne("mine").exec())!.incrementalPatch({ done: true, title: "done" });
            await waitFor("mine dropped locally", 10_000, async () => (await a.tasks.findOne("mine").exec()) === null);
            await ra.awaitInSync();
            const onServer = await pullAll(suite.server.url, kind, "sel_local");
            assert.equal(onServer.get("mine")?.deleted, false);
            assert.deepEqual(onServer.get("mine")?.body, { id: "mine", title: "done", done: true });
            assert.deepEqual(logA.pushedIds, ["mine", "mine"], "the insert and the edit, and no deletion");
        });

        serverTest("a local edit of a document that left the selector meanwhile conflicts, and the copy still leaves: the server keeps its state", async () => {
            const a = await createTestDatabase("ka");
            const b = await createTestDatabase("kb");
            const ra = replicate(a, "sel_conflict", new CallLog());
            const firstB = replicate(b, "sel_conflict", new CallLog(), { selector: { done: false } });
            await Promise.all([ra.awaitInitialReplication(), firstB.awaitInitialReplication()]);
            await a.tasks.insert({ id: "k", title: "shared", done: false });
            await waitFor("k on B", 10_000, async () => (await b.tasks.findOne("k").exec()) !== null);
            await firstB.awaitInSync();
            // B goes offline and edits k; meanwhile A moves k out of B's selector.
            await firstB.cancel();
            await (await b.tasks.findOne("k").exec())!.incrementalPatch({ title: "edited on B" });
            await (await a.tasks.findOne("k").exec())!.incrementalPatch({ done: true });
            await ra.awaitInSync();

            const logB = new CallLog();
            const rb = replicate(b, "sel_conflict", logB, { selector: { done: false } });
            await rb.awaitInitialReplication();
            await waitFor("k gone from B", 10_000, async () => (await b.tasks.findOne("k").exec()) === null);
            await rb.awaitInSync();
            // The default conflict handler keeps the server's state: outside the selector.
            const onServer = await pullAll(suite.server.url, kind, "sel_conflict");
            assert.deepEqual(onServer.get("k"), { id: "k", deleted: false, body: { id: "k", title: "shared", done: true } });
            assert.ok(logB.pushedIds.every((id) => id === "k") && logB.pushedIds.length <= 1, JSON.stringify(logB.pushedIds));
            // It stays gone (no push loop, nothing comes back).
            await sleep(500);
            assert.equal(await b.tasks.findOne("k").exec(), null);
            assert.ok(logB.pushedIds.length <= 1, JSON.stringify(logB.pushedIds));
        });

        serverTest("changing the selector of a replication starts it over with exactly the new selection", async () => {
            const a = await createTestDatabase("ca");
            const ra = replicate(a, "sel_change", new CallLog());
            await ra.awaitInitialReplication();
            await a.tasks.bulkInsert([
                { id: "c1", title: "one", done: false, n: 1 },
                { id: "c2", title: "two", done: false, n: 2 },
                { id: "c3", title: "three", done: true, n: 3 },
            ]);
            await ra.awaitInSync();

            const b = await createTestDatabase("cb");
            const first = replicate(b, "sel_change", new CallLog(), { selector: { done: false } });
            await first.awaitInitialReplication();
            await first.awaitInSync();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()].sort(), ["c1", "c2"]);
            await first.cancel();

            // The same database and replication identifier, another selector.
            const logB = new CallLog();
            const rb = replicate(b, "sel_change", logB, { selector: { n: { $gte: 2 } } });
            const notices: Array<{ reason?: string }> = [];
            const sub = rb.error$.subscribe((e) => notices.push(e as { reason?: string }));
            await rb.awaitInitialReplication();
            await rb.awaitInSync();
            sub.unsubscribe();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()].sort(), ["c2", "c3"]);
            assert.ok(notices.some((n) => n.reason === "CHECKPOINT_INVALID"), "the refused checkpoint was reported");
            assert.equal(logB.reconcileCalls, 0, "a reconcile would compare the whole collection");
            assert.deepEqual(logB.pushedIds, [], "c1 was dropped locally, not deleted on the server");
            assert.deepEqual(await liveOnServer("sel_change"), ["c1", "c2", "c3"]);

            // Live under the new selector.
            await waitFor("B's stream open", 5_000, () => logB.subscribesOpened > 0);
            await (await a.tasks.findOne("c1").exec())!.incrementalPatch({ n: 7 });
            await waitFor("c1 on B again", 10_000, async () => (await b.tasks.findOne("c1").exec())?.n === 7);

            // Without a selector: the refused checkpoint is reconciled as usual, and B ends with
            // the whole collection (the documents it dropped come back; nothing is pushed).
            await rb.awaitInSync();
            await rb.cancel();
            await (await a.tasks.findOne("c3").exec())!.incrementalPatch({ n: 0 });
            await ra.awaitInSync();
            const logAll = new CallLog();
            const all = replicate(b, "sel_change", logAll);
            await all.awaitInitialReplication();
            await all.awaitInSync();
            assert.deepEqual(await snapshot(b.tasks), await snapshot(a.tasks));
            assert.deepEqual([...(await snapshot(b.tasks)).keys()].sort(), ["c1", "c2", "c3"]);
            assert.ok(logAll.reconcileCalls > 0, "the unfiltered replication reconciled");
            assert.deepEqual(logAll.pushedIds, []);
        });

        serverTest("with a storage that validates the schema, a removal (no body) still deletes the local copy", async () => {
            const a = await createTestDatabase("va");
            const ra = replicate(a, "sel_valid", new CallLog());
            const db = await createRxDatabase({
                name: `vb${Date.now()}`,
                storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }),
                multiInstance: false,
            });
            const b = { db, tasks: (await db.addCollections({ tasks: { schema: taskSchema } })).tasks as RxCollection<Task> };
            const logB = new CallLog();
            const rb = replicate(b, "sel_valid", logB, { selector: { done: false } });
            const errors: unknown[] = [];
            const sub = rb.error$.subscribe((e) => errors.push(e));
            await Promise.all([ra.awaitInitialReplication(), rb.awaitInitialReplication()]);
            await a.tasks.bulkInsert([
                { id: "v1", title: "one", done: false },
                { id: "v2", title: "two", done: false },
            ]);
            await waitFor("v1 and v2 on B", 10_000, async () => (await b.tasks.count().exec()) === 2);
            // Live (stream) and, after B's app restarts, through a Pull.
            await (await a.tasks.findOne("v1").exec())!.incrementalPatch({ done: true });
            await waitFor("v1 dropped on B", 10_000, async () => (await b.tasks.findOne("v1").exec()) === null);
            await rb.awaitInSync();
            await rb.cancel();
            await (await a.tasks.findOne("v2").exec())!.remove();
            await ra.awaitInSync();
            const rb2 = replicate(b, "sel_valid", new CallLog(), { selector: { done: false } });
            const sub2 = rb2.error$.subscribe((e) => errors.push(e));
            await rb2.awaitInitialReplication();
            await rb2.awaitInSync();
            sub.unsubscribe();
            sub2.unsubscribe();
            assert.equal(await b.tasks.count().exec(), 0, "v2 (deleted) dropped on B");
            assert.deepEqual(errors, [], "the storage refused a removal");
            assert.deepEqual(await liveOnServer("sel_valid"), ["v1"]);
            assert.deepEqual(logB.pushedIds, []);
        });

        serverTest("a selector over an undeclared field stops the replication: awaitInitialReplication rejects naming the path", async () => {
            const a = await createTestDatabase("ua");
            const log = new CallLog();
            const ra = replicate(a, "sel_initial", log, { selector: { title: "x" } });
            await assert.rejects(ra.awaitInitialReplication(), (err: Error & { code?: number; reason?: string; fieldViolations?: Array<{ field: string }> }) => {
                assert.equal(err.reason, "INVALID_REQUEST", String(err));
                assert.match(err.message, /selector\.title/);
                assert.ok(err.fieldViolations?.some((v) => v.field.startsWith("selector")), JSON.stringify(err.fieldViolations));
                return true;
            });
            assert.equal(await a.tasks.count().exec(), 0);
            assert.throws(
                () => replicate(a, "sel_initial", log, { selector: ["done"] as never }),
                /selector must be a Mango selector object/,
            );
        });
    });
}
