// The calls the RxDB plugin (src/core.ts) makes, without RxDB: the same exported client,
// transport, conversions and idempotency keys, so that the benchmark measures the client path
// an app gets minus RxDB's storage.

import { create, toBinary } from "@bufbuild/protobuf";
import type { Transport } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";

import {
    createSynclineClient,
    fromServerDocument,
    toServerDocument,
    type SynclineClient,
    type SynclineCompression,
} from "../src/index.js";
import type { RxDocState } from "../src/convert.js";
import { ChangeRowSchema, PushMode, PushRequestSchema, type PushResponse } from "../src/gen/syncline/v1/replication_pb.js";
import { PendingPushKeys } from "../src/push-keys.js";
import { createNodeTransport } from "../src/transport-node.js";
import type { UnaryTransport } from "./config.js";

/** The primary key of the benchmark's documents. */
export const PRIMARY = "id";

/** One write: the new state and the state the client believes the server has (absent: new). */
export interface Write {
    next: Record<string, unknown>;
    assumed?: Record<string, unknown>;
}

/**
 * A client on its own HTTP/2 connection (native gRPC, the Node default), and its transport.
 * Responses uncompressed unless asked (node-postgres gets none either); the plugin's default
 * accepts gzip.
 */
export function connect(url: string, responseCompression: SynclineCompression = "none"): SynclineClient & { transport: Transport } {
    const transport =
        unaryTransport === "connect"
            ? createGrpcTransport({ baseUrl: url, acceptCompression: responseCompression === "gzip" ? [compressionGzip] : [] })
            : createNodeTransport("grpc", url, { interceptors: [], compression: "none", responseCompression });
    return { ...createSynclineClient({ url, transport }), transport };
}

let unaryTransport: UnaryTransport = "lean";

/** Which unary path `connect` builds from now on (the benchmark's A/B switch). */
export function useUnaryTransport(kind: UnaryTransport): void {
    unaryTransport = kind;
}

/** Pushes as the plugin's push handler does: per-row mode, one idempotency key per batch. */
export async function push(client: SynclineClient, keys: PendingPushKeys, collection: string, writes: Write[]): Promise<PushResponse> {
    const request = create(PushRequestSchema, {
        collection,
        mode: PushMode.PER_ROW,
        rows: writes.map(({ next, assumed }) =>
            create(ChangeRowSchema, {
                newDocumentState: toServerDocument(next, PRIMARY),
                assumedMasterState: assumed ? toServerDocument(assumed, PRIMARY) : undefined,
            }),
        ),
    });
    const { key, digest } = await keys.keyFor(toBinary(PushRequestSchema, request));
    request.idempotencyKey = key;
    const response = await client.service.push(request, { timeoutMs: 60_000 });
    keys.succeeded(digest);
    return response;
}

/** What the plugin hands RxDB for a page: the documents as RxDB states. */
export function toStates(documents: Parameters<typeof fromServerDocument>[0][]): RxDocState[] {
    return documents.map((doc) => fromServerDocument(doc, PRIMARY));
}

/** An RxDB state (the fields plus `_deleted`) for a body. */
export function state(body: Record<string, unknown>): Record<string, unknown> {
    return { ...body, _deleted: false };
}

export { PendingPushKeys };
