// Tests of the Node unary path (src/grpc-unary-node.ts) against a scripted HTTP/2 server on
// 127.0.0.1, for the answers a real Syncline server rarely gives: trailers-only errors, a
// missing or extra message, a cut envelope, stream resets, gzip, deadlines and aborts. The
// suites against the real server (interop, client, resolution, attachments, selective) run
// every call of the plugin over this path too.
import assert from "node:assert/strict";
import { createServer, constants as h2, type Http2Server, type ServerHttp2Session, type ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { gzipSync } from "node:zlib";

import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { compressionGzip } from "@connectrpc/connect-node";

import { createGrpcUnaryTransport } from "../src/grpc-unary-node.js";
import { DocumentSchema, PullResponseSchema, ReplicationService } from "../src/gen/syncline/v1/replication_pb.js";

/** How the scripted server answers the next call. */
type Script = (stream: ServerHttp2Stream, request: Buffer, headers: Record<string, unknown>) => void;

let server: Http2Server;
let url: string;
let script: Script = () => {};
const seen: Record<string, unknown>[] = [];
const sessions: ServerHttp2Session[] = [];

function envelope(message: Uint8Array, flags = 0): Buffer {
    const out = Buffer.alloc(5 + message.length);
    out[0] = flags;
    out.writeUInt32BE(message.length, 1);
    out.set(message, 5);
    return out;
}

const ANSWER = toBinary(
    PullResponseSchema,
    create(PullResponseSchema, { documents: [create(DocumentSchema, { id: "a", json: new TextEncoder().encode('{"id":"a"}') })] }),
);

function ok(stream: ServerHttp2Stream, body: Buffer, extra: Record<string, string> = {}): void {
    stream.respond({ ":status": 200, "content-type": "application/grpc", ...extra }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(body);
}

before(async () => {
    server = createServer();
    server.on("session", (session) => sessions.push(session));
    server.on("stream", (stream, headers) => {
        seen.push({ ...headers });
        const chunks: Buffer[] = [];
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("end", () => script(stream, Buffer.concat(chunks), headers));
        stream.on("error", () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
    // The clients keep their connections open: end them so that the server can close.
    for (const session of sessions) {
        session.destroy();
    }
    await new Promise<void>((resolve) => server.close(() => resolve()));
});

function client(interceptors: Interceptor[] = [], gzip = false) {
    return createClient(
        ReplicationService,
        createGrpcUnaryTransport({
            baseUrl: url,
            interceptors,
            acceptCompression: gzip ? [compressionGzip] : [],
            sendCompression: gzip ? compressionGzip : undefined,
            pingIntervalMs: 15_000,
            pingTimeoutMs: 10_000,
        }),
    );
}

async function failure(call: Promise<unknown>): Promise<ConnectError> {
    try {
        await call;
    } catch (e) {
        assert.ok(e instanceof ConnectError, `not a ConnectError: ${String(e)}`);
        return e;
    }
    assert.fail("the call succeeded");
}

test("a call sends one envelope with gRPC headers and the interceptors' own, and decodes the answer", async () => {
    let request: Buffer = Buffer.alloc(0);
    script = (stream, body) => {
        request = body;
        ok(stream, envelope(ANSWER), { "x-answer": "yes" });
    };
    let header: string | null = null;
    const auth: Interceptor = (next) => async (req) => {
        req.header.set("authorization", "Bearer t");
        const res = await next(req);
        header = res.header.get("x-answer");
        return res;
    };
    const response = await client([auth]).pull({ collection: "docs", limit: 7 }, { timeoutMs: 5_000 });
    assert.equal(response.documents[0]?.id, "a");
    assert.equal(header, "yes");
    assert.equal(request[0], 0);
    assert.equal(request.readUInt32BE(1), request.length - 5);
    const headers = seen.at(-1) ?? {};
    assert.equal(headers[":path"], "/syncline.v1.ReplicationService/Pull");
    assert.equal(headers["content-type"], "application/grpc+proto");
    assert.equal(headers["te"], "trailers");
    assert.equal(headers["authorization"], "Bearer t");
    assert.match(String(headers["grpc-timeout"]), /^\d+m$/);
});

test("a trailers-only answer is its status, with the message and details' code", async () => {
    script = (stream) => {
        stream.respond(
            { ":status": 200, "content-type": "application/grpc", "grpc-status": String(Code.NotFound), "grpc-message": "collection%20nope" },
            { endStream: true },
        );
    };
    const e = await failure(client().pull({ collection: "nope" }));
    assert.equal(e.code, Code.NotFound);
    assert.equal(e.rawMessage, "collection nope");
});

test("an error status in the trailers after no message is that status", async () => {
    script = (stream) => {
        stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": String(Code.PermissionDenied), "grpc-message": "no" }));
        stream.end();
    };
    const e = await failure(client().pull({ collection: "docs" }));
    assert.equal(e.code, Code.PermissionDenied);
});

test("two messages, a cut envelope or no message with status OK are protocol errors, never a half answer", async () => {
    script = (stream) => ok(stream, Buffer.concat([envelope(ANSWER), envelope(ANSWER)]));
    assert.equal((await failure(client().pull({ collection: "docs" }))).code, Code.Unimplemented);
    script = (stream) => ok(stream, envelope(ANSWER).subarray(0, 9));
    assert.equal((await failure(client().pull({ collection: "docs" }))).code, Code.InvalidArgument);
    script = (stream) => ok(stream, Buffer.alloc(0));
    assert.equal((await failure(client().pull({ collection: "docs" }))).code, Code.Unknown);
});

test("a compressed answer is inflated when gzip was accepted, and refused when it was not", async () => {
    script = (stream) => ok(stream, envelope(gzipSync(ANSWER), 1), { "grpc-encoding": "gzip" });
    const response = await client([], true).pull({ collection: "docs" });
    assert.equal(response.documents[0]?.id, "a");
    assert.equal(seen.at(-1)?.["grpc-accept-encoding"], "gzip");
    script = (stream) => ok(stream, envelope(gzipSync(ANSWER), 1));
    assert.equal((await failure(client().pull({ collection: "docs" }))).code, Code.Internal);
});

test("stream resets map to gRPC's codes: REFUSED_STREAM is UNAVAILABLE, ENHANCE_YOUR_CALM is RESOURCE_EXHAUSTED", async () => {
    script = (stream) => stream.close(h2.NGHTTP2_REFUSED_STREAM);
    assert.equal((await failure(client().pull({ collection: "docs" }))).code, Code.Unavailable);
    script = (stream) => stream.close(h2.NGHTTP2_ENHANCE_YOUR_CALM);
    assert.equal((await failure(client().pull({ collection: "docs" }))).code, Code.ResourceExhausted);
});

test("a deadline ends the call as DEADLINE_EXCEEDED and cancels the stream; an abort as CANCELED", { timeout: 10_000 }, async () => {
    const cancelled: number[] = [];
    script = (stream) => {
        stream.on("close", () => cancelled.push(stream.rstCode));
    };
    const e = await failure(client().pull({ collection: "docs" }, { timeoutMs: 50 }));
    assert.equal(e.code, Code.DeadlineExceeded);
    const controller = new AbortController();
    const call = client().pull({ collection: "docs" }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 20);
    assert.equal((await failure(call)).code, Code.Canceled);
    // Aborted before the stream even opened.
    const early = new AbortController();
    // (With a deadline, so that a call the abort missed fails as DEADLINE_EXCEEDED, not hangs.)
    const first = client().pull({ collection: "docs" }, { signal: early.signal, timeoutMs: 2_000 });
    early.abort();
    assert.equal((await failure(first)).code, Code.Canceled);
    for (let i = 0; i < 100 && cancelled.length < 2; i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.deepEqual(cancelled.slice(0, 2), [h2.NGHTTP2_CANCEL, h2.NGHTTP2_CANCEL]);
});

test("a server that is not there is UNAVAILABLE", async () => {
    const gone = createClient(
        ReplicationService,
        createGrpcUnaryTransport({
            baseUrl: "http://127.0.0.1:1",
            interceptors: [],
            acceptCompression: [],
            sendCompression: undefined,
            pingIntervalMs: 15_000,
            pingTimeoutMs: 10_000,
        }),
    );
    assert.equal((await failure(gone.pull({ collection: "docs" }))).code, Code.Unavailable);
});
