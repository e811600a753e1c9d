// The Node benchmark's entry point, spawned by the Rust runner (benches/replication/node.rs):
//   node build/bench/main.js '<config JSON>'   (see config.ts)
// Prints the result (BenchResult) as one JSON document on stdout; progress goes to stderr.

import { parseConfig } from "./config.js";
import { runBench } from "./run.js";

const text = process.argv[2];
if (text === undefined) {
    process.stderr.write("usage: node build/bench/main.js '<config JSON>'\n");
    process.exit(2);
}
const result = await runBench(parseConfig(text));
// Open HTTP/2 sessions would keep the process alive for a while: exit once the result is out.
process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
