// Pull pipelining (src/pull-ahead.ts) over a fake server of numbered pages (no server needed).

import assert from "node:assert/strict";
import { test } from "node:test";

import { PullAhead } from "../src/pull-ahead.js";

interface Page {
    documents: number[];
    checkpoint?: { token: string };
    /** Which request produced it. */
    request: number;
}

/** A collection of `total` documents in pages; records every request, can be told to fail. */
function fakeServer(total: number) {
    const requests: Array<{ token: string | undefined; limit: number }> = [];
    let failNext = 0;
    let version = 0;
    return {
        requests,
        failNext(n: number) {
            failNext = n;
        },
        /** A write: pages read afterwards say so in their documents. */
        write() {
            version += 1;
        },
        fetch: async (token: string | undefined, limit: number): Promise<Page> => {
            requests.push({ token, limit });
            const request = requests.length;
            await new Promise((r) => setImmediate(r));
            if (failNext > 0) {
                failNext -= 1;
                throw new Error(`request ${request} failed`);
            }
            const start = token === undefined ? 0 : Number(token);
            const end = Math.min(start + limit, total);
            const documents = Array.from({ length: end - start }, (_, i) => (start + i) * 1000 + version);
            return { documents, checkpoint: { token: String(end) }, request };
        },
    };
}

async function pullAll(ahead: PullAhead<Page>, limit: number): Promise<number[]> {
    const out: number[] = [];
    let token: string | undefined;
    for (let i = 0; i < 100; i += 1) {
        const page = await ahead.pull(token, limit);
        out.push(...page.documents);
        token = page.checkpoint?.token;
        if (page.documents.length < limit) {
            return out;
        }
    }
    throw new Error("did not finish");
}

test("after a full page the next is requested at once and served to the next pull", async () => {
    const server = fakeServer(250);
    const ahead = new PullAhead(server.fetch);
    const first = await ahead.pull(undefined, 100);
    assert.equal(server.requests.length, 2, "page 2 requested while page 1 is handed over");
    assert.deepEqual(server.requests[1], { token: "100", limit: 100 });
    const second = await ahead.pull(first.checkpoint?.token, 100);
    assert.equal(second.request, 2, "served from the read-ahead");
    const third = await ahead.pull(second.checkpoint?.token, 100);
    assert.equal(third.documents.length, 50);
    assert.equal(server.requests.length, 3, "nothing read ahead after a short page");
});

test("every document comes once, in order, with or without read-ahead", async () => {
    for (const total of [0, 1, 99, 100, 101, 1000, 1234]) {
        const docs = await pullAll(new PullAhead(fakeServer(total).fetch), 100);
        assert.deepEqual(
            docs,
            Array.from({ length: total }, (_, i) => i * 1000),
            `total ${total}`,
        );
    }
});

test("a page read ahead is not served once a write has started, nor read while one is in flight", async () => {
    const server = fakeServer(500);
    const ahead = new PullAhead(server.fetch);
    const first = await ahead.pull(undefined, 100);
    // A push starts while page 2 is read ahead; the server applies it.
    ahead.writeStarted();
    server.write();
    const pending = ahead.pull(first.checkpoint?.token, 100);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.equal(server.requests.length, 2, "nothing asked, nor read ahead, while the write is in flight");
    ahead.writeFinished();
    const second = await pending;
    assert.equal(second.documents[0], 100 * 1000 + 1, "page 2 read after the write, not the one read before it");
    assert.equal(second.request, 3, "page 2 asked again once the write had finished");
    const third = await ahead.pull(second.checkpoint?.token, 100);
    assert.equal(third.request, 3 + 1);
    assert.equal(server.requests.length, 5, "reading ahead resumes once the write has finished");
});

test("a page read ahead after a write started and finished meanwhile is dropped", async () => {
    const server = fakeServer(300);
    const ahead = new PullAhead(server.fetch);
    const first = await ahead.pull(undefined, 100);
    // Page 2 has been read ahead (before the write) by the time the write starts.
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.equal(server.requests.length, 2);
    ahead.writeStarted();
    ahead.writeFinished();
    server.write();
    const second = await ahead.pull(first.checkpoint?.token, 100);
    assert.equal(second.documents[0], 100 * 1000 + 1, "page 2 as read after the write");
    assert.equal(second.request, 3);
});

test("a failed read-ahead is asked again by the caller's pull; the caller's own failure surfaces", async () => {
    const server = fakeServer(300);
    const ahead = new PullAhead(server.fetch);
    server.failNext(1);
    await assert.rejects(ahead.pull(undefined, 100), /request 1 failed/);
    const first = await ahead.pull(undefined, 100);
    // The read-ahead of page 2 is on its way: it fails, and so does the caller's retry of it.
    server.failNext(2);
    await assert.rejects(ahead.pull(first.checkpoint?.token, 100), /request 4 failed/);
    const again = await ahead.pull(first.checkpoint?.token, 100);
    assert.equal(again.documents[0], 100 * 1000);
    assert.deepEqual(
        server.requests.map((r) => r.token),
        [undefined, undefined, "100", "100", "100", "200"],
    );
});

test("a pull waits for the write in flight, and one that a write overtook is asked again after it", async () => {
    const answers: Array<(page: Page) => void> = [];
    const asked: Array<string | undefined> = [];
    const ahead = new PullAhead<Page>(
        (token) =>
            new Promise<Page>((resolve) => {
                asked.push(token);
                answers.push(resolve);
            }),
    );
    const settle = () => new Promise((r) => setImmediate(r));

    // A write in flight: the pull is not sent until it ends.
    ahead.writeStarted();
    let served = undefined as Page | undefined;
    const first = ahead.pull("5", 10).then((page) => {
        served = page;
        return page;
    });
    await settle();
    assert.equal(asked.length, 0, "a pull was sent while a write was in flight");
    ahead.writeFinished();
    await settle();
    assert.equal(asked.length, 1);

    // A write starts while that pull is on its way: its page may predate the write.
    ahead.writeStarted();
    answers[0]({ documents: [1], checkpoint: { token: "6" }, request: 1 });
    await settle();
    assert.equal(served, undefined, "a page read before the write was served");
    assert.equal(asked.length, 1, "asked again while the write was still in flight");
    ahead.writeFinished();
    await settle();
    assert.equal(asked.length, 2);
    assert.equal(asked[1], "5");
    answers[1]({ documents: [2], checkpoint: { token: "6" }, request: 2 });
    assert.equal((await first).request, 2);
});

test("a writer that never pauses does not stall pulls: the page is served after a bounded number of asks", async () => {
    let asks = 0;
    const ahead = new PullAhead<Page>(async () => {
        asks += 1;
        // Every answer is overtaken by a write that ends at once.
        ahead.writeStarted();
        ahead.writeFinished();
        return { documents: [asks], request: asks };
    });
    const page = await ahead.pull(undefined, 10);
    assert.equal(asks, 5);
    assert.equal(page.request, 5);
});
