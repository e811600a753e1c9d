// Single-document steps, each sequential: a compare-and-set update (the plugin's way: the
// assumed state is the document as last pulled, compared by value), and the latency from a
// push by one client to the change's arrival on another client's live stream. Baselines:
// `UPDATE ... WHERE revision = $5 RETURNING`, and the same UPDATE with a NOTIFY observed by
// a second, LISTENing connection.

import pg from "pg";

import { BASE_SUFFIX, type RoundFigures } from "./config.js";
import { body, docId, loadedRevision } from "./load.js";
import { connect, PendingPushKeys, push, toStates, type Write } from "./plugin-path.js";
import { latency, nowMs, Stopwatch } from "./stats.js";
import type { SynclineClient } from "../src/index.js";

/**
 * Runs `step` on documents `first..first + n` in sequence, timing the round; each step returns
 * its own latency in ms (`undefined`: no sample, e.g. a change that never arrived).
 */
async function timedSteps(
    first: number,
    n: number,
    step: (i: number) => Promise<number | undefined>,
): Promise<RoundFigures> {
    const samples: number[] = [];
    const watch = new Stopwatch();
    for (let i = first; i < first + n; i += 1) {
        const sample = await step(i);
        if (sample !== undefined) {
            samples.push(sample);
        }
    }
    return { ...watch.finish(n), latency: latency(samples) };
}

/** How long one change may take to arrive before it counts as missed. */
const ARRIVAL_TIMEOUT_MS = 10_000;

const CAS_SQL = `
UPDATE syncline_documents
SET body = $3::jsonb, revision = $4, updated_at = now(),
    change_xid = pg_current_xact_id()::text::bigint, change_seq = nextval('syncline_change_seq')
WHERE collection = $1 AND id = $2 AND revision = $5
RETURNING revision`;

const NOTIFY_CHANNEL = "syncline_bench_live";

/** Every document of a collection as the client holds it, and the checkpoint after them. */
export async function pullStates(
    client: SynclineClient,
    collection: string,
): Promise<{ states: Map<string, Record<string, unknown>>; token: string | undefined }> {
    const states = new Map<string, Record<string, unknown>>();
    let token: string | undefined;
    for (;;) {
        const response = await client.service.pull({ collection, limit: 1000, checkpoint: token ? { token } : undefined });
        for (const s of toStates(response.documents)) {
            states.set(s.id as string, s);
        }
        token = response.checkpoint?.token ?? token;
        if (response.documents.length < 1000) {
            return { states, token };
        }
    }
}

/** The next version of a held state, and the write that sets it. */
function update(states: Map<string, Record<string, unknown>>, id: string): Write {
    const assumed = states.get(id);
    if (assumed === undefined) {
        throw new Error(`bench: document ${id} was not pulled`);
    }
    const next = { ...assumed, version: (assumed.version as number) + 1 };
    states.set(id, next);
    return { next, assumed };
}

/** Held states and the client holding them, for the Syncline side of both steps. */
export interface Holder {
    client: SynclineClient;
    keys: PendingPushKeys;
    states: Map<string, Record<string, unknown>>;
    token: string | undefined;
}

/** A client that has pulled `collection`. */
export async function holder(url: string, collection: string): Promise<Holder> {
    const client = connect(url);
    const { states, token } = await pullStates(client, collection);
    return { client, keys: new PendingPushKeys(), states, token };
}

/** Documents `first..first + n` updated one at a time through Syncline. */
export async function casSyncline(
    h: Holder,
    collection: string,
    prefix: string,
    first: number,
    n: number,
    violations: string[],
): Promise<RoundFigures> {
    let conflicts = 0;
    const figures = await timedSteps(first, n, async (i) => {
        const t0 = nowMs();
        const response = await push(h.client, h.keys, collection, [update(h.states, docId(prefix, i))]);
        conflicts += response.conflicts.length + response.refused.length;
        return nowMs() - t0;
    });
    if (conflicts > 0) {
        violations.push(`compare-and-set ${collection}: ${conflicts} conflicts or refusals, expected none`);
    }
    return figures;
}

/** The statement of one baseline update of document `i` (its second version, from the loaded one). */
function casParams(collection: string, prefix: string, i: number): unknown[] {
    const id = docId(prefix, i);
    return [collection + BASE_SUFFIX, id, JSON.stringify(body(id, i, 2)), `2-${i.toString(16).padStart(16, "0")}`, loadedRevision(i)];
}

/** The same updates with a guarded UPDATE on one connection. */
export async function casBaseline(
    databaseUrl: string,
    collection: string,
    prefix: string,
    first: number,
    n: number,
    violations: string[],
): Promise<RoundFigures> {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
        let missed = 0;
        const figures = await timedSteps(first, n, async (i) => {
            const t0 = nowMs();
            const result = await client.query(CAS_SQL, casParams(collection, prefix, i));
            missed += result.rowCount === 1 ? 0 : 1;
            return nowMs() - t0;
        });
        if (missed > 0) {
            violations.push(`compare-and-set baseline ${collection}: ${missed} updates matched no row`);
        }
        return figures;
    } finally {
        await client.end();
    }
}

/** Waiters for ids, resolved with the arrival time. */
class Arrivals {
    private readonly waiting = new Map<string, (at: number) => void>();

    wait(id: string): Promise<number> {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.waiting.delete(id);
                reject(new Error(`${id} did not arrive within ${ARRIVAL_TIMEOUT_MS} ms`));
            }, ARRIVAL_TIMEOUT_MS);
            this.waiting.set(id, (at) => {
                clearTimeout(timer);
                resolve(at);
            });
        });
    }

    arrived(id: string, at: number): void {
        const resolve = this.waiting.get(id);
        this.waiting.delete(id);
        resolve?.(at);
    }
}

/** The latency from `t0` to `arrival`; `undefined` (and a violation) when it never came. */
async function arrivalLatency(
    arrival: Promise<number>,
    t0: number,
    what: string,
    violations: string[],
): Promise<number | undefined> {
    try {
        return (await arrival) - t0;
    } catch (err) {
        violations.push(`${what}: ${String(err)}`);
        return undefined;
    }
}

/** Push by `h` -> arrival on another client's live stream, documents `first..first + n`. */
export async function liveSyncline(
    url: string,
    h: Holder,
    collection: string,
    prefix: string,
    first: number,
    n: number,
    violations: string[],
): Promise<RoundFigures> {
    const watcher = connect(url);
    const arrivals = new Arrivals();
    const stop = new AbortController();
    let opened!: () => void;
    const open = new Promise<void>((resolve) => {
        opened = resolve;
    });
    const stream = (async () => {
        const responses = watcher.service.subscribe(
            { collection, checkpoint: h.token ? { token: h.token } : undefined },
            { signal: stop.signal, timeoutMs: 0, onHeader: () => opened() },
        );
        for await (const response of responses) {
            opened();
            if (response.event.case === "changes") {
                const at = nowMs();
                h.token = response.event.value.checkpoint?.token ?? h.token;
                for (const doc of response.event.value.documents) {
                    arrivals.arrived(doc.id, at);
                }
            }
        }
    })().catch((err: unknown) => {
        if (!stop.signal.aborted) {
            violations.push(`live stream ${collection}: ${String(err)}`);
        }
    });
    await open;
    let problems = 0;
    let figures: RoundFigures;
    try {
        figures = await timedSteps(first, n, async (i) => {
            const id = docId(prefix, i);
            const arrival = arrivals.wait(id);
            const t0 = nowMs();
            const response = await push(h.client, h.keys, collection, [update(h.states, id)]);
            problems += response.conflicts.length + response.refused.length;
            return arrivalLatency(arrival, t0, `live ${collection}`, violations);
        });
    } finally {
        stop.abort();
        await stream;
    }
    if (problems > 0) {
        violations.push(`live ${collection}: ${problems} pushes conflicted or were refused`);
    }
    return figures;
}

/** UPDATE ... RETURNING with a NOTIFY in the same statement, observed by a LISTENing connection. */
export async function liveBaseline(
    databaseUrl: string,
    collection: string,
    prefix: string,
    first: number,
    n: number,
    violations: string[],
): Promise<RoundFigures> {
    const writer = new pg.Client({ connectionString: databaseUrl });
    const listener = new pg.Client({ connectionString: databaseUrl });
    await Promise.all([writer.connect(), listener.connect()]);
    const arrivals = new Arrivals();
    listener.on("notification", (msg) => arrivals.arrived(msg.payload ?? "", nowMs()));
    await listener.query(`LISTEN ${NOTIFY_CHANNEL}`);
    try {
        return await timedSteps(first, n, async (i) => {
            const id = docId(prefix, i);
            const arrival = arrivals.wait(id);
            const t0 = nowMs();
            const result = await writer.query(
                `WITH u AS (${CAS_SQL}) SELECT pg_notify('${NOTIFY_CHANNEL}', $2), revision FROM u`,
                casParams(collection, prefix, i),
            );
            if (result.rowCount !== 1) {
                violations.push(`live baseline ${collection}: update of ${id} matched no row`);
                arrival.catch(() => undefined);
                return undefined;
            }
            return arrivalLatency(arrival, t0, `live baseline ${collection}`, violations);
        });
    } finally {
        await Promise.all([writer.end(), listener.end()]);
    }
}
