// Reconcile: bring a local copy back in line with the server after its checkpoint expired (a
// tombstone purge, a restore), transferring little more than what differs. The client half of
// README "Reconcile"; the reference is the server's src/protocol/reconcile.rs, whose hashes
// this module computes identically (WebCrypto SHA-256, in Node and browsers alike).
//
// Knows nothing of RxDB: it takes the (id, revision) pairs the caller holds and returns the
// live documents to apply, the ids to drop, and the checkpoint C0 to pull from afterwards.

import { create } from "@bufbuild/protobuf";
import type { CallOptions, Client } from "@connectrpc/connect";

import {
    BucketDigestsSchema,
    type Document,
    type ReplicationService,
} from "./gen/syncline/v1/replication_pb.js";

/** The deepest bucket level the server accepts (as `BUCKET_BITS_MAX` in reconcile.rs). */
export const BUCKET_BITS_MAX = 24;
/** Level of the first round (README: 12 bits, about 40 KB of digests for 100,000 documents). */
const FIRST_BITS = 12;
/** Bits added per deeper round. */
const STEP_BITS = 4;
/** Request bounds of a reconcile. */
export interface ReconcileBounds {
    /** Most buckets one Reconcile round compares (and digests it sends). */
    comparedMax: number;
    /** Most documents one ReconcileList may return (by the server's counts); fuller buckets go deeper. */
    listMax: number;
    /** Most ids per Fetch. */
    fetchMax: number;
}

/**
 * The default bounds: below the server's defaults (`reconcile_digests_max` 65,536,
 * `reconcile_list_max` 10,000, `fetch_ids_max` 1,000), with room for a stricter server.
 */
export const DEFAULT_BOUNDS: ReconcileBounds = { comparedMax: 4_096, listMax: 2_000, fetchMax: 500 };

const MASK64 = (1n << 64n) - 1n;
const encoder = new TextEncoder();

async function sha8(text: string): Promise<bigint> {
    const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", encoder.encode(text)));
    let out = 0n;
    for (let i = 0; i < 8; i += 1) {
        out = (out << 8n) | BigInt(digest[i]);
    }
    return out;
}

/** The bucket of `id` at `bits` bits (0 to 24): the top bits of the first 8 bytes of sha256(id). */
export async function bucketOf(id: string, bits: number): Promise<number> {
    const b = Math.min(Math.max(bits, 0), BUCKET_BITS_MAX);
    if (b === 0) {
        return 0;
    }
    return Number((await sha8(id)) >> BigInt(64 - b));
}

/** The hash of one (id, revision): the first 8 bytes of sha256(id || "\n" || revision). */
export function itemHash(id: string, revision: string): Promise<bigint> {
    return sha8(`${id}\n${revision}`);
}

/** What the digests need of one held document, computed once and reused in every round. */
export interface HeldKey {
    id: string;
    revision: string;
    /** Its bucket at 24 bits (the bucket at fewer bits is a prefix of it). */
    top: number;
    hash: bigint;
}

/** The key of one (id, revision), as `key` in reconcile.rs. */
export async function heldKey(id: string, revision: string): Promise<HeldKey> {
    const [top, hash] = await Promise.all([bucketOf(id, BUCKET_BITS_MAX), itemHash(id, revision)]);
    return { id, revision, top, hash };
}

/** A bucket's digest: documents in it and the sum of their hashes modulo 2^64. */
export interface Digest {
    count: number;
    sum: bigint;
}

/**
 * Digests of the non-empty buckets at `bits` of `keys`, keeping only buckets under one of
 * the `within` prefixes at `withinBits` (all when `withinBits` is 0), as `digests_of_keys`.
 */
export function digestsOf(keys: readonly HeldKey[], bits: number, withinBits = 0, within?: ReadonlySet<number>): Map<number, Digest> {
    const out = new Map<number, Digest>();
    for (const k of keys) {
        const bucket = k.top >>> (BUCKET_BITS_MAX - bits);
        if (withinBits > 0 && !within?.has(bucket >>> (bits - Math.min(withinBits, bits)))) {
            continue;
        }
        const d = out.get(bucket);
        if (d === undefined) {
            out.set(bucket, { count: 1, sum: k.hash });
        } else {
            d.count += 1;
            d.sum = (d.sum + k.hash) & MASK64;
        }
    }
    return out;
}

function wire(digests: Map<number, Digest>) {
    const buckets = [...digests.keys()].sort((a, b) => a - b);
    return create(BucketDigestsSchema, {
        buckets,
        counts: buckets.map((b) => digests.get(b)!.count),
        sums: buckets.map((b) => digests.get(b)!.sum),
    });
}

/** What a reconcile found. */
export interface ReconcileResult {
    /** Live documents to apply: held at another revision, or not held at all. */
    documents: Document[];
    /** Held ids the server no longer has live for this caller: drop them as deletions. */
    dropped: string[];
    /** C0: the first round's checkpoint; pull from it next. */
    checkpoint: string;
    /** Calls made (Reconcile, ReconcileList, Fetch), for logs and tests. */
    calls: number;
}

/** A differing bucket: its number, level, and the server's document count in it. */
interface Differing {
    bucket: number;
    bits: number;
    count: number;
}

/**
 * Runs the rounds of README "Reconcile" for `collection` against the `held` (id, revision)
 * pairs (live documents only; an unknown revision may be given as "": such a document's
 * bucket then differs and it is listed, and fetched if the server has it).
 */
export async function reconcile(
    client: Client<typeof ReplicationService>,
    collection: string,
    held: ReadonlyArray<readonly [string, string]>,
    callOptions: () => CallOptions,
    bounds: ReconcileBounds = DEFAULT_BOUNDS,
): Promise<ReconcileResult> {
    const { comparedMax, listMax, fetchMax } = bounds;
    // The first round compares every bucket of its level: no more than comparedMax.
    const firstBits = Math.min(FIRST_BITS, Math.floor(Math.log2(Math.max(1, comparedMax))));
    const keys: HeldKey[] = [];
    // Hashed a thousand at a time: WebCrypto is asynchronous, one await per digest is slow.
    for (let i = 0; i < held.length; i += 1_000) {
        keys.push(...(await Promise.all(held.slice(i, i + 1_000).map(([id, revision]) => heldKey(id, revision)))));
    }
    let calls = 0;
    const first = await client.reconcile(
        { collection, bucketBits: firstBits, withinBits: 0, within: [], digests: wire(digestsOf(keys, firstBits)) },
        callOptions(),
    );
    calls += 1;
    const checkpoint = first.checkpoint?.token ?? "";
    if (checkpoint === "") {
        throw new Error("syncline-rxdb: the server's Reconcile reply has no checkpoint");
    }
    const differingOf = (bits: number, d: typeof first.differing): Differing[] =>
        (d?.buckets ?? []).map((bucket, i) => ({ bucket, bits, count: d?.counts[i] ?? 0 }));

    // Descend: every bucket differing at the first level goes one level deeper (as the README
    // algorithm); after that, buckets small enough are listed and the rest go deeper again.
    const toList: Differing[] = [];
    let descend: Differing[] = differingOf(firstBits, first.differing);
    let bits = firstBits;
    while (descend.length > 0) {
        if (bits >= BUCKET_BITS_MAX) {
            toList.push(...descend);
            break;
        }
        const next: Differing[] = [];
        const deeper = Math.min(bits + STEP_BITS, BUCKET_BITS_MAX);
        const perRequest = Math.max(1, Math.floor(comparedMax / 2 ** (deeper - bits)));
        for (let i = 0; i < descend.length; i += perRequest) {
            const within = descend.slice(i, i + perRequest).map((d) => d.bucket);
            const reply = await client.reconcile(
                {
                    collection,
                    bucketBits: deeper,
                    withinBits: bits,
                    within,
                    digests: wire(digestsOf(keys, deeper, bits, new Set(within))),
                },
                callOptions(),
            );
            calls += 1;
            for (const d of differingOf(deeper, reply.differing)) {
                (d.count <= listMax ? toList : next).push(d);
            }
        }
        descend = next;
        bits = deeper;
    }

    // List, in batches whose server counts stay under the list bound, one level per request.
    const byId = new Map(keys.map((k) => [k.id, k]));
    const dropped: string[] = [];
    const toFetch: string[] = [];
    // A bucket the server holds nothing in needs no list: every held id in it is gone.
    const empty = toList.filter((d) => d.count === 0);
    for (const level of new Set(empty.map((d) => d.bits))) {
        const buckets = new Set(empty.filter((d) => d.bits === level).map((d) => d.bucket));
        for (const k of keys) {
            if (buckets.has(k.top >>> (BUCKET_BITS_MAX - level))) {
                dropped.push(k.id);
            }
        }
    }
    const nonEmpty = toList.filter((d) => d.count > 0);
    const levels = [...new Set(nonEmpty.map((d) => d.bits))];
    for (const level of levels) {
        const atLevel = nonEmpty.filter((d) => d.bits === level);
        let i = 0;
        while (i < atLevel.length) {
            const batch: Differing[] = [];
            let total = 0;
            while (i < atLevel.length && (batch.length === 0 || total + atLevel[i].count <= listMax) && batch.length < comparedMax) {
                total += atLevel[i].count;
                batch.push(atLevel[i]);
                i += 1;
            }
            const buckets = new Set(batch.map((d) => d.bucket));
            const listed = await client.reconcileList(
                { collection, bucketBits: level, buckets: [...buckets] },
                callOptions(),
            );
            calls += 1;
            const server = new Map(listed.documents.map((e) => [e.id, e.revision]));
            for (const k of keys) {
                if (buckets.has(k.top >>> (BUCKET_BITS_MAX - level)) && !server.has(k.id)) {
                    dropped.push(k.id);
                }
            }
            for (const [id, revision] of server) {
                const mine = byId.get(id);
                if (mine === undefined || mine.revision !== revision) {
                    toFetch.push(id);
                }
            }
        }
    }

    // Fetch, continuing after `answered`; requested ids left out are no longer live.
    const documents: Document[] = [];
    let rest = toFetch;
    while (rest.length > 0) {
        const ask = rest.slice(0, fetchMax);
        const reply = await client.fetch({ collection, ids: ask }, callOptions());
        calls += 1;
        const answered = Math.min(reply.answered, ask.length);
        if (answered < 1) {
            throw new Error("syncline-rxdb: the server's Fetch reply answered no id");
        }
        const got = new Set(reply.documents.map((d) => d.id));
        for (const id of ask.slice(0, answered)) {
            if (!got.has(id) && byId.has(id)) {
                dropped.push(id);
            }
        }
        documents.push(...reply.documents.filter((d) => !d.deleted));
        rest = rest.slice(answered);
    }
    return { documents, dropped, checkpoint, calls };
}
