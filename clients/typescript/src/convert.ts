// Mapping between RxDB document states and Syncline's `Document` message.
//
// RxDB side: `WithDeleted<RxDocType>` — the document's own fields (primary key included) plus
// `_deleted`, sometimes with `_meta`, `_rev` and `_attachments` still attached.
// Syncline side: `Document { id, json, deleted, revision, updated_at, owner }` where `json` is
// the document body as one UTF-8 JSON object. With an owner field (`ownerField`), `owner`
// travels in that field of the RxDB document and never in the body, so that the body compared
// for conflicts is the same on both sides.

import { create } from "@bufbuild/protobuf";
import { DocumentSchema, type Document } from "./gen/syncline/v1/replication_pb.js";

/** RxDB's bookkeeping fields, never sent to the server as part of a body. */
const RXDB_INTERNAL_FIELDS = ["_deleted", "_meta", "_rev", "_attachments"] as const;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A plain RxDB document state: the document's fields plus `_deleted`. */
export type RxDocState = Record<string, unknown> & { _deleted: boolean };

/**
 * The document body sent to the server: the RxDB state without RxDB's own fields and without
 * the owner field, when there is one.
 */
export function documentBody(state: Record<string, unknown>, ownerField?: string): Record<string, unknown> {
    const body: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(state)) {
        if ((RXDB_INTERNAL_FIELDS as readonly string[]).includes(key) || key === ownerField) {
            continue;
        }
        body[key] = value;
    }
    return body;
}

/**
 * An RxDB document state as a Syncline `Document`. `revision` stays empty: the server assigns
 * revisions, and an assumed master state without one is compared by JSON value plus `deleted`
 * (see the README for why this client does not carry revisions). With `ownerField`, a string
 * in that field becomes `owner` (the server accepts a foreign owner from service principals
 * only, and on new documents only); anything else leaves `owner` empty.
 */
export function toServerDocument(
    state: Record<string, unknown>,
    primaryPath: string,
    ownerField?: string,
): Document {
    const id = state[primaryPath];
    if (typeof id !== "string" || id.length === 0) {
        throw new Error(`syncline-rxdb: document has no string primary key in '${primaryPath}'`);
    }
    const owner = ownerField === undefined ? undefined : state[ownerField];
    return create(DocumentSchema, {
        id,
        json: encoder.encode(JSON.stringify(documentBody(state, ownerField))),
        deleted: state._deleted === true,
        owner: typeof owner === "string" ? owner : "",
    });
}

/**
 * A Syncline `Document` as an RxDB document state: the body's fields, the primary key from
 * `id`, `_deleted` from `deleted`, and `owner` in `ownerField` when given. A tombstone with an
 * empty body becomes `{ [primaryPath]: id, _deleted: true }`.
 */
export function fromServerDocument(doc: Document, primaryPath: string, ownerField?: string): RxDocState {
    let state: Record<string, unknown> = {};
    if (doc.json.length > 0) {
        const parsed: unknown = JSON.parse(decoder.decode(doc.json));
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
            throw new Error(`syncline-rxdb: document "${doc.id}" body is not a JSON object`);
        }
        // The parsed body is ours: it becomes the state itself (copying it into a new object
        // was a third of the client's time per pulled document). RxDB's own fields, which a
        // body should never hold, are removed.
        state = parsed as Record<string, unknown>;
        for (const key of RXDB_INTERNAL_FIELDS) {
            if (Object.hasOwn(state, key)) {
                delete state[key];
            }
        }
    }
    state[primaryPath] = doc.id;
    if (ownerField !== undefined) {
        state[ownerField] = doc.owner;
    }
    state._deleted = doc.deleted;
    return state as RxDocState;
}

function sortedKeys(value: unknown): unknown {
    if (Array.isArray(value)) {
        return value.map(sortedKeys);
    }
    if (value !== null && typeof value === "object") {
        const out: Record<string, unknown> = {};
        for (const key of Object.keys(value).sort()) {
            out[key] = sortedKeys((value as Record<string, unknown>)[key]);
        }
        return out;
    }
    return value;
}

/**
 * The body of an RxDB document state as one string with keys sorted at every level: equal
 * for equal bodies whatever the key order (what a reconcile uses to tell whether the local
 * copy is still the server state it last received).
 */
export function canonicalBody(state: Record<string, unknown>, ownerField?: string): string {
    return JSON.stringify(sortedKeys(documentBody(state, ownerField)));
}
