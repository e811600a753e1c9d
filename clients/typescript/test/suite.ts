// The interop suite: real RxDB databases (memory storage) replicating through a real Syncline
// server. Run once per transport (interop-grpc.test.ts, interop-grpc-web.test.ts).

import assert from "node:assert/strict";
import { describe } from "node:test";

import type { RxConflictHandler } from "rxdb";

import { replicateSyncline as replicateSynclineBrowser } from "../src/browser.js";
import {
    replicateSyncline,
    type SynclineReplicationState,
    type SynclineTransportKind,
} from "../src/index.js";
import {
    CallLog,
    createTestDatabase,
    pullAll,
    sleep,
    snapshot,
    waitFor,
    type Task,
    type TestDatabase,
} from "./support/helpers.js";
import { serverSuite } from "./support/server.js";

const COLLECTIONS = ["live", "conflict", "offline", "restart", "race", "batch", "token", "purge", "resync"];

export function defineInteropSuite(kind: SynclineTransportKind): void {
    describe(`syncline-rxdb over ${kind}`, { timeout: 240_000 }, () => {
        const suite = serverSuite({
            collections: COLLECTIONS,
            label: kind,
            // "purge" and "resync" lose their tombstones a second after the delete.
            collectionSettings: { purge: 'tombstone_retention = "1s"', resync: 'tombstone_retention = "1s"' },
            extraConfig: "purge_interval_seconds = 1",
        }, 60_000);
        const { cleanups, serverTest } = suite;

        /**
         * Starts a replication and registers its cleanup. Over gRPC-Web, side "b" uses the
         * browser entry point (fetch-based transport, as in a browser; Node has fetch too).
         */
        function replicate(
            side: TestDatabase,
            collectionName: string,
            extra: Partial<Parameters<typeof replicateSyncline<Task>>[0]> = {},
            entry: "node" | "browser" = "node",
        ): SynclineReplicationState<Task> {
            const start = entry === "browser" ? replicateSynclineBrowser : replicateSyncline;
            const state = start<Task>({
                collection: side.tasks,
                url: suite.server.url,
                collectionName,
                transport: kind,
                retryTime: 300,
                reconnectInitialDelayMs: 100,
                reconnectMaxDelayMs: 1_000,
                ...extra,
            });
            cleanups.push(async () => {
                await state.cancel();
                await side.db.close();
            });
            return state;
        }

        async function twoReplicas(
            collectionName: string,
            conflictHandler?: RxConflictHandler<Task>,
        ): Promise<{ a: TestDatabase; b: TestDatabase; ra: SynclineReplicationState<Task>; rb: SynclineReplicationState<Task>; logA: CallLog; logB: CallLog }> {
            const a = await createTestDatabase("a", conflictHandler);
            const b = await createTestDatabase("b", conflictHandler);
            const logA = new CallLog();
            const logB = new CallLog();
            const ra = replicate(a, collectionName, { interceptors: [logA.interceptor] });
            const rb = replicate(b, collectionName, { interceptors: [logB.interceptor] }, kind === "grpc-web" ? "browser" : "node");
            await Promise.all([ra.awaitInitialReplication(), rb.awaitInitialReplication()]);
            // Live delivery needs the streams open.
            await waitFor("both Subscribe streams open", 5_000, () => logA.subscribesOpened > 0 && logB.subscribesOpened > 0);
            return { a, b, ra, rb, logA, logB };
        }

        serverTest("inserts, updates and deletes on A reach B live through Subscribe within a second", async () => {
            const { a, b, logB } = await twoReplicas("live");
            // One untimed round trip first, so that connection set-up and JIT warm-up are not
            // part of the measured latency.
            await a.tasks.insert({ id: "warm-up", title: "warm-up" });
            await waitFor("warm-up on B", 10_000, async () => (await b.tasks.findOne("warm-up").exec()) !== null);
            const pullsBefore = logB.pulls;

            let start = Date.now();
            await a.tasks.insert({ id: "t1", title: "write docs", done: false });
            await waitFor("insert on B", 10_000, async () => (await b.tasks.findOne("t1").exec()) !== null);
            const insertMs = Date.now() - start;

            start = Date.now();
            const doc = await a.tasks.findOne("t1").exec();
            await doc!.incrementalPatch({ title: "write better docs", done: true });
            await waitFor("update on B", 10_000, async () => {
                const d = await b.tasks.findOne("t1").exec();
                return d !== null && d.title === "write better docs" && d.done === true;
            });
            const updateMs = Date.now() - start;

            start = Date.now();
            await (await a.tasks.findOne("t1").exec())!.remove();
            await waitFor("delete on B", 10_000, async () => (await b.tasks.findOne("t1").exec()) === null);
            const deleteMs = Date.now() - start;

            const budget = 1_000;
            assert.ok(insertMs <= budget, `insert took ${insertMs} ms to reach B (budget ${budget} ms)`);
            assert.ok(updateMs <= budget, `update took ${updateMs} ms to reach B (budget ${budget} ms)`);
            assert.ok(deleteMs <= budget, `delete took ${deleteMs} ms to reach B (budget ${budget} ms)`);
            // Delivered by the stream, not by polling: B made no Pull after the initial sync.
            assert.equal(logB.pulls, pullsBefore, "B pulled instead of receiving through Subscribe");
            assert.ok(logB.changeBatches.some((c) => c.ids.includes("t1")));
            const server_ = await pullAll(suite.server.url, kind, "live");
            assert.equal(server_.get("t1")?.deleted, true, "the server keeps a tombstone");
            console.log(`# live latency ms: insert ${insertMs}, update ${updateMs}, delete ${deleteMs}`);
        });

        serverTest("concurrent edits while B is stopped: the conflict handler runs on B and both converge", async () => {
            const resolved: string[] = [];
            const mergeTitles: RxConflictHandler<Task> = {
                isEqual: (x, y) =>
                    x.title === y.title && (x.done ?? null) === (y.done ?? null) && x._deleted === y._deleted,
                resolve: async (input) => {
                    resolved.push(`${input.realMasterState.title} / ${input.newDocumentState.title}`);
                    return {
                        ...input.realMasterState,
                        title: `${input.realMasterState.title} + ${input.newDocumentState.title}`,
                    };
                },
            };
            const { a, b, ra, rb } = await twoReplicas("conflict", mergeTitles);
            await a.tasks.insert({ id: "c1", title: "original" });
            await waitFor("c1 on B", 5_000, async () => (await b.tasks.findOne("c1").exec()) !== null);

            await rb.pause();
            await (await a.tasks.findOne("c1").exec())!.incrementalPatch({ title: "from A" });
            await ra.awaitInSync();
            await (await b.tasks.findOne("c1").exec())!.incrementalPatch({ title: "from B" });
            await sleep(300);
            // A's edit is on the server; B, stopped, did not see it.
            assert.equal((await b.tasks.findOne("c1").exec())!.title, "from B");
            assert.equal((await pullAll(suite.server.url, kind, "conflict")).get("c1")?.body.title, "from A");

            const conflicts: unknown[] = [];
            const sub = rb.conflict$.subscribe((c) => conflicts.push(c));
            await rb.start();
            const expected = "from A + from B";
            await waitFor("B resolved the conflict", 10_000, async () => (await b.tasks.findOne("c1").exec())?.title === expected);
            await waitFor("A received the resolution", 10_000, async () => (await a.tasks.findOne("c1").exec())?.title === expected);
            await rb.awaitInSync();
            await ra.awaitInSync();
            sub.unsubscribe();

            assert.deepEqual(resolved, ["from A / from B"], "the conflict handler ran once with both states");
            assert.equal(conflicts.length, 1);
            const onServer = (await pullAll(suite.server.url, kind, "conflict")).get("c1");
            assert.equal(onServer?.body.title, expected);
            assert.deepEqual(await snapshot(a.tasks), await snapshot(b.tasks));
        });

        serverTest("1,000 documents written offline on A sync when A comes online", async () => {
            const { a, b, ra } = await twoReplicas("offline");
            await ra.pause();
            const docs: Task[] = Array.from({ length: 1000 }, (_, i) => ({
                id: `o${String(i).padStart(4, "0")}`,
                title: `offline ${i}`,
                n: i,
            }));
            await a.tasks.bulkInsert(docs);
            // A few more offline edits on top: an update and a delete.
            await (await a.tasks.findOne("o0001").exec())!.incrementalPatch({ title: "offline 1, edited" });
            await (await a.tasks.findOne("o0002").exec())!.remove();
            await sleep(300);
            assert.equal((await pullAll(suite.server.url, kind, "offline")).size, 0, "nothing left A while offline");

            await ra.start();
            await waitFor("all offline documents on B", 30_000, async () => (await b.tasks.count().exec()) === 999);
            await ra.awaitInSync();
            const onB = await snapshot(b.tasks);
            assert.equal(onB.get("o0001")?.title, "offline 1, edited");
            assert.equal(onB.has("o0002"), false);
            assert.equal(onB.get("o0999")?.n, 999);
            assert.deepEqual(onB, await snapshot(a.tasks));
            const onServer = await pullAll(suite.server.url, kind, "offline");
            assert.equal(onServer.size, 1000);
            assert.equal([...onServer.values()].filter((d) => d.deleted).length, 1);
        });

        serverTest("the server restarts mid-test: replication resumes and nothing is lost", async () => {
            const { a, b, ra, rb, logB } = await twoReplicas("restart");
            const errors: unknown[] = [];
            const subs = [ra.error$.subscribe((e) => errors.push(e)), rb.error$.subscribe((e) => errors.push(e))];
            await a.tasks.bulkInsert(Array.from({ length: 20 }, (_, i) => ({ id: `r${i}`, title: `before ${i}` })));
            await waitFor("first documents on B", 5_000, async () => (await b.tasks.count().exec()) === 20);
            const streamsBefore = logB.subscribesOpened;

            // Writes racing the kill, then writes while the server is down.
            const racing = a.tasks.bulkInsert(Array.from({ length: 10 }, (_, i) => ({ id: `k${i}`, title: `racing ${i}` })));
            await suite.server.kill();
            await racing;
            await a.tasks.bulkInsert(Array.from({ length: 10 }, (_, i) => ({ id: `d${i}`, title: `down ${i}` })));
            await (await a.tasks.findOne("r0").exec())!.incrementalPatch({ title: "edited while down" });
            await b.tasks.insert({ id: "fromB", title: "written on B while down" });
            await sleep(800);

            await suite.server.restart();
            await waitFor("B's stream reconnected", 15_000, () => logB.subscribesOpened > streamsBefore);
            await waitFor("everything on B", 15_000, async () => (await b.tasks.count().exec()) === 41);
            await waitFor("everything on A", 15_000, async () => (await a.tasks.count().exec()) === 41);

            // Live again after the restart.
            const start = Date.now();
            await a.tasks.insert({ id: "after", title: "after restart" });
            await waitFor("live write after restart on B", 2_000, async () => (await b.tasks.findOne("after").exec()) !== null);
            console.log(`# live latency after restart: ${Date.now() - start} ms`);

            // A graceful restart too: the streams end with UNAVAILABLE and reconnect.
            const streamsBeforeTerm = logB.subscribesOpened;
            await suite.server.restart("SIGTERM");
            await waitFor("B's stream reconnected after SIGTERM", 15_000, () => logB.subscribesOpened > streamsBeforeTerm);
            await a.tasks.insert({ id: "after2", title: "after graceful restart" });
            await waitFor("live write after the graceful restart on B", 5_000, async () => (await b.tasks.findOne("after2").exec()) !== null);
            await ra.awaitInSync();
            await rb.awaitInSync();
            subs.forEach((s) => s.unsubscribe());

            const onA = await snapshot(a.tasks);
            const onB = await snapshot(b.tasks);
            assert.equal(onB.size, 43);
            assert.deepEqual(onA, onB);
            assert.equal(onB.get("r0")?.title, "edited while down");
            const onServer = await pullAll(suite.server.url, kind, "restart");
            assert.equal(onServer.size, 43);
            assert.ok(errors.length > 0, "the outage was reported on error$");
        });

        serverTest("stream batches arriving while a push is in flight are not lost (RxDB issue 5571)", async () => {
            const { a, b, ra, rb, logA } = await twoReplicas("race");
            logA.pushDelayMs = 1_000;
            const pushesBefore = logA.pushes;
            // A pushes x1 and stays "in flight" for a second; meanwhile B writes y1 and the
            // server streams y1 (and x1) to A during A's push.
            await a.tasks.insert({ id: "x1", title: "from A" });
            await waitFor("A's push started", 2_000, () => logA.pushes > pushesBefore);
            await sleep(100);
            await b.tasks.insert({ id: "y1", title: "from B during A's push" });
            await waitFor("A got y1", 5_000, async () => (await a.tasks.findOne("y1").exec()) !== null);
            await waitFor("B got x1", 5_000, async () => (await b.tasks.findOne("x1").exec()) !== null);
            assert.ok(logA.batchArrivedDuringPush("y1"), "the test did not produce the race: y1 did not arrive during A's push");
            // The batch was withheld and A re-pulled from its own checkpoint after the push.
            const lastPushEnd = Math.max(...logA.pushWindows.map((w) => w.end));
            assert.ok(logA.pullTimes.some((t) => t >= lastPushEnd - 5), "A did not pull after its push (no RESYNC)");

            // And a pending local edit racing a remote one on the same document converges.
            await (await a.tasks.findOne("y1").exec())!.incrementalPatch({ title: "A edits y1" });
            await sleep(100);
            await (await b.tasks.findOne("x1").exec())!.incrementalPatch({ title: "B edits x1" });
            logA.pushDelayMs = 0;
            await waitFor("both converge", 10_000, async () => {
                const [sa, sb] = [await snapshot(a.tasks), await snapshot(b.tasks)];
                return sa.get("y1")?.title === "A edits y1" && sb.get("y1")?.title === "A edits y1" &&
                    sa.get("x1")?.title === "B edits x1" && sb.get("x1")?.title === "B edits x1";
            });
            await ra.awaitInSync();
            await rb.awaitInSync();
            assert.deepEqual(await snapshot(a.tasks), await snapshot(b.tasks));
        });

        serverTest("a push batch exactly batchSize long does not loop (RxDB issue 3727)", async () => {
            const a = await createTestDatabase("batcha");
            const logA = new CallLog();
            await a.tasks.bulkInsert(Array.from({ length: 10 }, (_, i) => ({ id: `b${i}`, title: `batch ${i}` })));
            const ra = replicate(a, "batch", { batchSize: 10, autoStart: false, interceptors: [logA.interceptor] });
            await ra.start();
            await ra.awaitInitialReplication();
            await ra.awaitInSync();
            await sleep(1_500);
            assert.deepEqual(logA.pushRows, [10], "exactly one push of 10 rows");

            // Live: another exact batch while running.
            await a.tasks.bulkInsert(Array.from({ length: 10 }, (_, i) => ({ id: `c${i}`, title: `batch 2 ${i}` })));
            await ra.awaitInSync();
            await sleep(1_500);
            assert.deepEqual(logA.pushRows, [10, 10], "one more push of 10 rows, then quiet");
            const pullsA = logA.pulls;
            await sleep(1_000);
            assert.equal(logA.pulls, pullsA, "A keeps pulling");
            assert.equal(logA.pushes, 2, "A keeps pushing");

            // Pull side: B pulls exactly two full batches (10, 10), then one empty page, then stops.
            const b = await createTestDatabase("batchb");
            const logB = new CallLog();
            const rb = replicate(b, "batch", { batchSize: 10, interceptors: [logB.interceptor] });
            await rb.awaitInitialReplication();
            await rb.awaitInSync();
            assert.equal(await b.tasks.count().exec(), 20);
            await sleep(1_500);
            assert.equal(logB.pulls, 3, "B pulls 10, 10, then an empty page");
            assert.equal(logB.pushes, 0, "B has nothing to push");
        });

        serverTest("offline across a purge: B reconciles, drops the purged documents, never pushes them back, and fetches only what changed", async () => {
            const { a, b, ra, rb: firstB } = await twoReplicas("purge");
            const ids = Array.from({ length: 40 }, (_, i) => `p${String(i).padStart(2, "0")}`);
            await a.tasks.bulkInsert(ids.map((id, n) => ({ id, title: `doc ${id}`, n })));
            await waitFor("40 documents on B", 10_000, async () => (await b.tasks.count().exec()) === 40);
            await ra.awaitInSync();
            await firstB.awaitInSync();

            // B goes offline: its app closes (the replication ends; the database stays). Meanwhile
            // on A: 3 updates, 4 deletes (purged a second later), 2 inserts.
            await firstB.cancel();
            for (const id of ["p01", "p02", "p03"]) {
                await (await a.tasks.findOne(id).exec())!.incrementalPatch({ title: `edited ${id}` });
            }
            const purged = ["p10", "p11", "p12", "p13"];
            for (const id of purged) {
                await (await a.tasks.findOne(id).exec())!.remove();
            }
            await a.tasks.bulkInsert([{ id: "n1", title: "new 1" }, { id: "n2", title: "new 2" }]);
            await ra.awaitInSync();
            // And B writes offline: a new document and an edit of a kept one.
            await b.tasks.insert({ id: "fromB", title: "written on B offline" });
            await (await b.tasks.findOne("p20").exec())!.incrementalPatch({ title: "edited on B offline" });
            await waitFor("the tombstones purged on the server", 20_000, async () => {
                const docs = await pullAll(suite.server.url, kind, "purge");
                return purged.every((id) => !docs.has(id));
            });

            // B's app starts again: a new replication on the same database and identifier.
            const logB = new CallLog();
            const rb = replicate(b, "purge", { interceptors: [logB.interceptor] }, kind === "grpc-web" ? "browser" : "node");
            const notices: Array<{ reason?: string }> = [];
            const sub = rb.error$.subscribe((e) => notices.push(e as { reason?: string }));
            await waitFor("B reconciled", 20_000, async () => {
                const onB = await snapshot(b.tasks);
                return purged.every((id) => !onB.has(id)) && onB.get("p01")?.title === "edited p01" && onB.has("n2");
            });
            await waitFor("B's offline writes on A", 20_000, async () =>
                (await a.tasks.findOne("fromB").exec()) !== null &&
                (await a.tasks.findOne("p20").exec())?.title === "edited on B offline");
            await rb.awaitInSync();
            await ra.awaitInSync();

            // Exactly the server's live set on both sides.
            const onServer = await pullAll(suite.server.url, kind, "purge");
            const live = [...onServer.values()].filter((d) => !d.deleted).map((d) => d.id).sort();
            const onB = await snapshot(b.tasks);
            assert.deepEqual([...onB.keys()].sort(), live);
            assert.equal(live.length, 40 - 4 + 2 + 1);
            assert.deepEqual(onB, await snapshot(a.tasks));
            assert.equal(onB.get("p02")?.title, "edited p02");
            // The purged documents were removed on B, not pushed back: the server has no trace of them.
            for (const id of purged) {
                assert.equal(onServer.has(id), false, `${id} came back to the server`);
            }
            assert.deepEqual(
                logB.pushedIds.filter((id) => purged.includes(id)),
                [],
                "B pushed a purged document",
            );
            // It reconciled (no restart from scratch), and transferred far fewer documents than a
            // full download of the 39 live ones: 3 changed + 2 new, plus B's own writes echoed
            // and whatever the live stream delivers.
            assert.ok(logB.reconcileCalls >= 3, `${logB.reconcileCalls} reconcile calls`);
            assert.ok(logB.fetchedDocs >= 5, `${logB.fetchedDocs} fetched`);
            const transferred = logB.fetchedDocs + logB.pulledDocs + logB.streamedDocs;
            assert.ok(transferred <= 15, `B received ${transferred} documents, a full download is ${live.length}`);
            assert.ok(notices.some((n) => n.reason === "CHECKPOINT_EXPIRED"), "the expiry was reported on error$");
            sub.unsubscribe();

            // Live again: a later write on A reaches B through the stream.
            await a.tasks.insert({ id: "later", title: "after the reconcile" });
            await waitFor("a later write on B", 10_000, async () => (await b.tasks.findOne("later").exec()) !== null);
            console.log(`# reconcile: ${transferred} documents received of ${live.length} live, ${logB.reconcileCalls} calls`);
        });

        serverTest("a stream whose position a purge expired gets Resync: B reconciles and streams on from the new checkpoint", async () => {
            const { a, b, ra, rb, logB } = await twoReplicas("resync");
            await a.tasks.bulkInsert(Array.from({ length: 20 }, (_, i) => ({ id: `s${i}`, title: `doc ${i}` })));
            await waitFor("20 documents on B", 10_000, async () => (await b.tasks.count().exec()) === 20);
            await rb.awaitInSync();
            // B's stream goes down (and stays down) before A's deletes, so B's stream position
            // and RxDB's checkpoint both end up behind the purge horizon.
            logB.failSubscribes = true;
            await (await a.tasks.findOne("s1").exec())!.incrementalPatch({ title: "edited s1" });
            for (const id of ["s5", "s6"]) {
                await (await a.tasks.findOne(id).exec())!.remove();
            }
            await ra.awaitInSync();
            await waitFor("the tombstones purged on the server", 20_000, async () => {
                const docs = await pullAll(suite.server.url, kind, "resync");
                return !docs.has("s5") && !docs.has("s6");
            });
            const fetchedBefore = logB.fetchedDocs;
            logB.failSubscribes = false;
            await waitFor("B got Resync", 20_000, () => logB.resyncs > 0);
            await waitFor("B reconciled", 20_000, async () => {
                const onB = await snapshot(b.tasks);
                return !onB.has("s5") && !onB.has("s6") && onB.get("s1")?.title === "edited s1";
            });
            await rb.awaitInSync();
            const live = [...(await pullAll(suite.server.url, kind, "resync")).values()].filter((d) => !d.deleted).map((d) => d.id).sort();
            assert.deepEqual([...(await snapshot(b.tasks)).keys()].sort(), live);
            assert.ok(logB.reconcileCalls > 0, "B did not reconcile");
            assert.ok(logB.fetchedDocs - fetchedBefore <= 3, `B fetched ${logB.fetchedDocs - fetchedBefore} documents`);
            // The stream reopened from the reconcile's checkpoint and delivers live again, once.
            const resyncs = logB.resyncs;
            await a.tasks.insert({ id: "after", title: "after the resync" });
            await waitFor("a later write on B", 10_000, async () => (await b.tasks.findOne("after").exec()) !== null);
            assert.ok(logB.changeBatches.some((c) => c.ids.includes("after")), "the later write did not come through the stream");
            assert.equal(logB.resyncs, resyncs, "the stream was refused again after the reconcile");
        });

        serverTest("the bearer token from getToken is sent on every call and re-read on reconnect", async () => {
            const seen: string[] = [];
            let tokenNumber = 0;
            const a = await createTestDatabase("tok");
            const recorder: Parameters<typeof replicateSyncline<Task>>[0]["interceptors"] = [
                (next) => async (req) => {
                    seen.push(`${req.method.name} ${req.header.get("authorization")}`);
                    return next(req);
                },
            ];
            const ra = replicate(a, "token", {
                getToken: async () => `t${++tokenNumber}`,
                interceptors: recorder,
            });
            await ra.awaitInitialReplication();
            await a.tasks.insert({ id: "tok1", title: "with a token" });
            await ra.awaitInSync();
            await waitFor("a Subscribe call", 5_000, () => seen.some((s) => s.startsWith("Subscribe")));
            assert.ok(seen.length >= 3);
            for (const s of seen) {
                assert.match(s, /^(Pull|Push|Subscribe) Bearer t\d+$/);
            }
            assert.equal(new Set(seen.map((s) => s.split(" ")[2])).size, seen.length, "a fresh token per call");
        });
    });
}
