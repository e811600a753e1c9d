import { createGrpcTransport, Http2SessionManager, compressionGzip } from "@connectrpc/connect-node";
import { PullAhead } from "./build/src/pull-ahead.js";
import { pullPage } from "./build/src/pull-page.js";
import { fromServerDocument } from "./build/src/convert.js";
const url = "http://127.0.0.1:55475";
const WINDOW = 8 * 1024 * 1024;
const STORE_MS = Number(process.env.STORE_MS || 0);
class WindowedSessionManager extends Http2SessionManager {
  seen = new WeakSet();
  async request(...args) {
    const stream = await super.request(...args);
    const s = stream.session;
    if (s && !this.seen.has(s)) { this.seen.add(s); s.setLocalWindowSize(WINDOW); }
    return stream;
  }
}
const ping = { pingIntervalMs: 15000, pingTimeoutMs: 10000 };
function transport(gzip) {
  return createGrpcTransport({ baseUrl: url, acceptCompression: gzip ? [compressionGzip] : [], ...ping });
}
async function run(windowed, pipelined) {
  const tr = transport(windowed);
  await pullPage(tr, { collection: "node_sync", limit: 1 });
  const fetch = (token, limit) => pullPage(tr, { collection: "node_sync", limit, checkpoint: token ? { token } : undefined }, { timeoutMs: 60000 });
  const ahead = new PullAhead(fetch);
  let token, n = 0;
  const t = performance.now(); const cpu = process.cpuUsage();
  for (;;) {
    const r = pipelined ? await ahead.pull(token, 1000) : await fetch(token, 1000);
    for (const d of r.documents) { fromServerDocument(d, "id"); n++; }
    if (STORE_MS) await new Promise((res) => setTimeout(res, STORE_MS));
    token = r.checkpoint?.token;
    if (r.documents.length < 1000) break;
  }
  const s = (performance.now() - t) / 1000; const c = process.cpuUsage(cpu);
  console.log(`store ${STORE_MS} ms/page gzip ${windowed} pipelined ${pipelined}: ${(n / s).toFixed(0)} docs/s, cpu ${((c.user + c.system) / n).toFixed(2)} us/doc (${n})`);
}
for (let i = 0; i < 3; i++) for (const [w, p] of [[false, false], [false, true]]) await run(w, p);
process.exit(0);
