// Unit tests of the typed errors: google.rpc details decoded, refused rows, the gRPC-Web
// diagnosis (no server needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { refusalError, refusedMasterState } from "../src/refusals.js";
import { DocumentSchema, RefusedRowSchema, SynclineError, diagnoseGrpcWebFailure } from "../src/index.js";

test("SynclineError.from decodes ErrorInfo, BadRequest and RetryInfo", () => {
    const err = new ConnectError("bad row", Code.InvalidArgument, undefined, [
        { desc: ErrorInfoSchema, value: { reason: "INVALID_DOCUMENT", domain: "syncline", metadata: { field: "rows[3].new_document_state.json" } } },
        {
            desc: BadRequestSchema,
            value: { fieldViolations: [{ field: "rows[3].new_document_state.json", description: "not an object" }] },
        },
        { desc: RetryInfoSchema, value: { retryDelay: create(DurationSchema, { seconds: 2n, nanos: 500_000_000 }) } },
    ]);
    const typed = SynclineError.from(err);
    assert.equal(typed.code, Code.InvalidArgument);
    assert.equal(typed.codeName, "INVALID_ARGUMENT");
    assert.equal(typed.reason, "INVALID_DOCUMENT");
    assert.deepEqual(typed.metadata, { field: "rows[3].new_document_state.json" });
    assert.deepEqual(typed.fieldViolations, [{ field: "rows[3].new_document_state.json", description: "not an object" }]);
    assert.equal(typed.retryDelayMs, 2500);
    assert.equal(typed.permanent, true);
    assert.equal((typed.extensions as { reason: string }).reason, "INVALID_DOCUMENT");
});

test("SynclineError: UNAVAILABLE is retryable, an unknown value becomes UNKNOWN", () => {
    assert.equal(SynclineError.from(new ConnectError("down", Code.Unavailable)).permanent, false);
    const odd = SynclineError.from("a string");
    assert.equal(odd.code, Code.Unknown);
    assert.equal(odd.reason, undefined);
});

test("a refused row: typed error, and a master state that reverts or drops the local copy", () => {
    const notOwner = create(RefusedRowSchema, { index: 0, id: "d1", reason: "NOT_OWNER", message: "taken" });
    const err = refusalError(notOwner);
    assert.equal(err.code, Code.PermissionDenied);
    assert.equal(err.reason, "NOT_OWNER");
    assert.equal(err.documentId, "d1");
    assert.deepEqual(
        refusedMasterState(notOwner, { id: "d1", title: "mine", _meta: { lwt: 1 }, _deleted: false }, "id", undefined),
        { id: "d1", title: "mine", _deleted: true },
    );
    const invalid = create(RefusedRowSchema, {
        index: 1,
        id: "d2",
        reason: "INVALID_DOCUMENT",
        field: "rows[1].new_document_state.json",
        message: "too long",
        current: create(DocumentSchema, { id: "d2", json: new TextEncoder().encode('{"title":"old"}'), owner: "alice" }),
    });
    assert.deepEqual(refusalError(invalid).fieldViolations, [{ field: "rows[1].new_document_state.json", description: "too long" }]);
    assert.deepEqual(refusedMasterState(invalid, { id: "d2", title: "new", _deleted: false }, "id", "owner"), {
        title: "old",
        id: "d2",
        owner: "alice",
        _deleted: false,
    });
});

test("gRPC-Web diagnosis: an HTTP/2 answer is named, a real status is left alone", () => {
    const parse = new ConnectError("Parse Error: Expected HTTP/", Code.Internal);
    const diagnosed = diagnoseGrpcWebFailure(parse, "http://h:1");
    assert.equal(diagnosed?.code, Code.Unimplemented);
    assert.match(diagnosed?.message ?? "", /grpc_web = true/);
    const browser = new ConnectError("Failed to fetch", Code.Unknown, undefined, undefined, new TypeError("Failed to fetch"));
    assert.match(diagnoseGrpcWebFailure(browser, "http://h:1")?.message ?? "", /cors_allowed_origins/);
    assert.equal(diagnoseGrpcWebFailure(new ConnectError("no", Code.PermissionDenied), "http://h:1"), undefined);
    // A reset alone may be a restarting server: retryable, unless a probe saw HTTP/2.
    const cause = Object.assign(new Error("write ECONNRESET"), { code: "ECONNRESET" });
    const reset = new ConnectError("write ECONNRESET", Code.Aborted, undefined, undefined, cause);
    assert.equal(diagnoseGrpcWebFailure(reset, "http://h:1")?.code, Code.Unavailable);
    assert.equal(diagnoseGrpcWebFailure(reset, "http://h:1", true)?.code, Code.Unavailable);
    assert.equal(diagnoseGrpcWebFailure(reset, "http://h:1", false)?.code, Code.Unimplemented);
    assert.equal(diagnoseGrpcWebFailure(new ConnectError("conflict", Code.Aborted), "http://h:1"), undefined);
});
