// Rows a per-row push refused (PushResponse.refused): the typed error reported for each, and
// the master state handed back to RxDB so that it stops pushing the row.

import { Code } from "@connectrpc/connect";

import { fromServerDocument, type RxDocState } from "./convert.js";
import { SynclineError } from "./errors.js";
import type { RefusedRow } from "./gen/syncline/v1/replication_pb.js";

/** RxDB's bookkeeping fields, not part of a master state. */
const RXDB_INTERNAL_FIELDS = ["_meta", "_rev", "_attachments"];

/** The refusal as a `SynclineError` (reason, field, document id), for `error$`. */
export function refusalError(refused: RefusedRow): SynclineError {
    const permission = ["NOT_OWNER", "SCOPE_MISSING", "OUTSIDE_WRITE_FILTER"];
    const code = permission.includes(refused.reason) ? Code.PermissionDenied : Code.InvalidArgument;
    return new SynclineError(`syncline-rxdb: the server refused document "${refused.id}": ${refused.message}`, code, {
        reason: refused.reason || undefined,
        documentId: refused.id,
        fieldViolations: refused.field ? [{ field: refused.field, description: refused.message }] : [],
        metadata: refused.field ? { field: refused.field } : undefined,
    });
}

/**
 * The master state RxDB gets for a refused row, as if it were a conflict: the server's
 * current state when the caller may see it (the local copy reverts to it), else the row's
 * own state deleted (the local copy is dropped; keeping its fields keeps it valid for the
 * local schema). RxDB's default conflict handler takes the master state, records it as the
 * assumed master, and so never pushes the row again. `withAttachments` (the collection has
 * attachments): the server's state keeps its `_attachments` metadata (attachments.ts then
 * completes every master state with the bytes, and gives the deleted one `_attachments: {}`).
 */
export function refusedMasterState(
    refused: RefusedRow,
    row: Record<string, unknown> | undefined,
    primaryPath: string,
    ownerField: string | undefined,
    withAttachments = false,
): RxDocState {
    if (refused.current) {
        return fromServerDocument(refused.current, primaryPath, ownerField, withAttachments);
    }
    const state: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(row ?? {})) {
        if (!RXDB_INTERNAL_FIELDS.includes(key)) {
            state[key] = value;
        }
    }
    state[primaryPath] = state[primaryPath] ?? refused.id;
    state._deleted = true;
    return state as RxDocState;
}
