// Connect transport for browsers: gRPC-Web over fetch. Browsers cannot speak native gRPC.

import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import type { SynclineTransportKind, TransportSettings } from "./core.js";
import { grpcWebDiagnosis } from "./grpc-web-diagnosis.js";

export function createBrowserTransport(
    kind: SynclineTransportKind,
    url: string,
    settings: TransportSettings,
): Transport {
    if (kind !== "grpc-web") {
        throw new Error(
            `syncline-rxdb: browsers support only transport 'grpc-web' (got '${String(kind)}'); ` +
                "enable grpc_web on the server",
        );
    }
    // Browsers negotiate compression themselves (fetch's Accept-Encoding); connect-web has no
    // request compression, so `compression` has no effect here.
    return createGrpcWebTransport({ baseUrl: url, interceptors: [grpcWebDiagnosis(url), ...settings.interceptors] });
}
