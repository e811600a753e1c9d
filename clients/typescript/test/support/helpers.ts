// Test helpers: RxDB databases on memory storage, a call-recording interceptor, a raw client
// for looking at the server's state, and polling.

import { createHmac } from "node:crypto";

import { Code, ConnectError, createClient, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { createRxDatabase, type RxCollection, type RxConflictHandler, type RxDatabase, type RxJsonSchema } from "rxdb";
import { getRxStorageMemory } from "rxdb/plugins/storage-memory";

import {
    ReplicationService,
    type FetchResponse,
    type PullResponse,
    type PushResponse,
    type SubscribeResponse,
} from "../../src/gen/syncline/v1/replication_pb.js";
import type { SynclineTransportKind } from "../../src/index.js";

export interface Task {
    id: string;
    title: string;
    done?: boolean;
    n?: number;
}

export const taskSchema: RxJsonSchema<Task> = {
    version: 0,
    primaryKey: "id",
    type: "object",
    properties: {
        id: { type: "string", maxLength: 100 },
        title: { type: "string" },
        done: { type: "boolean" },
        n: { type: "number" },
    },
    required: ["id", "title"],
};

let databaseCounter = 0;

export interface TestDatabase {
    db: RxDatabase;
    tasks: RxCollection<Task>;
}

export async function createTestDatabase(
    name: string,
    conflictHandler?: RxConflictHandler<Task>,
    schema: RxJsonSchema<Task> = taskSchema,
): Promise<TestDatabase> {
    databaseCounter += 1;
    const db = await createRxDatabase({
        name: `${name}${databaseCounter}x${Date.now()}`.toLowerCase().replace(/[^a-z0-9]/g, ""),
        storage: getRxStorageMemory(),
        multiInstance: false,
        eventReduce: true,
    });
    const collections = await db.addCollections({
        tasks: { schema, conflictHandler },
    });
    return { db, tasks: collections.tasks as RxCollection<Task> };
}

/** Records every call a replication makes; can delay Push responses. */
export class CallLog {
    pulls = 0;
    pullTimes: number[] = [];
    pushes = 0;
    pushRows: number[] = [];
    subscribesOpened = 0;
    /** Change batches received on Subscribe, with the time they arrived. */
    changeBatches: Array<{ at: number; ids: string[] }> = [];
    /** [start, end] of each Push, end after the added delay. */
    pushWindows: Array<{ start: number; end: number }> = [];
    /** Added to every Push after the server answered (simulates a slow network). */
    pushDelayMs = 0;
    /** Documents received by Pull, Fetch and Subscribe, and the ids pushed. */
    pulledDocs = 0;
    fetchedDocs = 0;
    streamedDocs = 0;
    pushedIds: string[] = [];
    /** Reconcile, ReconcileList and Fetch calls. */
    reconcileCalls = 0;
    /** `Resync` events received on Subscribe. */
    resyncs = 0;
    /** While true, Subscribe streams fail (UNAVAILABLE) at open and at their next message. */
    failSubscribes = false;
    /** The idempotency key of each Push, in order. */
    pushKeys: string[] = [];
    /** Rows the server resolved (PushResponse.resolved) and Push responses marked replayed. */
    resolvedRows = 0;
    replayedPushes = 0;
    /**
     * Pushes whose acknowledgement is lost: the server answers, and the client is told
     * UNAVAILABLE instead (as when a connection drops after the server committed).
     */
    loseNextPushAcks = 0;

    readonly interceptor: Interceptor = (next) => async (req) => {
        const name = req.method.name;
        if (name === "Pull") {
            this.pulls += 1;
            this.pullTimes.push(Date.now());
            const res = (await next(req)) as UnaryResponse;
            this.pulledDocs += (res.message as unknown as PullResponse).documents.length;
            return res as never;
        }
        if (name === "Reconcile" || name === "ReconcileList" || name === "Fetch") {
            this.reconcileCalls += 1;
            const res = (await next(req)) as UnaryResponse;
            if (name === "Fetch") {
                this.fetchedDocs += (res.message as unknown as FetchResponse).documents.length;
            }
            return res as never;
        }
        if (name === "Push") {
            this.pushes += 1;
            const start = Date.now();
            const message = req.message as unknown as {
                rows: Array<{ newDocumentState?: { id: string } }>;
                idempotencyKey: string;
            };
            this.pushKeys.push(message.idempotencyKey);
            this.pushRows.push(message.rows.length);
            this.pushedIds.push(...message.rows.map((r) => r.newDocumentState?.id ?? ""));
            const window = { start, end: Number.POSITIVE_INFINITY };
            this.pushWindows.push(window);
            try {
                const res = (await next(req)) as UnaryResponse;
                const answer = res.message as unknown as PushResponse;
                this.resolvedRows += answer.resolved.length;
                this.replayedPushes += answer.replayed ? 1 : 0;
                if (this.loseNextPushAcks > 0) {
                    this.loseNextPushAcks -= 1;
                    throw new ConnectError("acknowledgement lost (simulated by the test)", Code.Unavailable);
                }
                if (this.pushDelayMs > 0) {
                    await new Promise((r) => setTimeout(r, this.pushDelayMs));
                }
                return res as never;
            } finally {
                window.end = Date.now();
            }
        }
        if (name === "Subscribe") {
            if (this.failSubscribes) {
                throw new ConnectError("Subscribe blocked by the test", Code.Unavailable);
            }
            const res = (await next(req)) as StreamResponse;
            this.subscribesOpened += 1;
            const log = this.changeBatches;
            const self = this;
            const inner = res.message as AsyncIterable<SubscribeResponse>;
            async function* observe(): AsyncGenerator<SubscribeResponse> {
                for await (const message of inner) {
                    if (self.failSubscribes) {
                        throw new ConnectError("Subscribe blocked by the test", Code.Unavailable);
                    }
                    if (message.event.case === "resync") {
                        self.resyncs += 1;
                    }
                    if (message.event.case === "changes" && message.event.value.documents.length > 0) {
                        self.streamedDocs += message.event.value.documents.length;
                        log.push({ at: Date.now(), ids: message.event.value.documents.map((d) => d.id) });
                    }
                    yield message;
                }
            }
            return { ...res, message: observe() } as never;
        }
        return next(req);
    };

    /** Whether a change batch holding `id` arrived while a Push was in flight. */
    batchArrivedDuringPush(id: string): boolean {
        return this.changeBatches.some(
            (b) => b.ids.includes(id) && this.pushWindows.some((w) => b.at > w.start && b.at < w.end),
        );
    }
}

/** A plain client for checking the server's state directly. */
export function rawClient(url: string, kind: SynclineTransportKind) {
    const transport =
        kind === "grpc"
            ? createGrpcTransport({ baseUrl: url })
            : createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" });
    return createClient(ReplicationService, transport);
}

export interface ServerDoc {
    id: string;
    deleted: boolean;
    body: Record<string, unknown>;
}

/** Every document of a server collection at its latest state (Pull until empty). */
export async function pullAll(url: string, kind: SynclineTransportKind, collection: string): Promise<Map<string, ServerDoc>> {
    const client = rawClient(url, kind);
    const docs = new Map<string, ServerDoc>();
    let token = "";
    for (;;) {
        const res: PullResponse = await client.pull({ collection, checkpoint: { token }, limit: 1000 });
        if (res.documents.length === 0) {
            return docs;
        }
        for (const d of res.documents) {
            const text = new TextDecoder().decode(d.json);
            docs.set(d.id, { id: d.id, deleted: d.deleted, body: text ? JSON.parse(text) : {} });
        }
        token = res.checkpoint?.token ?? token;
    }
}

/** Polls `check` every 20 ms until it returns true; fails with `what` after `timeoutMs`. */
export async function waitFor(what: string, timeoutMs: number, check: () => boolean | Promise<boolean>): Promise<number> {
    const start = Date.now();
    for (;;) {
        if (await check()) {
            return Date.now() - start;
        }
        if (Date.now() - start > timeoutMs) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        }
        await new Promise((r) => setTimeout(r, 20));
    }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The collection's live (not deleted) documents as plain objects by id. */
export async function snapshot(tasks: RxCollection<Task>): Promise<Map<string, Task>> {
    const docs = await tasks.find().exec();
    return new Map(docs.map((d) => [d.id, d.toJSON() as Task]));
}

/** `taskSchema` plus an `owner` field, for replications with `ownerField: "owner"`. */
export const ownedTaskSchema: RxJsonSchema<Task & { owner?: string }> = {
    ...taskSchema,
    properties: { ...taskSchema.properties, owner: { type: "string" } },
} as RxJsonSchema<Task & { owner?: string }>;

const base64url = (data: string | Buffer): string => Buffer.from(data).toString("base64url");

/**
 * An HS256 JWT: `sub`, `scope` (space separated) and `exp` = now + `ttlSeconds` (negative for
 * an expired token).
 */
export function hs256Token(secret: string, sub: string, ttlSeconds: number, scopes: string[] = []): string {
    const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
    const claims: Record<string, unknown> = { sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds };
    if (scopes.length > 0) {
        claims.scope = scopes.join(" ");
    }
    const payload = base64url(JSON.stringify(claims));
    const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
    return `${header}.${payload}.${signature}`;
}

/** `promise`, or a rejection naming `what` after `ms` (so a hang fails the test clearly). */
export function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
