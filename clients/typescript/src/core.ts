// replicateSyncline(): RxDB replication of one collection through a Syncline server.
//
// Built on RxDB's replicateRxCollection():
//   pull.handler  -> ReplicationService.Pull   (checkpoint = { token })
//   push.handler  -> ReplicationService.Push   (conflicts and rows the server resolved come back
//                    as RxDB master states; one idempotency key per batch, reused on retry)
//   pull.stream$  <- ReplicationService.Subscribe (ChangeBatch -> { documents, checkpoint },
//                    Resync / stream errors / reconnects -> 'RESYNC', Heartbeat ignored)
//   an expired or refused checkpoint -> Reconcile / ReconcileList / Fetch (reconcile.ts), the
//                    result handed to RxDB as pulled documents and tombstones, then Pull from C0
//                    (with a `selector`: filtered Pulls from the beginning instead, selector.ts)
//
// This module is transport-agnostic: the entry points (index.ts for Node, browser.ts for
// browsers) pass in how to build a Connect transport for 'grpc' and 'grpc-web'.

import { create, toBinary } from "@bufbuild/protobuf";
import {
    Code,
    ConnectError,
    createClient,
    type CallOptions,
    type Client,
    type Interceptor,
    type Transport,
} from "@connectrpc/connect";
import { Observable } from "rxjs";
import { errorToPlainJson, newRxError } from "rxdb";
import type {
    MangoQuerySelector,
    ReplicationPullOptions,
    ReplicationPushOptions,
    RxCollection,
    RxReplicationPullStreamItem,
    RxReplicationWriteToMasterRow,
    WithDeleted,
} from "rxdb";
import { replicateRxCollection, type RxReplicationState } from "rxdb/plugins/replication";

import { AttachmentSync } from "./attachments.js";
import { canonicalBody, fromServerDocument, toServerDocument } from "./convert.js";
import { SynclineError } from "./errors.js";
import { PullAhead } from "./pull-ahead.js";
import { pullPage } from "./pull-page.js";
import { AbsorbedStates, PendingPushKeys } from "./push-keys.js";
import { reconcile } from "./reconcile.js";
import { RevisionStore, sha256Hex } from "./revisions.js";
import { refusalError, refusedMasterState } from "./refusals.js";
import { encodeSelector, OutOfScopeStates, startOver, withLocalFields } from "./selector.js";
import {
    ChangeRowSchema,
    DocumentSchema,
    type Document,
    PullRequestSchema,
    PushMode,
    PushRequestSchema,
    ReplicationService,
    SubscribeRequestSchema,
} from "./gen/syncline/v1/replication_pb.js";
import { AttachmentService } from "./gen/syncline/v1/attachments_pb.js";

/** The checkpoint RxDB stores for a Syncline replication: the server's opaque token. */
export interface SynclineCheckpoint {
    token: string;
}

/** Which wire protocol to use. Browsers support only 'grpc-web'. */
export type SynclineTransportKind = "grpc" | "grpc-web";

export interface SynclineReplicationOptions<RxDocType> {
    /** The RxDB collection to replicate. */
    collection: RxCollection<RxDocType, any, any, any>;
    /** The server's base URL, e.g. `http://127.0.0.1:50051`. */
    url: string;
    /** The collection's name on the server (default: the RxDB collection's name). */
    collectionName?: string;
    /** A bearer token sent as `authorization: Bearer <token>` on every call. */
    token?: string;
    /**
     * Returns the bearer token; called before every call and every stream (re)connect, so
     * a refreshed token is picked up. Takes precedence over `token`.
     */
    getToken?: () => string | undefined | Promise<string | undefined>;
    /**
     * 'grpc' (native gRPC over HTTP/2; Node only), 'grpc-web' (HTTP/1.1; Node and browsers),
     * or a ready Connect transport. Default: 'grpc' in Node, 'grpc-web' in browsers.
     */
    transport?: SynclineTransportKind | Transport;
    /** Keep replicating (pull stream + live pushes). Default true. */
    live?: boolean;
    /**
     * Documents per Pull and rows per Push. Default 100. Must not exceed the server's
     * `pull_limit_max` and `push_rows_max` (1000 by default).
     */
    batchSize?: number;
    /** Milliseconds before a failed Pull or Push is retried (RxDB's retryTime). Default 5000. */
    retryTime?: number;
    /** Start replicating at once (RxDB's autoStart). Default true. */
    autoStart?: boolean;
    /** RxDB's waitForLeadership (multi-tab). Default true. */
    waitForLeadership?: boolean;
    /** RxDB's toggleOnDocumentVisible. Default true. */
    toggleOnDocumentVisible?: boolean;
    /**
     * RxDB's replication identifier (keys the stored checkpoints). Default:
     * `syncline:<collectionName>:<url>`.
     */
    replicationIdentifier?: string;
    /** Deadline of each Pull and Push in milliseconds. Default 30000. */
    callTimeoutMs?: number;
    /** First delay before re-opening a failed Subscribe stream. Default 250 ms. */
    reconnectInitialDelayMs?: number;
    /** Largest delay between stream reconnect attempts (exponential backoff). Default 10000 ms. */
    reconnectMaxDelayMs?: number;
    /**
     * Re-open the stream when nothing (not even a Heartbeat) arrived for this long; set it
     * above the server's `heartbeat_seconds` (default 15 s). Default 45000 ms; 0 turns it off.
     */
    streamIdleTimeoutMs?: number;
    /** Extra Connect interceptors (logging, tracing, custom headers). */
    interceptors?: Interceptor[];
    /**
     * The RxDB document field that carries the server's `Document.owner` (the principal
     * owning the document), e.g. "owner". The collection's schema must declare it as a
     * string; it is filled on every pulled document and never stored in the server's body. A
     * principal holding the service scope may set it on a new document to name its owner;
     * other principals leave it empty or name themselves. Default: owners are not mapped.
     */
    ownerField?: string;
    /**
     * Compress requests with gzip ('grpc' and Node's 'grpc-web' transports). Responses are
     * always accepted compressed (gzip) when the server chooses to compress. Default 'none',
     * because a server built without gzip support refuses compressed requests (UNIMPLEMENTED).
     */
    compression?: SynclineCompression;
    /**
     * Bytes per chunk when uploading an attachment (collections whose schema has
     * `attachments`); at most the server's `chunk_bytes_max` (1 MiB by default). Default
     * 262144 (256 KiB).
     */
    attachmentChunkBytes?: number;
    /**
     * Selective sync: replicate only the server documents matching this Mango selector, over
     * the fields the server collection declares in `filter_fields` (operators `$eq $ne $gt
     * $gte $lt $lte $in $nin $exists $and $or`, dotted paths), e.g. `{ done: false }`. Sent
     * on every Pull and Subscribe. A document that stops matching (someone edits it out, or
     * deletes it) arrives as a removal and is deleted locally, never on the server: the plugin
     * hands it to RxDB as the server's state, so RxDB does not push the deletion back. Local
     * writes are pushed as usual; one that moves a document out of the selector is followed
     * by its removal. Changing the selector of a replication (same replicationIdentifier)
     * starts it over: the server refuses the old checkpoint, the plugin pulls every document
     * matching the new selector and deletes locally the documents it did not send. Default:
     * every document.
     */
    selector?: MangoQuerySelector<RxDocType>;
    /**
     * Let the server compress its responses with gzip (Node transports; browsers negotiate
     * by themselves). Default 'gzip': fewer bytes on a real network. 'none' saves CPU on
     * both sides where bytes are cheap (same host, a fast LAN): on loopback an initial sync
     * ran about 1.5x faster without it (docs/performance.md, scenario 11).
     */
    responseCompression?: SynclineCompression;
    /** RxDB pull/push modifiers, passed through. */
    pull?: Pick<ReplicationPullOptions<RxDocType, SynclineCheckpoint>, "modifier">;
    push?: Pick<ReplicationPushOptions<RxDocType>, "modifier">;
}

/** Whether requests are compressed. */
export type SynclineCompression = "gzip" | "none";

/** What a transport factory needs besides the kind and URL. */
export interface TransportSettings {
    interceptors: Interceptor[];
    compression: SynclineCompression;
    /** Whether gzip responses are accepted (absent: 'gzip'). */
    responseCompression?: SynclineCompression;
}

/** Checks a compression option's value; `name` for the message. */
export function checkCompression(name: string, value: unknown): SynclineCompression {
    if (value !== "none" && value !== "gzip") {
        throw new Error(`syncline-rxdb: ${name} must be 'gzip' or 'none', not '${String(value)}'`);
    }
    return value;
}

/** Builds a Connect transport for a transport kind; supplied by the entry point. */
export type TransportFactory = (kind: SynclineTransportKind, url: string, settings: TransportSettings) => Transport;

export type SynclineReplicationState<RxDocType> = RxReplicationState<RxDocType, SynclineCheckpoint>;

type ReplicationClient = Client<typeof ReplicationService>;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
        if (signal.aborted) {
            resolve();
            return;
        }
        const timer = setTimeout(done, ms);
        function done(): void {
            clearTimeout(timer);
            signal.removeEventListener("abort", done);
            resolve();
        }
        signal.addEventListener("abort", done);
    });
}

/** The interceptor that sends `authorization: Bearer <token>`, or undefined without a token. */
export function authInterceptor(
    token: string | undefined,
    getToken: SynclineReplicationOptions<unknown>["getToken"],
): Interceptor | undefined {
    if (token === undefined && getToken === undefined) {
        return undefined;
    }
    return (next) => async (req) => {
        const value = getToken ? await getToken() : token;
        if (value) {
            req.header.set("authorization", `Bearer ${value}`);
        }
        return next(req);
    };
}

/**
 * Starts RxDB replication of `options.collection` through Syncline and returns RxDB's
 * replication state (awaitInitialReplication, awaitInSync, error$, cancel, ...).
 */
export function replicateSynclineWith<RxDocType>(
    options: SynclineReplicationOptions<RxDocType>,
    defaultTransport: SynclineTransportKind,
    transportFactory: TransportFactory,
): SynclineReplicationState<RxDocType> {
    const collection = options.collection;
    const collectionName = options.collectionName ?? collection.name;
    const primaryPath = collection.schema.primaryPath as string;
    const batchSize = options.batchSize ?? 100;
    const live = options.live ?? true;
    const callTimeoutMs = options.callTimeoutMs ?? 30_000;
    const reconnectInitialDelayMs = options.reconnectInitialDelayMs ?? 250;
    const reconnectMaxDelayMs = options.reconnectMaxDelayMs ?? 10_000;
    const streamIdleTimeoutMs = options.streamIdleTimeoutMs ?? 45_000;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
        throw new Error(`syncline-rxdb: batchSize must be a positive integer, not ${batchSize}`);
    }
    const ownerField = options.ownerField;
    if (ownerField !== undefined) {
        const property = (collection.schema.jsonSchema.properties as Record<string, { type?: unknown }>)[ownerField];
        if (ownerField === primaryPath || property === undefined || property.type !== "string") {
            throw new Error(
                `syncline-rxdb: ownerField '${ownerField}' must be a string property of the ` +
                    "collection's schema, other than the primary key",
            );
        }
    }
    const compression = options.compression ?? "none";
    if (compression !== "none" && compression !== "gzip") {
        throw new Error(`syncline-rxdb: compression must be 'gzip' or 'none', not '${String(compression)}'`);
    }
    const selector = encodeSelector(options.selector);
    const outOfScope =
        selector && options.selector ? new OutOfScopeStates(collection.schema.jsonSchema, options.selector) : undefined;

    const interceptors: Interceptor[] = [];
    const auth = authInterceptor(options.token, options.getToken);
    if (auth) {
        interceptors.push(auth);
    }
    interceptors.push(...(options.interceptors ?? []));
    const transportOption = options.transport ?? defaultTransport;
    const transport =
        typeof transportOption === "string"
            ? transportFactory(transportOption, options.url, {
                  interceptors,
                  compression,
                  responseCompression: checkCompression("responseCompression", options.responseCompression ?? "gzip"),
              })
            : transportOption;
    const client: ReplicationClient = createClient(ReplicationService, transport);
    const replicationIdentifier = options.replicationIdentifier ?? `syncline:${collectionName}:${options.url}`;
    const revisions = RevisionStore.open(collection, replicationIdentifier);

    // The newest checkpoint this replication has seen (from Pull or the stream): where a
    // (re)opened Subscribe starts. RxDB keeps its own, persisted checkpoint for Pull.
    let streamCheckpoint: SynclineCheckpoint | undefined;
    // Set when the stream's position expired (Resync): the next successful Pull's checkpoint
    // replaces it, whatever that Pull returned.
    let streamCheckpointStale = false;
    let pullSucceeded = false;
    const pullSucceededWaiters: Array<() => void> = [];

    // RxDB issue 5571: change batches that arrive while a push is in flight are not handed
    // to RxDB (it could store their checkpoint without storing their documents); instead a
    // 'RESYNC' is emitted when the last push in flight has finished, so RxDB pulls from its
    // own checkpoint and gets those documents by Pull.
    let pushesInFlight = 0;
    let batchWithheldDuringPush = false;
    let emitToStream: ((item: RxReplicationPullStreamItem<RxDocType, SynclineCheckpoint>) => void) | undefined;

    const callOptions = (): CallOptions => ({ timeoutMs: callTimeoutMs });
    const attachmentChunkBytes = options.attachmentChunkBytes ?? 256 * 1024;
    if (!Number.isInteger(attachmentChunkBytes) || attachmentChunkBytes < 1) {
        throw new Error(`syncline-rxdb: attachmentChunkBytes must be a positive integer, not ${attachmentChunkBytes}`);
    }

    let replicationState: SynclineReplicationState<RxDocType> | undefined;
    const reportError = (err: Error): void => {
        replicationState?.subjects.error.next(err as never);
    };

    // A call that fails in a way retrying cannot fix (a bad token even after a refresh, a
    // missing scope, an unknown collection, a request the server refuses as a whole) stops
    // the replication: RxDB itself would retry it every retryTime forever. The error is
    // reported on error$ (by RxDB, as RC_PULL / RC_PUSH), and awaitInitialReplication()
    // rejects with it when the first sync had not completed.
    let initialDone = false;
    let stoppedByError = false;
    let failInitial: ((err: SynclineError) => void) | undefined;
    const initialFailure = new Promise<never>((_, reject) => {
        failInitial = reject;
    });
    initialFailure.catch(() => undefined); // nobody may be waiting: not an unhandled rejection
    const callFailed = (err: unknown): SynclineError => {
        const error = SynclineError.from(err);
        if (error.permanent) {
            if (!initialDone) {
                failInitial?.(error);
            }
            if (!stoppedByError) {
                stoppedByError = true;
                // After RxDB has reported the error thrown below.
                setTimeout(() => void replicationState?.cancel(), 0);
            }
        }
        return error;
    };

    /**
     * One unary call. An expired token (reason TOKEN_EXPIRED) is retried once at once, which
     * asks getToken for a fresh one: a normal expiry is not an error.
     */
    const unary = async <T>(call: () => Promise<T>, handled?: (err: SynclineError) => boolean): Promise<T> => {
        const failed = (err: unknown): SynclineError => {
            const error = SynclineError.from(err);
            return handled?.(error) ? error : callFailed(error);
        };
        try {
            return await call();
        } catch (err) {
            const error = SynclineError.from(err);
            if (error.code !== Code.Unauthenticated || error.reason !== "TOKEN_EXPIRED") {
                throw failed(error);
            }
        }
        try {
            return await call();
        } catch (err) {
            throw failed(err);
        }
    };

    // Attachment bytes (attachments.ts): undefined for a collection without attachments, which
    // then replicates exactly as before.
    const attachments = AttachmentSync.for({
        collection,
        collectionName,
        client: createClient(AttachmentService, transport),
        callTimeoutMs,
        chunkBytes: attachmentChunkBytes,
        unary: (call, handled) => unary(call, handled),
        fail: (err) => callFailed(err),
        reportError: (err) => reportError(err),
    });

    // The server revision of each live document handed to RxDB (Pull, stream, conflict,
    // reconcile), with a hash of the body it came with, kept beside the collection
    // (revisions.ts): what a reconcile compares. A revision counts only while the local
    // document still has that body, because RxDB may not have applied what it was handed (a
    // paused replication, a pending local edit); otherwise, and for documents never received
    // through this plugin, the document is compared with an empty revision, so its bucket is
    // listed and it is fetched if the server still has it live: exact, only less frugal.
    const received = (docs: readonly Document[]): WithDeleted<RxDocType>[] => {
        const states = docs.map((doc) => fromServerDocument(doc, primaryPath, ownerField, attachments !== undefined));
        const entries = docs.map((doc, i) =>
            doc.deleted ? { id: doc.id } : { id: doc.id, revision: doc.revision, body: canonicalBody(states[i], ownerField) },
        );
        void revisions.then((store) => store.record(entries));
        return states as unknown as WithDeleted<RxDocType>[];
    };

    /** Body-less deletions (removals, a reconcile's tombstones) with the local copy's fields (selector.ts). */
    const filled = (states: WithDeleted<RxDocType>[]): Promise<WithDeleted<RxDocType>[]> =>
        withLocalFields(states as unknown as Array<Record<string, unknown>>, primaryPath, ownerField, (ids) =>
            collection.storageInstance.findDocumentsById(ids, true) as Promise<Array<Record<string, unknown>>>,
        ) as unknown as Promise<WithDeleted<RxDocType>[]>;

    // A checkpoint the server no longer accepts (FAILED_PRECONDITION, reason CHECKPOINT_EXPIRED:
    // at or before the purge horizon, or of another dataset generation; CHECKPOINT_INVALID: a
    // token from before a key change, or of another principal) is answered by a reconcile
    // instead of a re-download: the local live documents' (id, revision) are compared with
    // the server's by hash buckets, what differs is fetched, the ids the server no longer has
    // come to RxDB as pulled tombstones (so they are removed locally and never pushed back),
    // and pulling continues from the reconcile's checkpoint C0. Said once on error$ and in
    // the console per refusal.
    const refused = (error: SynclineError): boolean =>
        error.reason === "CHECKPOINT_INVALID" ||
        error.reason === "CHECKPOINT_EXPIRED" ||
        error.code === Code.FailedPrecondition;

    // Pages decoded by hand (pull-page.ts), the next one requested while RxDB stores this
    // one (pull-ahead.ts; pushes stop it reading ahead).
    const ahead = new PullAhead((token: string | undefined, limit: number) =>
        pullPage(
            transport,
            create(PullRequestSchema, {
                collection: collectionName,
                limit,
                checkpoint: token ? { token } : undefined,
                ...(selector ? { selector } : {}),
            }),
            callOptions(),
        ),
    );
    const pullOnce = (token: string | undefined, limit: number, handled?: (err: SynclineError) => boolean) =>
        unary(() => ahead.pull(token, limit), handled);

    /** The reconcile after a refused checkpoint: its documents and tombstones, then a Pull from C0. */
    const reconcileAndPull = async (
        limit: number,
    ): Promise<{ documents: WithDeleted<RxDocType>[]; token: string | undefined }> => {
        const local: Array<{ primary: unknown; toJSON: (withMeta?: boolean) => Record<string, unknown> }> = await collection
            .find()
            .exec();
        const seen = await (await revisions).lookup(local.map((doc) => String(doc.primary)));
        const held: Array<readonly [string, string]> = [];
        for (let i = 0; i < local.length; i += 1_000) {
            const chunk = local.slice(i, i + 1_000);
            // With attachments, the local body includes their metadata, as the server's does.
            const hashes = await Promise.all(
                chunk.map((doc) => sha256Hex(canonicalBody(doc.toJSON(attachments !== undefined), ownerField))),
            );
            chunk.forEach((doc, j) => {
                const id = String(doc.primary);
                const last = seen.get(id);
                held.push([id, last !== undefined && last.bodyHash === hashes[j] ? last.revision : ""]);
            });
        }
        const unimplemented = (error: SynclineError): boolean => error.code === Code.Unimplemented;
        let result;
        try {
            result = await unary(() => reconcile(client, collectionName, held, callOptions), unimplemented);
        } catch (err) {
            const error = SynclineError.from(err);
            if (!unimplemented(error)) {
                throw error;
            }
            // A server from before reconcile: start over as it asks (documents it deleted and
            // purged stay here; nothing better is possible without the reconcile RPCs).
            console.warn(`syncline-rxdb: the server cannot reconcile (${error.message}); pulling from the beginning`);
            const response = await pullOnce(undefined, limit);
            return { documents: received(response.documents), token: response.checkpoint?.token };
        }
        const tombstones = result.dropped.map((id) => create(DocumentSchema, { id, deleted: true }));
        const byId = new Map<string, Document>();
        for (const doc of [...tombstones, ...result.documents]) {
            byId.set(doc.id, doc);
        }
        // Pull from C0 at once: a non-live replication would otherwise stop here. Its states
        // are the newer ones (read after the fetches) and replace the reconciled ones.
        const response = await pullOnce(result.checkpoint, limit);
        for (const doc of response.documents) {
            byId.set(doc.id, doc);
        }
        console.info(
            `syncline-rxdb: reconciled '${collectionName}': ${result.documents.length} fetched, ` +
                `${result.dropped.length} dropped, ${held.length} held, ${result.calls} calls`,
        );
        return { documents: received([...byId.values()]), token: response.checkpoint?.token || result.checkpoint };
    };

    /** A filtered replication's answer to a refused checkpoint (selector.ts). */
    const startOverFiltered = async (
        limit: number,
    ): Promise<{ documents: WithDeleted<RxDocType>[]; token: string | undefined }> => {
        const localIds = async (): Promise<string[]> =>
            (await collection.find().exec()).map((doc: { primary: unknown }) => String(doc.primary));
        const result = await startOver((token) => pullOnce(token, limit), localIds);
        console.info(
            `syncline-rxdb: started '${collectionName}' over under its selector: ` +
                `${result.documents.length - result.dropped} matching, ${result.dropped} dropped locally`,
        );
        return { documents: received(result.documents), token: result.token };
    };

    const pullHandler = async (
        checkpoint: SynclineCheckpoint | undefined,
        limit: number,
    ): Promise<{ documents: WithDeleted<RxDocType>[]; checkpoint: SynclineCheckpoint | undefined }> => {
        const expirable = (error: SynclineError): boolean => refused(error) && !!checkpoint?.token;
        let documents: WithDeleted<RxDocType>[];
        let token: string | undefined;
        try {
            const response = await pullOnce(checkpoint?.token, limit, expirable);
            documents = received(response.documents);
            token = response.checkpoint?.token;
        } catch (err) {
            const error = SynclineError.from(err);
            if (!expirable(error)) {
                throw error;
            }
            const notice = new SynclineError(
                `syncline-rxdb: the server refused the stored checkpoint of '${collectionName}' ` +
                    `(${error.message}); ${selector ? "starting over under the selector" : "reconciling the local copy"}`,
                error.code,
                { reason: error.reason, cause: err },
            );
            console.warn(notice.message);
            reportError(notice);
            ({ documents, token } = selector ? await startOverFiltered(limit) : await reconcileAndPull(limit));
            streamCheckpointStale = true;
        }
        documents = await filled(documents);
        if (attachments) {
            documents = await attachments.complete(documents);
        }
        const next: SynclineCheckpoint | undefined = token ? { token } : checkpoint;
        if (next && (streamCheckpoint === undefined || streamCheckpointStale || documents.length > 0)) {
            streamCheckpoint = next;
            streamCheckpointStale = false;
        }
        if (!pullSucceeded) {
            pullSucceeded = true;
            pullSucceededWaiters.splice(0).forEach((wake) => wake());
        }
        return { documents, checkpoint: next };
    };

    // Idempotency keys of batches not pushed successfully yet, and the states the server
    // absorbed when it resolved a row (push-keys.ts explains both).
    const pendingKeys = new PendingPushKeys();
    const absorbed = new AbsorbedStates<Record<string, unknown>>();
    const assumedIdentity = (state: Record<string, unknown> | undefined): string =>
        state === undefined ? "" : `${state._deleted === true}:${canonicalBody(state, ownerField)}`;

    const pushHandler = async (
        rows: RxReplicationWriteToMasterRow<RxDocType>[],
    ): Promise<WithDeleted<RxDocType>[]> => {
        pushesInFlight += 1;
        ahead.writeStarted();
        try {
            const states = rows.map((row) => ({
                id: String((row.newDocumentState as Record<string, unknown>)[primaryPath]),
                next: row.newDocumentState as unknown as Record<string, unknown>,
                assumed: row.assumedMasterState as unknown as Record<string, unknown> | undefined,
            }));
            if (attachments) {
                await attachments.beforePush(states.map(({ next }) => next));
            }
            const request = create(PushRequestSchema, {
                collection: collectionName,
                mode: PushMode.PER_ROW,
                rows: states.map(({ id, next, assumed }) => {
                    const base = absorbed.rebase(id, assumedIdentity(assumed)) ?? assumed;
                    return create(ChangeRowSchema, {
                        newDocumentState: toServerDocument(next, primaryPath, ownerField),
                        assumedMasterState: base ? toServerDocument(base, primaryPath, ownerField) : undefined,
                    });
                }),
            });
            // The same rows (a retry by RxDB) encode the same: they get the same key.
            const { key, digest } = await pendingKeys.keyFor(toBinary(PushRequestSchema, request));
            request.idempotencyKey = key;
            const response = await unary(() => client.push(request, callOptions()));
            pendingKeys.succeeded(digest);
            states.forEach(({ id }) => absorbed.forget(id));
            // Rows the server resolved (a collection with a `conflict` strategy) were written
            // as merged: handed back like conflicts, so RxDB's conflict handler adopts the
            // server's state (the default handler takes the master state). In a filtered
            // replication, one outside the selector is handed over deleted (selector.ts).
            const serverStates = [...response.conflicts, ...response.resolved.flatMap((r) => (r.document ? [r.document] : []))];
            const masterStates = received(serverStates).map((state, i) =>
                outOfScope ? outOfScope.masterState(serverStates[i].id, serverStates[i].revision, state) : state,
            );
            for (const resolved of response.resolved) {
                const row = states[resolved.index];
                if (row !== undefined) {
                    absorbed.resolved(row.id, assumedIdentity(row.assumed), row.next);
                }
            }
            // Refused rows (another owner's id, a document the server's schema refuses): each
            // is reported once and handed back as a conflict with the server's state (or a
            // deleted one), so RxDB reverts or drops the local copy and stops pushing it,
            // while the rest of the batch is written and later writes keep flowing.
            for (const refused of response.refused) {
                reportError(refusalError(refused));
                const row = rows[refused.index]?.newDocumentState as unknown as Record<string, unknown> | undefined;
                masterStates.push(
                    refusedMasterState(
                        refused,
                        row,
                        primaryPath,
                        ownerField,
                        attachments !== undefined,
                    ) as unknown as WithDeleted<RxDocType>,
                );
            }
            return attachments ? await attachments.complete(masterStates) : masterStates;
        } finally {
            ahead.writeFinished();
            pushesInFlight -= 1;
            if (pushesInFlight === 0 && batchWithheldDuringPush) {
                batchWithheldDuringPush = false;
                emitToStream?.("RESYNC");
            }
        }
    };

    const reportStreamError = (err: unknown): void => {
        replicationState?.subjects.error.next(
            newRxError("RC_STREAM", { error: errorToPlainJson(err as Error) }),
        );
    };

    const stream$ = new Observable<RxReplicationPullStreamItem<RxDocType, SynclineCheckpoint>>(
        (subscriber) => {
            const stop = new AbortController();
            emitToStream = (item) => subscriber.next(item);

            const run = async (): Promise<void> => {
                let attempt = 0;
                let connections = 0;
                while (!stop.signal.aborted) {
                    // Open the stream only once a Pull has succeeded, so that it starts at the
                    // checkpoint RxDB has reached rather than replaying the whole collection
                    // (after a Resync: once the Pull has reconciled and replaced it).
                    if (!pullSucceeded) {
                        await new Promise<void>((resolve) => {
                            pullSucceededWaiters.push(resolve);
                            stop.signal.addEventListener("abort", () => resolve());
                        });
                        if (stop.signal.aborted) {
                            break;
                        }
                    }
                    const call = new AbortController();
                    const abortCall = (): void => call.abort();
                    stop.signal.addEventListener("abort", abortCall);
                    let idleTimer: ReturnType<typeof setTimeout> | undefined;
                    const armIdleTimer = (): void => {
                        if (streamIdleTimeoutMs > 0) {
                            clearTimeout(idleTimer);
                            idleTimer = setTimeout(
                                () =>
                                    call.abort(
                                        new ConnectError(
                                            `no message for ${streamIdleTimeoutMs} ms`,
                                            Code.DeadlineExceeded,
                                        ),
                                    ),
                                streamIdleTimeoutMs,
                            );
                        }
                    };
                    let connected = false;
                    const onConnected = (): void => {
                        if (connected) {
                            return;
                        }
                        connected = true;
                        attempt = 0;
                        connections += 1;
                        // Changes may have been missed while the stream was down: let RxDB
                        // pull from its own checkpoint.
                        if (connections > 1) {
                            subscriber.next("RESYNC");
                        }
                    };
                    try {
                        armIdleTimer();
                        const request = create(SubscribeRequestSchema, {
                            collection: collectionName,
                            checkpoint: streamCheckpoint ? { token: streamCheckpoint.token } : undefined,
                            ...(selector ? { selector } : {}),
                        });
                        const responses = client.subscribe(request, {
                            signal: call.signal,
                            timeoutMs: 0,
                            onHeader: onConnected,
                        });
                        for await (const response of responses) {
                            onConnected();
                            armIdleTimer();
                            const event = response.event;
                            if (event.case === "changes") {
                                const token = event.value.checkpoint?.token;
                                if (token) {
                                    streamCheckpoint = { token };
                                }
                                if (event.value.documents.length === 0 || !token) {
                                    continue;
                                }
                                if (pushesInFlight > 0) {
                                    batchWithheldDuringPush = true;
                                    continue;
                                }
                                // Attachment bytes are fetched by the pull handler (the stream
                                // cannot wait for them): let RxDB pull this batch.
                                if (attachments?.describesAttachments(event.value.documents)) {
                                    subscriber.next("RESYNC");
                                    continue;
                                }
                                const documents = await filled(received(event.value.documents));
                                // A push may have started while the local copies were read.
                                if (pushesInFlight > 0) {
                                    batchWithheldDuringPush = true;
                                    continue;
                                }
                                subscriber.next({ documents, checkpoint: { token } });
                            } else if (event.case === "resync") {
                                // The stream's position expired (a purge overtook it, or a
                                // restore): RxDB's Pull from its own checkpoint is refused in
                                // turn and reconciles; the stream reopens from what that Pull
                                // returns, not from its expired position.
                                streamCheckpointStale = true;
                                pullSucceeded = false;
                                subscriber.next("RESYNC");
                            }
                            // Heartbeat (and unknown future events): nothing to do.
                        }
                        if (!stop.signal.aborted) {
                            throw new ConnectError("Subscribe stream ended", Code.Unavailable);
                        }
                    } catch (err) {
                        if (!stop.signal.aborted) {
                            const error = SynclineError.from(err);
                            // The server ends a stream whose token expired with
                            // UNAUTHENTICATED: a normal event for a long-lived stream, not an
                            // error. Reconnect (after the shortest backoff, as the stream had
                            // connected) with a fresh token from getToken; a stream refused at
                            // open is reported unless its token had merely expired.
                            const expired =
                                error.code === Code.Unauthenticated &&
                                (connected || error.reason === "TOKEN_EXPIRED");
                            if (!expired) {
                                reportStreamError(error);
                            }
                        }
                    } finally {
                        clearTimeout(idleTimer);
                        stop.signal.removeEventListener("abort", abortCall);
                    }
                    if (stop.signal.aborted) {
                        break;
                    }
                    const base = Math.min(reconnectMaxDelayMs, reconnectInitialDelayMs * 2 ** attempt);
                    attempt = Math.min(attempt + 1, 30);
                    await sleep(base / 2 + Math.random() * (base / 2), stop.signal);
                }
            };
            run().catch((err: unknown) => reportStreamError(err));
            return () => {
                emitToStream = undefined;
                stop.abort();
            };
        },
    );

    replicationState = replicateRxCollection<RxDocType, SynclineCheckpoint>({
        replicationIdentifier,
        collection,
        live,
        retryTime: options.retryTime,
        autoStart: options.autoStart,
        waitForLeadership: options.waitForLeadership,
        toggleOnDocumentVisible: options.toggleOnDocumentVisible,
        pull: {
            handler: pullHandler,
            batchSize,
            modifier: options.pull?.modifier,
            stream$: live ? stream$ : undefined,
        },
        push: {
            handler: pushHandler,
            batchSize,
            modifier: options.push?.modifier,
        },
    });
    const state = replicationState;
    state.onCancel.push(() => revisions.then((store) => store.close()));
    const awaitFirstSync = state.awaitInitialReplication.bind(state);
    void awaitFirstSync().then(
        () => {
            initialDone = true;
        },
        () => undefined,
    );
    state.awaitInitialReplication = async (): Promise<void> => {
        if (initialDone) {
            return awaitFirstSync();
        }
        return Promise.race([awaitFirstSync(), initialFailure]);
    };
    return state;
}
