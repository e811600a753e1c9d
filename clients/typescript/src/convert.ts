// Mapping between RxDB document states and Syncline's `Document` message.
//
// RxDB side: `WithDeleted<RxDocType>` — the document's own fields (primary key included) plus
// `_deleted`, sometimes with `_meta`, `_rev` and `_attachments` still attached.
// Syncline side: `Document { id, json, deleted, revision, updated_at, owner }` where `json` is
// the document body as one UTF-8 JSON object. Attachments (collections whose schema has
// `attachments`) travel in the body as RxDB describes them, `_attachments: {name: {digest,
// length, type}}`, never with their `data` (attachments.ts moves the bytes). With an owner field (`ownerField`), `owner`
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
 * the owner field, when there is one. Non-empty `_attachments` stay, as metadata only
 * (`digest`, `length`, `type`; never `data`); an empty one is left out, so that a document
 * without attachments has the same body in every collection.
 */
export function documentBody(state: Record<string, unknown>, ownerField?: string): Record<string, unknown> {
    const body: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(state)) {
        if ((RXDB_INTERNAL_FIELDS as readonly string[]).includes(key) || key === ownerField) {
            continue;
        }
        body[key] = value;
    }
    const attachments = attachmentMetadata(state._attachments);
    if (attachments !== undefined) {
        body._attachments = attachments;
    }
    return body;
}

/**
 * `_attachments` as the server stores it: each entry's `digest`, `length` and `type`, without
 * RxDB's `data`; undefined when there is none.
 */
function attachmentMetadata(value: unknown): Record<string, unknown> | undefined {
    if (value === null || typeof value !== "object" || Object.keys(value).length === 0) {
        return undefined;
    }
    const out: Record<string, unknown> = {};
    for (const [name, entry] of Object.entries(value as Record<string, Record<string, unknown>>)) {
        out[name] = { digest: entry?.digest, length: entry?.length, type: entry?.type };
    }
    return out;
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
 * empty body becomes `{ [primaryPath]: id, _deleted: true }`. With `withAttachments` (a
 * collection whose schema has attachments) the body's `_attachments` metadata is kept, `{}`
 * when absent (attachments.ts completes it with the bytes before RxDB gets it).
 */
export function fromServerDocument(
    doc: Document,
    primaryPath: string,
    ownerField?: string,
    withAttachments = false,
): RxDocState {
    let state: Record<string, unknown> = {};
    let attachments: unknown;
    if (doc.json.length > 0) {
        const parsed: unknown = JSON.parse(decoder.decode(doc.json));
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
            throw new Error(`syncline-rxdb: document "${doc.id}" body is not a JSON object`);
        }
        // The parsed body is ours: it becomes the state itself (copying it into a new object
        // was a third of the client's time per pulled document). RxDB's own fields, which a
        // body should never hold, are removed (the attachments' metadata kept aside).
        state = parsed as Record<string, unknown>;
        attachments = state._attachments;
        for (const key of RXDB_INTERNAL_FIELDS) {
            if (Object.hasOwn(state, key)) {
                delete state[key];
            }
        }
    }
    if (withAttachments) {
        // Always present (`{}` without attachments, and on tombstones): RxDB refuses to push
        // a document whose assumed master state has no `_attachments` (AT4).
        state._attachments = doc.deleted || attachments === undefined ? {} : attachments;
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
