// How the plugin behaves at the edges a first user meets (issue 12): authentication failures,
// token expiry on a stream, owners, compression. A real server with JWT authentication (HS256,
// no leeway); run once per transport (client-grpc.test.ts, client-grpc-web.test.ts).

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe } from "node:test";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { RxJsonSchema } from "rxdb";

import { replicateSyncline as replicateSynclineBrowser } from "../src/browser.js";
import { ReplicationService } from "../src/gen/syncline/v1/replication_pb.js";
import {
    replicateSyncline,
    SynclineError,
    type SynclineReplicationOptions,
    type SynclineReplicationState,
    type SynclineTransportKind,
} from "../src/index.js";
import {
    CallLog,
    createTestDatabase,
    hs256Token,
    ownedTaskSchema,
    snapshot,
    waitFor,
    within,
    type Task,
    type TestDatabase,
} from "./support/helpers.js";
import { serverSuite } from "./support/server.js";

const SECRET = "syncline-rxdb client suite secret, 32+ bytes long";
const SERVICE = "syncline:service";

export function defineClientSuite(kind: SynclineTransportKind): void {
    describe(`syncline-rxdb client behaviour over ${kind}`, { timeout: 240_000 }, () => {
        // The server's schema for "wedge" is stricter than the clients' (title at most 20).
        const schemaDir = mkdtempSync(join(tmpdir(), "syncline-ts-schema-"));
        const wedgeSchema = join(schemaDir, "wedge.json");
        writeFileSync(
            wedgeSchema,
            JSON.stringify({
                type: "object",
                properties: { id: { type: "string" }, title: { type: "string", maxLength: 20 } },
                required: ["id", "title"],
            }),
        );

        const suite = serverSuite({
            collections: ["authfail", "scoped", "expiry", "owners", "gzip", "wedge", "reuse"],
            label: `client_${kind}`,
            hs256Secret: SECRET,
            collectionSettings: {
                scoped: 'read_scopes = ["scoped:read"]',
                wedge: `schema = ${JSON.stringify(wedgeSchema)}`,
            },
        }, 90_000, () => {
            rmSync(schemaDir, { recursive: true, force: true });
        });
        const { cleanups, serverTest } = suite;

        async function database(name: string, schema?: RxJsonSchema<Task>): Promise<TestDatabase> {
            const side = await createTestDatabase(name, undefined, schema);
            cleanups.push(() => side.db.close());
            return side;
        }

        /** Starts a replication (browser entry point when asked) and registers its cleanup. */
        function replicate(
            side: TestDatabase,
            collectionName: string,
            extra: Partial<SynclineReplicationOptions<Task>>,
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
            // Cancelled before its database closes (cleanups run in reverse order).
            cleanups.push(() => state.cancel());
            return state;
        }

        serverTest("awaitInitialReplication rejects on a missing, expired or badly signed token and on a missing scope", async () => {
            const cases: Array<{ what: string; collection: string; token?: string; code: Code }> = [
                { what: "no token", collection: "authfail", code: Code.Unauthenticated },
                { what: "expired token", collection: "authfail", token: hs256Token(SECRET, "alice", -60), code: Code.Unauthenticated },
                {
                    what: "badly signed token",
                    collection: "authfail",
                    token: hs256Token("another secret, also 32 bytes long!!", "alice", 3600),
                    code: Code.Unauthenticated,
                },
                { what: "missing read scope", collection: "scoped", token: hs256Token(SECRET, "alice", 3600), code: Code.PermissionDenied },
            ];
            for (const [i, c] of cases.entries()) {
                const side = await database(`authfail${i}`);
                const errors: unknown[] = [];
                const state = replicate(side, c.collection, { getToken: () => c.token });
                state.error$.subscribe((err) => errors.push(err));
                const outcome = await within(`awaitInitialReplication with ${c.what}`, 20_000, state.awaitInitialReplication()).then(
                    () => "resolved",
                    (err: unknown) => err,
                );
                assert.ok(outcome instanceof SynclineError, `${c.what}: expected a SynclineError, got ${String(outcome)}`);
                assert.equal(outcome.code, c.code, `${c.what}: ${outcome.message}`);
                assert.equal(outcome.permanent, true);
                // error$ still reports it (RxDB's RC_PULL, with the typed error's fields).
                assert.ok(errors.length >= 1, `${c.what}: nothing on error$`);
            }
        });

        serverTest("a stream outliving its token reconnects with a fresh one, quietly, and keeps delivering", async () => {
            const writer = await database("expw");
            const reader = await database("expr");
            const readerLog = new CallLog();
            // Tokens live 2 to 3 s (exp has whole-second precision; the server allows no leeway).
            const shortToken = (): string => hs256Token(SECRET, "expiry-user", 3);
            const rw = replicate(writer, "expiry", { getToken: shortToken });
            const rr = replicate(
                reader,
                "expiry",
                { getToken: shortToken, interceptors: [readerLog.interceptor] },
                kind === "grpc-web" ? "browser" : "node",
            );
            const errors: unknown[] = [];
            rw.error$.subscribe((err) => errors.push(err));
            rr.error$.subscribe((err) => errors.push(err));
            await Promise.all([rw.awaitInitialReplication(), rr.awaitInitialReplication()]);
            await waitFor("the reader's stream open", 10_000, () => readerLog.subscribesOpened >= 1);
            // Each expiry ends the stream; the plugin reopens it. Three opens = two expiries.
            await waitFor("two token expiries on the reader's stream", 30_000, () => readerLog.subscribesOpened >= 3);
            await writer.tasks.insert({ id: "after-expiry", title: "written after two expiries" });
            await waitFor("the write on the reader", 15_000, async () => (await reader.tasks.findOne("after-expiry").exec()) !== null);
            assert.deepEqual(
                errors.map((e) => String((e as Error).message ?? e).slice(0, 300)),
                [],
                "a normal token expiry was reported on error$",
            );
        });

        serverTest("an expired token on a call is refreshed once, quietly", async () => {
            const side = await database("stale");
            let calls = 0;
            // The token source hands out one stale token first (a cached token past its exp).
            const getToken = (): string => {
                calls += 1;
                return hs256Token(SECRET, "stale-user", calls === 1 ? -5 : 3600);
            };
            const errors: unknown[] = [];
            const state = replicate(side, "expiry", { getToken });
            state.error$.subscribe((err) => errors.push(err));
            await within("awaitInitialReplication", 20_000, state.awaitInitialReplication());
            await side.tasks.insert({ id: "after-stale", title: "pushed" });
            await state.awaitInSync();
            assert.ok(calls >= 2, "the stale token was not replaced");
            assert.deepEqual(errors, []);
            assert.equal(state.isStopped(), false);
        });

        serverTest("ownerField: a service principal names the owner of new documents; owners read them with the owner field", async () => {
            const serviceSide = await database("svc", ownedTaskSchema);
            const aliceSide = await database("alice", ownedTaskSchema);
            const bobSide = await database("bob", ownedTaskSchema);
            const options = (sub: string, scopes: string[] = []): Partial<SynclineReplicationOptions<Task>> => ({
                ownerField: "owner",
                getToken: () => hs256Token(SECRET, sub, 3600, scopes),
            });
            const rs = replicate(serviceSide, "owners", options("backend", [SERVICE]));
            const ra = replicate(aliceSide, "owners", options("alice"), kind === "grpc-web" ? "browser" : "node");
            const rb = replicate(bobSide, "owners", options("bob"));
            const errors: unknown[] = [];
            for (const r of [rs, ra, rb]) {
                r.error$.subscribe((err) => errors.push(err));
            }
            await Promise.all([rs.awaitInitialReplication(), ra.awaitInitialReplication(), rb.awaitInitialReplication()]);

            await serviceSide.tasks.insert({ id: "for-alice", title: "assigned by the back end", owner: "alice" } as Task);
            await aliceSide.tasks.insert({ id: "alices-own", title: "written by alice" });
            await waitFor("alice's documents on her replica, owner filled", 15_000, async () => {
                const docs = await snapshot(aliceSide.tasks);
                return (
                    (docs.get("for-alice") as { owner?: string } | undefined)?.owner === "alice" &&
                    (docs.get("alices-own") as { owner?: string } | undefined)?.owner === "alice"
                );
            });
            await waitFor("both documents at the service, owner alice", 15_000, async () => {
                const docs = await snapshot(serviceSide.tasks);
                return ["for-alice", "alices-own"].every((id) => (docs.get(id) as { owner?: string } | undefined)?.owner === "alice");
            });
            // Bob sees neither, and the owner never went into the server's body.
            await rb.awaitInSync();
            assert.equal((await snapshot(bobSide.tasks)).size, 0);
            const raw = createClient(
                ReplicationService,
                kind === "grpc" ? createGrpcTransport({ baseUrl: suite.server.url }) : createGrpcWebTransport({ baseUrl: suite.server.url, httpVersion: "1.1" }),
            );
            const page = await raw.pull(
                { collection: "owners", limit: 100 },
                { headers: { authorization: `Bearer ${hs256Token(SECRET, "backend", 60, [SERVICE])}` } },
            );
            assert.deepEqual(page.documents.map((d) => [d.id, d.owner]).sort(), [
                ["alices-own", "alice"],
                ["for-alice", "alice"],
            ]);
            for (const d of page.documents) {
                assert.equal("owner" in JSON.parse(new TextDecoder().decode(d.json)), false, `${d.id}: owner stored in the body`);
            }
            assert.deepEqual(errors, []);
        });

        serverTest("an ownerField the schema does not declare is refused at once", async () => {
            const side = await database("noowner");
            assert.throws(() => replicate(side, "owners", { ownerField: "owner" }), /ownerField 'owner' must be a string property/);
        });

        serverTest("compression: gzip responses are accepted; gzip requests work when the server takes them, and fail clearly when not", async () => {
            const token = (): string => hs256Token(SECRET, "gzip-user", 3600);
            // Whether the server takes gzip: a call that announces it (grpc-encoding: gzip; tonic
            // checks the header even when the message is too small to be compressed) succeeds,
            // or is refused with UNIMPLEMENTED.
            const probe = createClient(
                ReplicationService,
                kind === "grpc"
                    ? createGrpcTransport({ baseUrl: suite.server.url })
                    : createGrpcWebTransport({ baseUrl: suite.server.url, httpVersion: "1.1" }),
            );
            const gzipProbe = createClient(
                ReplicationService,
                kind === "grpc"
                    ? createGrpcTransport({ baseUrl: suite.server.url, sendCompression: compressionGzip, acceptCompression: [compressionGzip] })
                    : createGrpcWebTransport({ baseUrl: suite.server.url, httpVersion: "1.1", sendCompression: compressionGzip, acceptCompression: [compressionGzip] }),
            );
            const serverTakesGzip = await gzipProbe.pull({ collection: "gzip" }, { headers: { authorization: `Bearer ${token()}` } }).then(
                () => true,
                (err: unknown) => {
                    if (err instanceof ConnectError && err.code === Code.Unimplemented) return false;
                    throw err;
                },
            );

            const a = await database("gza");
            const b = await database("gzb");
            const ra = replicate(a, "gzip", { getToken: token, compression: "gzip" });
            const rb = replicate(b, "gzip", { getToken: token });
            // RxDB wraps handler errors (RC_PUSH); the typed error's fields survive as plain JSON.
            const codes: unknown[] = [];
            ra.error$.subscribe((err) => {
                const inner = (err as { parameters?: { errors?: Array<{ code?: unknown }> } }).parameters?.errors ?? [];
                codes.push(...inner.map((e) => e.code));
            });
            // Big enough to be compressed (compressMinBytes defaults to 1 KiB).
            const title = "compressible ".repeat(200);
            if (serverTakesGzip) {
                await Promise.all([ra.awaitInitialReplication(), rb.awaitInitialReplication()]);
                await a.tasks.insert({ id: "gz1", title });
                await waitFor("the compressed push on B", 15_000, async () => (await b.tasks.findOne("gz1").exec())?.title === title);
                assert.deepEqual(codes, []);
            } else {
                // Without server support, every call of a replica that sends gzip is refused
                // with UNIMPLEMENTED (tonic checks the grpc-encoding header, even on messages
                // too small to compress): awaitInitialReplication says so at once, and the
                // default (uncompressed) replica is unaffected.
                await rb.awaitInitialReplication();
                const outcome = await within("awaitInitialReplication with gzip", 20_000, ra.awaitInitialReplication()).then(
                    () => "resolved",
                    (err: unknown) => err,
                );
                assert.ok(outcome instanceof SynclineError, `expected a SynclineError, got ${String(outcome)}`);
                assert.equal(outcome.code, Code.Unimplemented, outcome.message);
                assert.ok(codes.includes(Code.Unimplemented), "UNIMPLEMENTED not reported on error$");
                await b.tasks.insert({ id: "gz2", title });
                await waitFor("the uncompressed replica's push on the server", 15_000, async () => {
                    const page = await probe.pull({ collection: "gzip" }, { headers: { authorization: `Bearer ${token()}` } });
                    return page.documents.some((d) => d.id === "gz2");
                });
            }
        });

        serverTest("refused rows (another owner's id, a document the server's schema refuses) are reported once, reverted or dropped, and later writes still arrive", async () => {
            const bobSide = await database("wbob");
            const aliceSide = await database("walice");
            const watcher = await database("wsvc");
            const as = (sub: string, scopes: string[] = []) => () => hs256Token(SECRET, sub, 3600, scopes);
            const rbob = replicate(bobSide, "wedge", { getToken: as("bob") });
            await rbob.awaitInitialReplication();
            await bobSide.tasks.insert({ id: "bobs", title: "bob's" });
            await rbob.awaitInSync();

            const aliceLog = new CallLog();
            const ralice = replicate(
                aliceSide,
                "wedge",
                { getToken: as("alice"), interceptors: [aliceLog.interceptor] },
                kind === "grpc-web" ? "browser" : "node",
            );
            const refusals: SynclineError[] = [];
            const otherErrors: unknown[] = [];
            ralice.error$.subscribe((e) => {
                const err: unknown = e;
                if (err instanceof SynclineError && err.documentId !== undefined) {
                    refusals.push(err);
                } else {
                    otherErrors.push(err);
                }
            });
            await ralice.awaitInitialReplication();
            await aliceSide.tasks.insert({ id: "mine", title: "first" });
            await ralice.awaitInSync();

            // One batch: another owner's id, a body the server's schema refuses, a good row,
            // and an invalid update of a document alice owns.
            const pushesBefore = aliceLog.pushes;
            await ralice.pause();
            await aliceSide.tasks.bulkInsert([
                { id: "bobs", title: "alice's take" },
                { id: "long", title: "far longer than twenty characters" },
                { id: "ok1", title: "fine" },
            ]);
            await (await aliceSide.tasks.findOne("mine").exec())!.incrementalPatch({ title: "also much longer than twenty" });
            await ralice.start();
            await ralice.awaitInSync();

            const byId = new Map(refusals.map((e) => [e.documentId, e]));
            assert.equal(byId.get("bobs")?.reason, "NOT_OWNER");
            assert.equal(byId.get("long")?.reason, "INVALID_DOCUMENT");
            assert.equal(byId.get("mine")?.reason, "INVALID_DOCUMENT");
            assert.match(byId.get("long")?.fieldViolations[0]?.field ?? "", /^rows\[\d+\]\.new_document_state\.json$/);
            const local = await snapshot(aliceSide.tasks);
            assert.equal(local.has("bobs"), false, "another owner's id kept locally");
            assert.equal(local.has("long"), false, "the refused new document kept locally");
            assert.equal(local.get("mine")?.title, "first", "the refused update was not reverted to the server's state");
            assert.equal(local.get("ok1")?.title, "fine");

            // Replication goes on: a later write reaches another client.
            await aliceSide.tasks.insert({ id: "ok2", title: "later" });
            const rw = replicate(watcher, "wedge", { getToken: as("watcher", [SERVICE]) });
            await rw.awaitInitialReplication();
            await waitFor("alice's later write at the service", 15_000, async () => (await watcher.tasks.findOne("ok2").exec()) !== null);
            await ralice.awaitInSync();
            const server = await snapshot(watcher.tasks);
            assert.deepEqual(
                [...server.values()].map((d) => [d.id, d.title]).sort(),
                [
                    ["bobs", "bob's"],
                    ["mine", "first"],
                    ["ok1", "fine"],
                    ["ok2", "later"],
                ],
            );
            // Each refusal reported once, no refused row pushed again, nothing else failed.
            assert.deepEqual(refusals.map((e) => e.documentId).sort(), ["bobs", "long", "mine"]);
            assert.deepEqual(otherErrors, []);
            assert.ok(aliceLog.pushes - pushesBefore <= 3, `pushed ${aliceLog.pushes - pushesBefore} times`);
        });

        serverTest("a stored checkpoint the server refuses (another principal's) is reconciled: the other principal's document leaves the local copy, not the server", async () => {
            const carol = (): string => hs256Token(SECRET, "carol", 3600);
            // Carol's document is on the server first, so that her initial pull stores a
            // checkpoint past it.
            const writer = await database("reusew");
            const rw = replicate(writer, "reuse", { getToken: carol });
            await rw.awaitInitialReplication();
            await writer.tasks.insert({ id: "carols", title: "carol's" });
            await rw.awaitInSync();
            const side = await database("reuse");
            const identifier = `reuse-${kind}`;
            const first = replicate(side, "reuse", { getToken: carol, replicationIdentifier: identifier });
            await first.awaitInitialReplication();
            assert.ok((await side.tasks.findOne("carols").exec()) !== null);
            await first.cancel();

            // The same local database and identifier under another principal: the stored
            // checkpoint was issued to carol.
            const notices: SynclineError[] = [];
            const others: string[] = [];
            const second = replicate(side, "reuse", { getToken: () => hs256Token(SECRET, "dave", 3600), replicationIdentifier: identifier });
            second.error$.subscribe((e) => {
                const err: unknown = e;
                if (err instanceof SynclineError) {
                    notices.push(err);
                } else {
                    others.push(JSON.stringify(err).slice(0, 500));
                }
            });
            await within("awaitInitialReplication after the refused checkpoint", 20_000, second.awaitInitialReplication());
            await side.tasks.insert({ id: "daves", title: "dave's" });
            await second.awaitInSync();
            assert.deepEqual(
                notices.map((n) => n.reason),
                ["CHECKPOINT_INVALID"],
            );
            assert.deepEqual(others, []);
            assert.equal(second.isStopped(), false);
            // Carol's document is not dave's to read: the reconcile dropped it here as a pulled
            // deletion, so it was never pushed as one, and carol still has it.
            await waitFor("carol's document gone from dave's copy", 10_000, async () => (await side.tasks.findOne("carols").exec()) === null);
            await rw.awaitInSync();
            assert.ok((await writer.tasks.findOne("carols").exec()) !== null, "carol's document was deleted");
        });
    });
}
