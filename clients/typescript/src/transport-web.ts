// Connect transport for browsers: gRPC-Web over fetch. Browsers cannot speak native gRPC.

import type { Transport } from "@connectrpc/connect";
import { validateReadWriteMaxBytes, type UniversalClientFn } from "@connectrpc/connect/protocol";
import { createTransport as createGrpcWebProtocolTransport } from "@connectrpc/connect/protocol-grpc-web";
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
    const interceptors = [grpcWebDiagnosis(url), ...settings.interceptors];
    const transport = createGrpcWebTransport({ baseUrl: url, interceptors });
    // connect-web refuses client-streaming calls (fetch cannot stream a request body over
    // HTTP/1.1), and AttachmentService.Upload is one: those go through the same gRPC-Web
    // protocol with the request's messages gathered into one Blob body first (see
    // fetchWithBlobBody), so uploads work in browsers, at the cost of the browser holding the
    // whole encoded request until it is sent.
    const gathered = createGrpcWebProtocolTransport({
        httpClient: fetchWithBlobBody,
        baseUrl: url,
        useBinaryFormat: true,
        interceptors,
        acceptCompression: [],
        sendCompression: null,
        ...validateReadWriteMaxBytes(undefined, undefined, undefined),
    });
    return {
        unary: (...args) => transport.unary(...args),
        stream: (method, ...rest) =>
            method.methodKind === "client_streaming" ? gathered.stream(method, ...rest) : transport.stream(method, ...rest),
    };
}

/**
 * One HTTP request through fetch, its body gathered first: each piece becomes a Blob as it
 * arrives (browsers keep Blob bytes outside the JavaScript heap, spilling large ones to disk),
 * and the request is sent once the body is complete.
 */
const fetchWithBlobBody: UniversalClientFn = async (request) => {
    let body: Blob | undefined;
    if (request.body !== undefined) {
        const parts: Blob[] = [];
        for await (const piece of request.body) {
            parts.push(new Blob([piece as BlobPart]));
        }
        body = new Blob(parts);
    }
    const response = await fetch(request.url, {
        method: request.method,
        headers: request.header,
        body,
        signal: request.signal,
        redirect: "error",
    });
    return {
        status: response.status,
        header: response.headers,
        // gRPC-Web carries its trailers at the end of the body, where the protocol reads them.
        trailer: new Headers(),
        body: chunks(response.body),
    };
};

/** A response body as an async iterable (not every browser iterates ReadableStreams). */
async function* chunks(stream: ReadableStream<Uint8Array> | null): AsyncGenerator<Uint8Array> {
    if (stream === null) {
        return;
    }
    const reader = stream.getReader();
    try {
        for (;;) {
            const { done, value } = await reader.read();
            if (done) {
                return;
            }
            yield value;
        }
    } finally {
        reader.releaseLock();
    }
}
