// Connect transport for browsers: gRPC-Web over fetch. Browsers cannot speak native gRPC.

import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import type { SynclineTransportKind } from "./core.js";

export function createBrowserTransport(
    kind: SynclineTransportKind,
    url: string,
    interceptors: Interceptor[],
): Transport {
    if (kind !== "grpc-web") {
        throw new Error(
            `syncline-rxdb: browsers support only transport 'grpc-web' (got '${String(kind)}'); ` +
                "enable grpc_web on the server",
        );
    }
    return createGrpcWebTransport({ baseUrl: url, interceptors });
}
