// What the push handler remembers between its calls: the idempotency key of each push batch
// that has not succeeded yet, and the states the server merged after resolving a row.
//
// Idempotency keys. RxDB retries a failed push by calling the handler again with the same
// rows. The batch keeps its key until a push of it succeeds, so a retry after a lost
// acknowledgement is answered by the server with the first push's outcome (`replayed`)
// instead of being applied twice (a counter would count twice). Batches are recognised by a
// SHA-256 of the encoded request; a batch pushed again after a success (the same edit made
// twice) is a new logical push and gets a new key.
//
// Absorbed states. When the server resolves a row (PushResponse.resolved), the plugin hands
// the merged state to RxDB as the master state. RxDB writes it to the local document and
// records it as the assumed master state, but only if the local document did not change
// while the push was in flight; otherwise (status 409 in its fork write) it keeps the
// previous assumed master state and pushes the newer local state against it. For a counter
// that would add the already merged increments a second time (delta = new - assumed), for a
// field merge it would re-apply old edits. So the plugin remembers, per resolved id, the
// assumed state RxDB had sent and the state the server has since absorbed; a later row that
// still assumes the former is sent assuming the latter, the base the server really merged.

import { sha256HexOfBytes } from "./sha256.js";

/** Batches awaiting a successful push at most; the oldest key is forgotten beyond it. */
const PENDING_KEYS_MAX = 64;
/** Resolved ids remembered at most; the oldest is forgotten beyond it. */
const ABSORBED_MAX = 10_000;

/** A random idempotency key: 32 hex digits (getRandomValues works in insecure contexts too). */
export function newIdempotencyKey(): string {
    const bytes = new Uint8Array(16);
    globalThis.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Hex SHA-256 of bytes (synchronous, sha256.ts: WebCrypto cost ~0.35 ms per push in Node). */
async function sha256OfBytes(bytes: Uint8Array): Promise<string> {
    return sha256HexOfBytes(bytes);
}

/** Idempotency keys of push batches that have not been pushed successfully yet. */
export class PendingPushKeys {
    private readonly keys = new Map<string, string>();

    constructor(
        private readonly max = PENDING_KEYS_MAX,
        private readonly fresh: () => string = newIdempotencyKey,
    ) {}

    /**
     * The key for a batch (its encoded request without a key): the one a failed push of the
     * same batch used, else a new one. Returns the digest to pass to `succeeded`.
     */
    async keyFor(encodedRequest: Uint8Array): Promise<{ key: string; digest: string }> {
        const digest = await sha256OfBytes(encodedRequest);
        let key = this.keys.get(digest);
        if (key === undefined) {
            key = this.fresh();
            this.keys.set(digest, key);
            while (this.keys.size > this.max) {
                const oldest = this.keys.keys().next().value as string;
                this.keys.delete(oldest);
            }
        }
        return { key, digest };
    }

    /** The batch was pushed: a later identical batch is a new logical push. */
    succeeded(digest: string): void {
        this.keys.delete(digest);
    }

    /** Batches remembered (for tests). */
    get size(): number {
        return this.keys.size;
    }
}

/** States the server absorbed by resolving a row, by document id (see the file comment). */
export class AbsorbedStates<State> {
    private readonly entries = new Map<string, { staleAssumed: string; absorbed: State }>();

    constructor(private readonly max = ABSORBED_MAX) {}

    /**
     * The assumed state to send for a row of `id` whose RxDB assumed state has the identity
     * `assumedIdentity`: the absorbed state when RxDB still assumes what it assumed when the
     * server resolved the row, else undefined (send RxDB's). A row assuming anything else
     * shows that RxDB moved on, and the entry is forgotten.
     */
    rebase(id: string, assumedIdentity: string): State | undefined {
        const entry = this.entries.get(id);
        if (entry === undefined) {
            return undefined;
        }
        if (entry.staleAssumed === assumedIdentity) {
            return entry.absorbed;
        }
        this.entries.delete(id);
        return undefined;
    }

    /** A push of `id` succeeded without the server resolving it: nothing to rebase on. */
    forget(id: string): void {
        this.entries.delete(id);
    }

    /**
     * The server resolved the row of `id` that RxDB sent assuming `assumedIdentity`, after
     * absorbing `absorbed` (the state pushed).
     */
    resolved(id: string, assumedIdentity: string, absorbed: State): void {
        this.entries.delete(id);
        this.entries.set(id, { staleAssumed: assumedIdentity, absorbed });
        while (this.entries.size > this.max) {
            const oldest = this.entries.keys().next().value as string;
            this.entries.delete(oldest);
        }
    }

    /** Ids remembered (for tests). */
    get size(): number {
        return this.entries.size;
    }
}
