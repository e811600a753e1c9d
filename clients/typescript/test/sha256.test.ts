// The synchronous SHA-256 (src/sha256.ts) against known vectors and WebCrypto.

import assert from "node:assert/strict";
import { test } from "node:test";

import { sha256HexOfBytes, sha256HexSync } from "../src/sha256.js";

async function webCrypto(bytes: Uint8Array): Promise<string> {
    const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes as BufferSource));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

test("known vectors", () => {
    assert.equal(sha256HexSync(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert.equal(sha256HexSync("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert.equal(
        sha256HexSync("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    );
});

test("equals WebCrypto on every length from 0 to 300 bytes and on random text", async () => {
    for (let n = 0; n <= 300; n++) {
        const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 31 + n * 7) & 0xff);
        assert.equal(sha256HexOfBytes(bytes), await webCrypto(bytes), `length ${n}`);
    }
    const alphabet = ["a", "Z", "0", "{", "\"", "é", "ключ", "文档", "😀", " "];
    let seed = 7;
    for (let k = 0; k < 300; k++) {
        let text = "";
        const length = k % 97;
        for (let i = 0; i < length; i++) {
            seed = (seed * 1103515245 + 12345) >>> 0;
            text += alphabet[seed % alphabet.length];
        }
        assert.equal(sha256HexSync(text), await webCrypto(new TextEncoder().encode(text)), JSON.stringify(text));
    }
    const big = new Uint8Array(100_000).map((_, i) => i & 0xff);
    assert.equal(sha256HexOfBytes(big), await webCrypto(big));
});
