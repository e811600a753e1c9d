// responseCompression: what the Node transports tell the server about compressed responses
// (grpc-accept-encoding), seen by a bare HTTP/2 server that records request headers.

import assert from "node:assert/strict";
import { createServer, type Http2Server, type IncomingHttpHeaders, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import { createSynclineClient } from "../src/index.js";

let server: Http2Server;
let url = "";
const seen: IncomingHttpHeaders[] = [];
const sessions = new Set<ServerHttp2Session>();

before(async () => {
    server = createServer();
    // The clients keep their connections open (with pings): close them from this side.
    server.on("session", (session) => {
        sessions.add(session);
        session.on("close", () => sessions.delete(session));
    });
    server.on("stream", (stream, headers) => {
        seen.push(headers);
        // A trailers-only gRPC answer: UNIMPLEMENTED.
        stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    sessions.forEach((session) => session.destroy());
    await closed;
});

async function acceptEncodingOf(options: { responseCompression?: "gzip" | "none" }): Promise<string | undefined> {
    const client = createSynclineClient({ url, transport: "grpc", ...options });
    seen.length = 0;
    await assert.rejects(client.service.pull({ collection: "c" }), /UNIMPLEMENTED|unimplemented/i);
    assert.equal(seen.length, 1);
    const value = seen[0]["grpc-accept-encoding"];
    return Array.isArray(value) ? value.join(",") : value;
}

test("by default gzip responses are accepted", async () => {
    assert.match((await acceptEncodingOf({})) ?? "", /gzip/);
    assert.match((await acceptEncodingOf({ responseCompression: "gzip" })) ?? "", /gzip/);
});

test("responseCompression 'none' asks for uncompressed responses", async () => {
    assert.doesNotMatch((await acceptEncodingOf({ responseCompression: "none" })) ?? "", /gzip/);
});

test("an unknown responseCompression is refused, naming the option", () => {
    assert.throws(
        () => createSynclineClient({ url, responseCompression: "br" as "gzip" }),
        /responseCompression must be 'gzip' or 'none', not 'br'/,
    );
});
