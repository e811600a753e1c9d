//! Health follows the database (through a user-space proxy we can cut), Pull fails fast with
//! UNAVAILABLE during an outage, reflection lists the service, shutdown reports NOT_SERVING.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::*;
use syncline::proto::PullRequest;

/// Forwards 127.0.0.1:<port> to PostgreSQL; `cut` drops every connection and refuses new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let flag = flag.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                                if !flag.load(Ordering::SeqCst) { return; }
                            }
                        }
                    }
                });
            }
        });
        Proxy { port, up }
    }
}

async fn status(server: &TestServer, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

async fn wait_for(server: &TestServer, want: ServingStatus) {
    for _ in 0..200 {
        if status(server, "").await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn health_follows_the_database_and_pull_fails_fast_while_it_is_away() {
    let db = fresh_database().await;
    let url: url_parts::Parts = url_parts::parse(&db);
    let proxy = Proxy::start(format!("127.0.0.1:{}", url.port)).await;
    let mut cfg = config(&url.with_port(proxy.port));
    cfg.health_check_seconds = 1;
    cfg.acquire_timeout_seconds = 1;
    cfg.listen_database_url = Some(db.clone());
    let server = TestServer::start_with(cfg).await;
    wait_for(&server, ServingStatus::Serving).await;
    assert_eq!(
        status(&server, "syncline.v1.ReplicationService").await,
        ServingStatus::Serving
    );

    proxy.up.store(false, Ordering::SeqCst);
    wait_for(&server, ServingStatus::NotServing).await;
    assert_eq!(
        status(&server, "liveness").await,
        ServingStatus::Serving,
        "liveness ignores the database"
    );
    let mut c = server.client().await;
    let started = tokio::time::Instant::now();
    let err = c
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 0,
            selector: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");

    proxy.up.store(true, Ordering::SeqCst);
    wait_for(&server, ServingStatus::Serving).await;
    push(&mut c, "tasks", vec![insert(doc("back", json!({})))]).await;
}

#[tokio::test]
async fn shutdown_reports_not_serving_during_the_drain_period() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.drain_seconds = 2;
    let server = TestServer::start_with(cfg).await;
    wait_for(&server, ServingStatus::Serving).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still answering during the drain, but not ready.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        ServingStatus::try_from(r.into_inner().status).unwrap(),
        ServingStatus::NotServing
    );
    stopping.await.unwrap().expect("clean stop");
}

#[tokio::test]
async fn without_migrations_health_waits_for_them_and_the_statement_cache_can_be_off() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.migrate_on_start = false;
    cfg.statement_cache_capacity = 0; // as behind a transaction-mode PgBouncer
    cfg.health_check_seconds = 1;
    let server = TestServer::start_unready(cfg.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&server, "").await,
        ServingStatus::NotServing,
        "no migrations yet"
    );
    syncline::server::migrate(&cfg)
        .await
        .expect("syncline migrate");
    wait_for(&server, ServingStatus::Serving).await;
    let mut c = server.client().await;
    for i in 0..3 {
        push(
            &mut c,
            "tasks",
            vec![insert(doc(&format!("p{i}"), json!({"i": i})))],
        )
        .await;
    }
    assert_eq!(pull_all(&mut c, "tasks", "", 2).await.0.len(), 3);
}

/// Just enough URL handling for postgres://user@host:port/db.
mod url_parts {
    pub struct Parts {
        pub before_port: String,
        pub port: u16,
        pub after_port: String,
    }
    impl Parts {
        pub fn with_port(&self, port: u16) -> String {
            format!("{}{}{}", self.before_port, port, self.after_port)
        }
    }
    pub fn parse(url: &str) -> Parts {
        let at = url.rfind('@').expect("user@host");
        let colon = at + url[at..].find(':').expect("host:port");
        let slash = colon + url[colon..].find('/').expect("/db");
        Parts {
            before_port: url[..=colon].to_owned(),
            port: url[colon + 1..slash].parse().expect("port"),
            after_port: url[slash..].to_owned(),
        }
    }
}

#[tokio::test]
async fn a_transaction_holding_the_horizon_shows_as_its_age() {
    use syncline::horizon::HorizonWatch;
    use syncline::store::postgres::{PgStore, PoolSettings};

    let db = fresh_database().await;
    let store = PgStore::connect_lazy(
        &db,
        &PoolSettings {
            size: 2,
            acquire_timeout: Duration::from_secs(5),
            statement_cache_capacity: 10,
            read_ahead_pages: 0,
        },
    )
    .unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let mut held = sqlx::Connection::begin(&mut conn).await.unwrap();
    let tx: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    let mut watch = HorizonWatch::default();
    let mut aged = false;
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    for _ in 0..50 {
        // A snapshot's xmax is one past the latest *completed* transaction: the horizon is
        // held back (xmin < xmax) once something newer than `held` has finished.
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut other)
            .await
            .unwrap();
        let (xmin, xmax) = store.snapshot_bounds().await.unwrap();
        assert!(xmin <= tx && tx < xmax, "{xmin} <= {tx} < {xmax}");
        let ages = watch.observe(xmin, xmax, tx, tokio::time::Instant::now());
        if ages.horizon >= Duration::from_secs(1) && ages.pending_commit >= Duration::from_secs(1) {
            aged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(aged, "a held horizon never showed an age");
    held.rollback().await.unwrap();
}
