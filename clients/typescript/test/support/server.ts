// Runs a real Syncline server for the interop tests: a fresh PostgreSQL database, a free port,
// `syncline serve`, and a restart (kill + start on the same port and database).
//
// Environment (scripts/test-typescript.sh sets it):
//   SYNCLINE_BIN             the server binary (required)
//   TEST_DATABASE_ADMIN_URL  a cluster where the tests may CREATE DATABASE (required)
//   SYNCLINE_TEST_LOG_DIR    where server logs, configs and pid files go (default: a new
//                            temporary directory)
//   SYNCLINE_TEST_RUN_ID     prefix of the databases created (default: this process's pid),
//                            so the calling script can drop leftovers
// Missing variables or an unreachable server make the tests FAIL, never skip.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, afterEach, before, test } from "node:test";

export interface ServerOptions {
    /** Server collections to declare (besides "tasks"). */
    collections: string[];
    /** A label for the database name and the log file. */
    label: string;
    /** JWT authentication with this HS256 secret (no leeway); default: `auth.mode = "none"`. */
    hs256Secret?: string;
    /** Serve gRPC-Web (default true). */
    grpcWeb?: boolean;
    /** Extra TOML appended to each collection's table, by collection name (e.g. read_scopes). */
    collectionSettings?: Record<string, string>;
    /** Extra top-level TOML keys (e.g. `purge_interval_seconds = 1`). */
    extraConfig?: string;
}

function requireEnv(name: string): string {
    const value = process.env[name];
    if (!value) {
        throw new Error(
            `${name} is not set: run the suite through scripts/test-typescript.sh ` +
                "(it needs SYNCLINE_BIN and TEST_DATABASE_ADMIN_URL)",
        );
    }
    return value;
}

function psql(adminUrl: string, sql: string): void {
    const result = spawnSync("psql", [adminUrl, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], {
        encoding: "utf8",
    });
    if (result.error) {
        throw new Error(`psql could not run: ${result.error.message}`);
    }
    if (result.status !== 0) {
        throw new Error(`psql failed (${sql}): ${result.stderr}`);
    }
}

function freePort(): Promise<number> {
    return new Promise((resolvePort, reject) => {
        const server = createServer();
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const address = server.address();
            if (address === null || typeof address === "string") {
                reject(new Error("no port"));
                return;
            }
            server.close(() => resolvePort(address.port));
        });
    });
}

function canConnect(port: number): Promise<boolean> {
    return new Promise((done) => {
        const socket = createConnection({ host: "127.0.0.1", port });
        socket.setTimeout(500);
        socket.once("connect", () => {
            socket.destroy();
            done(true);
        });
        socket.once("timeout", () => {
            socket.destroy();
            done(false);
        });
        socket.once("error", () => done(false));
    });
}

/** The server's environment: ours minus every SYNCLINE_* variable (they are config keys). */
function serverEnv(databaseUrl: string): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries(process.env)) {
        if (!key.startsWith("SYNCLINE_")) {
            env[key] = value;
        }
    }
    env.DATABASE_URL = databaseUrl;
    env.NO_COLOR = "1";
    env.RUST_LOG = process.env.RUST_LOG ?? "info";
    return env;
}

export class SynclineServer {
    readonly url: string;
    private child: ChildProcess | undefined;
    private starts = 0;

    private constructor(
        private readonly bin: string,
        private readonly adminUrl: string,
        private readonly database: string,
        readonly databaseUrl: string,
        private readonly configPath: string,
        private readonly logPath: string,
        readonly port: number,
    ) {
        this.url = `http://127.0.0.1:${port}`;
    }

    static async start(options: ServerOptions): Promise<SynclineServer> {
        const bin = resolve(requireEnv("SYNCLINE_BIN"));
        const adminUrl = requireEnv("TEST_DATABASE_ADMIN_URL");
        const logDir = process.env.SYNCLINE_TEST_LOG_DIR ?? mkdtempSync(join(tmpdir(), "syncline-ts-"));
        mkdirSync(logDir, { recursive: true });
        const label = options.label.replace(/[^a-z0-9_]/gi, "_").toLowerCase();
        const runId = (process.env.SYNCLINE_TEST_RUN_ID ?? String(process.pid)).replace(/[^a-z0-9_]/gi, "_");
        const database = `syncline_ts_${runId}_${label}`.toLowerCase();
        psql(adminUrl, `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
        psql(adminUrl, `CREATE DATABASE "${database}"`);
        const url = new URL(adminUrl);
        url.pathname = `/${database}`;
        const port = await freePort();
        const configPath = join(logDir, `${label}.toml`);
        const collections = ["tasks", ...options.collections]
            .map((name) => `[[collections]]\nname = "${name}"\n${options.collectionSettings?.[name] ?? ""}\n`)
            .join("\n");
        const base = [
            `listen = "127.0.0.1:${port}"`,
            "heartbeat_seconds = 2",
            `grpc_web = ${options.grpcWeb ?? true}`,
            'cors_allowed_origins = ["*"]',
            options.extraConfig ?? "",
            "",
        ].join("\n");
        // The server requires an explicit [auth] table; most suites exercise replication, not auth.
        const auth = options.hs256Secret
            ? `[auth]\nmode = "jwt"\nhs256_secret = "${options.hs256Secret}"\nleeway_seconds = 0\n`
            : '[auth]\nmode = "none"\n';
        writeFileSync(configPath, `${base}\nmetrics_enabled = false\n${auth}\n${collections}`);
        const check = spawnSync(bin, ["check-config", "--config", configPath], {
            env: serverEnv(url.toString()),
            encoding: "utf8",
        });
        if (check.error) {
            throw new Error(`cannot run ${bin}: ${check.error.message}`);
        }
        if (check.status !== 0) {
            throw new Error(`syncline check-config rejected the test configuration:\n${check.stdout}${check.stderr}`);
        }
        const server = new SynclineServer(
            bin,
            adminUrl,
            database,
            url.toString(),
            configPath,
            join(logDir, `${label}.log`),
            port,
        );
        await server.spawn();
        return server;
    }

    private async spawn(): Promise<void> {
        this.starts += 1;
        const log = createWriteStream(this.logPath, { flags: "a" });
        log.write(`\n===== start #${this.starts} =====\n`);
        const child = spawn(this.bin, ["serve", "--config", this.configPath], {
            env: serverEnv(this.databaseUrl),
            stdio: ["ignore", "pipe", "pipe"],
        });
        child.stdout?.pipe(log, { end: false });
        child.stderr?.pipe(log, { end: false });
        this.child = child;
        // For the calling script's cleanup, should this process die without stopping it.
        writeFileSync(`${this.logPath}.pid`, `${child.pid ?? ""}\n`);
        const deadline = Date.now() + 30_000;
        while (Date.now() < deadline) {
            if (child.exitCode !== null || child.signalCode !== null) {
                throw new Error(`syncline exited during start-up; log:\n${this.log()}`);
            }
            if (await canConnect(this.port)) {
                return;
            }
            await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(`syncline did not accept connections on port ${this.port} within 30 s`);
    }

    /**
     * Stops the process and waits until it is gone: SIGKILL (a crash: connections just drop)
     * or SIGTERM (a graceful shutdown: streams end with UNAVAILABLE).
     */
    async kill(signal: "SIGKILL" | "SIGTERM" = "SIGKILL"): Promise<void> {
        const child = this.child;
        this.child = undefined;
        if (!child || child.exitCode !== null || child.signalCode !== null) {
            return;
        }
        const exited = new Promise<void>((done) => child.once("exit", () => done()));
        child.kill(signal);
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
    }

    /** Stops the server and starts it again on the same port and database. */
    async restart(signal: "SIGKILL" | "SIGTERM" = "SIGKILL"): Promise<void> {
        await this.kill(signal);
        await this.spawn();
    }

    /** Stops the server (SIGTERM, then SIGKILL) and drops its database. */
    async stop(): Promise<void> {
        const child = this.child;
        this.child = undefined;
        if (child && child.exitCode === null && child.signalCode === null) {
            const exited = new Promise<void>((done) => child.once("exit", () => done()));
            child.kill("SIGTERM");
            const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
            await exited;
            clearTimeout(timer);
        }
        psql(this.adminUrl, `DROP DATABASE IF EXISTS "${this.database}" WITH (FORCE)`);
    }

    /** Runs `sql` on the server's database; the result rows, `|`-separated values per line. */
    query(sql: string): string[] {
        const result = spawnSync("psql", [this.databaseUrl, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], {
            encoding: "utf8",
        });
        if (result.error || result.status !== 0) {
            throw new Error(`psql failed (${sql}): ${result.error?.message ?? result.stderr}`);
        }
        return result.stdout.split("\n").filter((line) => line.length > 0);
    }

    log(): string {
        try {
            return readFileSync(this.logPath, "utf8");
        } catch {
            return "(no log)";
        }
    }
}

/** What a suite with a server of its own uses (see {@link serverSuite}). */
export interface ServerSuite {
    /** The running server (set before the first test). */
    readonly server: SynclineServer;
    /** The current test's cleanups, run after it in reverse order (failures ignored). */
    readonly cleanups: Array<() => Promise<unknown>>;
    /** A test that FAILS (never skips) when the server could not be started. */
    serverTest(name: string, body: () => Promise<void>): void;
}

/**
 * The lifecycle every suite with a server of its own shares; call it inside `describe`.
 * Starts the server before the tests, runs each test's cleanups after it, and stops the
 * server (then `atEnd`) after the last test.
 */
export function serverSuite(options: ServerOptions, testTimeoutMs: number, atEnd?: () => void): ServerSuite {
    let server: SynclineServer | undefined;
    let startError: unknown;
    const cleanups: Array<() => Promise<unknown>> = [];
    before(async () => {
        try {
            server = await SynclineServer.start(options);
        } catch (err) {
            startError = err;
        }
    });
    afterEach(async () => {
        for (const cleanup of cleanups.splice(0).reverse()) {
            await cleanup().catch(() => undefined);
        }
    });
    after(async () => {
        await server?.stop();
        atEnd?.();
    });
    return {
        get server(): SynclineServer {
            if (server === undefined) {
                throw startError ?? new Error("the suite's server has not started");
            }
            return server;
        },
        cleanups,
        serverTest(name: string, body: () => Promise<void>): void {
            test(name, { timeout: testTimeoutMs }, async () => {
                if (startError !== undefined) {
                    throw startError;
                }
                await body();
            });
        },
    };
}
