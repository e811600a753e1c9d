// Connect transports for Node.js: native gRPC over HTTP/2, or gRPC-Web over HTTP/1.1.

import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";

import type { Interceptor, Transport } from "@connectrpc/connect";
import { compressionGzip, createGrpcWebTransport } from "@connectrpc/connect-node";

import type { SynclineTransportKind, TransportSettings } from "./core.js";
import { createGrpcUnaryTransport } from "./grpc-unary-node.js";
import { grpcWebDiagnosis, isDroppedConnection } from "./grpc-web-diagnosis.js";

/**
 * Retries a unary call once when it failed on a connection the server had already closed:
 * Node's HTTP/1.1 agent reuses kept-alive sockets, and one the server closed after a previous
 * response fails the next request (EPIPE, ECONNRESET) before the server saw it. Pull is
 * read-only and a Push carries an idempotency key (a second attempt the server had already
 * applied is answered with the first outcome), so a second attempt is safe.
 */
const retryDroppedConnection: Interceptor = (next) => async (req) => {
    try {
        return await next(req);
    } catch (err) {
        if (req.stream || !isDroppedConnection(err)) {
            throw err;
        }
        return next(req);
    }
};

/**
 * One plain HTTP/1.1 request to the server: false when it answers with HTTP/2 (a Syncline
 * server without gRPC-Web), true when it answers HTTP/1.1, undefined when it cannot tell.
 */
function probeHttp1(url: string): Promise<boolean | undefined> {
    return new Promise((resolve) => {
        const target = new URL("/", url);
        const send = target.protocol === "https:" ? httpsRequest : httpRequest;
        const req = send(target, { method: "OPTIONS", timeout: 3_000 }, (res) => {
            res.resume();
            resolve(true);
        });
        req.on("error", (err: Error & { code?: string }) =>
            resolve(err.code === "HPE_INVALID_CONSTANT" || /Parse Error/.test(err.message) ? false : undefined),
        );
        req.on("timeout", () => {
            req.destroy();
            resolve(undefined);
        });
        req.end();
    });
}

export function createNodeTransport(kind: SynclineTransportKind, url: string, settings: TransportSettings): Transport {
    // Accepting gzip is always safe (a server without it answers uncompressed), but costs CPU
    // on both sides, so an app may decline it; sending it is opt-in, since a server without
    // gzip support refuses a compressed request.
    const compression = {
        acceptCompression: settings.responseCompression === "none" ? [] : [compressionGzip],
        sendCompression: settings.compression === "gzip" ? compressionGzip : undefined,
    };
    switch (kind) {
        case "grpc":
            return createGrpcUnaryTransport({
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
                interceptors: [
                    grpcWebDiagnosis(url, () => probeHttp1(url)),
                    retryDroppedConnection,
                    ...settings.interceptors,
                ],
                ...compression,
            });
        default:
            throw new Error(`syncline-rxdb: unknown transport '${String(kind)}'`);
    }
}
