//! A seeded, randomized fault checker: writers with overlapping batches (tombstones,
//! re-creations, assumed states by revision and by body), pullers that switch process, streams
//! on two server processes, and injected faults (PostgreSQL fast and immediate restarts,
//! killed LISTEN connections, a server process restarted, stray NOTIFYs, an outside
//! transaction holding the horizon, SQL writes from outside). At the end every reader holds
//! every document at its final revision exactly once, no reader ever saw a document go back
//! to an older revision, and every acknowledged write is in its document's history.
//!
//! It runs in a process of its own on a PostgreSQL cluster of its own (it restarts it).
//! `SYNCLINE_CHECKER_SECONDS` (default 40) sets how long faults are injected,
//! `SYNCLINE_CHECKER_SEED` replays a run; the seed is printed on failure.
//!
//! History: every body names its write (`t`) and the write it assumed (`p`), SQL writes
//! included, so the chain of a document's applied writes can be walked back from its final
//! state. An acknowledged write missing from that chain was lost.

#[path = "replication/common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Connection;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{
    ChangeRow, Checkpoint, Document, PullRequest, PushRequest, SubscribeRequest,
};
use tokio::time::{Instant, timeout};
use tonic::Code;
use tonic::transport::Channel;

use common::{PrivateCluster, TestServer};

const IDS: usize = 40;
const WRITERS: usize = 3;
const PULLERS: usize = 2;
const STREAMS: usize = 2;
const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// What a writer believes the server holds for an id. Unknown (after a failed push) is sent
/// like Absent: the conflict that follows tells the truth.
#[derive(Debug, Clone)]
enum Belief {
    Unknown,
    Absent,
    Holds {
        body: Value,
        deleted: bool,
        revision: Option<String>,
    },
}

/// Everything the run learned, checked at the end.
#[derive(Default)]
struct Ledger {
    /// Every write attempted (token -> (id, token it assumed)).
    writes: HashMap<String, (String, Option<String>)>,
    /// Writes acknowledged as applied.
    acked: HashSet<String>,
    /// Failures that are bugs, not faults (wrong status codes, order violations).
    violations: Vec<String>,
}

type Shared<T> = Arc<Mutex<T>>;

/// Records a failure that is a bug, not a fault.
fn violation(ledger: &Shared<Ledger>, what: String) {
    ledger.lock().unwrap().violations.push(what);
}

/// The two server slots; a restarted server gets a new address.
#[derive(Clone)]
struct Servers(Shared<[Option<SocketAddr>; 2]>);

impl Servers {
    fn pick(&self, rng: &mut StdRng) -> Option<SocketAddr> {
        let live: Vec<SocketAddr> = self.0.lock().unwrap().iter().flatten().copied().collect();
        live.choose(rng).copied()
    }
}

async fn connect(addr: SocketAddr) -> Option<ReplicationServiceClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2));
    let channel = timeout(Duration::from_secs(3), endpoint.connect())
        .await
        .ok()?
        .ok()?;
    Some(ReplicationServiceClient::new(channel))
}

/// Statuses a fault may cause; anything else is a bug. A status with a source was made by
/// the client's transport (a connection reset, a GOAWAY while the server restarts), not sent
/// by the server.
fn transient(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        || matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
        )
}

fn token_of(body: &Value) -> Option<String> {
    body.get("t").and_then(Value::as_str).map(str::to_owned)
}

fn generation(revision: &str) -> u64 {
    revision
        .split_once('-')
        .and_then(|(g, _)| g.parse().ok())
        .unwrap_or(0)
}

async fn writer(
    w: usize,
    seed: u64,
    servers: Servers,
    ledger: Shared<Ledger>,
    until: Instant,
) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
    let mut beliefs: Vec<Belief> = vec![Belief::Absent; IDS];
    let mut seq = 0u64;
    let mut applied = 0;
    while Instant::now() < until {
        let Some(addr) = servers.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(mut client) = connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for _ in 0..20 {
            // Overlapping batches in random (so also opposite) orders.
            let mut ids: Vec<usize> = (0..IDS).collect();
            ids.shuffle(&mut rng);
            ids.truncate(rng.random_range(1..=8));
            let mut rows = Vec::new();
            let mut tokens = Vec::new();
            for &i in &ids {
                seq += 1;
                let id = format!("d{i:02}");
                let t = format!("w{w}-{seq}");
                let (assumed, prev) = match &beliefs[i] {
                    Belief::Unknown | Belief::Absent => (None, None),
                    Belief::Holds {
                        body,
                        deleted,
                        revision,
                    } => {
                        let by_revision = revision.is_some() && rng.random_bool(0.5);
                        let doc = Document {
                            id: id.clone(),
                            json: body.to_string().into_bytes(),
                            deleted: *deleted,
                            revision: if by_revision {
                                revision.clone().unwrap_or_default()
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        };
                        (Some(doc), token_of(body))
                    }
                };
                let currently_live =
                    matches!(&beliefs[i], Belief::Holds { deleted, .. } if !deleted);
                let deleted = currently_live && rng.random_bool(0.2);
                let body = json!({"id": id, "t": t, "p": prev, "pad": "x".repeat(rng.random_range(0..200))});
                rows.push(ChangeRow {
                    new_document_state: Some(Document {
                        id: id.clone(),
                        json: body.to_string().into_bytes(),
                        deleted,
                        ..Default::default()
                    }),
                    assumed_master_state: assumed,
                });
                tokens.push((i, t.clone(), body, deleted));
                ledger.lock().unwrap().writes.insert(t, (id, prev));
            }
            let call = client.push(PushRequest {
                collection: "tasks".into(),
                rows,
                mode: 0,
                idempotency_key: String::new(),
            });
            match timeout(RPC_TIMEOUT, call).await {
                Ok(Ok(response)) => {
                    let conflicts = response.into_inner().conflicts;
                    let conflicted: HashMap<String, Document> =
                        conflicts.into_iter().map(|d| (d.id.clone(), d)).collect();
                    let mut l = ledger.lock().unwrap();
                    for (i, t, body, deleted) in tokens {
                        let id = format!("d{i:02}");
                        match conflicted.get(&id) {
                            Some(server) => {
                                beliefs[i] = match serde_json::from_slice(&server.json) {
                                    Ok(body) => Belief::Holds {
                                        body,
                                        deleted: server.deleted,
                                        revision: Some(server.revision.clone()),
                                    },
                                    Err(_) => Belief::Unknown,
                                }
                            }
                            None => {
                                applied += 1;
                                l.acked.insert(t);
                                beliefs[i] = Belief::Holds {
                                    body,
                                    deleted,
                                    revision: None,
                                };
                            }
                        }
                    }
                }
                Ok(Err(status)) => {
                    if !transient(&status) {
                        violation(&ledger, format!("writer {w}: push answered {status:?}"));
                    }
                    for (i, ..) in tokens {
                        beliefs[i] = Belief::Unknown;
                    }
                    break;
                }
                Err(_) => {
                    for (i, ..) in tokens {
                        beliefs[i] = Belief::Unknown;
                    }
                    break;
                }
            }
        }
    }
    applied
}

/// A reader's copy: id -> (revision, body, deleted), and the checks on what it receives.
#[derive(Default)]
struct Replica {
    docs: HashMap<String, (String, Value, bool)>,
    checkpoint: String,
}

impl Replica {
    /// Applies one page or batch; returns violations.
    fn apply(&mut self, who: &str, documents: Vec<Document>, checkpoint: String) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for d in documents {
            if !seen.insert(d.id.clone()) {
                problems.push(format!("{who}: {} twice in one batch", d.id));
            }
            let body: Value = serde_json::from_slice(&d.json).unwrap_or(Value::Null);
            if let Some((old, ..)) = self.docs.get(&d.id)
                && generation(&d.revision) < generation(old)
            {
                problems.push(format!(
                    "{who}: {} went back from revision {old} to {}",
                    d.id, d.revision
                ));
            }
            self.docs.insert(d.id, (d.revision, body, d.deleted));
        }
        self.checkpoint = checkpoint;
        problems
    }

    fn differences(&self, truth: &HashMap<String, (String, Value, bool)>) -> Vec<String> {
        let mut out = Vec::new();
        for (id, (rev, body, deleted)) in truth {
            let (t, server_t) = (
                self.docs.get(id).and_then(|(_, b, _)| token_of(b)),
                token_of(body),
            );
            match self.docs.get(id) {
                None => out.push(format!("{id} missing (server at {rev})")),
                Some((r, _, d)) if r != rev || t != server_t || d != deleted => {
                    out.push(format!("{id} at {r} {t:?}, server at {rev} {server_t:?}"))
                }
                _ => {}
            }
        }
        for id in self.docs.keys() {
            if !truth.contains_key(id) {
                out.push(format!("{id} held but not on the server"));
            }
        }
        out
    }
}

async fn pull_once(
    client: &mut ReplicationServiceClient<Channel>,
    replica: &mut Replica,
    who: &str,
    limit: u32,
) -> Result<(usize, Vec<String>), tonic::Status> {
    let call = client.pull(PullRequest {
        collection: "tasks".into(),
        checkpoint: Some(Checkpoint {
            token: replica.checkpoint.clone(),
        }),
        limit,
        selector: Vec::new(),
    });
    let response = timeout(RPC_TIMEOUT, call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("checker timeout"))??
        .into_inner();
    let n = response.documents.len();
    let token = response.checkpoint.map(|c| c.token).unwrap_or_default();
    Ok((n, replica.apply(who, response.documents, token)))
}

async fn puller(
    p: usize,
    seed: u64,
    servers: Servers,
    ledger: Shared<Ledger>,
    until: Instant,
) -> Replica {
    let mut rng = StdRng::seed_from_u64(seed ^ ((p as u64 + 101) * 0x85eb_ca6b));
    let mut replica = Replica::default();
    let who = format!("puller {p}");
    while Instant::now() < until {
        // A new process for (almost) every page: checkpoints must hold across processes.
        let Some(addr) = servers.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(mut client) = connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let limit = rng.random_range(1..=15);
        match pull_once(&mut client, &mut replica, &who, limit).await {
            Ok((_, problems)) => ledger.lock().unwrap().violations.extend(problems),
            Err(status) if transient(&status) => {}
            Err(status) => violation(&ledger, format!("{who}: pull answered {status:?}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
    }
    replica
}

async fn streamer(
    s: usize,
    seed: u64,
    servers: Servers,
    ledger: Shared<Ledger>,
    stop: tokio_util::sync::CancellationToken,
    replica: Shared<Replica>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((s as u64 + 201) * 0xc2b2_ae35));
    let who = format!("stream {s}");
    while !stop.is_cancelled() {
        let Some(addr) = servers.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(mut client) = connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let token = replica.lock().unwrap().checkpoint.clone();
        let call = client.subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: Some(Checkpoint { token }),
            selector: Vec::new(),
        });
        let mut stream = match timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) if !transient(&status) => {
                violation(&ledger, format!("{who}: subscribe answered {status:?}"));
                continue;
            }
            _ => continue,
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = timeout(Duration::from_secs(90), stream.message()) => next,
            };
            match next {
                Ok(Ok(Some(msg))) => {
                    if let Some(Event::Changes(batch)) = msg.event {
                        let token = batch.checkpoint.map(|c| c.token).unwrap_or_default();
                        let problems = replica.lock().unwrap().apply(&who, batch.documents, token);
                        ledger.lock().unwrap().violations.extend(problems);
                    }
                }
                Ok(Err(status)) if !transient(&status) => {
                    violation(&ledger, format!("{who}: stream ended with {status:?}"));
                    break;
                }
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
    }
}

fn server_config(url: &str) -> syncline::config::Config {
    let mut cfg = common::config(url);
    cfg.visibility_wait_ms = 2000;
    cfg.pool_size = 6;
    cfg.acquire_timeout_seconds = 3;
    cfg
}

/// The faults, chosen by the seed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    PgRestartFast,
    PgRestartImmediate,
    KillListeners,
    RestartServer,
    StrayNotify,
    HoldHorizon,
    SqlWrite,
}

const FAULTS: [Fault; 7] = [
    Fault::PgRestartFast,
    Fault::PgRestartImmediate,
    Fault::KillListeners,
    Fault::RestartServer,
    Fault::StrayNotify,
    Fault::HoldHorizon,
    Fault::SqlWrite,
];

async fn inject(
    fault: Fault,
    cluster: &PrivateCluster,
    servers: &Servers,
    slots: &mut [Option<TestServer>; 2],
    ledger: &Shared<Ledger>,
    rng: &mut StdRng,
    sql_seq: &mut u64,
) {
    let db = || async {
        match timeout(
            Duration::from_secs(5),
            sqlx::PgConnection::connect(&cluster.url),
        )
        .await
        {
            Ok(Ok(c)) => Some(c),
            _ => None,
        }
    };
    match fault {
        Fault::PgRestartFast => restart(cluster, "fast").await,
        Fault::PgRestartImmediate => restart(cluster, "immediate").await,
        Fault::KillListeners => {
            if let Some(mut c) = db().await {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'syncline-listener'",
                )
                .execute(&mut c)
                .await;
            }
        }
        Fault::RestartServer => {
            let i = rng.random_range(0..2);
            servers.0.lock().unwrap()[i] = None;
            if let Some(old) = slots[i].take() {
                let _ = old.stop().await;
            }
            let server = TestServer::start_unready(server_config(&cluster.url)).await;
            servers.0.lock().unwrap()[i] = Some(server.addr);
            slots[i] = Some(server);
        }
        Fault::StrayNotify => {
            if let Some(mut c) = db().await {
                let _ = sqlx::query("NOTIFY syncline_changes, '9000000000000000000:tasks'")
                    .execute(&mut c)
                    .await;
            }
        }
        Fault::HoldHorizon => {
            let url = cluster.url.clone();
            let hold = Duration::from_millis(rng.random_range(300..2500));
            tokio::spawn(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await
                    && let Ok(mut tx) = c.begin().await
                {
                    let _ = sqlx::query("SELECT pg_current_xact_id()")
                        .execute(&mut *tx)
                        .await;
                    tokio::time::sleep(hold).await;
                    let _ = tx.commit().await;
                }
            });
        }
        Fault::SqlWrite => {
            // An operator's UPDATE that sets nothing but the body: it must replicate.
            *sql_seq += 1;
            let t = format!("sql-{sql_seq}");
            let id = format!("d{:02}", rng.random_range(0..IDS));
            if let Some(mut c) = db().await {
                let previous: Result<Option<(Option<String>,)>, _> = sqlx::query_as(
                    "WITH old AS (SELECT body->>'t' AS t FROM syncline_documents \
                                  WHERE collection = 'tasks' AND id = $1 FOR UPDATE) \
                     UPDATE syncline_documents d \
                     SET body = jsonb_build_object('id', d.id, 't', $2::text, 'p', old.t) \
                     FROM old WHERE d.collection = 'tasks' AND d.id = $1 RETURNING old.t",
                )
                .bind(&id)
                .bind(&t)
                .fetch_optional(&mut c)
                .await;
                if let Ok(Some((prev,))) = previous {
                    let mut l = ledger.lock().unwrap();
                    l.writes.insert(t.clone(), (id, prev));
                    l.acked.insert(t);
                }
            }
        }
    }
}

/// Stops PostgreSQL (`fast` or `immediate`) and starts it again.
async fn restart(cluster: &PrivateCluster, mode: &str) {
    tokio::task::block_in_place(|| {
        cluster.stop(mode);
        cluster.start_again();
    });
}

async fn truth(url: &str) -> HashMap<String, (String, Value, bool)> {
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .expect("connect for truth");
    let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT id, revision, body::text, deleted FROM syncline_documents WHERE collection = 'tasks'",
    )
    .fetch_all(&mut c)
    .await
    .expect("read truth");
    rows.into_iter()
        .map(|(id, rev, body, deleted)| {
            let body = serde_json::from_str(&body).unwrap_or(Value::Null);
            (id, (rev, body, deleted))
        })
        .collect()
}

/// Every acknowledged write lies on its document's chain of applied writes.
fn lost_writes(ledger: &Ledger, truth: &HashMap<String, (String, Value, bool)>) -> Vec<String> {
    let mut on_chain = HashSet::new();
    let mut problems = Vec::new();
    for (id, (_, body, _)) in truth {
        let mut at = token_of(body);
        let mut steps = 0;
        while let Some(t) = at {
            steps += 1;
            if steps > 1_000_000 || !on_chain.insert(t.clone()) {
                problems.push(format!("{id}: history loops at {t}"));
                break;
            }
            match ledger.writes.get(&t) {
                Some((wid, prev)) if wid == id => at = prev.clone(),
                _ => {
                    problems.push(format!("{id}: unknown write {t} in its history"));
                    break;
                }
            }
        }
    }
    for t in &ledger.acked {
        if !on_chain.contains(t) {
            let id = ledger
                .writes
                .get(t)
                .map(|(id, _)| id.as_str())
                .unwrap_or("?");
            problems.push(format!("acknowledged write {t} of {id} was lost"));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_exactly_under_faults() {
    let seed: u64 = std::env::var("SYNCLINE_CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let seconds: u64 = std::env::var("SYNCLINE_CHECKER_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    eprintln!("fault checker: seed {seed}, {seconds} s (SYNCLINE_CHECKER_SEED={seed} replays)");
    // fsync off: the restarts stop PostgreSQL's processes, not the machine.
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(0, true))
        .await
        .unwrap();
    let a = TestServer::start_with(server_config(&cluster.url)).await;
    let b = TestServer::start_with(server_config(&cluster.url)).await;
    let servers = Servers(Arc::new(Mutex::new([Some(a.addr), Some(b.addr)])));
    let mut slots = [Some(a), Some(b)];
    let ledger: Shared<Ledger> = Arc::default();
    let until = Instant::now() + Duration::from_secs(seconds);

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, seed, servers.clone(), ledger.clone(), until)))
        .collect();
    let pullers: Vec<_> = (0..PULLERS)
        .map(|p| tokio::spawn(puller(p, seed, servers.clone(), ledger.clone(), until)))
        .collect();
    let stop_streams = tokio_util::sync::CancellationToken::new();
    let stream_replicas: Vec<Shared<Replica>> = (0..STREAMS).map(|_| Arc::default()).collect();
    let streams: Vec<_> = stream_replicas
        .iter()
        .enumerate()
        .map(|(s, r)| {
            tokio::spawn(streamer(
                s,
                seed,
                servers.clone(),
                ledger.clone(),
                stop_streams.clone(),
                r.clone(),
            ))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut sql_seq = 0;
    let mut injected = Vec::new();
    while Instant::now() + Duration::from_secs(3) < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        injected.push(fault);
        inject(
            fault,
            &cluster,
            &servers,
            &mut slots,
            &ledger,
            &mut rng,
            &mut sql_seq,
        )
        .await;
    }
    let mut applied = 0;
    for w in writers {
        applied += w.await.expect("writer task");
    }
    // Quiet now: every reader must reach exactly the server's state.
    let truth = truth(&cluster.url).await;
    let live = servers.pick(&mut rng).expect("a server");
    let mut client = connect(live).await.expect("connect for the final pulls");
    let mut failures = Vec::new();
    for (p, handle) in pullers.into_iter().enumerate() {
        let mut replica = handle.await.expect("puller task");
        let who = format!("puller {p}");
        let mut errors = 0;
        for _ in 0..10_000 {
            match pull_once(&mut client, &mut replica, &who, 50).await {
                Ok((0, problems)) => {
                    failures.extend(problems);
                    break;
                }
                Ok((_, problems)) => failures.extend(problems),
                // The last fault may still be settling (a restarted PostgreSQL).
                Err(status) if transient(&status) && errors < 50 => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => {
                    failures.push(format!("{who}: final pull answered {status:?}"));
                    break;
                }
            }
        }
        failures.extend(
            replica
                .differences(&truth)
                .into_iter()
                .map(|d| format!("{who}: {d}")),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (s, replica) in stream_replicas.iter().enumerate() {
        loop {
            let diff = replica.lock().unwrap().differences(&truth);
            if diff.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                failures.extend(diff.into_iter().take(5).map(|d| format!("stream {s}: {d}")));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_streams.cancel();
    for s in streams {
        s.await.expect("stream task");
    }
    for server in slots.into_iter().flatten() {
        let _ = server.stop().await;
    }
    let ledger = ledger.lock().unwrap();
    failures.extend(ledger.violations.iter().cloned());
    failures.extend(lost_writes(&ledger, &truth));
    eprintln!(
        "fault checker: {} documents, {applied} acknowledged pushes of rows, faults {injected:?}",
        truth.len()
    );
    assert!(
        failures.is_empty(),
        "fault checker (seed {seed}) found {} problems:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(applied > 0, "no write was ever applied (seed {seed})");
}
