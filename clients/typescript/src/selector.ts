// Selective sync: the `selector` option of a replication.
//
// The server does the filtering (PullRequest.selector, SubscribeRequest.selector): a filtered
// Pull or stream sends the documents matching the selector and, for each document that stopped
// matching, a removal (`deleted`, with `left_scope` when the document still exists). The
// plugin hands a removal to RxDB as a pulled deletion, i.e. a master state: RxDB drops the
// local copy and records the deletion as what the server holds, so it never pushes it back.
//
// Checkpoints are bound to the selector, so a replication whose selector changed (or whose
// checkpoint expired) is refused its stored checkpoint. A reconcile cannot help then: it
// compares the whole collection, not the selected part. Instead the plugin starts over under
// the selector (every matching document, from the beginning) and deletes, as pulled
// deletions, the local documents the server did not send: they matched only the old selector
// or were removed while the checkpoint was unusable.
//
// One case no filtered read covers: a local edit RxDB pushes after the document left the
// selector on the server (the removal arrived while the edit was pending, so RxDB kept the
// edit). The push conflicts and returns the server's state, outside the selector; RxDB's
// default conflict handler would store it and keep it forever (the removal is behind the
// checkpoint). Such a state is handed to RxDB deleted instead (OutOfScopeStates).

import { create } from "@bufbuild/protobuf";
import { getQueryMatcher, normalizeMangoQuery, type MangoQuerySelector, type RxJsonSchema } from "rxdb";

import { DocumentSchema, type Document, type PullResponse } from "./gen/syncline/v1/replication_pb.js";

const encoder = new TextEncoder();

/**
 * The selector's wire form (UTF-8 JSON), or undefined for none. `{}` selects everything and is
 * sent as no selector. Throws on anything but a plain object; the server checks the rest
 * (operators, declared fields, types) and refuses a bad selector with INVALID_ARGUMENT naming
 * the path.
 */
export function encodeSelector(selector: unknown): Uint8Array | undefined {
    if (selector === undefined) {
        return undefined;
    }
    if (selector === null || typeof selector !== "object" || Array.isArray(selector)) {
        throw new Error("syncline-rxdb: selector must be a Mango selector object, e.g. { done: false }");
    }
    if (Object.keys(selector).length === 0) {
        return undefined;
    }
    return encoder.encode(JSON.stringify(selector));
}

/** RxDB's bookkeeping fields, not part of a document state. */
const RXDB_INTERNAL_FIELDS = ["_meta", "_rev", "_attachments"];

/**
 * A removal carries no body (nor does a deletion in a filtered read, or a reconcile's
 * tombstone): its state is only the primary key (and owner) and `_deleted`. A storage that
 * validates the schema refuses such a document when the schema requires other fields, so the
 * deleted state handed to RxDB takes the fields of the local copy, as a refused row's does.
 * `local` finds the local documents (deleted ones too) by id; states with a body are kept.
 */
export async function withLocalFields<T extends Record<string, unknown>>(
    states: T[],
    primaryPath: string,
    ownerField: string | undefined,
    local: (ids: string[]) => Promise<ReadonlyArray<Record<string, unknown>>>,
): Promise<T[]> {
    const bare = (state: T): boolean =>
        state._deleted === true && Object.keys(state).every((k) => k === primaryPath || k === ownerField || k === "_deleted");
    const ids = states.filter(bare).map((state) => String(state[primaryPath]));
    if (ids.length === 0) {
        return states;
    }
    const held = new Map((await local(ids)).map((doc) => [String(doc[primaryPath]), doc] as const));
    return states.map((state) => {
        const copy = bare(state) ? held.get(String(state[primaryPath])) : undefined;
        if (copy === undefined) {
            return state;
        }
        const filled: Record<string, unknown> = {};
        for (const [key, value] of Object.entries(copy)) {
            if (!RXDB_INTERNAL_FIELDS.includes(key)) {
                filled[key] = value;
            }
        }
        filled[primaryPath] = state[primaryPath];
        filled._deleted = true;
        return filled as T;
    });
}

/** Filtered pulls from the beginning, until an empty page: the most pages followed. */
const START_OVER_PAGES_MAX = 1_000_000;

/**
 * Starts a filtered replication over: every document matching the selector (paging filtered
 * Pulls from the beginning with `pull`), plus a deletion for each id of `localIds` the server
 * did not send. Returns them and the checkpoint after the last page. Holds the whole selected
 * set in memory once: a selector is meant to pick a part of the collection.
 */
export async function startOver(
    pull: (token: string | undefined) => Promise<PullResponse>,
    localIds: () => Promise<readonly string[]>,
): Promise<{ documents: Document[]; token: string | undefined; dropped: number }> {
    const byId = new Map<string, Document>();
    let token: string | undefined;
    for (let page = 0; ; page += 1) {
        if (page >= START_OVER_PAGES_MAX) {
            throw new Error("syncline-rxdb: starting over did not reach the end of the selected documents");
        }
        const response = await pull(token);
        const next = response.checkpoint?.token;
        if (response.documents.length === 0) {
            token = next || token;
            break;
        }
        if (!next || next === token) {
            throw new Error("syncline-rxdb: a Pull returned documents without advancing the checkpoint");
        }
        for (const doc of response.documents) {
            // A later page holds the later state: keep it, in change order.
            byId.delete(doc.id);
            byId.set(doc.id, doc);
        }
        token = next;
    }
    let dropped = 0;
    for (const id of await localIds()) {
        if (!byId.has(id)) {
            byId.set(id, create(DocumentSchema, { id, deleted: true }));
            dropped += 1;
        }
    }
    return { documents: [...byId.values()], token, dropped };
}

/** Server states handed to RxDB as deletions, remembered at most (by id, oldest forgotten). */
const OUT_OF_SCOPE_REMEMBERED_MAX = 1_000;

/**
 * Decides the master state RxDB gets for a server state a push returned (a conflict, or a
 * row the server resolved) in a filtered replication: the state itself while it matches the
 * selector (by RxDB's Mango matcher, the one its local queries use), else the state deleted,
 * so the local copy leaves as it would by a removal and nothing is pushed back. Once per
 * (id, revision): when the same server state conflicts again (a conflict handler that kept
 * the document alive against the deletion and pushed), the real state is handed on, so that
 * handler's push can succeed instead of conflicting forever.
 */
export class OutOfScopeStates {
    private readonly matches: (state: Record<string, unknown>) => boolean;
    private readonly handed = new Map<string, string>();

    constructor(schema: RxJsonSchema<any>, selector: MangoQuerySelector<any>) {
        const matcher = getQueryMatcher(schema, normalizeMangoQuery(schema, { selector }));
        this.matches = (state) => matcher(state as never);
    }

    /** The master state for `state`, the server's state of document `id` at `revision`. */
    masterState<T extends Record<string, unknown>>(id: string, revision: string, state: T): T {
        if (state._deleted === true || this.matches(state)) {
            this.handed.delete(id);
            return state;
        }
        if (this.handed.get(id) === revision) {
            this.handed.delete(id);
            return state;
        }
        this.handed.delete(id);
        this.handed.set(id, revision);
        if (this.handed.size > OUT_OF_SCOPE_REMEMBERED_MAX) {
            const oldest = this.handed.keys().next().value;
            if (oldest !== undefined) {
                this.handed.delete(oldest);
            }
        }
        return { ...state, _deleted: true };
    }
}
