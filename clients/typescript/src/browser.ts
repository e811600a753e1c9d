// syncline-rxdb for browsers: the same API as the Node entry point, over gRPC-Web (fetch).

import { createSynclineClientWith, type SynclineClient, type SynclineClientOptions } from "./client.js";
import {
    replicateSynclineWith,
    type SynclineReplicationOptions,
    type SynclineReplicationState,
} from "./core.js";
import { createBrowserTransport } from "./transport-web.js";

export * from "./exports.js";

/**
 * Starts RxDB replication of one collection through a Syncline server (gRPC-Web; the server
 * needs `grpc_web = true` and the page's origin in `cors_allowed_origins`).
 */
export function replicateSyncline<RxDocType>(
    options: SynclineReplicationOptions<RxDocType>,
): SynclineReplicationState<RxDocType> {
    return replicateSynclineWith(options, "grpc-web", createBrowserTransport);
}

/**
 * A client for calls outside replication (`listOverwritten`), with the same url, token and
 * transport settings as `replicateSyncline`.
 */
export function createSynclineClient(options: SynclineClientOptions): SynclineClient {
    return createSynclineClientWith(options, "grpc-web", createBrowserTransport);
}
