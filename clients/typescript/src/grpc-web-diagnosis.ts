// Names the likely cause when a gRPC-Web call fails before any response: a Syncline server
// with `grpc_web = false` speaks only HTTP/2, so an HTTP/1.1 gRPC-Web request gets an HTTP/2
// frame back (a parse error) or a reset connection, which on its own says nothing useful.

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** Error texts of the HTTP/1.1 clients (Node's http, undici) on an HTTP/2-only answer. */
const NOT_HTTP1 = /Expected HTTP\/|does not match the HTTP\/1\.1 protocol|HPE_INVALID_CONSTANT|Parse Error/i;
/** Error codes of a connection the server dropped without answering. */
const DROPPED = new Set(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET", "ECONNABORTED"]);
/** A browser's fetch failing without a response (Chrome, Firefox, Safari). */
const BROWSER_FETCH_FAILED = /Failed to fetch|NetworkError when attempting to fetch|Load failed/i;

/** The error and its causes, outermost first (bounded: causes can form a cycle). */
function causes(err: unknown): Array<{ message: string; code: string }> {
    const chain: Array<{ message: string; code: string }> = [];
    let current: unknown = err;
    for (let depth = 0; depth < 8 && current !== null && typeof current === "object"; depth += 1) {
        const e = current as { message?: unknown; code?: unknown; cause?: unknown };
        chain.push({
            message: typeof e.message === "string" ? e.message : "",
            code: typeof e.code === "string" ? e.code : "",
        });
        current = e.cause;
    }
    return chain;
}

/**
 * True when `err` is a connection the peer had already closed or reset before answering (a
 * kept-alive HTTP/1.1 socket the server closed, e.g. after an error response).
 */
export function isDroppedConnection(err: unknown): boolean {
    return causes(err).some((c) => DROPPED.has(c.code) || /write EPIPE|socket hang up|other side closed/.test(c.message));
}

/**
 * Whether the server answers HTTP/1.1 at all (false: it sent HTTP/2 back), or undefined when
 * that cannot be told (only Node can ask; a browser's fetch hides the cause).
 */
export type Http1Probe = () => Promise<boolean | undefined>;

/**
 * What went wrong, when `err` (a call that got no response) looks like a server that does not
 * speak gRPC-Web, or undefined when it does not. `speaksHttp1` is a probe's answer, when one
 * was made.
 */
export function diagnoseGrpcWebFailure(
    err: unknown,
    url: string,
    speaksHttp1?: boolean,
): ConnectError | undefined {
    // Connect reports transport failures as UNKNOWN, INTERNAL, UNAVAILABLE or (a reset
    // socket) ABORTED; any other code is a real gRPC status from the server.
    const transportCodes = [Code.Unknown, Code.Internal, Code.Unavailable, Code.Aborted];
    if (err instanceof ConnectError && !transportCodes.includes(err.code)) {
        return undefined;
    }
    const chain = causes(err);
    const dropped = chain.some((c) => BROWSER_FETCH_FAILED.test(c.message) || DROPPED.has(c.code));
    // Certain: an HTTP/2 frame where an HTTP/1.1 response belongs, or a dropped connection
    // from a server that a probe found answering HTTP/1.1 with HTTP/2.
    if (chain.some((c) => NOT_HTTP1.test(c.message)) || (dropped && speaksHttp1 === false)) {
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
    if (dropped) {
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

/**
 * An interceptor that replaces an unexplained gRPC-Web transport failure with a diagnosis;
 * with `probe`, a dropped connection is checked with one plain HTTP/1.1 request.
 */
export function grpcWebDiagnosis(url: string, probe?: Http1Probe): Interceptor {
    return (next) => async (req) => {
        try {
            return await next(req);
        } catch (err) {
            let diagnosis = diagnoseGrpcWebFailure(err, url);
            if (diagnosis?.code === Code.Unavailable && probe) {
                diagnosis = diagnoseGrpcWebFailure(err, url, await probe().catch(() => undefined));
            }
            throw diagnosis ?? err;
        }
    };
}
