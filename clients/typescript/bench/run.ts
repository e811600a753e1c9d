// The Node benchmark: every step against its node-postgres baseline, in alternation (the
// baseline first in even rounds, Syncline first in odd ones), `rounds` times.

import { BASE_SUFFIX, COLLECTIONS, type BenchConfig, type BenchResult, type RoundFigures, type StepResult } from "./config.js";
import { loadDocuments } from "./load.js";
import { connect, useUnaryTransport } from "./plugin-path.js";
import { pullBaseline, pullSyncline } from "./pull.js";
import { pushBaseline, pushSyncline } from "./push.js";
import { casBaseline, casSyncline, holder, liveBaseline, liveSyncline } from "./single.js";

/** Prefixes of the loaded documents' ids. */
const PREFIX = { pull: "p", sync: "s", cas: "c", live: "l" } as const;

function log(message: string): void {
    process.stderr.write(`bench(node): ${message}\n`);
}

/** Waits (at most 30 s) until the server answers a Pull: its tables exist from then on. */
async function serverReady(url: string): Promise<void> {
    const client = connect(url);
    const deadline = Date.now() + 30_000;
    for (;;) {
        try {
            await client.service.pull({ collection: COLLECTIONS.push, limit: 1 }, { timeoutMs: 5_000 });
            return;
        } catch (err) {
            if (Date.now() > deadline) {
                throw new Error(`bench: the server at ${url} did not answer a Pull within 30 s: ${String(err)}`);
            }
            await new Promise((resolve) => setTimeout(resolve, 100));
        }
    }
}

/** Runs one step: `rounds` A/B pairs, order alternating. */
async function step(
    config: BenchConfig,
    name: string,
    label: string,
    count: number,
    syncline: (round: number) => Promise<RoundFigures>,
    baseline: (round: number) => Promise<RoundFigures>,
): Promise<StepResult> {
    const result: StepResult = { name, label, count, syncline: [], baseline: [] };
    for (let round = 0; round < config.rounds; round += 1) {
        if (round % 2 === 0) {
            result.baseline.push(await baseline(round));
            result.syncline.push(await syncline(round));
        } else {
            result.syncline.push(await syncline(round));
            result.baseline.push(await baseline(round));
        }
        const [s, b] = [result.syncline[round], result.baseline[round]];
        log(`${name} round ${round + 1}: syncline ${s.rate.toFixed(0)}/s, baseline ${b.rate.toFixed(0)}/s`);
    }
    return result;
}

/** Every selected step; correctness failures are collected, not thrown. */
export async function runBench(config: BenchConfig): Promise<BenchResult> {
    const violations: string[] = [];
    const steps: StepResult[] = [];
    useUnaryTransport(config.unaryTransport ?? "lean");
    const runs = (name: string): boolean => config.only === undefined || config.only.includes(name);
    const db = config.databaseUrl;
    const singles = config.rounds * Math.max(config.casSamples, config.liveSamples);

    await serverReady(config.url);
    log("loading");
    if (runs("pull")) {
        await loadDocuments(db, COLLECTIONS.pull, PREFIX.pull, config.pullDocs);
    }
    if (runs("sync") || runs("sync_gzip")) {
        await loadDocuments(db, COLLECTIONS.sync, PREFIX.sync, config.syncDocs);
    }
    for (const [name, collection, prefix] of [
        ["cas", COLLECTIONS.cas, PREFIX.cas],
        ["live", COLLECTIONS.live, PREFIX.live],
    ] as const) {
        if (runs(name)) {
            await loadDocuments(db, collection, prefix, singles);
            await loadDocuments(db, collection + BASE_SUFFIX, prefix, singles);
        }
    }

    const pipelined = config.pullAhead ?? true;
    const decoder = config.pullDecoder ?? "hand";
    const compression = config.responseCompression ?? "none";
    const how = (gzip: boolean): string =>
        [gzip ? "gzip responses (the plugin's default)" : "", pipelined ? "" : "not pipelined", decoder === "hand" ? "" : "generated decoder"]
            .filter((s) => s)
            .join(", ");
    const docs = config.pushDocs;
    if (runs("push_sequential")) {
        steps.push(
            await step(
                config,
                "push_sequential",
                `push, ${config.pushBatch} per request, sequential`,
                docs,
                (r) => pushSyncline(config, `q${r}-`, 1, violations),
                (r) => pushBaseline(config, `q${r}-`, 1, violations),
            ),
        );
    }
    if (runs("push_concurrent")) {
        steps.push(
            await step(
                config,
                "push_concurrent",
                `push, ${config.pushBatch} per request, ${config.pushInFlight} in flight`,
                docs,
                (r) => pushSyncline(config, `f${r}-`, config.pushInFlight, violations),
                (r) => pushBaseline(config, `f${r}-`, config.pushInFlight, violations),
            ),
        );
    }
    for (const [name, collection, n, label, gzip] of [
        ["pull", COLLECTIONS.pull, config.pullDocs, "pull all", compression === "gzip"],
        ["sync", COLLECTIONS.sync, config.syncDocs, "initial sync", compression === "gzip"],
        ["sync_gzip", COLLECTIONS.sync, config.syncDocs, "initial sync", true],
    ] as const) {
        if (runs(name) && !(name === "sync_gzip" && compression === "gzip")) {
            const note = how(gzip);
            steps.push(
                await step(
                    config,
                    name,
                    `${label}, ${config.pullPage} per request${note ? ` (${note})` : ""}`,
                    n,
                    () => pullSyncline(config.url, collection, config.pullPage, n, pipelined, decoder, gzip ? "gzip" : "none", violations),
                    () => pullBaseline(db, collection, config.pullPage, n, violations),
                ),
            );
        }
    }
    if (runs("cas")) {
        const h = await holder(config.url, COLLECTIONS.cas);
        const n = config.casSamples;
        steps.push(
            await step(
                config,
                "cas",
                "single-document compare-and-set, sequential",
                n,
                (r) => casSyncline(h, COLLECTIONS.cas, PREFIX.cas, r * n, n, violations),
                (r) => casBaseline(db, COLLECTIONS.cas, PREFIX.cas, r * n, n, violations),
            ),
        );
    }
    if (runs("live")) {
        const h = await holder(config.url, COLLECTIONS.live);
        const n = config.liveSamples;
        steps.push(
            await step(
                config,
                "live",
                "push by A -> live stream at B",
                n,
                (r) => liveSyncline(config.url, h, COLLECTIONS.live, PREFIX.live, r * n, n, violations),
                (r) => liveBaseline(db, COLLECTIONS.live, PREFIX.live, r * n, n, violations),
            ),
        );
    }
    return { node: process.version, steps, violations };
}
