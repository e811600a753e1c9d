// What one run of the Node benchmark does: sizes, where the server and the database are, and
// the shape of the result the Rust runner (benches/replication/node.rs) reads back.

/** Sizes and addresses of one run. Every count is a whole number of documents or calls. */
export interface BenchConfig {
    /** The Syncline server's base URL, e.g. `http://127.0.0.1:50051`. */
    url: string;
    /** The server's database (the node-postgres baselines write and read the same table). */
    databaseUrl: string;
    /** A B rounds; each step's figure is the median over them. */
    rounds: number;
    /** Documents pushed per round by each push step. */
    pushDocs: number;
    /** Rows per push (and per baseline INSERT statement). */
    pushBatch: number;
    /** Pushes (and baseline statements) in flight at once in the concurrent push step. */
    pushInFlight: number;
    /** Documents in the collection of the "pull all" step. */
    pullDocs: number;
    /** Documents in the collection of the initial sync step (issue 17, target 3). */
    syncDocs: number;
    /** Documents per Pull and per baseline keyset page. */
    pullPage: number;
    /** Sequential single-document compare-and-sets per round. */
    casSamples: number;
    /** Push-to-live-stream samples per round. */
    liveSamples: number;
    /** Pipelined pulls (the next page requested while this one is decoded). Default true. */
    pullAhead?: boolean;
    /** How pages are decoded: by hand as the plugin does (default), or by the generated client. */
    pullDecoder?: PullDecoder;
    /** Whether the pull steps let the server gzip its pages (default "none"; step "sync_gzip" always does). */
    responseCompression?: "gzip" | "none";
    /** Unary calls on the client's own HTTP/2 path ("lean", the default) or connect-node's ("connect"), for an A/B. */
    unaryTransport?: UnaryTransport;
    /** Only these steps (names as in `BenchResult.steps`); all when absent. */
    only?: string[];
}

/** "lean": src/grpc-unary-node.ts, what the client uses; "connect": connect-node's gRPC transport. */
export type UnaryTransport = "lean" | "connect";

/** "hand": src/pull-page.ts, what the plugin uses; "generated": protobuf-es's reflection. */
export type PullDecoder = "hand" | "generated";

/** The collections the server must declare for a run. */
export const COLLECTIONS = {
    push: "node_push",
    pull: "node_pull",
    sync: "node_sync",
    cas: "node_cas",
    live: "node_live",
} as const;

/** Where the baselines write: another collection of the same table, as the Rust scenarios do. */
export const BASE_SUFFIX = "_base";

/** Latency of one round, in milliseconds. */
export interface LatencyFigures {
    p50: number;
    p99: number;
    max: number;
    count: number;
}

/** One round of one side of a step. */
export interface RoundFigures {
    /** Documents (or operations) per second. */
    rate: number;
    /** Present for the latency steps (compare-and-set, push-to-stream). */
    latency?: LatencyFigures;
    /** This process's CPU time (user + system) over the round, microseconds per document. */
    clientCpuMicrosPerDoc: number;
}

/** One step: its rounds on both sides, in the order they ran. */
export interface StepResult {
    name: string;
    /** What was measured, for the report's first column. */
    label: string;
    /** Documents or operations per round. */
    count: number;
    syncline: RoundFigures[];
    baseline: RoundFigures[];
}

/** What the script prints (one JSON document on stdout). */
export interface BenchResult {
    node: string;
    steps: StepResult[];
    /** Correctness failures (missing documents, unexpected conflicts): the run fails. */
    violations: string[];
}

const INTEGER_KEYS = [
    "rounds",
    "pushDocs",
    "pushBatch",
    "pushInFlight",
    "pullDocs",
    "syncDocs",
    "pullPage",
    "casSamples",
    "liveSamples",
] as const;

/** Parses and checks a configuration (JSON text from the runner). */
export function parseConfig(text: string): BenchConfig {
    const raw: unknown = JSON.parse(text);
    if (raw === null || typeof raw !== "object") {
        throw new Error("bench config: not a JSON object");
    }
    const config = raw as BenchConfig;
    for (const key of ["url", "databaseUrl"] as const) {
        if (typeof config[key] !== "string" || config[key].length === 0) {
            throw new Error(`bench config: '${key}' must be a non-empty string`);
        }
    }
    for (const key of INTEGER_KEYS) {
        const value = config[key];
        if (!Number.isInteger(value) || value < 1) {
            throw new Error(`bench config: '${key}' must be a positive integer, not ${String(value)}`);
        }
    }
    if (config.pullDecoder !== undefined && config.pullDecoder !== "hand" && config.pullDecoder !== "generated") {
        throw new Error(`bench config: 'pullDecoder' must be "hand" or "generated"`);
    }
    if (config.unaryTransport !== undefined && config.unaryTransport !== "lean" && config.unaryTransport !== "connect") {
        throw new Error(`bench config: 'unaryTransport' must be "lean" or "connect"`);
    }
    if (config.responseCompression !== undefined && config.responseCompression !== "gzip" && config.responseCompression !== "none") {
        throw new Error(`bench config: 'responseCompression' must be "gzip" or "none"`);
    }
    if (config.pullPage > 1000 || config.pushBatch > 1000) {
        throw new Error("bench config: 'pullPage' and 'pushBatch' must not exceed the server's 1000");
    }
    return config;
}
