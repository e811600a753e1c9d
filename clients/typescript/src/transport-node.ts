// Connect transports for Node.js: native gRPC over HTTP/2, or gRPC-Web over HTTP/1.1.

import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import type { SynclineTransportKind } from "./core.js";

export function createNodeTransport(
    kind: SynclineTransportKind,
    url: string,
    interceptors: Interceptor[],
): Transport {
    switch (kind) {
        case "grpc":
            return createGrpcTransport({
                baseUrl: url,
                interceptors,
                // Notice a dead HTTP/2 connection (server gone without closing it) quickly.
                pingIntervalMs: 15_000,
                pingTimeoutMs: 10_000,
            });
        case "grpc-web":
            return createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", interceptors });
        default:
            throw new Error(`syncline-rxdb: unknown transport '${String(kind)}'`);
    }
}
