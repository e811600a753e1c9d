// syncline-rxdb for Node.js: replicate an RxDB collection through Syncline over native gRPC
// (default) or gRPC-Web. Browsers get ./browser.js through the package's "browser" export
// condition, with the same API.

import { createSynclineClientWith, type SynclineClient, type SynclineClientOptions } from "./client.js";
import {
    replicateSynclineWith,
    type SynclineReplicationOptions,
    type SynclineReplicationState,
} from "./core.js";
import { createNodeTransport } from "./transport-node.js";

export * from "./exports.js";

/**
 * Starts RxDB replication of one collection through a Syncline server and returns RxDB's
 * replication state. `transport` defaults to 'grpc' (HTTP/2); 'grpc-web' uses HTTP/1.1.
 */
export function replicateSyncline<RxDocType>(
    options: SynclineReplicationOptions<RxDocType>,
): SynclineReplicationState<RxDocType> {
    return replicateSynclineWith(options, "grpc", createNodeTransport);
}

/**
 * A client for calls outside replication (`listOverwritten`), with the same url, token and
 * transport settings as `replicateSyncline`.
 */
export function createSynclineClient(options: SynclineClientOptions): SynclineClient {
    return createSynclineClientWith(options, "grpc", createNodeTransport);
}
