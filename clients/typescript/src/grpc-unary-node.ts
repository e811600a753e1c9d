// Unary gRPC calls on Node.js written straight to an HTTP/2 stream.
//
// connect-node passes every unary call through a chain of async iterables (request body,
// envelope split, decompression, parse) and costs 0.6-1.1 ms of CPU per call here, four times
// what node-postgres spends on a whole query: the largest share of a single write's latency
// from Node (docs/performance.md, "Node family"). This path keeps Connect's own pieces where
// they carry semantics (interceptors, deadlines and cancellation through `runUnaryCall`, the
// request headers, response and trailer validation, gzip, the HTTP/2 session manager with its
// keep-alive pings and reconnection) and replaces only the per-call plumbing: one envelope
// written, the response's bytes gathered, one envelope read. Server streams stay on
// connect-node, which shares the same HTTP/2 session.

import { constants as h2, type ClientHttp2Stream, type IncomingHttpHeaders } from "node:http2";

import type { DescMessage, DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
    Code,
    ConnectError,
    type ContextValues,
    createContextValues,
    type Interceptor,
    type Transport,
    type UnaryRequest,
    type UnaryResponse,
} from "@connectrpc/connect";
import {
    type Compression,
    type EnvelopedMessage,
    createMethodUrl,
    encodeEnvelope,
    envelopeCompress,
    envelopeDecompress,
    getAbortSignalReason,
    runUnaryCall,
} from "@connectrpc/connect/protocol";
import {
    requestHeaderWithCompression,
    validateResponseWithCompression,
    validateTrailer,
} from "@connectrpc/connect/protocol-grpc";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

/** Options of `createGrpcUnaryTransport`. */
export interface GrpcUnaryTransportOptions {
    /** The server's base URL, e.g. `http://127.0.0.1:50051`. */
    baseUrl: string;
    /** Connect interceptors, run around every call (unary and streaming). */
    interceptors: Interceptor[];
    /** Response encodings accepted (empty: identity only). */
    acceptCompression: Compression[];
    /** Request encoding (undefined: identity). */
    sendCompression: Compression | undefined;
    /** Keep-alive PING period and timeout of the shared HTTP/2 connection. */
    pingIntervalMs: number;
    pingTimeoutMs: number;
}

/** Requests smaller than this are sent uncompressed, as connect-node does by default. */
const COMPRESS_MIN_BYTES = 1024;
/** The envelope's flag and length prefix. */
const ENVELOPE_HEADER_BYTES = 5;
/** Largest response accepted: the envelope's length field cannot say more. */
const READ_MAX_BYTES = 0xffffffff;

/**
 * A gRPC transport for Node.js whose unary calls bypass connect-node's stream plumbing, with
 * server streams served by connect-node's gRPC transport on the same HTTP/2 session.
 */
export function createGrpcUnaryTransport(options: GrpcUnaryTransportOptions): Transport {
    const sessions = new Http2SessionManager(options.baseUrl, {
        pingIntervalMs: options.pingIntervalMs,
        pingTimeoutMs: options.pingTimeoutMs,
    });
    const streams = createGrpcTransport({
        baseUrl: options.baseUrl,
        interceptors: options.interceptors,
        acceptCompression: options.acceptCompression,
        sendCompression: options.sendCompression,
        sessionManager: sessions,
    });
    return {
        stream: streams.stream.bind(streams),
        unary<I extends DescMessage, O extends DescMessage>(
            method: DescMethodUnary<I, O>,
            signal: AbortSignal | undefined,
            timeoutMs: number | undefined,
            header: HeadersInit | undefined,
            message: MessageInitShape<I>,
            contextValues?: ContextValues,
        ): Promise<UnaryResponse<I, O>> {
            const deadline = timeoutMs !== undefined && timeoutMs > 0 ? timeoutMs : undefined;
            return runUnaryCall<I, O>({
                interceptors: options.interceptors,
                signal,
                timeoutMs: deadline,
                req: {
                    stream: false,
                    service: method.parent,
                    method,
                    requestMethod: "POST",
                    url: createMethodUrl(options.baseUrl, method),
                    header: requestHeaderWithCompression(
                        true,
                        deadline,
                        header,
                        options.acceptCompression,
                        options.sendCompression ?? null,
                    ),
                    contextValues: contextValues ?? createContextValues(),
                    message,
                },
                next: (req) => call(sessions, options, req),
            });
        },
    };
}

/** One unary call on a fresh HTTP/2 stream of the shared session. */
async function call<I extends DescMessage, O extends DescMessage>(
    sessions: Http2SessionManager,
    options: GrpcUnaryTransportOptions,
    req: UnaryRequest<I, O>,
): Promise<UnaryResponse<I, O>> {
    if (req.signal.aborted) {
        throw ConnectError.from(getAbortSignalReason(req.signal), Code.Canceled);
    }
    let envelope: EnvelopedMessage = { flags: 0, data: toBinary(req.method.input, req.message) };
    if (options.sendCompression !== undefined) {
        envelope = await envelopeCompress(envelope, options.sendCompression, COMPRESS_MIN_BYTES);
    }
    const url = new URL(req.url);
    const headers: Record<string, string> = {};
    req.header.forEach((value, key) => {
        headers[key] = value;
    });
    let stream: ClientHttp2Stream;
    try {
        stream = await sessions.request("POST", url.pathname + url.search, headers, {});
    } catch (e) {
        throw transportError(e);
    }
    const response = await exchange(sessions, stream, encodeEnvelope(envelope.flags, envelope.data), req.signal);
    const { compression, headerError } = validateResponseWithCompression(
        options.acceptCompression,
        response.status,
        response.header,
    );
    validateTrailer(response.trailer, response.header);
    if (response.body.length === 0) {
        // A trailers-only answer: the status travelled in the headers.
        throw headerError ?? new ConnectError("protocol error: missing output message for unary method", Code.Unknown);
    }
    if (headerError) {
        throw new ConnectError("protocol error: received output message for unary method with error status", Code.Unknown);
    }
    const data = await envelopeDecompress(readEnvelope(response.body), compression ?? null, READ_MAX_BYTES);
    return {
        stream: false,
        service: req.method.parent,
        method: req.method,
        header: response.header,
        message: fromBinary(req.method.output, data.data),
        trailer: response.trailer,
    };
}

/** What came back on one stream. */
interface Exchanged {
    status: number;
    header: Headers;
    body: Buffer;
    trailer: Headers;
}

/**
 * Writes `request` on `stream` and gathers the answer until the stream closes; an abort of
 * `signal` cancels the stream (RST_STREAM CANCEL) and rejects with the signal's reason.
 */
function exchange(
    sessions: Http2SessionManager,
    stream: ClientHttp2Stream,
    request: Uint8Array,
    signal: AbortSignal,
): Promise<Exchanged> {
    return new Promise((resolve, reject) => {
        let status = 0;
        let header = new Headers();
        const trailer = new Headers();
        const chunks: Buffer[] = [];
        // The first of: the abort's reason, the reset code's status, the stream's error.
        let aborted: ConnectError | undefined;
        let failure: unknown;
        const onAbort = (): void => {
            aborted ??= ConnectError.from(getAbortSignalReason(signal), Code.Canceled);
            stream.close(h2.NGHTTP2_CANCEL);
        };
        signal.addEventListener("abort", onAbort);
        stream.on("response", (h: IncomingHttpHeaders) => {
            status = Number(h[":status"] ?? 0);
            header = webHeaders(h);
        });
        stream.on("data", (chunk: Buffer) => {
            sessions.notifyResponseByteRead(stream);
            chunks.push(chunk);
        });
        stream.on("trailers", (h: IncomingHttpHeaders) => {
            webHeaders(h, trailer);
        });
        stream.on("error", (e: unknown) => {
            failure ??= transportError(e);
        });
        stream.on("close", () => {
            signal.removeEventListener("abort", onAbort);
            failure = aborted ?? resetError(stream.rstCode) ?? failure;
            if (failure !== undefined) {
                reject(failure);
                return;
            }
            resolve({ status, header, body: chunks.length === 1 ? chunks[0] : Buffer.concat(chunks), trailer });
        });
        // The answer must be read even when nobody waits for 'end'.
        stream.resume();
        if (signal.aborted) {
            // Aborted while the stream was being opened: the listener came too late.
            onAbort();
            return;
        }
        stream.end(request);
    });
}

/** The single envelope of a unary response; anything else is a protocol error. */
function readEnvelope(body: Buffer): { flags: number; data: Uint8Array } {
    if (body.length < ENVELOPE_HEADER_BYTES) {
        throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
    }
    const length = body.readUInt32BE(1);
    if (body.length - ENVELOPE_HEADER_BYTES !== length) {
        throw new ConnectError(
            body.length - ENVELOPE_HEADER_BYTES < length
                ? "protocol error: incomplete envelope"
                : "protocol error: received extra output message for unary method",
            body.length - ENVELOPE_HEADER_BYTES < length ? Code.InvalidArgument : Code.Unimplemented,
        );
    }
    return { flags: body[0], data: body.subarray(ENVELOPE_HEADER_BYTES) };
}

/** Node's headers as Web headers (pseudo-headers left out), into `into` when given. */
function webHeaders(h: IncomingHttpHeaders, into: Headers = new Headers()): Headers {
    for (const [key, value] of Object.entries(h)) {
        if (key.startsWith(":") || value === undefined) {
            continue;
        }
        if (Array.isArray(value)) {
            for (const v of value) {
                into.append(key, v);
            }
        } else {
            into.append(key, String(value));
        }
    }
    return into;
}

/** How a stream reset reads as a gRPC status (gRPC's HTTP/2 mapping, as connect-node does). */
function resetError(rstCode: number | undefined): ConnectError | undefined {
    switch (rstCode) {
        case undefined:
        case h2.NGHTTP2_NO_ERROR:
        case h2.NGHTTP2_STREAM_CLOSED:
            return undefined;
        case h2.NGHTTP2_REFUSED_STREAM:
            return new ConnectError(`http/2 stream closed with error code ${rstCode}`, Code.Unavailable);
        case h2.NGHTTP2_CANCEL:
            return new ConnectError(`http/2 stream closed with error code ${rstCode}`, Code.Canceled);
        case h2.NGHTTP2_ENHANCE_YOUR_CALM:
            return new ConnectError(`http/2 stream closed with error code ${rstCode}`, Code.ResourceExhausted);
        case h2.NGHTTP2_INADEQUATE_SECURITY:
        case h2.NGHTTP2_HTTP_1_1_REQUIRED:
            return new ConnectError(`http/2 stream closed with error code ${rstCode}`, Code.PermissionDenied);
        default:
            return new ConnectError(`http/2 stream closed with error code ${rstCode}`, Code.Internal);
    }
}

/** A Node error of the connection or stream as a gRPC status, as connect-node words them. */
function transportError(e: unknown): ConnectError {
    if (e instanceof ConnectError) {
        return e;
    }
    const codes: string[] = [];
    for (let cause: unknown = e; cause instanceof Error && codes.length < 8; cause = cause.cause) {
        const code = (cause as Error & { code?: unknown }).code;
        if (typeof code === "string") {
            codes.push(code);
        }
    }
    let code = Code.Internal;
    if (codes.some((c) => c === "ERR_STREAM_DESTROYED" || c === "ERR_HTTP2_INVALID_STREAM" || c === "ECONNRESET")) {
        code = Code.Aborted;
    } else if (codes.some((c) => c === "ETIMEDOUT" || c === "ENOTFOUND" || c === "EAI_AGAIN" || c === "ECONNREFUSED")) {
        code = Code.Unavailable;
    }
    return ConnectError.from(e, code);
}
