// Push steps: `pushDocs` new documents of ~300 B in batches of `pushBatch`, one batch at a
// time or `pushInFlight` at once, against node-postgres upserting the same rows with one
// multi-row INSERT ... ON CONFLICT per batch at the same concurrency.

import pg from "pg";

import { BASE_SUFFIX, COLLECTIONS, type BenchConfig, type RoundFigures } from "./config.js";
import { body, docId } from "./load.js";
import { connect, PendingPushKeys, push, state } from "./plugin-path.js";
import { Stopwatch } from "./stats.js";

/** The documents of one round: their numbers and ids. */
function batches(config: BenchConfig, prefix: string): Array<Array<{ i: number; id: string }>> {
    const out: Array<Array<{ i: number; id: string }>> = [];
    for (let first = 0; first < config.pushDocs; first += config.pushBatch) {
        const batch = [];
        for (let i = first; i < Math.min(first + config.pushBatch, config.pushDocs); i += 1) {
            batch.push({ i, id: docId(prefix, i) });
        }
        out.push(batch);
    }
    return out;
}

/** Runs `work` on every batch, `inFlight` at a time. */
async function inParallel<T>(items: T[], inFlight: number, work: (item: T, worker: number) => Promise<void>): Promise<void> {
    let next = 0;
    const worker = async (w: number): Promise<void> => {
        while (next < items.length) {
            const item = items[next];
            next += 1;
            await work(item, w);
        }
    };
    await Promise.all(Array.from({ length: inFlight }, (_, w) => worker(w)));
}

/** One round through Syncline; checks that no row came back conflicting or refused. */
export async function pushSyncline(
    config: BenchConfig,
    prefix: string,
    inFlight: number,
    violations: string[],
): Promise<RoundFigures> {
    const client = connect(config.url);
    const keys = new PendingPushKeys();
    const work = batches(config, prefix);
    let rejected = 0;
    const watch = new Stopwatch();
    await inParallel(work, inFlight, async (batch) => {
        const writes = batch.map(({ i, id }) => ({ next: state(body(id, i, 1)) }));
        const response = await push(client, keys, COLLECTIONS.push, writes);
        rejected += response.conflicts.length + response.refused.length;
    });
    const figures = watch.finish(config.pushDocs);
    if (rejected > 0) {
        violations.push(`push ${prefix}: ${rejected} rows came back conflicting or refused, expected none`);
    }
    return figures;
}

/** The baseline: one multi-row upsert per batch, `inFlight` connections. */
export async function pushBaseline(config: BenchConfig, prefix: string, inFlight: number, violations: string[]): Promise<RoundFigures> {
    const pool = new pg.Pool({ connectionString: config.databaseUrl, max: inFlight });
    const clients = await Promise.all(Array.from({ length: inFlight }, () => pool.connect()));
    const work = batches(config, prefix);
    const collection = COLLECTIONS.push + BASE_SUFFIX;
    let written = 0;
    try {
        const watch = new Stopwatch();
        await inParallel(work, inFlight, async (batch, w) => {
            const params: unknown[] = [collection];
            const values = batch.map(({ i, id }) => {
                params.push(id, JSON.stringify(body(id, i, 1)), `1-${i.toString(16).padStart(16, "0")}`);
                const n = params.length;
                return `($1, $${n - 2}, $${n - 1}::jsonb, false, $${n}, now(), pg_current_xact_id()::text::bigint, nextval('syncline_change_seq'))`;
            });
            const result = await clients[w].query(
                `INSERT INTO syncline_documents AS d
                     (collection, id, body, deleted, revision, updated_at, change_xid, change_seq)
                 VALUES ${values.join(", ")}
                 ON CONFLICT (collection, id) DO UPDATE
                 SET body = excluded.body, deleted = excluded.deleted, revision = excluded.revision,
                     updated_at = excluded.updated_at, change_xid = excluded.change_xid,
                     change_seq = excluded.change_seq`,
                params,
            );
            written += result.rowCount ?? 0;
        });
        const figures = watch.finish(config.pushDocs);
        if (written !== config.pushDocs) {
            violations.push(`push baseline ${prefix}: ${written} rows written, expected ${config.pushDocs}`);
        }
        return figures;
    } finally {
        clients.forEach((c) => c.release());
        await pool.end();
    }
}
