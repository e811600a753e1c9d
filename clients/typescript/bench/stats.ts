// Medians, percentiles and CPU time for the Node benchmark.

import type { LatencyFigures } from "./config.js";

/** Nearest-rank percentiles of samples in milliseconds. */
export function latency(samples: number[]): LatencyFigures {
    if (samples.length === 0) {
        return { p50: 0, p99: 0, max: 0, count: 0 };
    }
    const sorted = [...samples].sort((a, b) => a - b);
    const rank = (p: number): number => sorted[Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length))) - 1];
    return { p50: rank(0.5), p99: rank(0.99), max: sorted[sorted.length - 1], count: sorted.length };
}

/** Milliseconds since an arbitrary origin, sub-millisecond. */
export function nowMs(): number {
    return performance.now();
}

/** A stopwatch for one side of one round: elapsed time and this process's CPU time. */
export class Stopwatch {
    private readonly start = nowMs();
    private readonly cpu = process.cpuUsage();

    /** Per-second rate of `count` items and the CPU microseconds this process spent per item. */
    finish(count: number): { rate: number; clientCpuMicrosPerDoc: number } {
        const seconds = (nowMs() - this.start) / 1000;
        const cpu = process.cpuUsage(this.cpu);
        return {
            rate: count / Math.max(seconds, 1e-9),
            clientCpuMicrosPerDoc: (cpu.user + cpu.system) / Math.max(count, 1),
        };
    }
}
