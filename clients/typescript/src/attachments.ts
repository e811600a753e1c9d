// RxDB attachments through Syncline's AttachmentService, for collections whose schema has
// `attachments`. Documents carry only `_attachments: {name: {digest, length, type}}`; the bytes
// travel beside them, in chunks, once per (collection, digest).
//
// Push: RxDB hands the push handler each row with `_attachments[name].data` (a Blob) for the
// attachments added or changed since the assumed master state, and bare metadata for the rest.
// `beforePush` asks Missing which digests the server lacks for this caller and uploads those
// (the row's `data`, else the local storage's copy), one chunk in memory at a time; the Push
// then carries metadata only (convert.ts never sends `data`).
//
// Pull: RxDB writes a pulled state's `_attachments` into the local storage, which needs `data`
// for every attachment the local document lacks (a new name, or a changed digest: without it
// the write fails with 510, or keeps the old bytes under the new digest). `complete` adds it,
// from the local storage when a local document holds the digest, else by Download, resumed
// from the byte reached when the stream breaks (bounded retries). A failed download fails the
// Pull, which RxDB retries from the same checkpoint: nothing is stored without its bytes.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import type { RxCollection } from "rxdb";

import { SynclineError } from "./errors.js";
import {
    AttachmentService,
    DownloadRequestSchema,
    MissingRequestSchema,
    UploadRequestSchema,
    type UploadRequest,
} from "./gen/syncline/v1/attachments_pb.js";
import type { Document } from "./gen/syncline/v1/replication_pb.js";

/** Digests per Missing call (the server's default `missing_digests_max` is 1000). */
const MISSING_BATCH = 500;
/** Uploads at once per replication (the server allows 4 per principal by default). */
const UPLOADS_AT_ONCE = 2;
/** Download attempts per blob: the first, then resumed ones. */
const DOWNLOAD_ATTEMPTS = 5;
/** Digests remembered with a local document holding them (not the bytes). */
const KNOWN_LOCAL_MAX = 10_000;
/** An upload's or download's deadline grows by 1 ms per KiB (at least ~1 MiB/s). */
const MS_PER_KIB = 1;

const DIGEST = /^[0-9a-f]{64}$/;

/** What a transfer needs from the replication (core.ts). */
export interface AttachmentSyncOptions {
    /** The RxDB collection (its storage instance holds the local bytes). */
    collection: RxCollection<any, any, any, any>;
    /** The collection's name on the server. */
    collectionName: string;
    /** The AttachmentService client on the replication's transport. */
    client: Client<typeof AttachmentService>;
    /** Deadline of a call moving no bytes (Missing); transfers add time per byte. */
    callTimeoutMs: number;
    /** Bytes per Upload chunk (at most the server's `chunk_bytes_max`). */
    chunkBytes: number;
    /** core.ts's unary call: refreshes an expired token; permanent errors stop replication. */
    unary: <T>(call: () => Promise<T>, handled?: (err: SynclineError) => boolean) => Promise<T>;
    /** core.ts's verdict on a failed call: a permanent error stops the replication. */
    fail: (err: unknown) => SynclineError;
    /** Reports an error on the replication's error$ without failing the call. */
    reportError: (err: Error) => void;
}

/** One attachment entry as RxDB keeps it (`data` only on write data). */
interface Entry {
    digest: string;
    length: number;
    type: string;
    data?: Blob;
}

type State = Record<string, unknown>;

function entriesOf(state: State): Array<[string, Entry]> {
    const atts = state._attachments;
    if (atts === null || typeof atts !== "object") {
        return [];
    }
    return Object.entries(atts as Record<string, Entry>);
}

function sleep(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms));
}

/** Uploads and downloads the attachments of one replicated collection. */
export class AttachmentSync {
    private readonly primaryPath: string;
    private readonly uploading = new Map<string, Promise<void>>();
    private readonly downloading = new Map<string, Promise<Blob>>();
    private uploadsRunning = 0;
    private readonly uploadWaiters: Array<() => void> = [];
    /** digest -> [document id, attachment name] of a local copy, newest last. */
    private readonly knownLocal = new Map<string, [string, string]>();

    private constructor(private readonly options: AttachmentSyncOptions) {
        this.primaryPath = options.collection.schema.primaryPath as string;
    }

    /** The transfers of `options.collection`, or undefined when its schema has no attachments. */
    static for(options: AttachmentSyncOptions): AttachmentSync | undefined {
        return options.collection.schema.jsonSchema.attachments ? new AttachmentSync(options) : undefined;
    }

    /** Whether a change batch has a live document describing attachments (its bytes may be needed). */
    describesAttachments(docs: readonly Document[]): boolean {
        const marker = new TextEncoder().encode('"_attachments"');
        return docs.some((doc) => !doc.deleted && includes(doc.json, marker));
    }

    /**
     * Makes sure the server holds every blob the live `states` reference for this caller:
     * asks Missing, then uploads the missing ones. A blob whose bytes are not available
     * locally, or that the server refuses (bad digest, too large), is reported and left
     * out: the server then refuses the row (per-row push), and RxDB gets the server's state.
     */
    async beforePush(states: readonly State[]): Promise<void> {
        const wanted = new Map<string, { docId: string; name: string; entry: Entry }>();
        for (const state of states) {
            if (state._deleted === true) {
                continue;
            }
            const docId = String(state[this.primaryPath]);
            for (const [name, entry] of entriesOf(state)) {
                if (typeof entry?.digest !== "string" || !DIGEST.test(entry.digest)) {
                    // A configuration error no retry fixes: permanent, the replication stops.
                    throw this.options.fail(
                        new SynclineError(
                            `syncline-rxdb: attachment '${name}' of document "${docId}" has digest ` +
                                `'${String(entry?.digest).slice(0, 80)}', not a SHA-256 hex digest: create ` +
                                "the RxDB database with RxDB's default hashFunction (defaultHashSha256)",
                            Code.InvalidArgument,
                            { documentId: docId },
                        ),
                    );
                }
                const seen = wanted.get(entry.digest);
                if (seen === undefined || (seen.entry.data === undefined && entry.data !== undefined)) {
                    wanted.set(entry.digest, { docId, name, entry });
                }
            }
        }
        if (wanted.size === 0) {
            return;
        }
        const missing: string[] = [];
        const digests = [...wanted.keys()];
        for (let i = 0; i < digests.length; i += MISSING_BATCH) {
            const response = await this.options.unary(() =>
                this.options.client.missing(
                    create(MissingRequestSchema, {
                        collection: this.options.collectionName,
                        digests: digests.slice(i, i + MISSING_BATCH),
                    }),
                    { timeoutMs: this.options.callTimeoutMs },
                ),
            );
            missing.push(...response.digests);
        }
        await Promise.all(
            missing.map((digest) => {
                const want = wanted.get(digest);
                return want === undefined ? undefined : this.uploadOnce(digest, want.docId, want.name, want.entry);
            }),
        );
    }

    /** One upload per digest at a time, whoever asks (parallel push batches share it). */
    private uploadOnce(digest: string, docId: string, name: string, entry: Entry): Promise<void> {
        let running = this.uploading.get(digest);
        if (running === undefined) {
            running = this.withUploadSlot(() => this.upload(digest, docId, name, entry)).finally(() =>
                this.uploading.delete(digest),
            );
            this.uploading.set(digest, running);
        }
        return running;
    }

    private async withUploadSlot<T>(run: () => Promise<T>): Promise<T> {
        while (this.uploadsRunning >= UPLOADS_AT_ONCE) {
            await new Promise<void>((resolve) => this.uploadWaiters.push(resolve));
        }
        this.uploadsRunning += 1;
        try {
            return await run();
        } finally {
            this.uploadsRunning -= 1;
            this.uploadWaiters.shift()?.();
        }
    }

    private async upload(digest: string, docId: string, name: string, entry: Entry): Promise<void> {
        const { collectionName, client, chunkBytes } = this.options;
        let blob: Blob;
        try {
            blob =
                entry.data instanceof Blob
                    ? entry.data
                    : await this.options.collection.storageInstance.getAttachmentData(docId, name, digest);
        } catch (err) {
            // The local copy changed since RxDB queued this row: the push goes on without the
            // blob, and the server refuses the row (RxDB then takes the server's state).
            this.options.reportError(
                new SynclineError(
                    `syncline-rxdb: the bytes of attachment '${name}' of document "${docId}" ` +
                        `(digest ${digest}) are not in the local database: ${String(err)}`,
                    Code.FailedPrecondition,
                    { documentId: docId },
                ),
            );
            return;
        }
        const start = create(UploadRequestSchema, {
            part: {
                case: "start",
                value: { collection: collectionName, digest, length: BigInt(blob.size), contentType: entry.type ?? "" },
            },
        });
        async function* messages(): AsyncGenerator<UploadRequest> {
            yield start;
            for (let offset = 0; offset < blob.size; offset += chunkBytes) {
                const chunk = new Uint8Array(await blob.slice(offset, offset + chunkBytes).arrayBuffer());
                yield create(UploadRequestSchema, { part: { case: "chunk", value: chunk } });
            }
        }
        const options: CallOptions = { timeoutMs: this.options.callTimeoutMs + Math.ceil(blob.size / 1024) * MS_PER_KIB };
        // A blob the server will not take (wrong digest or length, over attachment_bytes_max):
        // reported, and the row refused by the server, rather than stopping the replication.
        // A chunk over the server's chunk_bytes_max is a configuration error (every upload
        // would fail): it stays permanent and stops the replication.
        const field = (error: SynclineError, name: string): boolean =>
            error.metadata?.field === name || error.fieldViolations.some((v) => v.field === name);
        const refusedBlob = (error: SynclineError): boolean =>
            (error.code === Code.InvalidArgument && !field(error, "chunk")) ||
            (error.code === Code.ResourceExhausted && field(error, "start.length"));
        try {
            await this.options.unary(() => client.upload(messages(), options), refusedBlob);
        } catch (err) {
            const error = SynclineError.from(err);
            // connect-web's own transport (passed in as `transport`) refuses client streams.
            if (/does not support streaming request bodies/.test(error.message)) {
                throw this.options.fail(this.cannotUpload());
            }
            if (!refusedBlob(error)) {
                throw error;
            }
            this.options.reportError(
                new SynclineError(
                    `syncline-rxdb: the server refused attachment '${name}' of document "${docId}": ${error.message}`,
                    error.code,
                    { reason: error.reason, documentId: docId, fieldViolations: error.fieldViolations },
                ),
            );
        }
    }

    private cannotUpload(): SynclineError {
        return new SynclineError(
            `syncline-rxdb: cannot upload attachments of '${this.options.collectionName}': the ` +
                "transport given cannot send a client stream (AttachmentService.Upload is one; " +
                "connect-web's gRPC-Web transport over fetch refuses them). Use transport 'grpc-web' " +
                "(the browser entry point sends uploads as one request body) or 'grpc' in Node",
            Code.Unimplemented,
        );
    }

    /**
     * Gives every state RxDB is handed a complete `_attachments`: `{}` on deleted documents
     * and documents without attachments, and `data` on each attachment the local document
     * does not hold under that name and digest. Mutates and returns `states`.
     */
    async complete<T>(states: T[]): Promise<T[]> {
        const list = states as unknown as State[];
        const ids = list.map((state) => String(state[this.primaryPath]));
        const local = new Map<string, State>();
        if (list.some((state) => state._deleted !== true && entriesOf(state).length > 0)) {
            const docs = (await this.options.collection.storageInstance.findDocumentsById(ids, true)) as State[];
            for (const doc of docs) {
                local.set(String(doc[this.primaryPath]), doc);
            }
        }
        const needed = new Map<string, Array<{ docId: string; name: string; entry: Entry }>>();
        list.forEach((state, i) => {
            const entries = state._deleted === true ? [] : entriesOf(state);
            const out: Record<string, Entry> = {};
            const held = local.get(ids[i]);
            const heldAtts =
                held && held._deleted !== true ? (held._attachments as Record<string, Entry> | undefined) : undefined;
            for (const [name, raw] of entries) {
                const entry = this.checked(ids[i], name, raw);
                out[name] = entry;
                if (heldAtts?.[name]?.digest === entry.digest) {
                    this.remember(entry.digest, ids[i], name);
                    continue;
                }
                const list = needed.get(entry.digest) ?? [];
                list.push({ docId: ids[i], name, entry });
                needed.set(entry.digest, list);
            }
            for (const [name, entry] of Object.entries(heldAtts ?? {})) {
                this.remember(entry.digest, ids[i], name);
            }
            state._attachments = out;
        });
        for (const [digest, wanting] of needed) {
            const data = (await this.localCopy(digest)) ?? (await this.downloadOnce(digest, wanting[0].entry));
            for (const { docId, name, entry } of wanting) {
                entry.data = data;
                this.remember(digest, docId, name);
            }
        }
        return states;
    }

    /** An attachment entry of a pulled document, or an error naming it. */
    private checked(docId: string, name: string, raw: unknown): Entry {
        const entry = raw as Partial<Entry> | null;
        if (
            entry === null ||
            typeof entry !== "object" ||
            typeof entry.digest !== "string" ||
            !DIGEST.test(entry.digest) ||
            typeof entry.length !== "number" ||
            !Number.isSafeInteger(entry.length) ||
            entry.length < 0
        ) {
            throw new SynclineError(
                `syncline-rxdb: document "${docId}" of '${this.options.collectionName}' describes attachment ` +
                    `'${name.slice(0, 80)}' without a SHA-256 hex digest and a length`,
                Code.DataLoss,
                { documentId: docId },
            );
        }
        return { digest: entry.digest, length: entry.length, type: typeof entry.type === "string" ? entry.type : "" };
    }

    private remember(digest: string, docId: string, name: string): void {
        this.knownLocal.delete(digest);
        this.knownLocal.set(digest, [docId, name]);
        if (this.knownLocal.size > KNOWN_LOCAL_MAX) {
            const oldest = this.knownLocal.keys().next().value;
            if (oldest !== undefined) {
                this.knownLocal.delete(oldest);
            }
        }
    }

    /** The bytes of `digest` from a local document that held them, if it still does. */
    private async localCopy(digest: string): Promise<Blob | undefined> {
        const known = this.knownLocal.get(digest);
        if (known === undefined) {
            return undefined;
        }
        try {
            return await this.options.collection.storageInstance.getAttachmentData(known[0], known[1], digest);
        } catch {
            this.knownLocal.delete(digest);
            return undefined;
        }
    }

    /** One download per digest at a time (a pull and a push's conflicts may want the same). */
    private downloadOnce(digest: string, entry: Entry): Promise<Blob> {
        let running = this.downloading.get(digest);
        if (running === undefined) {
            running = this.download(digest, entry).finally(() => this.downloading.delete(digest));
            this.downloading.set(digest, running);
        }
        return running;
    }

    /**
     * Downloads one blob. A broken stream is resumed from the byte reached (offset), up to
     * DOWNLOAD_ATTEMPTS calls; a blob the server does not serve (NOT_FOUND: no live document
     * this caller may read references it any more) fails the pull, which RxDB retries.
     */
    private async download(digest: string, entry: Entry): Promise<Blob> {
        const parts: Uint8Array[] = [];
        let received = 0;
        let total = entry.length;
        let type = entry.type;
        for (let attempt = 1; ; attempt += 1) {
            try {
                const stream = this.options.client.download(
                    create(DownloadRequestSchema, {
                        collection: this.options.collectionName,
                        digest,
                        offset: BigInt(received),
                    }),
                    { timeoutMs: this.options.callTimeoutMs + Math.ceil((total - received) / 1024) * MS_PER_KIB },
                );
                for await (const message of stream) {
                    if (Number(message.offset) !== received) {
                        throw new ConnectError(
                            `Download of ${digest} sent offset ${message.offset}, expected ${received}`,
                            Code.DataLoss,
                        );
                    }
                    total = Number(message.totalLength);
                    type = type || message.contentType;
                    if (message.chunk.length > 0) {
                        parts.push(message.chunk);
                        received += message.chunk.length;
                    }
                }
                if (received !== total || total !== entry.length) {
                    throw new ConnectError(
                        `Download of ${digest} ended at byte ${received} of ${total} (the document says ${entry.length})`,
                        Code.DataLoss,
                    );
                }
                return new Blob(parts as BlobPart[], { type });
            } catch (err) {
                const error = SynclineError.from(err);
                if (error.code === Code.NotFound || error.code === Code.DataLoss || attempt >= DOWNLOAD_ATTEMPTS) {
                    throw new SynclineError(
                        `syncline-rxdb: cannot download attachment ${digest} of '${this.options.collectionName}' ` +
                            `(${received} of ${total} bytes after ${attempt} attempts): ${error.message}`,
                        // Never permanent: the pull is retried (by RxDB, after retryTime).
                        error.permanent ? Code.Unavailable : error.code,
                        { reason: error.reason, cause: err },
                    );
                }
                await sleep(Math.min(2_000, 100 * 2 ** attempt));
            }
        }
    }
}

/** Whether `haystack` contains the bytes of `needle`. */
function includes(haystack: Uint8Array, needle: Uint8Array): boolean {
    outer: for (let i = 0; i + needle.length <= haystack.length; i += 1) {
        for (let j = 0; j < needle.length; j += 1) {
            if (haystack[i + j] !== needle[j]) {
                continue outer;
            }
        }
        return true;
    }
    return false;
}
