// A server without gRPC-Web (grpc_web = false) speaks only HTTP/2: the gRPC-Web transports
// (Node's, and the browser entry point's fetch) must say so, and awaitInitialReplication must
// reject rather than retry a configuration error forever.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Code } from "@connectrpc/connect";

import { replicateSyncline as replicateSynclineBrowser } from "../src/browser.js";
import { replicateSyncline, SynclineError } from "../src/index.js";
import { createTestDatabase, within, type Task } from "./support/helpers.js";
import { SynclineServer } from "./support/server.js";

describe("syncline-rxdb against a server without gRPC-Web", { timeout: 120_000 }, () => {
    let server: SynclineServer | undefined;
    let startError: unknown;
    before(async () => {
        try {
            server = await SynclineServer.start({ collections: [], label: "grpc_web_off", grpcWeb: false });
        } catch (err) {
            startError = err;
        }
    });
    after(async () => {
        await server?.stop();
    });

    for (const entry of ["node", "browser"] as const) {
        test(`the ${entry} gRPC-Web transport names grpc_web as the cause`, { timeout: 60_000 }, async () => {
            if (startError !== undefined || server === undefined) {
                throw startError;
            }
            const side = await createTestDatabase(`nogrpcweb${entry}`);
            const start = entry === "browser" ? replicateSynclineBrowser : replicateSyncline;
            const state = start<Task>({
                collection: side.tasks,
                url: server.url,
                collectionName: "tasks",
                transport: "grpc-web",
                retryTime: 300,
            });
            const errors: string[] = [];
            state.error$.subscribe((err) => errors.push(JSON.stringify(err)));
            try {
                const outcome = await within("awaitInitialReplication", 20_000, state.awaitInitialReplication()).then(
                    () => "resolved",
                    (err: unknown) => err,
                );
                assert.ok(outcome instanceof SynclineError, `expected a SynclineError, got ${String(outcome)}`);
                assert.equal(outcome.code, Code.Unimplemented, outcome.message);
                assert.match(outcome.message, /does not speak gRPC-Web.*grpc_web = true/);
                assert.ok(errors.some((e) => e.includes("grpc_web = true")), `error$ did not name the cause: ${errors.join("\n")}`);
            } finally {
                await state.cancel();
                await side.db.close();
            }
        });
    }

    test("native gRPC still works against it", { timeout: 60_000 }, async () => {
        if (startError !== undefined || server === undefined) {
            throw startError;
        }
        const side = await createTestDatabase("nogrpcwebnative");
        const state = replicateSyncline<Task>({ collection: side.tasks, url: server.url, collectionName: "tasks", transport: "grpc" });
        try {
            await within("awaitInitialReplication over gRPC", 20_000, state.awaitInitialReplication());
        } finally {
            await state.cancel();
            await side.db.close();
        }
    });
});
