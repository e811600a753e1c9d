//! The PostgreSQL the benchmark runs on: its own throwaway cluster (`scripts/pg-cluster.sh`,
//! fsync off), or in the smoke run the test cluster named by `TEST_DATABASE_ADMIN_URL`.
//! Every scenario gets fresh databases.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use sqlx::Connection;

const PG_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");

/// A cluster to create databases in; stops its own cluster when dropped (panics included).
pub struct Cluster {
    admin_url: String,
    own: Option<OwnCluster>,
    created: Mutex<Vec<String>>,
}

/// A cluster this run started: stopped, then its directory removed, on drop.
struct OwnCluster {
    dir: tempfile::TempDir,
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let stopped = Command::new(PG_CLUSTER)
            .arg("stop")
            .arg(self.dir.path())
            .output();
        if let Err(e) = stopped {
            eprintln!("bench: could not stop the PostgreSQL cluster: {e}");
        }
    }
}

impl Cluster {
    /// The smoke run uses the test cluster when one is given; otherwise (and always with
    /// `--bench`) a cluster of our own on `port`. Panics when neither works.
    pub fn open(smoke: bool, port: u16) -> Cluster {
        if smoke && let Ok(url) = std::env::var("TEST_DATABASE_ADMIN_URL") {
            eprintln!("bench: using the test cluster from TEST_DATABASE_ADMIN_URL");
            return Cluster {
                admin_url: url,
                own: None,
                created: Mutex::new(Vec::new()),
            };
        }
        let dir = tempfile::Builder::new()
            .prefix("syncline-bench-pg.")
            .tempdir()
            .expect("create a directory for the benchmark cluster");
        // As root the cluster belongs to the `postgres` user, which must reach the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the cluster directory");
        let own = OwnCluster { dir };
        let admin_url = start_cluster(own.dir.path(), port);
        eprintln!("bench: started PostgreSQL at {admin_url}");
        Cluster {
            admin_url,
            own: Some(own),
            created: Mutex::new(Vec::new()),
        }
    }

    /// CPU seconds (user + system) the whole cluster used so far: the postmaster, its live
    /// children (backends, background workers) and the children it reaped. `None` for a
    /// cluster this run did not start (its processes are not ours to read).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let own = self.own.as_ref()?;
        let pid_file = std::fs::read_to_string(own.dir.path().join("data/postmaster.pid")).ok()?;
        let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let mut ticks = 0u64;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the command name: state is field 3, ppid 4, utime 14, stime 15,
            // cutime 16, cstime 17.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if f.len() < 15 {
                continue;
            }
            if pid == postmaster {
                ticks += f[10] + f[11] + f[12] + f[13];
            } else if f[0] == u64::from(postmaster) {
                ticks += f[10] + f[11];
            }
        }
        Some(ticks as f64 / crate::server::clock_ticks_per_second())
    }

    /// Whether this run started the cluster itself.
    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }

    /// Creates an empty database named after `label` and returns its URL.
    pub async fn fresh_database(&self, label: &str) -> String {
        let name = format!("syncline_bench_{label}_{:08x}", rand::random::<u32>());
        let mut conn = self.admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a benchmark database");
        self.created.lock().expect("lock").push(name.clone());
        with_database(&self.admin_url, &name)
    }

    /// The server version, for the report header.
    pub async fn server_version(&self) -> String {
        let mut conn = self.admin().await;
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await
            .expect("read the PostgreSQL version")
    }

    /// Drops the databases this run created (on a shared test cluster; our own is removed
    /// whole). Call once every server has stopped.
    pub async fn drop_databases(&self) {
        if self.is_own() {
            return;
        }
        let names = std::mem::take(&mut *self.created.lock().expect("lock"));
        let mut conn = self.admin().await;
        for name in names {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                eprintln!("bench: could not drop database {name}: {e}");
            }
        }
    }

    async fn admin(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {}: {e}", self.admin_url))
    }
}

fn start_cluster(dir: &Path, port: u16) -> String {
    let out = Command::new(PG_CLUSTER)
        .arg("start")
        .arg(dir)
        .arg(port.to_string())
        .arg("fast")
        .output()
        .expect("run scripts/pg-cluster.sh");
    if !out.status.success() {
        panic!(
            "scripts/pg-cluster.sh could not start PostgreSQL on port {port} (is a previous \
             benchmark cluster still running? BENCH_PG_PORT picks another port):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Replaces the database name of a URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("admin URL has a database path");
    format!("{base}/{name}")
}

/// A direct connection that writes documents the way a push does: stamped by the writer
/// itself (the SQL-write triggers stand aside, as they do for the server's pushes) and with
/// `synchronous_commit = on` (the server's push default), so baselines do the same work.
pub async fn writer_connection(db_url: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(db_url)
        .await
        .expect("connect to write documents");
    sqlx::raw_sql("SET syncline.writer = 'push'; SET synchronous_commit = on")
        .execute(&mut conn)
        .await
        .expect("set the writer's session");
    conn
}
