// Typed errors: a failed Syncline call as a `SynclineError` that programs can read (gRPC code,
// the google.rpc details the server attaches, whether retrying can help).

import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** One invalid field of a request, from a `google.rpc.BadRequest` detail. */
export interface SynclineFieldViolation {
    /** The field's path, e.g. `rows[3].new_document_state.json`. */
    field: string;
    /** What is wrong with it, in words for people. */
    description: string;
}

/**
 * Codes for which retrying the same call cannot succeed: the request, the caller's rights or
 * the collection must change first. UNAUTHENTICATED is here because every call already asks
 * `getToken` for a fresh token: failing with one means the token source itself is wrong.
 */
const PERMANENT_CODES: ReadonlySet<Code> = new Set([
    Code.InvalidArgument,
    Code.NotFound,
    Code.PermissionDenied,
    Code.Unauthenticated,
    Code.Unimplemented,
]);

/** Every option of `SynclineError`'s constructor besides the message and code. */
export interface SynclineErrorInit {
    /** `google.rpc.ErrorInfo.reason`, e.g. `NOT_OWNER`, `INVALID_DOCUMENT`, `TOKEN_EXPIRED`. */
    reason?: string;
    /** `google.rpc.ErrorInfo.metadata`. */
    metadata?: Record<string, string>;
    /** `google.rpc.BadRequest` field violations. */
    fieldViolations?: SynclineFieldViolation[];
    /** `google.rpc.RetryInfo.retry_delay`, in milliseconds. */
    retryDelayMs?: number;
    /** The document the error is about, when it is about one (a refused push row). */
    documentId?: string;
    /** The error this one was made from. */
    cause?: unknown;
}

/**
 * A failed Syncline call or a refused document. `code` is the gRPC status code (Connect's
 * `Code`), `reason` the server's stable `ErrorInfo` reason when it sent one.
 */
export class SynclineError extends Error {
    /** The gRPC status code. */
    readonly code: Code;
    /** The gRPC status code's name, e.g. `PERMISSION_DENIED`. */
    readonly codeName: string;
    /** The server's stable reason (`google.rpc.ErrorInfo.reason`), when it sent one. */
    readonly reason: string | undefined;
    /** `google.rpc.ErrorInfo.metadata`. */
    readonly metadata: Record<string, string>;
    /** The invalid fields (`google.rpc.BadRequest`). */
    readonly fieldViolations: SynclineFieldViolation[];
    /** How long the server asks the client to wait before retrying (`google.rpc.RetryInfo`). */
    readonly retryDelayMs: number | undefined;
    /** The document the error is about, when it is about one. */
    readonly documentId: string | undefined;

    constructor(message: string, code: Code, init: SynclineErrorInit = {}) {
        super(message, { cause: init.cause });
        this.name = "SynclineError";
        Object.setPrototypeOf(this, new.target.prototype);
        this.code = code;
        this.codeName = codeName(code);
        this.reason = init.reason;
        this.metadata = init.metadata ?? {};
        this.fieldViolations = init.fieldViolations ?? [];
        this.retryDelayMs = init.retryDelayMs;
        this.documentId = init.documentId;
    }

    /** True when retrying the same call cannot succeed (see PERMANENT_CODES). */
    get permanent(): boolean {
        return PERMANENT_CODES.has(this.code);
    }

    /**
     * The readable fields as plain JSON. RxDB wraps handler errors with `errorToPlainJson`,
     * which keeps `name`, `message`, `code` and `extensions`: this keeps the rest readable in
     * `error$` (`err.parameters.errors[0].extensions.reason`).
     */
    get extensions(): Record<string, unknown> {
        return {
            codeName: this.codeName,
            reason: this.reason,
            metadata: this.metadata,
            fieldViolations: this.fieldViolations,
            retryDelayMs: this.retryDelayMs,
            documentId: this.documentId,
            permanent: this.permanent,
        };
    }

    /**
     * Any caught value as a `SynclineError`: a `ConnectError` with its google.rpc details
     * decoded, a `SynclineError` as is, anything else as UNKNOWN.
     */
    static from(err: unknown): SynclineError {
        if (err instanceof SynclineError) {
            return err;
        }
        const connectError = ConnectError.from(err);
        const info = connectError.findDetails(ErrorInfoSchema)[0];
        const badRequest = connectError.findDetails(BadRequestSchema);
        const retry = connectError.findDetails(RetryInfoSchema)[0];
        const delay = retry?.retryDelay;
        return new SynclineError(connectError.message, connectError.code, {
            reason: info?.reason || undefined,
            metadata: info ? { ...info.metadata } : undefined,
            fieldViolations: badRequest.flatMap((b) =>
                b.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
            ),
            retryDelayMs: delay ? Number(delay.seconds) * 1000 + Math.floor(delay.nanos / 1e6) : undefined,
            cause: err,
        });
    }
}

/** `Code.PermissionDenied` -> `PERMISSION_DENIED`. */
function codeName(code: Code): string {
    const name = Code[code] as string | undefined;
    return name ? name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase() : `CODE_${code}`;
}
