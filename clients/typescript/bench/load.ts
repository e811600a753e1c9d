// Collections loaded straight into `syncline_documents` with the metadata the server writes
// (as benches/replication/load.rs does): fast set-up, never measured.

import pg from "pg";

/** Rows per loading statement (each statement is its own transaction). */
const CHUNK = 5_000;

// Bodies of ~300 bytes shaped like the Rust benchmark's; the writer stamps its own position
// and revision, so the table's trigger keeps them.
const INSERT_SQL = `
INSERT INTO syncline_documents
    (collection, id, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT $1, $2 || lpad(i::text, 8, '0'),
       jsonb_build_object(
           'id', $2 || lpad(i::text, 8, '0'), 'title', 'Document ' || i, 'done', i % 2 = 0,
           'priority', i % 5, 'tags', jsonb_build_array('alpha', 'beta', 'gamma'),
           'version', 1, 'notes', repeat(md5(i::text), 6)),
       false, '1-' || lpad(to_hex(i), 16, '0'), now(),
       pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
FROM generate_series($3::bigint, $4::bigint) AS i`;

/** The id `load` gives document number `i`. */
export function docId(prefix: string, i: number): string {
    return `${prefix}${String(i).padStart(8, "0")}`;
}

/** The revision `load` gives document number `i`. */
export function loadedRevision(i: number): string {
    return `1-${i.toString(16).padStart(16, "0")}`;
}

/** A ~300-byte document body, shaped like the loaded ones. */
export function body(id: string, i: number, version: number): Record<string, unknown> {
    return {
        id,
        done: i % 2 === 0,
        tags: ["alpha", "beta", "gamma"],
        notes: "0123456789abcdef0123456789abcdef".repeat(6),
        title: `Document ${i}`,
        version,
        priority: i % 5,
    };
}

/**
 * Inserts documents `0..n` of `collection` (ids `docId(prefix, i)`), then VACUUM ANALYZE;
 * nothing when the collection holds exactly `n` documents already (an earlier run's load).
 */
export async function loadDocuments(databaseUrl: string, collection: string, prefix: string, n: number): Promise<void> {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
        const held = await client.query("SELECT count(*)::int AS n FROM syncline_documents WHERE collection = $1", [collection]);
        const count = (held.rows[0] as { n: number }).n;
        if (count === n) {
            return;
        }
        if (count !== 0) {
            throw new Error(`bench: collection ${collection} holds ${count} documents, expected 0 or ${n}`);
        }
        for (let first = 0; first < n; first += CHUNK) {
            const last = Math.min(first + CHUNK, n) - 1;
            await client.query(INSERT_SQL, [collection, prefix, first, last]);
        }
        await client.query("VACUUM ANALYZE syncline_documents");
    } finally {
        await client.end();
    }
}
