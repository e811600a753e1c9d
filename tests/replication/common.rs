//! Test harness: a fresh database per test in the throwaway cluster that `scripts/test.sh`
//! starts, and the real server on an ephemeral 127.0.0.1 port.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::Connection;
use syncline::config::Config;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{ChangeRow, Checkpoint, Document, PullRequest, PushRequest};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The admin URL of the test cluster. Missing means the environment is broken: fail loudly.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_ADMIN_URL is not set: these tests need a real PostgreSQL. \
             Run scripts/test.sh, which starts a throwaway cluster."
        )
    })
}

/// Replaces the database name of a URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("admin URL has a database path");
    format!("{base}/{name}")
}

/// Creates an empty database for the calling test and returns its URL. It is dropped when the
/// thread that created it ends: for a `#[tokio::test]`, once the test has returned or
/// panicked and its runtime, servers and connections are gone (see [`TestDatabases`]).
pub async fn fresh_database() -> String {
    let admin = admin_url();
    if keep_failed() {
        mark_panics_once();
    }
    // The process id in the name tells which run left a database behind.
    let name = format!(
        "syncline_t_{}_{:012x}",
        std::process::id(),
        rand::random::<u64>() >> 16
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    TEST_DATABASES.with(|dbs| {
        dbs.admin.replace(Some(admin.clone()));
        dbs.names.borrow_mut().push(name.clone());
    });
    with_database(&admin, &name)
}

thread_local! {
    /// The databases made by this thread, dropped when it ends.
    static TEST_DATABASES: TestDatabases = TestDatabases::default();
}

/// A thread's test databases: dropped `WITH (FORCE)` when the thread ends, as `#[sqlx::test]`
/// does at the end of a test, a panicking one included (libtest runs each test on a thread
/// of its own and joins it). With `SYNCLINE_KEEP_TEST_DB=1`, a thread that panicked keeps
/// them, and their names are printed, for a look at a failed test's data.
#[derive(Default)]
pub struct TestDatabases {
    admin: RefCell<Option<String>>,
    names: RefCell<Vec<String>>,
    panicked: Cell<bool>,
}

/// Whether failed tests keep their databases.
fn keep_failed() -> bool {
    std::env::var_os("SYNCLINE_KEEP_TEST_DB").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Marks a panicking thread so that its databases are kept (`SYNCLINE_KEEP_TEST_DB` only).
fn mark_panics_once() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = TEST_DATABASES.try_with(|dbs| dbs.panicked.set(true));
            previous(info);
        }));
    });
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        let names = self.names.take();
        let Some(admin) = self.admin.take() else {
            return;
        };
        if names.is_empty() {
            return;
        }
        if keep_failed() && self.panicked.get() {
            eprintln!("SYNCLINE_KEEP_TEST_DB: kept {}", names.join(", "));
            return;
        }
        // psql, not sqlx: this runs while the thread's locals are being destroyed, where no
        // runtime (nor another thread) can be started.
        let run = |program: &std::path::Path| {
            let mut psql = std::process::Command::new(program);
            psql.arg(&admin).args(["-XqAt", "-v", "ON_ERROR_STOP=1"]);
            for name in &names {
                psql.args([
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ]);
            }
            psql.output()
        };
        // On PATH, else where Debian's server packages put it (scripts/pg-cluster.sh).
        let outcome = run("psql".as_ref()).or_else(|e| {
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|version| version.path().join("bin/psql"))
                .find(|p| p.exists())
                .map_or(Err(e), |p| run(&p))
        });
        match outcome {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "could not drop test databases {}: {}",
                names.join(", "),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!(
                "could not drop test databases {}: psql: {e}",
                names.join(", ")
            ),
        }
    }
}

/// A configuration with two collections and test-friendly limits.
pub fn config(db_url: &str) -> Config {
    let mut c = Config::from_toml(
        r#"
        listen = "127.0.0.1:0"
        pool_size = 8
        heartbeat_seconds = 60
        keepalive_seconds = 0
        metrics_enabled = false
        # Tests share one cluster; some hold transactions open on purpose, which holds every
        # database's visibility horizon back. Let pulls wait that out (generously: on a loaded
        # machine such a test can hold its transaction for well over 10 s).
        visibility_wait_ms = 30000
        [auth]
        mode = "none"
        [[collections]]
        name = "tasks"
        [[collections]]
        name = "notes"
        "#,
    )
    .expect("test config parses");
    c.database_url = Some(db_url.to_owned());
    c
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), syncline::server::ServerError>>>,
}

impl TestServer {
    /// Starts a server on a fresh database.
    pub async fn start() -> TestServer {
        let db = fresh_database().await;
        TestServer::start_with(config(&db)).await
    }

    /// Starts a server with the given configuration and waits until it answers calls.
    pub async fn start_with(config: Config) -> TestServer {
        let server = TestServer::start_unready(config).await;
        let mut client = server.connect().await;
        for _ in 0..200 {
            let r = client
                .pull(PullRequest {
                    collection: "tasks".into(),
                    checkpoint: None,
                    limit: 1,
                    selector: Vec::new(),
                })
                .await;
            // Answering at all means serving (migrations run first); UNAUTHENTICATED is an
            // answer from a server with authentication on.
            if r.is_ok() || r.is_err_and(|s| s.code() == tonic::Code::Unauthenticated) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready");
    }

    /// Starts a server and returns once it accepts connections, ready or not.
    pub async fn start_unready(config: Config) -> TestServer {
        let db_url = config.database_url.clone().expect("database_url set");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(syncline::server::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let server = TestServer {
            addr,
            db_url,
            stop: Some(stop),
            task: Some(task),
        };
        server.connect().await;
        server
    }

    /// A client connected to this server.
    pub async fn client(&self) -> ReplicationServiceClient<Channel> {
        self.connect().await
    }

    async fn connect(&self) -> ReplicationServiceClient<Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5));
        for _ in 0..200 {
            if let Ok(channel) = endpoint.connect().await {
                return ReplicationServiceClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("cannot connect to the test server at {}", self.addr);
    }

    /// Sends the shutdown signal (SIGTERM's part) without waiting: the server drains.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks the server to stop and waits (bounded) for it to finish.
    pub async fn stop(mut self) -> Result<(), syncline::server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("server stops within 20 s")
            .expect("server task did not panic")
    }

    /// A direct database connection (to inspect or disturb the state).
    pub async fn db(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.db_url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A document with a JSON body.
pub fn doc(id: &str, json: serde_json::Value) -> Document {
    Document {
        id: id.into(),
        json: json.to_string().into_bytes(),
        ..Default::default()
    }
}

/// A tombstone.
pub fn tombstone(id: &str) -> Document {
    Document {
        id: id.into(),
        deleted: true,
        ..Default::default()
    }
}

/// A row that believes the document is new.
pub fn insert(d: Document) -> ChangeRow {
    ChangeRow {
        new_document_state: Some(d),
        assumed_master_state: None,
    }
}

/// A row that believes the server holds `assumed`.
pub fn update(d: Document, assumed: Document) -> ChangeRow {
    ChangeRow {
        new_document_state: Some(d),
        assumed_master_state: Some(assumed),
    }
}

/// Pushes rows and returns the conflicts.
pub async fn push(
    client: &mut ReplicationServiceClient<Channel>,
    collection: &str,
    rows: Vec<ChangeRow>,
) -> Vec<Document> {
    client
        .push(PushRequest {
            collection: collection.into(),
            rows,
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect("push succeeds")
        .into_inner()
        .conflicts
}

/// One pull.
pub async fn pull(
    client: &mut ReplicationServiceClient<Channel>,
    collection: &str,
    token: &str,
    limit: u32,
) -> (Vec<Document>, String) {
    let r = client
        .pull(PullRequest {
            collection: collection.into(),
            checkpoint: Some(Checkpoint {
                token: token.into(),
            }),
            limit,
            selector: Vec::new(),
        })
        .await
        .expect("pull succeeds")
        .into_inner();
    (
        r.documents,
        r.checkpoint.map(|c| c.token).unwrap_or_default(),
    )
}

/// Pulls from `token` until a page comes back empty; returns every document and the last token.
pub async fn pull_all(
    client: &mut ReplicationServiceClient<Channel>,
    collection: &str,
    token: &str,
    limit: u32,
) -> (Vec<Document>, String) {
    let mut token = token.to_owned();
    let mut all = Vec::new();
    for _ in 0..100_000 {
        let (docs, next) = pull(client, collection, &token, limit).await;
        if docs.is_empty() {
            assert_eq!(next, token, "an empty page returns the same checkpoint");
            return (all, token);
        }
        all.extend(docs);
        token = next;
    }
    panic!("pull_all did not finish");
}

/// The body of a document as JSON.
pub fn body(d: &Document) -> serde_json::Value {
    serde_json::from_slice(&d.json).expect("document body is JSON")
}

/// Every row of a collection as (id, revision, deleted, body), sorted by id.
pub async fn table(
    db: &mut sqlx::PgConnection,
    collection: &str,
) -> Vec<(String, String, bool, serde_json::Value)> {
    let rows: Vec<(String, String, bool, String)> = sqlx::query_as(
        "SELECT id, revision, deleted, body::text FROM syncline_documents WHERE collection = $1 ORDER BY id",
    )
    .bind(collection)
    .fetch_all(db)
    .await
    .expect("read table");
    rows.into_iter()
        .map(|(id, rev, del, b)| (id, rev, del, serde_json::from_str(&b).expect("json")))
        .collect()
}

/// A client's view built from pulled documents, as (id, revision, deleted, body) sorted by id.
pub fn view(docs: &[Document]) -> Vec<(String, String, bool, serde_json::Value)> {
    let mut map = std::collections::BTreeMap::new();
    for d in docs {
        map.insert(d.id.clone(), (d.revision.clone(), d.deleted, body(d)));
    }
    map.into_iter()
        .map(|(id, (r, del, b))| (id, r, del, b))
        .collect()
}

/// Revision generation ("3-abc" -> 3).
pub fn generation(revision: &str) -> u64 {
    revision
        .split_once('-')
        .and_then(|(n, _)| n.parse().ok())
        .expect("revision has a generation")
}

/// Reads a stream until it ends and returns its final status; panics if it ends with OK or
/// not within `wait`.
pub async fn stream_end_status<T>(
    stream: &mut tonic::Streaming<T>,
    wait: Duration,
) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

/// A PostgreSQL cluster of a test's own, which it may stop and restart (never the shared
/// one), through `scripts/pg-cluster.sh`; stopped (like a crash) and removed when dropped.
pub struct PrivateCluster {
    dir: tempfile::TempDir,
    port: u16,
    fast: bool,
    /// The admin URL.
    pub url: String,
}

impl PrivateCluster {
    /// Initialises and starts a cluster on `port` (0: a free one); `fast` turns fsync and
    /// synchronous commit off (`scripts/pg-cluster.sh ... fast`).
    pub fn start(port: u16, fast: bool) -> PrivateCluster {
        let dir = tempfile::Builder::new()
            .prefix("syncline-test-pg-")
            .tempdir()
            .expect("temp dir");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the cluster dir");
        }
        let port = match port {
            0 => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port(),
            p => p,
        };
        let mut cluster = PrivateCluster {
            dir,
            port,
            fast,
            url: String::new(),
        };
        cluster.url = cluster.start_again();
        cluster
    }

    /// Starts the stopped cluster again (recovering after an immediate stop); the admin URL.
    pub fn start_again(&self) -> String {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut args = vec!["start", &dir, &port];
        if self.fast {
            args.push("fast");
        }
        cluster_script(&args)
    }

    /// Stops the cluster: `fast` (a clean shutdown) or `immediate` (as a crash: no shutdown
    /// checkpoint, WAL not yet written is lost).
    pub fn stop(&self, mode: &str) {
        cluster_script(&["stop", &self.dir.path().to_string_lossy(), mode]);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(cluster_script_path())
            .args(["stop", &self.dir.path().to_string_lossy(), "immediate"])
            .output();
    }
}

fn cluster_script_path() -> String {
    format!("{}/scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/pg-cluster.sh` and returns its standard output; panics with its errors.
fn cluster_script(args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(cluster_script_path())
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

/// Documents from `stream` until `count` arrived (bounded wait), and the last checkpoint.
pub async fn stream_documents(
    stream: &mut tonic::Streaming<syncline::proto::SubscribeResponse>,
    count: usize,
) -> (Vec<Document>, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut docs, mut token) = (Vec::new(), String::new());
    while docs.len() < count {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("only {} of {count} documents arrived: {docs:?}", docs.len())
            })
            .expect("stream ok")
            .expect("stream open");
        if let Some(syncline::proto::subscribe_response::Event::Changes(batch)) = msg.event {
            docs.extend(batch.documents);
            token = batch.checkpoint.map(|c| c.token).unwrap_or_default();
        }
    }
    (docs, token)
}

/// A migrated store on `db` with a pool of `size` connections, for in-process replicators.
pub async fn migrated_store(db: &str, size: u32) -> syncline::store::postgres::PgStore {
    let store = syncline::store::postgres::PgStore::connect_lazy(
        db,
        &syncline::store::postgres::PoolSettings {
            size,
            acquire_timeout: Duration::from_secs(10),
            statement_cache_capacity: 100,
            read_ahead_pages: 16,
        },
    )
    .expect("store");
    store.migrate().await.expect("migrations");
    store
}

/// The parts of an in-process replicator over `store` for the collections and limits of
/// `cfg`, with roomy stream limits (100 streams, 10,000 buffered documents); tests override
/// the fields they study.
pub fn replicator_parts<S>(
    store: std::sync::Arc<S>,
    cfg: &Config,
) -> syncline::protocol::ReplicatorParts<S> {
    let collections = syncline::protocol::Collections::from_config(cfg).expect("collections");
    syncline::protocol::ReplicatorParts {
        store,
        hub: syncline::protocol::fanout::Hub::new(collections.names()),
        collections,
        limits: syncline::protocol::Limits::from_config(cfg),
        streams_max: 100,
        streams_per_principal_max: 100,
        stream_buffer_documents: 10_000,
        page_bytes_max: cfg.page_bytes_max,
        stream_buffer_bytes: cfg.stream_buffer_bytes,
        stream_bytes_per_principal_max: cfg.stream_bytes_per_principal_max,
        heartbeat: Duration::from_secs(60),
        visibility_wait: Duration::from_millis(100),
        shutdown: tokio_util::sync::CancellationToken::new(),
        checkpoint_key: None,
    }
}
