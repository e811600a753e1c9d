//! Positions survive a restore (issue 13 part 4): a `pg_dump | psql` copy into another cluster,
//! whose transaction counter is below the copied rows (they were invisible there) or above
//! them (new writes landed behind old checkpoints), is re-stamped at start-up: a Pull from
//! scratch returns every document, an old checkpoint is FAILED_PRECONDITION /
//! CHECKPOINT_EXPIRED, a reconcile plus a Pull from its C0 leaves the client exact, and a
//! write after the restore reaches it. Restarting on the same cluster changes nothing.

use std::time::Duration;

use sqlx::Connection;
use tonic::Code;

use crate::common::*;
use crate::reconcile::{
    Copy, SECRET, live, pull_into, put, reason_and_field, reconcile, seen, token,
};
use syncline::config::{AuthConfig, AuthMode, Config};
use syncline::proto::{Checkpoint, PullRequest};

/// A configuration on `db_url` with JWT authentication (the reconcile helpers' tokens).
fn jwt_config(db_url: &str) -> Config {
    let mut cfg = config(db_url);
    cfg.auth = Some(AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        jwks_file: None,
        issuer: None,
        audience: None,
        service_scope: "syncline:service".into(),
        leeway_seconds: 0,
        subject_bytes_max: 256,
    });
    cfg
}

async fn connect(url: &str) -> sqlx::PgConnection {
    for _ in 0..200 {
        if let Ok(c) = sqlx::PgConnection::connect(url).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {url}");
}

/// Moves the cluster's transaction counter on by `n` (each loop turn is a transaction).
async fn advance_counter(admin: &str, n: u32) {
    let mut c = connect(admin).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN FOR i IN 1..{n} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
    )))
    .execute(&mut c)
    .await
    .expect("advance the transaction counter");
    let _ = c.close().await;
}

async fn create_database(admin: &str, name: &str) -> String {
    let mut c = connect(admin).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .expect("create database");
    let _ = c.close().await;
    with_database(admin, name)
}

/// `pg_dump from | psql to`, as an operator restores.
fn dump_into(from: &str, to: &str) {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; pg_dump --no-owner -d "$1" | psql -q -v ON_ERROR_STOP=1 -d "$2""#)
        .arg("dump")
        .arg(from)
        .arg(to)
        .output()
        .expect("run pg_dump | psql");
    assert!(
        out.status.success(),
        "pg_dump | psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (highest stored transaction id, this cluster's next one, recorded identity == current).
async fn positions(db: &mut sqlx::PgConnection) -> (i64, i64, bool) {
    sqlx::query_as(
        "SELECT (SELECT max(change_xid) FROM syncline_documents),
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                (SELECT d.system_identifier = c.system_identifier
                 FROM syncline_dataset d, pg_control_system() c)",
    )
    .fetch_one(db)
    .await
    .expect("read positions")
}

async fn dataset_generation(db: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT generation FROM syncline_dataset")
        .fetch_one(db)
        .await
        .expect("read generation")
}

/// Serves the restored copy at `db_url` and checks everything a client must see; `stale` is
/// the client's copy as of `old` (taken on the source cluster).
async fn serve_restored(db_url: &str, old: &str, stale: &Copy) {
    let alice = token("alice");
    let server = TestServer::start_with(jwt_config(db_url)).await;
    let mut db = server.db().await;
    let mut c = server.client().await;
    // SERVING only once the re-stamp is done.
    wait_until_serving(&server).await;
    let (highest, next, same) = positions(&mut db).await;
    assert!(
        highest < next && same,
        "re-stamped: {highest} < {next}, identity recorded"
    );
    assert_eq!(dataset_generation(&mut db).await, 1);

    // From scratch: every document (tombstones included) with its revision.
    let (all, _) = pull_all_as(&mut c, &alice, db_url).await;
    assert_eq!(all, 40, "a pull from scratch returns every row");
    let mut fresh = Copy::new();
    pull_into(&mut c, &alice, "tasks", "", &mut fresh).await;
    assert_eq!(seen(&fresh), live(&mut db, "alice").await);

    // The old checkpoint is of the previous generation: refused, never served wrong.
    let expired = c
        .pull(authed_pull(old, &alice))
        .await
        .expect_err("an old checkpoint is refused");
    assert_eq!(expired.code(), Code::FailedPrecondition, "{expired:?}");
    assert_eq!(reason_and_field(&expired).0, "CHECKPOINT_EXPIRED");

    // Reconcile, then Pull from C0: exact.
    let mut local = stale.clone();
    let c0 = reconcile(&mut c, &alice, "tasks", &mut local).await;
    let after = pull_into(&mut c, &alice, "tasks", &c0, &mut local).await;
    assert_eq!(seen(&local), live(&mut db, "alice").await);
    assert_eq!(local.len(), 32);

    // A write after the restore reaches a client pulling from C0 (and from where it was).
    put(&mut db, "new-after-restore", "alice", 7).await;
    let mut from_c0 = Copy::new();
    pull_into(&mut c, &alice, "tasks", &c0, &mut from_c0).await;
    assert!(
        from_c0.contains_key("new-after-restore"),
        "{:?}",
        from_c0.keys()
    );
    pull_into(&mut c, &alice, "tasks", &after, &mut local).await;
    assert_eq!(seen(&local), live(&mut db, "alice").await);
    let latest = pull_into(&mut c, &alice, "tasks", &after, &mut local).await;
    server.stop().await.expect("server stops");

    // A restart on the same cluster: no re-stamp, same generation, tokens still served.
    let server = TestServer::start_with(jwt_config(db_url)).await;
    let mut c = server.client().await;
    assert_eq!(
        dataset_generation(&mut db).await,
        1,
        "a restart does not bump"
    );
    put(&mut db, "after-restart", "alice", 8).await;
    pull_into(&mut c, &alice, "tasks", &latest, &mut local).await;
    assert_eq!(seen(&local), live(&mut db, "alice").await);
    let _ = db.close().await;
    server.stop().await.expect("server stops");
}

/// Waits (bounded) for the overall health status to be SERVING.
async fn wait_until_serving(server: &TestServer) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..400 {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner();
        if r.status == ServingStatus::Serving as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not SERVING after 10 s");
}

fn authed_pull(checkpoint: &str, tok: &str) -> tonic::Request<PullRequest> {
    let mut r = tonic::Request::new(PullRequest {
        collection: "tasks".into(),
        checkpoint: Some(Checkpoint {
            token: checkpoint.into(),
        }),
        limit: 100,
        selector: Vec::new(),
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {tok}").parse().expect("header value"),
    );
    r
}

/// Pulls everything from scratch, counting documents (tombstones included).
async fn pull_all_as(
    c: &mut syncline::proto::replication_service_client::ReplicationServiceClient<
        tonic::transport::Channel,
    >,
    tok: &str,
    db_url: &str,
) -> (usize, String) {
    let mut token = String::new();
    let mut count = 0;
    for _ in 0..10_000 {
        let r = c
            .pull(authed_pull(&token, tok))
            .await
            .unwrap_or_else(|s| panic!("pull on {db_url}: {s:?}"))
            .into_inner();
        if r.documents.is_empty() {
            return (count, token);
        }
        count += r.documents.len();
        token = r.checkpoint.expect("checkpoint").token;
    }
    panic!("pull did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logical_restore_into_another_cluster_is_restamped_and_clients_reconcile() {
    let alice = token("alice");
    let source = PrivateCluster::start(0, true);
    // The source's counter runs well ahead of a fresh cluster's: its rows lie in the future
    // of a fresh cluster's transaction ids.
    advance_counter(&source.url, 3_000).await;
    let app = create_database(&source.url, "app").await;
    let server = TestServer::start_with(jwt_config(&app)).await;
    let mut db = server.db().await;
    let mut c = server.client().await;
    for i in 0..40 {
        put(&mut db, &format!("d{i:03}"), "alice", 0).await;
    }
    sqlx::query("DELETE FROM syncline_documents WHERE id < 'd003'")
        .execute(&mut db)
        .await
        .expect("delete");
    let mut stale = Copy::new();
    let old = pull_into(&mut c, &alice, "tasks", "", &mut stale).await;
    assert_eq!(stale.len(), 37);
    // While the client is away: five deleted, five changed.
    sqlx::query("DELETE FROM syncline_documents WHERE id >= 'd003' AND id < 'd008'")
        .execute(&mut db)
        .await
        .expect("delete");
    for i in 20..25 {
        put(&mut db, &format!("d{i:03}"), "alice", 1).await;
    }
    // A removal record (selective sync) at one of the old cluster's positions.
    sqlx::query(
        "INSERT INTO syncline_moves (collection, id, owner, change_xid, change_seq, previous) \
         SELECT 'tasks', id, owner, change_xid, change_seq, '{}' FROM syncline_documents \
         WHERE id = 'd020'",
    )
    .execute(&mut db)
    .await
    .expect("a removal record");
    let _ = db.close().await;
    server.stop().await.expect("server stops");

    let target = PrivateCluster::start(0, true);
    // A fresh counter below every copied row: without a re-stamp they are never readable.
    let below = create_database(&target.url, "below").await;
    dump_into(&app, &below);
    {
        let mut db = connect(&below).await;
        let (highest, next, same) = positions(&mut db).await;
        assert!(
            highest >= next && !same,
            "{highest} >= {next}: rows from the future"
        );
        let _ = db.close().await;
    }
    serve_restored(&below, &old, &stale).await;

    // A counter above every copied row: readable, but positions of another cluster.
    advance_counter(&target.url, 6_000).await;
    let above = create_database(&target.url, "above").await;
    dump_into(&app, &above);
    {
        let mut db = connect(&above).await;
        let (highest, next, same) = positions(&mut db).await;
        assert!(
            highest < next && !same,
            "{highest} < {next}: another cluster's past"
        );
        let _ = db.close().await;
    }
    // `syncline migrate --check` says so and writes nothing.
    let said = syncline::server::migrate_and_report(&jwt_config(&above), true)
        .await
        .expect("check");
    assert!(said.contains("must be re-stamped"), "{said}");
    // Replicas starting together: one re-stamps (in batches of 7), the others wait for it and
    // find nothing to do; the change order within the collection is kept.
    let order_before = change_order(&above).await;
    let mut racers = Vec::new();
    for _ in 0..4 {
        let url = above.clone();
        racers.push(tokio::spawn(async move {
            let store = syncline::store::postgres::PgStore::connect_lazy(
                &url,
                &syncline::store::postgres::PoolSettings {
                    size: 2,
                    acquire_timeout: Duration::from_secs(30),
                    statement_cache_capacity: 10,
                    read_ahead_pages: 0,
                },
            )
            .expect("store");
            let done = store.restamp_if_foreign(7).await.expect("restamp");
            store.close().await;
            done
        }));
    }
    let mut done = Vec::new();
    for r in racers {
        if let Some(d) = r.await.expect("racer") {
            done.push(d);
        }
    }
    assert_eq!(done.len(), 1, "one replica re-stamps: {done:?}");
    assert_eq!(
        (done[0].rows, done[0].batches, done[0].generation),
        (40, 6, 1)
    );
    assert_eq!(change_order(&above).await, order_before);
    let mut db = connect(&above).await;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM syncline_moves")
        .fetch_one(&mut db)
        .await
        .expect("count removal records");
    assert_eq!(
        records, 0,
        "the old cluster's removal records go with the re-stamp"
    );
    let _ = db.close().await;
    serve_restored(&above, &old, &stale).await;
}

/// The ids of `tasks` in change order.
async fn change_order(url: &str) -> Vec<String> {
    let mut db = connect(url).await;
    let ids = sqlx::query_scalar(
        "SELECT id FROM syncline_documents WHERE collection = 'tasks' ORDER BY change_xid, change_seq",
    )
    .fetch_all(&mut db)
    .await
    .expect("read order");
    let _ = db.close().await;
    ids
}
