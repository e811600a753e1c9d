// Smoke run of the Node benchmark (bench/, started in full by `cargo bench --bench
// replication`): tiny sizes against a real server, so that it cannot rot. Asserts that every
// step ran every round on both sides, with sane figures and no correctness violation; never
// asserts on times.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { COLLECTIONS, type BenchConfig } from "../bench/config.js";
import { runBench } from "../bench/run.js";
import { SynclineServer } from "./support/server.js";

let server: SynclineServer;

before(async () => {
    server = await SynclineServer.start({ collections: Object.values(COLLECTIONS), label: "bench_smoke" });
});

after(async () => {
    await server?.stop();
});

const STEPS = ["push_sequential", "push_concurrent", "pull", "sync", "sync_gzip", "cas", "live"];

for (const pullAhead of [true, false]) {
    test(`every step of the Node benchmark completes (pull ahead and decoded by hand: ${pullAhead})`, async () => {
        const config: BenchConfig = {
            url: server.url,
            databaseUrl: server.databaseUrl,
            rounds: 2,
            pushDocs: 120,
            pushBatch: 20,
            pushInFlight: 3,
            pullDocs: 150,
            syncDocs: 250,
            pullPage: 40,
            casSamples: 5,
            liveSamples: 5,
            pullAhead,
            pullDecoder: pullAhead ? "hand" : "generated",
            responseCompression: pullAhead ? "none" : "gzip",
            // The pulls again, the other way (on the collections the first run loaded).
            only: pullAhead ? undefined : ["pull", "sync"],
        };
        const result = await runBench(config);
        assert.deepEqual(result.violations, []);
        const expected = pullAhead ? STEPS : ["pull", "sync"];
        assert.deepEqual(
            result.steps.map((s) => s.name),
            expected,
        );
        for (const step of result.steps) {
            assert.equal(step.syncline.length, 2, step.name);
            assert.equal(step.baseline.length, 2, step.name);
            for (const round of [...step.syncline, ...step.baseline]) {
                assert.ok(Number.isFinite(round.rate) && round.rate > 0, `${step.name}: rate ${round.rate}`);
                assert.ok(round.clientCpuMicrosPerDoc >= 0, step.name);
                if (step.name === "cas" || step.name === "live") {
                    assert.equal(round.latency?.count, 5, step.name);
                    assert.ok(round.latency.p50 > 0 && round.latency.p50 <= round.latency.p99, step.name);
                }
            }
        }
    });
}
