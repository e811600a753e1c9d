// Connect transports for Node.js: native gRPC over HTTP/2, or gRPC-Web over HTTP/1.1.

import type { Transport } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import type { SynclineTransportKind, TransportSettings } from "./core.js";
import { grpcWebDiagnosis } from "./grpc-web-diagnosis.js";

export function createNodeTransport(kind: SynclineTransportKind, url: string, settings: TransportSettings): Transport {
    // Accepting gzip is always safe (a server without it answers uncompressed); sending it is
    // opt-in, since a server without gzip support refuses a compressed request.
    const compression = {
        acceptCompression: [compressionGzip],
        sendCompression: settings.compression === "gzip" ? compressionGzip : undefined,
    };
    switch (kind) {
        case "grpc":
            return createGrpcTransport({
                baseUrl: url,
                interceptors: settings.interceptors,
                ...compression,
                // Notice a dead HTTP/2 connection (server gone without closing it) quickly.
                pingIntervalMs: 15_000,
                pingTimeoutMs: 10_000,
            });
        case "grpc-web":
            return createGrpcWebTransport({
                baseUrl: url,
                httpVersion: "1.1",
                interceptors: [grpcWebDiagnosis(url), ...settings.interceptors],
                ...compression,
            });
        default:
            throw new Error(`syncline-rxdb: unknown transport '${String(kind)}'`);
    }
}
