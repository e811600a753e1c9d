// What both entry points (Node and browser) export besides `replicateSyncline`.

export type {
    SynclineCheckpoint,
    SynclineReplicationOptions,
    SynclineReplicationState,
    SynclineTransportKind,
} from "./core.js";
export { documentBody, fromServerDocument, toServerDocument } from "./convert.js";
export * from "./gen/syncline/v1/replication_pb.js";
