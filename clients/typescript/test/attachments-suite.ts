// The attachments suite: RxDB attachments (putAttachment / getData) replicating between two
// RxDB databases through a real Syncline server, the bytes through AttachmentService. Run once
// per transport (attachments-grpc.test.ts, attachments-grpc-web.test.ts). Over gRPC-Web, side
// B uses the browser entry point (fetch), whose uploads gather the request into one body.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe } from "node:test";

import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { addRxPlugin, createRxDatabase, type RxCollection, type RxDocument, type RxJsonSchema } from "rxdb";
import { getRxStorageMemory } from "rxdb/plugins/storage-memory";
import { RxDBAttachmentsPlugin } from "rxdb/plugins/attachments";

import { replicateSyncline as replicateSynclineBrowser } from "../src/browser.js";
import { replicateSyncline, type SynclineReplicationState, type SynclineTransportKind } from "../src/index.js";
import type { DownloadResponse, UploadRequest } from "../src/gen/syncline/v1/attachments_pb.js";
import { createTestDatabase, pullAll, taskSchema, waitFor, type Task, type TestDatabase } from "./support/helpers.js";
import { serverSuite } from "./support/server.js";

addRxPlugin(RxDBAttachmentsPlugin);

const COLLECTIONS = ["photo", "dedup", "restart", "resume", "change", "offline", "pending", "chunk", "hash", "browser"];

/** `taskSchema` with attachments enabled. */
const attachmentSchema: RxJsonSchema<Task> = { ...taskSchema, attachments: {} };

/** Counts AttachmentService calls; can run a hook after each uploaded chunk, and cut a download. */
class TransferLog {
    uploads = 0;
    uploadedChunks = 0;
    downloads = 0;
    missing = 0;
    /** The offset of each Download's first message. */
    downloadStarts: number[] = [];
    /** The first Download fails (UNAVAILABLE) after this many messages. */
    cutFirstDownloadAfter: number | undefined;
    /** Runs after chunk `n` (1-based) of an upload was handed to the transport. */
    afterUploadChunk: ((n: number) => Promise<void>) | undefined;

    readonly interceptor: Interceptor = (next) => async (req) => {
        const name = req.method.name;
        if (name === "Upload" && req.stream) {
            this.uploads += 1;
            const inner = req.message as AsyncIterable<UploadRequest>;
            const self = this;
            async function* counted(): AsyncGenerator<UploadRequest> {
                let n = 0;
                for await (const message of inner) {
                    yield message;
                    if (message.part.case === "chunk") {
                        n += 1;
                        self.uploadedChunks += 1;
                        await self.afterUploadChunk?.(n);
                    }
                }
            }
            return next({ ...req, message: counted() } as never);
        }
        if (name === "Download") {
            this.downloads += 1;
            const cutAfter = this.downloads === 1 ? this.cutFirstDownloadAfter : undefined;
            const res = (await next(req)) as StreamResponse;
            const inner = res.message as AsyncIterable<DownloadResponse>;
            const starts = this.downloadStarts;
            async function* observed(): AsyncGenerator<DownloadResponse> {
                let n = 0;
                for await (const message of inner) {
                    if (n === 0) {
                        starts.push(Number(message.offset));
                    }
                    if (cutAfter !== undefined && n === cutAfter) {
                        throw new ConnectError("download cut by the test", Code.Unavailable);
                    }
                    n += 1;
                    yield message;
                }
            }
            return { ...res, message: observed() } as never;
        }
        if (name === "Missing") {
            this.missing += 1;
        }
        return next(req);
    };
}

const sha256 = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex");

/** The bytes of attachment `name` of document `id` in `side`, or undefined. */
async function attachmentBytes(side: TestDatabase, id: string, name: string): Promise<Uint8Array | undefined> {
    const doc = (await side.tasks.findOne(id).exec()) as RxDocument<Task> | null;
    const attachment = doc?.getAttachment(name);
    if (!attachment) {
        return undefined;
    }
    return new Uint8Array(await (await attachment.getData()).arrayBuffer());
}

/** Whether `side` has attachment `name` of `id` with exactly `bytes`. */
async function hasBytes(side: TestDatabase, id: string, name: string, bytes: Uint8Array): Promise<boolean> {
    const got = await attachmentBytes(side, id, name);
    return got !== undefined && Buffer.from(got).equals(Buffer.from(bytes));
}

async function putAttachment(side: TestDatabase, id: string, name: string, bytes: Uint8Array, type: string): Promise<void> {
    const doc = await side.tasks.findOne(id).exec();
    assert.ok(doc, `document ${id} exists on the writing side`);
    await doc.putAttachment({ id: name, data: new Blob([bytes as BlobPart], { type }), type });
}

export function defineAttachmentsSuite(kind: SynclineTransportKind): void {
    describe(`syncline-rxdb attachments over ${kind}`, { timeout: 300_000 }, () => {
        const suite = serverSuite({
            collections: COLLECTIONS,
            label: `att_${kind}`,
            // Small chunks, so that a few MiB take many messages (the restart test
            // kills the server in the middle of them).
            extraConfig: "attachments.chunk_bytes_max = 65536",
        }, 120_000);
        const { cleanups, serverTest } = suite;

        async function database(name: string): Promise<TestDatabase> {
            const side = await createTestDatabase(name, undefined, attachmentSchema);
            cleanups.push(() => side.db.close());
            return side;
        }

        function replicate(
            side: TestDatabase,
            collectionName: string,
            log: TransferLog,
            entry: "node" | "browser" = "node",
            extra: Partial<Parameters<typeof replicateSyncline<Task>>[0]> = {},
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
                attachmentChunkBytes: 65_536,
                interceptors: [log.interceptor],
                ...extra,
            });
            cleanups.push(() => state.cancel());
            return state;
        }

        /** A and B; over gRPC-Web, B uses the browser entry point. */
        async function twoReplicas(collectionName: string) {
            const a = await database("a");
            const b = await database("b");
            const logA = new TransferLog();
            const logB = new TransferLog();
            const ra = replicate(a, collectionName, logA);
            const rb = replicate(b, collectionName, logB, kind === "grpc-web" ? "browser" : "node");
            await Promise.all([ra.awaitInitialReplication(), rb.awaitInitialReplication()]);
            return { a, b, ra, rb, logA, logB };
        }

        serverTest("a photo attached on A appears byte-identical on B; the server keeps only metadata in the document", async () => {
            const { a, b, logA, logB } = await twoReplicas("photo");
            const photo = new Uint8Array(randomBytes(3 * 1024 * 1024 + 123));
            await a.tasks.insert({ id: "p1", title: "holiday" });
            await putAttachment(a, "p1", "photo.jpg", photo, "image/jpeg");

            await waitFor("the photo on B", 60_000, () => hasBytes(b, "p1", "photo.jpg", photo));
            const onB = (await b.tasks.findOne("p1").exec())?.getAttachment("photo.jpg");
            assert.equal(onB?.type, "image/jpeg");
            assert.equal(onB?.length, photo.length);
            assert.equal(onB?.digest, sha256(photo));

            // The document on the server describes the attachment; the bytes never travel in it.
            const docs = await pullAll(suite.server.url, "grpc-web", "photo");
            assert.deepEqual(docs.get("p1")?.body._attachments, {
                "photo.jpg": { digest: sha256(photo), length: photo.length, type: "image/jpeg" },
            });
            assert.equal(logA.uploads, 1, "one upload");
            assert.ok(logA.uploadedChunks >= Math.ceil(photo.length / 65_536), "uploaded in chunks");
            assert.equal(logB.downloads, 1, "one download");
            assert.deepEqual(suite.server.query("SELECT count(*), sum(length) FROM syncline_blobs WHERE collection = 'photo'"), [
                `1|${photo.length}`,
            ]);
        });

        serverTest("the same file on 100 documents is uploaded, stored and downloaded once", async () => {
            const { a, b, logA, logB } = await twoReplicas("dedup");
            const file = new Uint8Array(randomBytes(256 * 1024));
            const ids = Array.from({ length: 100 }, (_, i) => `d${String(i).padStart(3, "0")}`);
            await a.tasks.bulkInsert(ids.map((id) => ({ id, title: id })));
            for (const id of ids) {
                await putAttachment(a, id, "file.bin", file, "application/octet-stream");
            }
            await waitFor("the file on all 100 documents of B", 60_000, async () => {
                const docs = await b.tasks.find().exec();
                return docs.length === 100 && docs.every((d) => d.getAttachment("file.bin")?.digest === sha256(file));
            });
            for (const id of [ids[0], ids[57], ids[99]]) {
                assert.ok(await hasBytes(b, id, "file.bin", file), `${id} has the bytes on B`);
            }
            assert.deepEqual(suite.server.query("SELECT count(*), sum(length) FROM syncline_blobs WHERE collection = 'dedup'"), [
                `1|${file.length}`,
            ]);
            assert.deepEqual(
                suite.server.query(
                    "SELECT sum(octet_length(c.data)) FROM syncline_blob_chunks c " +
                        "JOIN syncline_blobs b ON b.location = c.upload_id WHERE b.collection = 'dedup'",
                ),
                [`${file.length}`],
                "the bytes are stored once",
            );
            assert.equal(logA.uploads, 1, "uploaded once");
            assert.equal(logB.downloads, 1, "downloaded once");
        });

        serverTest("an upload cut by a server restart finishes after the restart", async () => {
            const { a, b, logA } = await twoReplicas("restart");
            const blob = new Uint8Array(randomBytes(4 * 1024 * 1024));
            let restarted = false;
            logA.afterUploadChunk = async (n) => {
                if (n === 5 && !restarted) {
                    restarted = true;
                    await suite.server.restart();
                }
            };
            await a.tasks.insert({ id: "r1", title: "big" });
            await putAttachment(a, "r1", "scan.pdf", blob, "application/pdf");
            await waitFor("the scan on B after the restart", 90_000, () => hasBytes(b, "r1", "scan.pdf", blob));
            assert.ok(restarted, "the server was restarted during the upload");
            assert.ok(logA.uploads >= 2, `the upload was retried (${logA.uploads} uploads)`);
            assert.deepEqual(suite.server.query("SELECT count(*), sum(length) FROM syncline_blobs WHERE collection = 'restart'"), [
                `1|${blob.length}`,
            ]);
        });

        serverTest("a download cut mid-stream resumes from the byte it reached", async () => {
            const { a, b, logB } = await twoReplicas("resume");
            logB.cutFirstDownloadAfter = 5;
            const bytes = new Uint8Array(randomBytes(1024 * 1024 + 7));
            await a.tasks.insert({ id: "s1", title: "resumed" });
            await putAttachment(a, "s1", "video.mp4", bytes, "video/mp4");
            await waitFor("the video on B", 60_000, () => hasBytes(b, "s1", "video.mp4", bytes));
            // The server's chunks are 64 KiB (chunk_bytes_max): the second call starts at 5 of them.
            assert.deepEqual(logB.downloadStarts, [0, 5 * 65_536]);
            assert.equal(logB.downloads, 2);
        });

        serverTest("a changed attachment replicates its new bytes, and a removed one its removal, both ways", async () => {
            const { a, b } = await twoReplicas("change");
            const first = new Uint8Array(randomBytes(100_000));
            const second = new Uint8Array(randomBytes(120_000));
            await a.tasks.insert({ id: "c1", title: "note" });
            await putAttachment(a, "c1", "note.txt", first, "text/plain");
            await waitFor("the first version on B", 30_000, () => hasBytes(b, "c1", "note.txt", first));

            // Same name, new bytes: B must not keep the old bytes under the new digest.
            await putAttachment(a, "c1", "note.txt", second, "text/plain");
            await waitFor("the second version on B", 30_000, () => hasBytes(b, "c1", "note.txt", second));

            const doc = await a.tasks.findOne("c1").exec();
            await doc?.getAttachment("note.txt")?.remove();
            await waitFor("the removal on B", 30_000, async () => {
                const onB = await b.tasks.findOne("c1").exec();
                return onB !== null && onB.allAttachments().length === 0;
            });

            // B writes, A reads (over gRPC-Web: an upload from the browser entry point).
            const third = new Uint8Array(randomBytes(50_000));
            await putAttachment(b, "c1", "reply.txt", third, "text/plain");
            await waitFor("B's attachment on A", 30_000, () => hasBytes(a, "c1", "reply.txt", third));
        });

        serverTest("a replica that was offline gets the attachments added meanwhile when it replicates again", async () => {
            const { a, b, rb } = await twoReplicas("offline");
            await rb.cancel();
            const bytes = new Uint8Array(randomBytes(500_000));
            await a.tasks.insert({ id: "o1", title: "while offline" });
            await putAttachment(a, "o1", "img.png", bytes, "image/png");
            await waitFor(
                "A pushed",
                30_000,
                async () => (await pullAll(suite.server.url, kind, "offline")).get("o1")?.body._attachments !== undefined,
            );
            const again = replicate(b, "offline", new TransferLog(), kind === "grpc-web" ? "browser" : "node");
            await again.awaitInitialReplication();
            await waitFor("the attachment on B", 30_000, () => hasBytes(b, "o1", "img.png", bytes));
        });

        serverTest("an attachment added while the app was closed is uploaded when it replicates again", async () => {
            const { a, b, ra } = await twoReplicas("pending");
            await ra.cancel();
            const bytes = new Uint8Array(randomBytes(300_000));
            await a.tasks.insert({ id: "q1", title: "written offline" });
            await putAttachment(a, "q1", "draft.bin", bytes, "application/octet-stream");
            const log = new TransferLog();
            const again = replicate(a, "pending", log);
            await again.awaitInitialReplication();
            await waitFor("the attachment on B", 30_000, () => hasBytes(b, "q1", "draft.bin", bytes));
            assert.equal(log.uploads, 1);
        });

        serverTest("chunks over the server's chunk_bytes_max stop the replication and keep the local attachment", async () => {
            const a = await database("a");
            const state = replicate(a, "chunk", new TransferLog(), "node", { attachmentChunkBytes: 65_537 });
            const errors: unknown[] = [];
            const sub = state.error$.subscribe((err) => errors.push(err));
            cleanups.push(async () => sub.unsubscribe());
            await state.awaitInitialReplication();
            const bytes = new Uint8Array(randomBytes(200_000));
            await a.tasks.insert({ id: "k1", title: "too big chunks" });
            await putAttachment(a, "k1", "big.bin", bytes, "application/octet-stream");
            await waitFor("the replication stopped", 30_000, () => state.isStopped());
            assert.ok(
                errors.some((err) => /chunk_bytes_max/.test(JSON.stringify(err))),
                `an error names chunk_bytes_max: ${JSON.stringify(errors).slice(0, 2000)}`,
            );
            // Not handed back as a refused row: the local document keeps its attachment.
            assert.ok(await hasBytes(a, "k1", "big.bin", bytes));
        });

        serverTest("a database with another hashFunction stops the replication with an error naming it", async () => {
            const db = await createRxDatabase({
                name: `hash${Date.now()}`,
                storage: getRxStorageMemory(),
                multiInstance: false,
                hashFunction: async (input) => `md5-${String(typeof input === "string" ? input.length : 0)}`,
            });
            cleanups.push(() => db.close());
            const { tasks } = await db.addCollections({ tasks: { schema: attachmentSchema } });
            const side: TestDatabase = { db, tasks: tasks as RxCollection<Task> };
            const state = replicate(side, "hash", new TransferLog());
            const errors: unknown[] = [];
            const sub = state.error$.subscribe((err) => errors.push(err));
            cleanups.push(async () => sub.unsubscribe());
            await state.awaitInitialReplication();
            await side.tasks.insert({ id: "h1", title: "other hash" });
            await putAttachment(side, "h1", "a.bin", new Uint8Array([1, 2, 3]), "application/octet-stream");
            await waitFor("the replication stopped", 30_000, () => state.isStopped());
            assert.ok(errors.some((err) => /defaultHashSha256/.test(JSON.stringify(err))), "the error names the hash function");
            assert.equal((await pullAll(suite.server.url, kind, "hash")).get("h1")?.body._attachments, undefined, "no attachment pushed");
        });

        if (kind === "grpc-web") {
            serverTest("the browser entry point uploads a photo in chunks; connect-web's own transport is told it cannot", async () => {
                const { a, b, logB } = await twoReplicas("browser");
                const photo = new Uint8Array(randomBytes(2 * 1024 * 1024 + 5));
                await b.tasks.insert({ id: "w0", title: "from a browser" });
                await putAttachment(b, "w0", "photo.jpg", photo, "image/jpeg");
                await waitFor("the browser's photo on A", 60_000, () => hasBytes(a, "w0", "photo.jpg", photo));
                assert.equal(logB.uploads, 1);
                assert.ok(logB.uploadedChunks >= Math.ceil(photo.length / 65_536), "uploaded in chunks");

                const c = await database("c");
                const state = replicate(c, "browser", new TransferLog(), "node", {
                    transport: createGrpcWebTransport({ baseUrl: suite.server.url }),
                });
                const errors: unknown[] = [];
                const sub = state.error$.subscribe((err) => errors.push(err));
                cleanups.push(async () => sub.unsubscribe());
                await state.awaitInitialReplication();
                await c.tasks.insert({ id: "w1", title: "through connect-web" });
                await putAttachment(c, "w1", "x.bin", new Uint8Array([1, 2, 3]), "application/octet-stream");
                const says = (err: unknown): boolean => /cannot upload attachments of 'browser'/.test(JSON.stringify(err));
                await waitFor("the upload error", 30_000, () => errors.some(says));
                assert.match(JSON.stringify(errors.find(says)), /client stream/);
                // A permanent error: the replication stops instead of retrying forever.
                await waitFor("the replication stopped", 10_000, () => state.isStopped());
            });
        }
    });
}
