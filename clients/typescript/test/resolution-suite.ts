// Server-side conflict resolution end to end: RxDB databases (memory storage) and a Python
// service replicating through a real Syncline server whose collections resolve conflicts
// (`conflict = "field-merge"`, `conflict = "crdt"`), and idempotent pushes after a lost
// acknowledgement. Run once per transport (resolution-grpc.test.ts, resolution-grpc-web.test.ts).
//
// The mixed test spawns the Python client (clients/python) from the virtual environment that
// scripts/test-python.sh and scripts/test-typescript.sh install it into, $TEST_PYTHON
// (default <repo>/target/python-venv/bin/python): one language driving the other keeps both
// suites independent of each other's tooling, and the TypeScript suite already owns a server.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { describe } from "node:test";
import { fileURLToPath } from "node:url";

import { replicateSyncline as replicateSynclineBrowser } from "../src/browser.js";
import {
    createSynclineClient,
    replicateSyncline,
    type SynclineReplicationState,
    type SynclineTransportKind,
} from "../src/index.js";
import { CallLog, createTestDatabase, pullAll, sleep, waitFor, within, type Task, type TestDatabase } from "./support/helpers.js";
import { serverSuite } from "./support/server.js";

const HERE = dirname(fileURLToPath(import.meta.url)); // build/test
const TS_ROOT = resolve(HERE, "../.."); // clients/typescript
const REPO = resolve(TS_ROOT, "../..");

interface CounterResult {
    pushed: number;
    resolved: number;
    conflicts: number;
    final: number | null;
}

/**
 * Runs test/support/counter_client.py: `ready` settles when it starts incrementing, `result`
 * with its JSON line when it is done.
 */
function runPythonCounter(args: string[]): { ready: Promise<void>; result: Promise<CounterResult> } {
    const python = process.env.TEST_PYTHON ?? resolve(REPO, "target/python-venv/bin/python");
    if (!existsSync(python)) {
        throw new Error(
            `no Python with the Syncline client at ${python}: run scripts/test-typescript.sh (it installs ` +
                "clients/python into target/python-venv) or set TEST_PYTHON",
        );
    }
    const script = resolve(TS_ROOT, "test/support/counter_client.py");
    let onReady: () => void = () => undefined;
    const ready = new Promise<void>((done) => (onReady = done));
    const result = new Promise<CounterResult>((done, fail) => {
        const child = spawn(python, [script, ...args], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        child.stdout.on("data", (chunk: Buffer) => {
            out += chunk.toString();
            if (out.split("\n").includes("ready")) {
                onReady();
            }
        });
        child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()));
        const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
        child.on("error", fail);
        child.on("exit", (code) => {
            clearTimeout(timer);
            onReady();
            if (code !== 0) {
                fail(new Error(`counter_client.py exited with ${code}:\n${out}${err}`));
                return;
            }
            try {
                done(JSON.parse(out.trim().split("\n").pop() ?? "") as CounterResult);
            } catch {
                fail(new Error(`counter_client.py printed no result:\n${out}${err}`));
            }
        });
    });
    return { ready, result };
}

export function defineResolutionSuite(kind: SynclineTransportKind): void {
    describe(`server-side conflict resolution over ${kind}`, { timeout: 240_000 }, () => {
        const suite = serverSuite({
            collections: ["merge", "counter", "replay", "overwritten"],
            label: `resolution_${kind}`,
            collectionSettings: {
                merge: 'conflict = "field-merge"',
                counter: 'conflict = "crdt"\ncrdt_fields = { n = "counter" }',
                replay: 'conflict = "crdt"\ncrdt_fields = { n = "counter" }',
                overwritten: 'conflict = "last-write-wins"\nkeep_overwritten = "1h"',
            },
        }, 120_000);
        const { cleanups, serverTest } = suite;

        function replicate(
            side: TestDatabase,
            collectionName: string,
            log: CallLog,
            entry: "node" | "browser" = "node",
        ): SynclineReplicationState<Task> {
            const start = entry === "browser" ? replicateSynclineBrowser : replicateSyncline;
            const state = start<Task>({
                collection: side.tasks,
                url: suite.server.url,
                collectionName,
                transport: kind,
                retryTime: 200,
                reconnectInitialDelayMs: 100,
                reconnectMaxDelayMs: 1_000,
                interceptors: [log.interceptor],
            });
            cleanups.push(async () => {
                await state.cancel();
                await side.db.close();
            });
            return state;
        }

        serverTest("field-merge: two RxDB databases edit different fields offline and both end with both edits", async () => {
            const a = await createTestDatabase("ma");
            const b = await createTestDatabase("mb");
            const logA = new CallLog();
            const logB = new CallLog();
            const ra = replicate(a, "merge", logA);
            const rb = replicate(b, "merge", logB, kind === "grpc-web" ? "browser" : "node");
            await Promise.all([ra.awaitInitialReplication(), rb.awaitInitialReplication()]);
            await a.tasks.insert({ id: "m1", title: "original", done: false, n: 1 });
            await waitFor("m1 on B", 10_000, async () => (await b.tasks.findOne("m1").exec()) !== null);

            // Both offline; each edits its own field.
            await ra.pause();
            await rb.pause();
            await (await a.tasks.findOne("m1").exec())!.incrementalPatch({ title: "title from A" });
            await (await b.tasks.findOne("m1").exec())!.incrementalPatch({ done: true });
            await sleep(200);
            assert.equal((await pullAll(suite.server.url, kind, "merge")).get("m1")?.body.title, "original");

            // A syncs first; B's push then conflicts and the server merges it.
            // The merged state reaches B's conflict handler as the master state (RxDB's
            // default handler adopts it), not only later through the stream.
            const handed: Array<Record<string, unknown>> = [];
            const sub = rb.conflict$.subscribe((c) => handed.push(c.input.realMasterState as unknown as Record<string, unknown>));
            await ra.start();
            await ra.awaitInSync();
            await rb.start();
            const both = (t: Task | undefined): boolean => t?.title === "title from A" && t?.done === true && t?.n === 1;
            await waitFor("B holds both edits", 15_000, async () => both((await b.tasks.findOne("m1").exec())?.toJSON() as Task));
            await waitFor("A holds both edits", 15_000, async () => both((await a.tasks.findOne("m1").exec())?.toJSON() as Task));
            await rb.awaitInSync();
            await ra.awaitInSync();
            const onServer = (await pullAll(suite.server.url, kind, "merge")).get("m1");
            assert.deepEqual(onServer?.body, { id: "m1", title: "title from A", done: true, n: 1 });
            sub.unsubscribe();
            assert.ok(logB.resolvedRows >= 1, "the server resolved B's row (field-merge), not B's conflict handler");
            assert.ok(
                handed.some((m) => m.title === "title from A" && m.done === true && m._deleted === false),
                `B's conflict handler was not handed the merged state: ${JSON.stringify(handed)}`,
            );
            assert.equal(logA.resolvedRows, 0);
        });

        serverTest("crdt counter: a Python service and an RxDB app increment one counter concurrently and every replica ends at the exact total", async () => {
            const a = await createTestDatabase("ca");
            const logA = new CallLog();
            const ra = replicate(a, "counter", logA);
            await ra.awaitInitialReplication();
            await a.tasks.insert({ id: "c1", title: "counter", n: 0 });
            await ra.awaitInSync();
            // A slow network: the app keeps incrementing while its pushes are in flight, so
            // RxDB sometimes cannot record the merged state and pushes against the older one.
            logA.pushDelayMs = 30;

            const increments = 50;
            const total = 2 * increments;
            const python = runPythonCounter([`127.0.0.1:${suite.server.port}`, "counter", "c1", "n", String(increments), String(total)]);
            python.result.catch(() => undefined);
            await within("the Python service starting", 30_000, python.ready);
            for (let i = 0; i < increments; i += 1) {
                await (await a.tasks.findOne("c1").exec())!.incrementalModify((doc) => ({ ...doc, n: (doc.n ?? 0) + 1 }));
                await sleep(Math.random() * 10);
            }
            const result = await within("the Python service", 100_000, python.result);
            logA.pushDelayMs = 0;
            // Converged: the app holds what the server holds (a double-counted increment
            // shows as a total above 100 on both).
            await waitFor("the app and the server to agree", 30_000, async () => {
                const server_ = (await pullAll(suite.server.url, kind, "counter")).get("c1")?.body.n;
                return (await a.tasks.findOne("c1").exec())?.n === server_ && (server_ as number) >= total;
            });
            await ra.awaitInSync();

            assert.equal(result.pushed, increments);
            assert.equal(result.conflicts, 0, "under crdt every conflict is resolved by the server");
            assert.equal(result.final, total, "the Python service reads the exact total");
            assert.equal((await pullAll(suite.server.url, kind, "counter")).get("c1")?.body.n, total, "the server holds the exact total");
            assert.equal((await a.tasks.findOne("c1").exec())?.n, total, "the app holds the exact total");
            // They really raced: both sides had pushes resolved.
            assert.ok(result.resolved > 0, "no Python push was resolved: the writers did not interleave");
            assert.ok(logA.resolvedRows > 0, "no RxDB push was resolved: the writers did not interleave");
            console.log(
                `# counter: python ${result.resolved}/${increments} pushes resolved, ` +
                    `rxdb ${logA.pushes} pushes, ${logA.resolvedRows} rows resolved`,
            );
        });

        serverTest("a push whose acknowledgement was lost is retried by RxDB with the same key and applied once", async () => {
            const a = await createTestDatabase("ra");
            const logA = new CallLog();
            const ra = replicate(a, "replay", logA);
            await ra.awaitInitialReplication();
            await a.tasks.insert({ id: "r1", title: "counter", n: 0 });
            await ra.awaitInSync();
            const errors: unknown[] = [];
            const sub = ra.error$.subscribe((e) => errors.push(e));

            const pushesBefore = logA.pushes;
            logA.loseNextPushAcks = 1;
            await (await a.tasks.findOne("r1").exec())!.incrementalModify((doc) => ({ ...doc, n: 1 }));
            await waitFor("the retried push", 10_000, () => logA.replayedPushes === 1);
            await ra.awaitInSync();
            sub.unsubscribe();

            const keys = logA.pushKeys.slice(pushesBefore);
            assert.ok(keys.length >= 2, `expected a push and its retry, got ${keys.length}`);
            assert.match(keys[0], /^[0-9a-f]{32}$/);
            assert.equal(keys[1], keys[0], "RxDB's retry of the same rows must reuse the key");
            assert.ok(errors.length >= 1, "the lost acknowledgement was reported on error$");
            // Applied once: a second application of the +1 would have been merged to n = 2.
            assert.equal((await pullAll(suite.server.url, kind, "replay")).get("r1")?.body.n, 1);
            assert.equal((await a.tasks.findOne("r1").exec())?.n, 1);
            // The next edit is a new logical push: a new key.
            await (await a.tasks.findOne("r1").exec())!.incrementalModify((doc) => ({ ...doc, n: 2 }));
            await ra.awaitInSync();
            const next = logA.pushKeys.slice(pushesBefore + 2);
            assert.ok(next.length >= 1 && next.every((k) => k !== keys[0]), "a new push needs a new key");
            assert.equal((await pullAll(suite.server.url, kind, "replay")).get("r1")?.body.n, 2);
        });

        serverTest("listOverwritten returns the version a last-write-wins resolution replaced", async () => {
            const raw = createSynclineClient({ url: suite.server.url, transport: kind });
            const push = (title: string, assumed?: string) =>
                raw.service.push({
                    collection: "overwritten",
                    rows: [
                        {
                            newDocumentState: { id: "o1", json: new TextEncoder().encode(JSON.stringify({ title })) },
                            assumedMasterState:
                                assumed === undefined
                                    ? undefined
                                    : { id: "o1", json: new TextEncoder().encode(JSON.stringify({ title: assumed })) },
                        },
                    ],
                });
            await push("v1");
            await push("v2", "v1");
            assert.deepEqual(await raw.listOverwritten("overwritten", "o1"), []);
            const response = await push("v3", "v1");
            assert.equal(response.resolved.length, 1);
            assert.equal(response.resolved[0].strategy, "last-write-wins");

            const versions = await raw.listOverwritten("overwritten", "o1", 10);
            const lost = versions.filter((v) => v.source === "server");
            assert.deepEqual(
                lost.map((v) => v.body),
                [{ title: "v2" }],
            );
            assert.equal(lost[0].id, "o1");
            assert.equal(lost[0].strategy, "last-write-wins");
            assert.equal(lost[0].resolvedRevision, response.resolved[0].document?.revision);
            assert.ok(lost[0].updatedAt instanceof Date);
            await assert.rejects(raw.listOverwritten("tasks", "o1"), (err: Error & { reason?: string; codeName?: string }) => {
                assert.equal(err.codeName, "FAILED_PRECONDITION");
                assert.equal(err.reason, "OVERWRITTEN_NOT_KEPT");
                return true;
            });
        });
    });
}
