//! The real `syncline` binary as a child process, configured through a generated TOML file,
//! and what `/proc` says about it.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use syncline::config::Config;

use crate::client;

/// The server built with this benchmark; `BENCH_SERVER_BINARY` points at another build (to
/// compare two versions of the server under the same load generator).
const BINARY: &str = env!("CARGO_BIN_EXE_syncline");

pub fn binary() -> String {
    std::env::var("BENCH_SERVER_BINARY").unwrap_or_else(|_| BINARY.to_owned())
}

/// What differs between the servers the scenarios start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub collections: Vec<String>,
    /// Extra `[[collections]]` lines (TOML) by collection name.
    pub collection_settings: Vec<(String, String)>,
    pub pool_size: u32,
    pub heartbeat_seconds: u64,
    pub keepalive_seconds: u64,
    pub streams_max: usize,
    /// `auth.mode = "jwt"` with this HS256 secret (at least 32 bytes); none: `mode = "none"`.
    pub hs256_secret: Option<String>,
    /// The lines of an `[attachments]` table (TOML); none: the defaults.
    pub attachments: Option<String>,
    /// Environment variables of the server process (S3 credentials).
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    /// Defaults of the shipped configuration, with the given collections.
    pub fn new(collections: &[&str]) -> ServerOptions {
        ServerOptions {
            collections: collections.iter().map(|c| (*c).to_owned()).collect(),
            collection_settings: Vec::new(),
            pool_size: 16,
            heartbeat_seconds: 15,
            keepalive_seconds: 30,
            streams_max: 10_000,
            hs256_secret: None,
            attachments: None,
            env: Vec::new(),
        }
    }

    /// A token for `sub` when the server authenticates callers, none when everyone may call.
    pub fn bearer(&self, sub: &str) -> Option<client::Bearer> {
        self.hs256_secret
            .as_deref()
            .map(|secret| client::Bearer::hs256(secret, sub))
    }

    /// The configuration file. `[auth]` (with `streams_per_principal_max`) is required once
    /// authentication exists and an unknown key before: offer it only when the configuration
    /// code built into this very server accepts it. JWT authentication has no such fallback.
    fn toml(&self, listen: SocketAddr, metrics: SocketAddr) -> String {
        let mut base = format!(
            "listen = \"{listen}\"\nmetrics_listen = \"{metrics}\"\npool_size = {}\n\
             heartbeat_seconds = {}\nkeepalive_seconds = {}\nstreams_max = {}\n\
             pull_limit_max = 1000\npush_rows_max = 1000\n",
            self.pool_size, self.heartbeat_seconds, self.keepalive_seconds, self.streams_max
        );
        let mut collections = String::new();
        for c in &self.collections {
            let _ = write!(collections, "\n[[collections]]\nname = \"{c}\"\n");
            for (name, lines) in &self.collection_settings {
                if name == c {
                    let _ = writeln!(collections, "{lines}");
                }
            }
        }
        if let Some(lines) = &self.attachments {
            let _ = write!(collections, "\n[attachments]\n{lines}\n");
        }
        let auth = match &self.hs256_secret {
            Some(secret) => format!("mode = \"jwt\"\nhs256_secret = \"{secret}\"\n"),
            None => "mode = \"none\"\n".to_owned(),
        };
        let with_auth = format!(
            "{base}streams_per_principal_max = {}\n\n[auth]\n{auth}{collections}",
            self.streams_max
        );
        match Config::from_toml(&with_auth) {
            Ok(_) => return with_auth,
            Err(e) if self.hs256_secret.is_some() => {
                panic!("the benchmark's server configuration is rejected: {e}\n{with_auth}")
            }
            Err(_) => {}
        }
        base.push_str(&collections);
        if let Err(e) = Config::from_toml(&base) {
            panic!("the benchmark's server configuration is rejected: {e}\n{base}");
        }
        base
    }
}

/// A running server process; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `syncline serve` on a free port and waits until it answers a Pull (with a token
    /// when it authenticates callers). A port taken between choosing and binding it is retried
    /// with new ports.
    pub async fn start(db_url: &str, options: &ServerOptions, work: &Path, name: &str) -> Server {
        const ATTEMPTS: u32 = 3;
        let bearer = options.bearer("bench-ready");
        for attempt in 1..=ATTEMPTS {
            let mut server = Server::spawn(db_url, options, work, name);
            match server
                .wait_ready(&options.collections[0], bearer.as_ref())
                .await
            {
                Ok(()) => return server,
                Err(log) if attempt < ATTEMPTS && log.contains("Address already in use") => {
                    eprintln!("bench: {name}: a port was taken meanwhile; retrying");
                }
                Err(log) => panic!("syncline ({name}) did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(db_url: &str, options: &ServerOptions, work: &Path, name: &str) -> Server {
        let addr = free_port();
        let config = work.join(format!("{name}.toml"));
        std::fs::write(&config, options.toml(addr, free_port())).expect("write server config");
        let log = work.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        // The server rejects unknown SYNCLINE_* variables; the file says everything.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SYNCLINE_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().expect("start the syncline binary");
        Server { child, addr, log }
    }

    /// Ok once a Pull succeeds; the end of the log when the process exits or never answers.
    async fn wait_ready(
        &mut self,
        collection: &str,
        bearer: Option<&client::Bearer>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log_tail()));
            }
            if let Ok(channel) = client::try_channel(self.addr).await {
                let mut c = client::client(channel);
                if client::pull_page_as(&mut c, bearer, collection, "", 1)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("no answer within 60 s:\n{}", self.log_tail()))
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The highest resident memory since the process started or since the last
    /// [`Server::reset_peak_rss`] (`VmHWM`), in bytes; `None` once the process has exited.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_bytes("VmHWM:")
    }

    /// Starts the peak (`VmHWM`) afresh from the current resident memory, so that a peak
    /// during start-up does not hide a smaller one later; false where the kernel refuses.
    pub fn reset_peak_rss(&self) -> bool {
        // "5" resets the peak resident set size (Linux 4.0+, proc(5) on clear_refs).
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// A `/proc/<pid>/status` size field (in kB there), in bytes.
    fn status_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        Some(kib * 1024)
    }

    /// Waits (at most 30 s) until the process uses under 5% of a core over half a second.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let c0 = self.cpu_seconds();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if (self.cpu_seconds() - c0) / 0.5 < 0.05 {
                return;
            }
        }
    }

    /// User + system CPU time used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime field 14, stime field 15.
        let rest = stat.rsplit_once(')').expect("stat has a command name").1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        ticks as f64 / clock_ticks_per_second()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds spent on `n` items, in microseconds per item.
pub fn micros_per(cpu_seconds: f64, n: usize) -> f64 {
    cpu_seconds * 1e6 / n.max(1) as f64
}

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
}

/// `CLK_TCK`: the unit of the CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
