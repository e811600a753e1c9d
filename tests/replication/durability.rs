//! "An acknowledged push is durable whatever the database's defaults": with a database default
//! of `synchronous_commit = off`, every acknowledged push survives an immediate stop (a crash)
//! of PostgreSQL. Runs its own throwaway cluster (with fsync on), never the shared one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::common::*;

/// The private cluster's port (the shared test cluster is elsewhere).
const PORT: u16 = 55471;
/// Single-document pushes acknowledged just before the crash.
const PUSHES: usize = 60;

fn script() -> String {
    format!("{}/scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `pg-cluster.sh` and returns its standard output.
fn cluster_script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("run pg-cluster.sh");
    assert!(
        out.status.success(),
        "pg-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `pg_ctl` of the installed PostgreSQL, as the cluster's owner (`postgres` when we are root).
fn pg_ctl(data: &Path, args: &[&str]) {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/pg_ctl"))
        .find(|p| p.exists())
        .expect("pg_ctl");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .arg("-D")
        .arg(data)
        .args(args)
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway cluster, stopped and removed when dropped (also when the test fails).
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts (initialising if needed) and returns the admin URL.
    fn start(&self) -> String {
        cluster_script(&["start", &self.path().to_string_lossy(), &PORT.to_string()])
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A crash as PostgreSQL sees it: no shutdown checkpoint, WAL not yet written is lost.
    fn stop_immediately(&self) {
        pg_ctl(
            &self.path().join("data"),
            &["-m", "immediate", "-w", "stop"],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.path().to_string_lossy()])
            .output();
    }
}

#[tokio::test]
async fn acknowledged_pushes_survive_a_crash_with_synchronous_commit_off_by_default() {
    let dir = tempfile::Builder::new()
        .prefix("syncline-durability-")
        .tempdir()
        .expect("temp dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the cluster dir");
    }
    let cluster = Cluster { dir };
    let admin = cluster.start();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the private cluster");
    for statement in [
        "CREATE DATABASE durability",
        "ALTER DATABASE durability SET synchronous_commit = off",
        // The WAL writer flushes asynchronous commits at most every 10 s: a commit that does
        // not flush its own WAL is then reliably lost by an immediate stop.
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    drop(conn);
    let db = with_database(&admin, "durability");
    let server = TestServer::start_with(config(&db)).await;
    let mut c = server.client().await;
    for i in 0..PUSHES {
        let conflicts = push(
            &mut c,
            "tasks",
            vec![insert(doc(&format!("d{i:03}"), json!({"i": i})))],
        )
        .await;
        assert!(conflicts.is_empty());
    }
    cluster.stop_immediately();
    drop(c);
    drop(server);

    cluster.start();
    let mut conn = None;
    for _ in 0..200 {
        if let Ok(c) = sqlx::PgConnection::connect(&db).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = conn.expect("the cluster accepts connections after recovery");
    let present: i64 =
        sqlx::query_scalar("SELECT count(*) FROM syncline_documents WHERE collection = 'tasks'")
            .fetch_one(&mut conn)
            .await
            .expect("count documents");
    assert_eq!(
        present, PUSHES as i64,
        "every acknowledged push survives the crash"
    );
}
