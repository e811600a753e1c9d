//! Sizes and switches: full sizes with `--bench`, tiny ones for the smoke run that
//! `cargo test` does. Every size can be overridden by an environment variable.

use std::time::Duration;

/// Every knob of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tiny sizes, sanity assertions only (run by `cargo test`).
    pub smoke: bool,
    /// A B rounds per scenario (`BENCH_ROUNDS`).
    pub rounds: usize,
    /// Scenario 1: documents in the collection (`BENCH_DOCS`).
    pub sync_docs: usize,
    /// Scenario 2: concurrent pushing clients (`BENCH_PUSH_CLIENTS`).
    pub push_clients: usize,
    /// Scenario 2: rows per push (`BENCH_PUSH_BATCH`).
    pub push_batch: usize,
    /// Scenario 2: pushes per client per run (`BENCH_PUSH_BATCHES`).
    pub push_batches: usize,
    /// Scenario 3: concurrent subscribers (`BENCH_SUBSCRIBERS`).
    pub subscribers: usize,
    /// Scenario 3: single-row pushes per second (`BENCH_FANOUT_RATE`).
    pub fanout_rate: u32,
    /// Scenario 3: how long the writer writes (`BENCH_FANOUT_SECONDS`).
    pub fanout_duration: Duration,
    /// Scenario 3: how long the raw LISTEN/NOTIFY baseline runs (`BENCH_NOTIFY_SECONDS`).
    pub notify_duration: Duration,
    /// Scenario 3: how long to wait for late deliveries before counting a document as missed.
    pub fanout_grace: Duration,
    /// Scenario 4: idle streams on one process (`BENCH_IDLE_STREAMS`).
    pub idle_streams: usize,
    /// Scenario 4: CPU sampling window (`BENCH_IDLE_SECONDS`; default one heartbeat period).
    pub idle_window: Duration,
    /// Scenario 4: the server's heartbeat interval.
    pub idle_heartbeat_seconds: u64,
    /// Scenario 5: the small collection (`BENCH_SCALE_SMALL`).
    pub scale_small: usize,
    /// Scenario 5: the large collection (`BENCH_SCALE_DOCS`).
    pub scale_large: usize,
    /// Scenario 5: timed calls per size per round (`BENCH_SCALE_SAMPLES`).
    pub scale_samples: usize,
    /// Scenario 5 by owners: documents in each database, of 100 owners or of one
    /// (`BENCH_SCALE_OWNER_DOCS`).
    pub scale_owners_docs: usize,
    /// Scenario 6 a: empty rows in each hostile Push (`BENCH_ABUSE_ROWS`).
    pub abuse_rows: usize,
    /// Scenario 6 a: how many such Pushes (`BENCH_ABUSE_PUSHES`).
    pub abuse_pushes: usize,
    /// Scenario 6 b-d: documents of ~1 MiB one principal writes (`BENCH_ABUSE_DOCS`).
    pub abuse_docs: usize,
    /// Scenario 6 c: times each of the concurrent pullers pages to the end
    /// (`BENCH_ABUSE_PULL_ROUNDS`).
    pub abuse_pull_rounds: usize,
    /// Scenario 6 d: Subscribe streams that never read (`BENCH_ABUSE_STREAMS`).
    pub abuse_streams: usize,
    /// Scenario 6 e: unauthenticated Health/Watch streams (`BENCH_ABUSE_WATCHES`).
    pub abuse_watches: usize,
    /// Scenario 6 e: TCP connections that never speak (`BENCH_ABUSE_IDLE_CONNECTIONS`).
    pub abuse_idle_connections: usize,
    /// Scenario 6: a server whose resident memory passes this many MiB is killed and its case
    /// reported over the ceiling, so that a server without bounds cannot take the machine
    /// (`BENCH_ABUSE_CEILING_MIB`).
    pub abuse_ceiling_mib: usize,
    /// Scenario 7: documents in the imported file (`BENCH_IMPORT_DOCS`).
    pub import_docs: usize,
    /// Scenario 8: documents the reconciling client holds (`BENCH_RECONCILE_DOCS`).
    pub reconcile_docs: usize,
    /// Scenario 9: documents bulk-loaded into each database (`BENCH_PLANS_DOCS`).
    pub plans_docs: usize,
    /// Scenario 9: timed calls of each kind per database per round (`BENCH_PLANS_SAMPLES`).
    pub plans_samples: usize,
    /// Scenario 10: MiB of each blob uploaded and downloaded (`BENCH_ATTACH_MIB`).
    pub attach_mib: usize,
    /// Scenario 10: KiB per chunk, on the wire and in the baselines (`BENCH_ATTACH_CHUNK_KIB`;
    /// the server's `chunk_bytes_max` is set to it).
    pub attach_chunk_kib: usize,
    /// Scenario 12 a: documents in the collection a 1% selector syncs from
    /// (`BENCH_SELECTIVE_DOCS`).
    pub selective_docs: usize,
    /// Scenario 11: documents each Node push step writes per round (`BENCH_NODE_PUSH_DOCS`).
    pub node_push_docs: usize,
    /// Scenario 11: documents of the Node "pull all" step (`BENCH_NODE_PULL_DOCS`); its
    /// initial sync uses `sync_docs`.
    pub node_pull_docs: usize,
    /// Scenario 11: single-document calls per round of each latency step (`BENCH_NODE_SAMPLES`).
    pub node_samples: usize,
    /// Scenario 11: the client requests the next page while decoding one
    /// (`BENCH_NODE_PULL_AHEAD`, 1; 0 turns it off for an A/B).
    pub node_pull_ahead: bool,
    /// Scenario 11: how the client decodes pages: `hand` (what the plugin uses) or `generated`
    /// (protobuf-es's reflection), for an A/B (`BENCH_NODE_PULL_DECODER`).
    pub node_pull_decoder: String,
    /// Scenario 11: whether the pull steps accept gzip responses: `none` (like node-postgres)
    /// or `gzip` (`BENCH_NODE_RESPONSE_COMPRESSION`); a separate step always measures gzip.
    pub node_response_compression: String,
    /// Scenario 11: the client's unary calls on its own HTTP/2 path (`lean`, what it uses) or
    /// on connect-node's gRPC transport (`connect`), for an A/B (`BENCH_NODE_UNARY`).
    pub node_unary: String,
    /// Scenario 11: only these Node steps (`BENCH_NODE_STEPS=cas,live`; names as in the
    /// Node bench's result); all when unset.
    pub node_steps: Option<Vec<String>>,
    /// Port of the benchmark's own PostgreSQL cluster (`BENCH_PG_PORT`).
    pub pg_port: u16,
    /// Scenarios to run (`BENCH_ONLY=sync,push,fanout,idle,scale,owners,abuse,import,plans,attachments,node,selective`); all when unset.
    pub only: Option<Vec<String>>,
}

impl Settings {
    /// Full sizes for `--bench`, tiny ones otherwise; then the environment's overrides.
    pub fn from_env(smoke: bool) -> Settings {
        let pick = |full: usize, tiny: usize| if smoke { tiny } else { full };
        let seconds = |full: f64, tiny: f64| if smoke { tiny } else { full };
        Settings {
            smoke,
            rounds: env_usize("BENCH_ROUNDS", pick(3, 1)).max(1),
            sync_docs: env_usize("BENCH_DOCS", pick(200_000, 2_000)),
            push_clients: env_usize("BENCH_PUSH_CLIENTS", pick(8, 4)).max(1),
            push_batch: env_usize("BENCH_PUSH_BATCH", pick(100, 20)).max(10),
            push_batches: env_usize("BENCH_PUSH_BATCHES", pick(50, 3)).max(1),
            subscribers: env_usize("BENCH_SUBSCRIBERS", pick(1_000, 20)).max(2),
            fanout_rate: env_usize("BENCH_FANOUT_RATE", pick(200, 100)).max(1) as u32,
            fanout_duration: env_seconds("BENCH_FANOUT_SECONDS", seconds(10.0, 1.0)),
            notify_duration: env_seconds("BENCH_NOTIFY_SECONDS", seconds(3.0, 0.5)),
            fanout_grace: Duration::from_secs(pick(60, 15) as u64),
            idle_streams: env_usize("BENCH_IDLE_STREAMS", pick(10_000, 200)).max(1),
            idle_window: env_seconds("BENCH_IDLE_SECONDS", seconds(15.0, 1.0)),
            idle_heartbeat_seconds: 15,
            scale_small: env_usize("BENCH_SCALE_SMALL", pick(10_000, 500)).max(100),
            scale_large: env_usize("BENCH_SCALE_DOCS", pick(1_000_000, 5_000)).max(100),
            scale_samples: env_usize("BENCH_SCALE_SAMPLES", pick(300, 20)).max(1),
            // Smoke: 100 documents per owner, enough for the updates of one round.
            scale_owners_docs: env_usize("BENCH_SCALE_OWNER_DOCS", pick(1_000_000, 10_000))
                .max(100),
            // Smoke: few documents and streams, but still more watches than
            // `health_watches_max` (1000), so that the refusal is checked.
            abuse_rows: env_usize("BENCH_ABUSE_ROWS", 1_000_000).max(1),
            abuse_pushes: env_usize("BENCH_ABUSE_PUSHES", pick(20, 3)).max(1),
            abuse_docs: env_usize("BENCH_ABUSE_DOCS", pick(1_500, 20)).max(1),
            abuse_pull_rounds: env_usize("BENCH_ABUSE_PULL_ROUNDS", pick(3, 1)).max(1),
            abuse_streams: env_usize("BENCH_ABUSE_STREAMS", pick(60, 8)).max(1),
            abuse_watches: env_usize("BENCH_ABUSE_WATCHES", pick(5_000, 1_100)).max(1),
            abuse_idle_connections: env_usize("BENCH_ABUSE_IDLE_CONNECTIONS", pick(2_000, 200)),
            abuse_ceiling_mib: env_usize("BENCH_ABUSE_CEILING_MIB", pick(4_096, 2_048)).max(64),
            import_docs: env_usize("BENCH_IMPORT_DOCS", pick(200_000, 2_000)).max(1),
            reconcile_docs: env_usize("BENCH_RECONCILE_DOCS", pick(100_000, 2_000)).max(200),
            plans_docs: env_usize("BENCH_PLANS_DOCS", pick(200_000, 2_000)).max(100),
            plans_samples: env_usize("BENCH_PLANS_SAMPLES", pick(200, 10)).max(1),
            attach_mib: env_usize("BENCH_ATTACH_MIB", pick(100, 4)).max(1),
            attach_chunk_kib: env_usize("BENCH_ATTACH_CHUNK_KIB", 1024).clamp(1, 16 * 1024),
            selective_docs: env_usize("BENCH_SELECTIVE_DOCS", pick(1_000_000, 5_000)).max(100),
            node_push_docs: env_usize("BENCH_NODE_PUSH_DOCS", pick(20_000, 200)).max(1),
            node_pull_docs: env_usize("BENCH_NODE_PULL_DOCS", pick(20_000, 500)).max(1),
            node_samples: env_usize("BENCH_NODE_SAMPLES", pick(500, 10)).max(1),
            node_pull_ahead: env_usize("BENCH_NODE_PULL_AHEAD", 1) != 0,
            node_pull_decoder: std::env::var("BENCH_NODE_PULL_DECODER")
                .unwrap_or_else(|_| "hand".to_owned()),
            node_response_compression: std::env::var("BENCH_NODE_RESPONSE_COMPRESSION")
                .unwrap_or_else(|_| "none".to_owned()),
            node_unary: std::env::var("BENCH_NODE_UNARY").unwrap_or_else(|_| "lean".to_owned()),
            node_steps: std::env::var("BENCH_NODE_STEPS")
                .ok()
                .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect()),
            pg_port: env_usize("BENCH_PG_PORT", 55460) as u16,
            only: std::env::var("BENCH_ONLY")
                .ok()
                .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect()),
        }
    }

    /// Whether the scenario named `name` is selected.
    pub fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }

    /// One line for the report header.
    pub fn describe(&self) -> String {
        format!(
            "mode {}, {} round(s); docs {}; push {} clients x {} batches x {} rows; \
             fan-out {} subscribers at {}/s for {:?}; idle {} streams over {:?}; scale {} vs {}; \
             owners 100 vs 1 of {}; abuse {} x {} empty rows, {} docs of ~1 MiB, \
             {} pull rounds, {} unread streams, {} watches, {} idle connections; import {}; \
             plans {} docs x {} samples; attachments {} MiB in {} KiB chunks; node push {} / pull {} docs, {} samples",
            if self.smoke { "smoke" } else { "bench" },
            self.rounds,
            self.sync_docs,
            self.push_clients,
            self.push_batches,
            self.push_batch,
            self.subscribers,
            self.fanout_rate,
            self.fanout_duration,
            self.idle_streams,
            self.idle_window,
            self.scale_small,
            self.scale_large,
            self.scale_owners_docs,
            self.abuse_pushes,
            self.abuse_rows,
            self.abuse_docs,
            self.abuse_pull_rounds,
            self.abuse_streams,
            self.abuse_watches,
            self.abuse_idle_connections,
            self.import_docs,
            self.plans_docs,
            self.plans_samples,
            self.attach_mib,
            self.attach_chunk_kib,
            self.node_push_docs,
            self.node_pull_docs,
            self.node_samples,
        )
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn env_seconds(key: &str, default: f64) -> Duration {
    let secs = match std::env::var(key) {
        Ok(v) => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number of seconds")),
        Err(_) => default,
    };
    Duration::from_secs_f64(secs.max(0.1))
}
