// The hand-written Pull page decoder (src/pull-page.ts) against protobuf-es's own decoding of
// the same bytes (no server needed).

import assert from "node:assert/strict";
import { test } from "node:test";

import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

import { DocumentSchema, PullResponseSchema, type Document } from "../src/gen/syncline/v1/replication_pb.js";
import { decodePullResponse } from "../src/pull-page.js";

/** A small deterministic generator (seeded), so that a failure can be replayed. */
function random(seed: number): () => number {
    let state = seed >>> 0;
    return () => {
        state = (state * 1664525 + 1013904223) >>> 0;
        return state / 2 ** 32;
    };
}

const encoder = new TextEncoder();
const SAMPLES = ["", "a", "doc-1", "ünïcödé-ключ-文档", "x".repeat(70), "é".repeat(40), "😀 emoji"];

function randomDocument(next: () => number): Document {
    const pick = <T>(items: T[]): T => items[Math.floor(next() * items.length)];
    const hasTime = next() < 0.8;
    return create(DocumentSchema, {
        id: pick(SAMPLES) + String(Math.floor(next() * 1e6)),
        json: next() < 0.1 ? new Uint8Array(0) : encoder.encode(JSON.stringify({ title: pick(SAMPLES), n: next() })),
        deleted: next() < 0.3,
        revision: next() < 0.2 ? "" : `${Math.floor(next() * 1000)}-${Math.floor(next() * 2 ** 32).toString(16)}`,
        updatedAt: hasTime
            ? {
                  seconds: BigInt(Math.floor((next() - 0.2) * 2 ** 40)),
                  nanos: Math.floor(next() * 1e9),
              }
            : undefined,
        owner: next() < 0.5 ? "" : pick(SAMPLES),
        leftScope: next() < 0.2,
    });
}

test("decodePullResponse equals protobuf-es's decoding on 2,000 random documents", () => {
    const next = random(17);
    for (let page = 0; page < 20; page += 1) {
        const documents = Array.from({ length: 100 }, () => randomDocument(next));
        const response = create(PullResponseSchema, {
            documents,
            checkpoint: page % 5 === 0 ? undefined : { token: page % 3 === 0 ? "" : `token-${page}` },
        });
        const bytes = toBinary(PullResponseSchema, response);
        assert.deepEqual(decodePullResponse(bytes), fromBinary(PullResponseSchema, bytes), `page ${page}`);
    }
});

test("decodePullResponse skips unknown fields of a Document (a newer server)", () => {
    const known = create(DocumentSchema, { id: "k1", json: encoder.encode('{"a":1}'), deleted: true, revision: "2-ab", owner: "o" });
    const writer = new BinaryWriter();
    writer.raw(toBinary(DocumentSchema, known));
    writer.tag(17, WireType.Varint).uint64(BigInt("18446744073709551615"));
    writer.tag(18, WireType.LengthDelimited).bytes(new Uint8Array([1, 2, 3]));
    writer.tag(19, WireType.Bit64).fixed64(BigInt(5));
    writer.tag(20, WireType.Bit32).fixed32(6);
    const page = new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(writer.finish()).finish();
    const decoded = decodePullResponse(page);
    assert.equal(decoded.documents.length, 1);
    assert.deepEqual(decoded.documents[0], known);
});

test("decodePullResponse refuses a truncated document with INTERNAL, never a wrong one", () => {
    const doc = toBinary(DocumentSchema, create(DocumentSchema, { id: "k1", json: encoder.encode('{"a":1}') }));
    const cut = doc.subarray(0, doc.length - 3);
    const page = new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(cut).finish();
    assert.throws(() => decodePullResponse(page), /parse binary/);
});

test("the decoder knows every field of Document (a new field must be added to src/pull-page.ts)", () => {
    assert.deepEqual(
        DocumentSchema.fields.map((f) => `${f.number}:${f.localName}`),
        ["1:id", "2:json", "3:deleted", "4:revision", "5:updatedAt", "6:owner", "7:leftScope"],
    );
});
