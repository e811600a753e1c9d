// Pull pipelining: while the caller (RxDB) stores page N, page N+1 is already on its way.
//
// After a full page (as many documents as asked for: more are likely), the next page is
// requested at once with the new checkpoint, and the caller's next pull with that checkpoint
// and limit gets it. Without it, the server and the network wait while the client decodes and
// RxDB stores each page, and the client waits while the server reads the next (the server
// reads ahead on its side, but a page still has to cross the wire after it is asked for).
//
// A page is read ahead only while the caller has no write in flight, and dropped, never
// served, once a write starts (`writeStarted` / `writeFinished` around each push): read
// before that write reached the server, it could hand RxDB, as the server's state, a document
// older than what RxDB has just pushed. RxDB stores a pulled state over a fork that equals the
// state it last pushed, so such a page would undo the push locally for good (the server, and
// every other client, keep the pushed state). The caller's own pulls follow the same rule:
// one is sent only while no write is in flight, and asked again when a write started while it
// was on its way. A page read ahead that failed is asked for again by the caller's own pull,
// so errors surface (and are retried or reported) exactly as without pipelining. At most one
// page is held.

/** What a pull returns, as far as pipelining needs to know. */
export interface PulledPage {
    documents: readonly unknown[];
    checkpoint?: { token: string };
}

/** One page read ahead, and the state it was read under. */
interface Ahead<R> {
    token: string;
    limit: number;
    generation: number;
    response: Promise<R>;
}

/**
 * How many times a pull is asked again because writes kept starting while it was on its way;
 * past it the last page is served (a writer that never pauses would otherwise stall pulls).
 */
const QUIET_ATTEMPTS = 5;

/** Pulls through `fetch`, requesting the next page while the caller handles this one. */
export class PullAhead<R extends PulledPage> {
    private ahead: Ahead<R> | undefined;
    private generation = 0;
    private writes = 0;
    private idle: Array<() => void> = [];

    constructor(private readonly fetch: (token: string | undefined, limit: number) => Promise<R>) {}

    /** A local write starts: drops the page read ahead, and reads none until it has finished. */
    writeStarted(): void {
        this.generation += 1;
        this.writes += 1;
        this.ahead = undefined;
    }

    /** A local write has finished (successfully or not). */
    writeFinished(): void {
        this.writes = Math.max(0, this.writes - 1);
        if (this.writes === 0) {
            const waiting = this.idle;
            this.idle = [];
            waiting.forEach((resume) => resume());
        }
    }

    /** Resolves once no write is in flight. */
    private noWrites(): Promise<void> {
        return this.writes === 0 ? Promise.resolve() : new Promise((resume) => this.idle.push(resume));
    }

    /** The page after `token`, read while no write was in flight (see the file's comment). */
    private async quietFetch(token: string | undefined, limit: number): Promise<R> {
        for (let attempt = 1; ; attempt += 1) {
            await this.noWrites();
            const generation = this.generation;
            const response = await this.fetch(token, limit);
            if (generation === this.generation || attempt >= QUIET_ATTEMPTS) {
                return response;
            }
        }
    }

    /** The page after `token` (read ahead when it was), then the next one requested. */
    async pull(token: string | undefined, limit: number): Promise<R> {
        const ahead = this.ahead;
        this.ahead = undefined;
        let response: R;
        if (ahead !== undefined && ahead.token === token && ahead.limit === limit && ahead.generation === this.generation) {
            try {
                response = await ahead.response;
            } catch {
                response = await this.quietFetch(token, limit);
            }
            if (ahead.generation !== this.generation) {
                // A write started while it was on its way.
                response = await this.quietFetch(token, limit);
            }
        } else {
            response = await this.quietFetch(token, limit);
        }
        const next = response.checkpoint?.token;
        if (this.writes === 0 && response.documents.length >= limit && next && next !== token) {
            const generation = this.generation;
            const promise = this.fetch(next, limit);
            promise.catch(() => undefined); // handled when (if) it is used
            this.ahead = { token: next, limit, generation, response: promise };
        }
        return response;
    }
}
