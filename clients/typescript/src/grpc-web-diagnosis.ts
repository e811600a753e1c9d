// Names the likely cause when a gRPC-Web call fails before any response: a Syncline server
// with `grpc_web = false` speaks only HTTP/2, so an HTTP/1.1 gRPC-Web request gets an HTTP/2
// frame back (a parse error) or a reset connection, which on its own says nothing useful.

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** Error texts of the HTTP/1.1 clients (Node's http, undici) on an HTTP/2-only answer. */
const NOT_HTTP1 = /Expected HTTP\/|does not match the HTTP\/1\.1 protocol|HPE_INVALID_CONSTANT|Parse Error/i;
/** Error codes of a connection the server dropped without answering. */
const DROPPED = new Set(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET"]);
/** A browser's fetch failing without a response (Chrome, Firefox, Safari). */
const BROWSER_FETCH_FAILED = /Failed to fetch|NetworkError when attempting to fetch|Load failed/i;

/** The error and its causes, outermost first (bounded: causes can form a cycle). */
function causes(err: unknown): Array<{ message: string; code: string; syscall: string }> {
    const chain: Array<{ message: string; code: string; syscall: string }> = [];
    let current: unknown = err;
    for (let depth = 0; depth < 8 && current !== null && typeof current === "object"; depth += 1) {
        const e = current as { message?: unknown; code?: unknown; syscall?: unknown; cause?: unknown };
        chain.push({
            message: typeof e.message === "string" ? e.message : "",
            code: typeof e.code === "string" ? e.code : "",
            syscall: typeof e.syscall === "string" ? e.syscall : "",
        });
        current = e.cause;
    }
    return chain;
}

/**
 * What went wrong, when `err` (a call that got no response) looks like a server that does not
 * speak gRPC-Web, or undefined when it does not.
 */
export function diagnoseGrpcWebFailure(err: unknown, url: string): ConnectError | undefined {
    if (err instanceof ConnectError && err.code !== Code.Unknown && err.code !== Code.Internal && err.code !== Code.Unavailable) {
        return undefined; // a real gRPC status from the server
    }
    const chain = causes(err);
    // Certain: an HTTP/2 frame where an HTTP/1.1 response belongs, or the connection reset
    // while the request was still being written (the server refused the HTTP/1.1 bytes).
    if (chain.some((c) => NOT_HTTP1.test(c.message) || (c.code === "ECONNRESET" && c.syscall === "write"))) {
        return new ConnectError(
            `syncline-rxdb: the server at ${url} does not speak gRPC-Web (it answered an HTTP/1.1 ` +
                "gRPC-Web request with HTTP/2 or closed the connection): set grpc_web = true in its " +
                "configuration, or use transport 'grpc'",
            Code.Unimplemented,
            undefined,
            undefined,
            err,
        );
    }
    // Ambiguous (a restarting server looks the same, and browsers hide the cause): name the
    // candidates, keep the call retryable.
    if (chain.some((c) => BROWSER_FETCH_FAILED.test(c.message) || DROPPED.has(c.code))) {
        return new ConnectError(
            `syncline-rxdb: gRPC-Web request to ${url} failed without a response (${chain[0]?.message ?? ""}): ` +
                "is the server running, with grpc_web = true (and, in a browser, this page's origin in " +
                "cors_allowed_origins)?",
            Code.Unavailable,
            undefined,
            undefined,
            err,
        );
    }
    return undefined;
}

/** An interceptor that replaces an unexplained gRPC-Web transport failure with a diagnosis. */
export function grpcWebDiagnosis(url: string): Interceptor {
    return (next) => async (req) => {
        try {
            return await next(req);
        } catch (err) {
            throw diagnoseGrpcWebFailure(err, url) ?? err;
        }
    };
}
