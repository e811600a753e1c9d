// The server revisions a replication has handed to RxDB, kept in a storage instance of the
// RxDB database beside the collection (as RxDB keeps its own replication metadata), so that a
// reconcile after an app restart still knows them. Each entry also holds a hash of the body
// it came with: a revision counts only while the local document still has that body, since
// RxDB may not have applied what it was handed (a paused replication, a pending local edit).
// No body is stored, so an encrypted database keeps nothing readable here.

import {
    addConnectedStorageToCollection,
    createRevision,
    fillWithDefaultSettings,
    now,
    type RxCollection,
    type RxJsonSchema,
    type RxStorageInstance,
} from "rxdb";

import { sha256HexSync } from "./sha256.js";

/** One document's last server revision and the hash of its body at that revision. */
export interface SeenRevision {
    revision: string;
    bodyHash: string;
}

interface Entry {
    id: string;
    revision: string;
    bodyHash: string;
}

/**
 * Hex SHA-256 of a string. Computed synchronously (sha256.ts): WebCrypto cost 40-50 µs of CPU
 * per call, once per pulled document; same digests, so stored entries stay valid.
 */
export async function sha256Hex(text: string): Promise<string> {
    return sha256HexSync(text);
}

/** Revisions handed to RxDB: in a storage instance, or in memory when none could be opened. */
export class RevisionStore {
    private queue: Promise<void> = Promise.resolve();
    private readonly memory = new Map<string, SeenRevision>();

    private constructor(
        private readonly instance: RxStorageInstance<Entry, any, any> | undefined,
        private readonly token: string,
    ) {}

    /**
     * Opens (or creates) the store of `collection` for a replication `identifier`; falls back
     * to memory (with a console warning) when the storage refuses.
     */
    static async open(collection: RxCollection<any, any, any, any>, identifier: string): Promise<RevisionStore> {
        const database = collection.database;
        try {
            const idLength = (collection.schema.jsonSchema.properties as Record<string, { maxLength?: number }>)[
                collection.schema.primaryPath as string
            ]?.maxLength;
            const schema = fillWithDefaultSettings({
                version: 0,
                primaryKey: "id",
                type: "object",
                properties: {
                    id: { type: "string", maxLength: idLength ?? 1000 },
                    revision: { type: "string" },
                    bodyHash: { type: "string" },
                },
                required: ["id", "revision", "bodyHash"],
            } as RxJsonSchema<Entry>);
            const collectionName = `syncline-rev-${(await database.hashFunction(identifier)).slice(0, 16)}`;
            const [instance] = await Promise.all([
                database.storage.createStorageInstance({
                    databaseName: database.name,
                    collectionName,
                    databaseInstanceToken: database.token,
                    multiInstance: database.multiInstance,
                    options: {},
                    schema,
                    password: database.password,
                    devMode: false,
                }),
                // Removed with the collection, as RxDB's replication metadata is.
                addConnectedStorageToCollection(collection, collectionName, schema),
            ]);
            return new RevisionStore(instance as RxStorageInstance<Entry, any, any>, database.token);
        } catch (err) {
            console.warn(`syncline-rxdb: cannot keep server revisions in the database (${String(err)}); keeping them in memory`);
            return new RevisionStore(undefined, database.token);
        }
    }

    /**
     * Records what was handed to RxDB, in order: (id, revision, body), or a deletion (no
     * revision). Hashing and writing happen in the background, one batch at a time; a failed
     * write only leaves those documents unknown (a reconcile then fetches them).
     */
    record(entries: ReadonlyArray<{ id: string; revision?: string; body?: string }>): void {
        if (entries.length === 0) {
            return;
        }
        const batch = [...entries];
        this.queue = this.queue
            .then(async () => {
                const latest = new Map<string, SeenRevision | undefined>();
                for (const e of batch) {
                    latest.set(
                        e.id,
                        e.revision === undefined || e.body === undefined
                            ? undefined
                            : { revision: e.revision, bodyHash: await sha256Hex(e.body) },
                    );
                }
                const instance = this.instance;
                if (instance === undefined) {
                    for (const [id, seen] of latest) {
                        if (seen === undefined) {
                            this.memory.delete(id);
                        } else {
                            this.memory.set(id, seen);
                        }
                    }
                    return;
                }
                const ids = [...latest.keys()];
                const previous = new Map(
                    (await instance.findDocumentsById(ids, true)).map((d) => [d.id, d] as const),
                );
                const rows = ids.flatMap((id) => {
                    const seen = latest.get(id);
                    const prev = previous.get(id);
                    if (seen === undefined && (prev === undefined || prev._deleted)) {
                        return [];
                    }
                    return [
                        {
                            previous: prev,
                            document: {
                                id,
                                revision: seen?.revision ?? "",
                                bodyHash: seen?.bodyHash ?? "",
                                _deleted: seen === undefined,
                                _attachments: {},
                                _meta: { lwt: now() },
                                _rev: createRevision(this.token, prev),
                            },
                        },
                    ];
                });
                if (rows.length > 0) {
                    await instance.bulkWrite(rows as never, "syncline-revisions");
                }
            })
            .catch((err: unknown) => console.warn(`syncline-rxdb: could not store server revisions (${String(err)})`));
    }

    /** The recorded revisions of `ids`, after every pending write. */
    async lookup(ids: readonly string[]): Promise<Map<string, SeenRevision>> {
        await this.queue;
        const out = new Map<string, SeenRevision>();
        if (this.instance === undefined) {
            for (const id of ids) {
                const m = this.memory.get(id);
                if (m !== undefined) {
                    out.set(id, m);
                }
            }
            return out;
        }
        for (const d of await this.instance.findDocumentsById([...ids], false)) {
            out.set(d.id, { revision: d.revision, bodyHash: d.bodyHash });
        }
        return out;
    }

    /** Waits for pending writes and closes the storage instance. */
    async close(): Promise<void> {
        await this.queue;
        await this.instance?.close();
    }
}
