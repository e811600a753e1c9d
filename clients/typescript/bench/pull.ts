// Pull steps: a fresh client pulls a whole collection in pages of `pullPage` as the plugin's
// pull handler does (pages decoded by hand and read ahead unless the config says otherwise)
// and turns every document into the state the plugin hands RxDB (UTF-8 and JSON parsing of
// the body, an RxDB state), against node-postgres reading the same keyset pages
// (`WHERE (change_xid, change_seq) > ($2, $3) ORDER BY ... LIMIT`) and parsing the bodies.

import pg from "pg";

import type { PullDecoder, RoundFigures } from "./config.js";
import { connect, toStates } from "./plugin-path.js";
import { Stopwatch } from "./stats.js";
import type { SynclineCompression } from "../src/index.js";
import { PullAhead } from "../src/pull-ahead.js";
import { pullPage } from "../src/pull-page.js";

const KEYSET_SQL = `
SELECT id, body::text AS body, deleted, revision, updated_at, change_xid, change_seq
FROM syncline_documents
WHERE collection = $1 AND (change_xid, change_seq) > ($2, $3)
ORDER BY change_xid, change_seq
LIMIT $4`;

/** Checks that `ids` holds `expected` distinct ids. */
function checkIds(what: string, ids: string[], expected: number, violations: string[]): void {
    if (ids.length !== expected) {
        violations.push(`${what}: ${ids.length} documents, expected ${expected}`);
    }
    const distinct = new Set(ids).size;
    if (distinct !== ids.length) {
        violations.push(`${what}: ${ids.length - distinct} duplicated documents`);
    }
}

/** One pull of everything through Syncline; docs/s. */
export async function pullSyncline(
    url: string,
    collection: string,
    page: number,
    expected: number,
    pipelined: boolean,
    decoder: PullDecoder,
    compression: SynclineCompression,
    violations: string[],
): Promise<RoundFigures> {
    const client = connect(url, compression);
    // Connect first: the connection's set-up is not what is measured.
    await client.service.pull({ collection, limit: 1 });
    const fetch = (token: string | undefined, limit: number) => {
        const request = { collection, limit, checkpoint: token ? { token } : undefined };
        return decoder === "hand"
            ? pullPage(client.transport, request, { timeoutMs: 60_000 })
            : client.service.pull(request, { timeoutMs: 60_000 });
    };
    const ahead = new PullAhead(fetch);
    const ids: string[] = [];
    let token: string | undefined;
    const watch = new Stopwatch();
    for (;;) {
        const response = pipelined ? await ahead.pull(token, page) : await fetch(token, page);
        const states = toStates(response.documents);
        for (const s of states) {
            ids.push(s.id as string);
        }
        token = response.checkpoint?.token;
        if (response.documents.length < page) {
            break;
        }
    }
    const figures = watch.finish(ids.length);
    checkIds(`pull ${collection}`, ids, expected, violations);
    return figures;
}

/** The same keyset pages read directly, bodies parsed; docs/s. */
export async function pullBaseline(
    databaseUrl: string,
    collection: string,
    page: number,
    expected: number,
    violations: string[],
): Promise<RoundFigures> {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
        const ids: string[] = [];
        let xid = "0";
        let seq = "0";
        const watch = new Stopwatch();
        for (;;) {
            const result = await client.query(KEYSET_SQL, [collection, xid, seq, page]);
            for (const row of result.rows as Array<Record<string, string & boolean>>) {
                const state = JSON.parse(row.body) as Record<string, unknown>;
                state._deleted = row.deleted;
                ids.push(state.id as string);
            }
            const last = result.rows[result.rows.length - 1] as { change_xid: string; change_seq: string } | undefined;
            if (last === undefined || result.rows.length < page) {
                break;
            }
            xid = last.change_xid;
            seq = last.change_seq;
        }
        const figures = watch.finish(ids.length);
        checkIds(`pull baseline ${collection}`, ids, expected, violations);
        return figures;
    } finally {
        await client.end();
    }
}
