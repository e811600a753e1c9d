// createSynclineClient(): calls outside replication, on the same transports and tokens as
// replicateSyncline. Today: ListOverwritten, the versions of a document that lost an automatic
// conflict resolution (for the guide's conflict dialog, after the fact).

import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";

import {
    authInterceptor,
    checkCompression,
    type SynclineCompression,
    type SynclineReplicationOptions,
    type SynclineTransportKind,
    type TransportFactory,
} from "./core.js";
import { SynclineError } from "./errors.js";
import { DocumentSchema, ListOverwrittenRequestSchema, ReplicationService, type Document } from "./gen/syncline/v1/replication_pb.js";

/** How to reach the server: the same settings as `replicateSyncline`'s. */
export interface SynclineClientOptions {
    /** The server's base URL, e.g. `http://127.0.0.1:50051`. */
    url: string;
    /** A bearer token sent as `authorization: Bearer <token>` on every call. */
    token?: string;
    /** Returns the bearer token; called before every call. Takes precedence over `token`. */
    getToken?: SynclineReplicationOptions<unknown>["getToken"];
    /** 'grpc', 'grpc-web' or a ready Connect transport. Default: as `replicateSyncline`. */
    transport?: SynclineTransportKind | Transport;
    /** Extra Connect interceptors. */
    interceptors?: Interceptor[];
    /** Compress requests with gzip (Node transports). Default 'none'. */
    compression?: SynclineCompression;
    /** Let the server compress responses with gzip (Node transports). Default 'gzip'. */
    responseCompression?: SynclineCompression;
    /** Deadline of each call in milliseconds. Default 30000. */
    callTimeoutMs?: number;
}

/** One version of a document that lost an automatic conflict resolution. */
export interface OverwrittenVersionInfo {
    /** The document's id. */
    id: string;
    /** The losing state's body (a plain JSON object; `{}` for a bare tombstone). */
    body: Record<string, unknown>;
    /** True when the losing state was a tombstone. */
    deleted: boolean;
    /**
     * The revision the state had on the server (source "server"), or the one the pushing
     * client had assumed (source "client"; empty when it assumed none).
     */
    revision: string;
    /** When it lost. */
    updatedAt: Date | undefined;
    /** The document's owner. */
    owner: string;
    /** "server": a stored state the resolution replaced; "client": a pushed state not written as sent. */
    source: string;
    /** The strategy that decided: "last-write-wins", "field-merge" or "crdt". */
    strategy: string;
    /** The revision of the state the resolution stored. */
    resolvedRevision: string;
    /** The subject of the principal whose push was resolved. */
    pushedBy: string;
    /** The losing state as the server sent it. */
    document: Document;
}

/** Calls to a Syncline server besides replication. Errors are `SynclineError`s. */
export interface SynclineClient {
    /**
     * The recent versions of document `id` that lost an automatic conflict resolution,
     * newest first, at most `limit` (0 or absent: the server's maximum, 100). Only for
     * collections with `keep_overwritten` (else FAILED_PRECONDITION, reason
     * OVERWRITTEN_NOT_KEPT). The document's owner and service principals see them; for anyone
     * else the list is empty.
     */
    listOverwritten(collection: string, id: string, limit?: number): Promise<OverwrittenVersionInfo[]>;
    /** The generated Connect client, for calls the helpers do not cover. */
    readonly service: Client<typeof ReplicationService>;
}

const decoder = new TextDecoder("utf-8", { fatal: true });

function decodeBody(doc: Document): Record<string, unknown> {
    if (doc.json.length === 0) {
        return {};
    }
    const parsed: unknown = JSON.parse(decoder.decode(doc.json));
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new Error(`syncline-rxdb: document "${doc.id}" body is not a JSON object`);
    }
    return parsed as Record<string, unknown>;
}

/** Builds a `SynclineClient` with the entry point's transports (index.ts, browser.ts). */
export function createSynclineClientWith(
    options: SynclineClientOptions,
    defaultTransport: SynclineTransportKind,
    transportFactory: TransportFactory,
): SynclineClient {
    const compression = options.compression ?? "none";
    if (compression !== "none" && compression !== "gzip") {
        throw new Error(`syncline-rxdb: compression must be 'gzip' or 'none', not '${String(compression)}'`);
    }
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
    const service = createClient(ReplicationService, transport);
    const timeoutMs = options.callTimeoutMs ?? 30_000;
    return {
        service,
        async listOverwritten(collection: string, id: string, limit = 0): Promise<OverwrittenVersionInfo[]> {
            let response;
            try {
                response = await service.listOverwritten(
                    create(ListOverwrittenRequestSchema, { collection, id, limit }),
                    { timeoutMs },
                );
            } catch (err) {
                throw SynclineError.from(err);
            }
            return response.versions.map((version) => {
                const document = version.document ?? create(DocumentSchema, { id });
                return {
                    id: document.id,
                    body: decodeBody(document),
                    deleted: document.deleted,
                    revision: document.revision,
                    updatedAt: document.updatedAt ? timestampDate(document.updatedAt) : undefined,
                    owner: document.owner,
                    source: version.source,
                    strategy: version.strategy,
                    resolvedRevision: version.resolvedRevision,
                    pushedBy: version.pushedBy,
                    document,
                };
            });
        },
    };
}
