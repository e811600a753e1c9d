// What both entry points (Node and browser) export besides `replicateSyncline`.

export type {
    SynclineCheckpoint,
    SynclineCompression,
    SynclineReplicationOptions,
    SynclineReplicationState,
    SynclineTransportKind,
} from "./core.js";
export type { OverwrittenVersionInfo, SynclineClient, SynclineClientOptions } from "./client.js";
export { documentBody, fromServerDocument, toServerDocument } from "./convert.js";
export { SynclineError, type SynclineErrorInit, type SynclineFieldViolation } from "./errors.js";
export { diagnoseGrpcWebFailure } from "./grpc-web-diagnosis.js";
export * from "./gen/syncline/v1/replication_pb.js";
