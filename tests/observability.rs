//! Metrics and traces, in a process of their own (the metrics recorder and the tracing
//! subscriber are global): a scripted session, then exact counter values from `/metrics` and
//! one OpenTelemetry span per RPC, continuing the caller's `traceparent`.

#[path = "replication/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Request;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use common::*;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{Checkpoint, PullRequest, SubscribeRequest};

/// The metrics recorder is global: every test here shares one `/metrics` listener.
fn metrics_addr() -> std::net::SocketAddr {
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    })
}

/// Runs a test on the one runtime of this file (the metrics listener is a task of the runtime
/// that installed it, so it must outlive every test), one test at a time so that series counts
/// are exact.
fn run<F: std::future::Future>(test: F) -> F::Output {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    runtime.block_on(test)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no metrics listener at {addr}");
}

/// The value of one exact series line, e.g. `name{a="b"}`.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

#[test]
fn a_scripted_session_shows_in_metrics_and_traces() {
    run(scripted_session());
}

async fn scripted_session() {
    // Traces: the SDK's in-memory exporter behind tracing-opentelemetry.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let metrics_addr = metrics_addr();
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    cfg.heartbeat_seconds = 1;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;

    // The session: a stream, three pushes (one conflict, one invalid), a traced pull.
    let mut stream = c
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The stream is live once it has sent a heartbeat: m1 and m2 then reach it live.
    let mut heartbeat = false;
    while !heartbeat {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        heartbeat = matches!(msg.event, Some(Event::Heartbeat(_)));
    }
    push(
        &mut c,
        "tasks",
        vec![insert(doc("m1", json!({}))), insert(doc("m2", json!({})))],
    )
    .await;
    let conflicts = push(
        &mut c,
        "tasks",
        vec![insert(doc("m1", json!({"again": true})))],
    )
    .await;
    assert_eq!(conflicts.len(), 1);
    let invalid = c
        .push(syncline::proto::PushRequest {
            collection: "tasks".into(),
            mode: 0,
            idempotency_key: String::new(),
            rows: vec![insert(syncline::proto::Document {
                id: "bad".into(),
                json: b"[".to_vec(),
                ..Default::default()
            })],
        })
        .await;
    assert!(invalid.is_err());
    let mut streamed = 0;
    while streamed < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Event::Changes(b)) = msg.event {
            streamed += b.documents.len();
        }
    }
    // A second stream from the beginning catches up on m1 and m2: streamed, but no lag.
    let mut catch_up = c
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut caught = 0;
    while caught < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), catch_up.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Event::Changes(b)) = msg.event {
            caught += b.documents.len();
        }
    }
    drop(catch_up);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut traced = Request::new(PullRequest {
        collection: "tasks".into(),
        checkpoint: Some(Checkpoint {
            token: String::new(),
        }),
        limit: 10,
        selector: Vec::new(),
    });
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    assert_eq!(
        c.pull(traced).await.unwrap().into_inner().documents.len(),
        2
    );
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let m = scrape(metrics_addr).await;
    let rpc = |method: &str, code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_service=\"syncline.v1.ReplicationService\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
        )
    };
    assert_eq!(value(&m, &rpc("Push", "OK")), 2.0);
    assert_eq!(value(&m, &rpc("Push", "InvalidArgument")), 1.0);
    assert_eq!(
        value(&m, &rpc("Subscribe", "Canceled")),
        2.0,
        "the client dropped both streams"
    );
    assert!(
        value(&m, &rpc("Pull", "OK")) >= 2.0,
        "the harness's readiness pull plus ours"
    );
    assert!(
        value(
            &m,
            "grpc_server_handling_seconds_count{grpc_service=\"syncline.v1.ReplicationService\",grpc_method=\"Push\"}"
        ) >= 3.0
    );
    assert!(
        m.contains("grpc_server_handling_seconds_bucket{"),
        "a histogram, not a summary"
    );
    assert_eq!(
        value(&m, "syncline_documents_pushed_total{collection=\"tasks\"}"),
        2.0
    );
    assert_eq!(
        value(&m, "syncline_conflicts_total{collection=\"tasks\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "syncline_push_rows_rejected_total{collection=\"tasks\",reason=\"conflict\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "syncline_push_rows_rejected_total{collection=\"tasks\",reason=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "syncline_documents_streamed_total{collection=\"tasks\"}"
        ),
        4.0,
        "two live, two caught up"
    );
    assert!(value(&m, "syncline_documents_pulled_total{collection=\"tasks\"}") >= 2.0);
    assert!(value(&m, "syncline_heartbeats_sent_total") >= 1.0);
    assert_eq!(value(&m, "syncline_streams_open"), 0.0);
    assert_eq!(
        value(&m, "syncline_stream_lag_seconds_count"),
        2.0,
        "lag counts the live documents only"
    );
    assert!(value(&m, "syncline_db_pool_acquire_seconds_count") >= 1.0);
    assert_eq!(value(&m, "syncline_listener_connected"), 1.0);
    assert!(value(&m, "syncline_db_pool_connections{state=\"max\"}") >= 1.0);
    assert!(m.contains("syncline_build_info{version=\""), "{m}");
    assert!(
        !m.contains("m1") && !m.contains("bad\""),
        "no document ids in labels"
    );

    // Traces: one server span per RPC with the RPC conventions; the pull continues our trace.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let rpc_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("syncline.v1.ReplicationService/"))
        .collect();
    let pushes = rpc_spans
        .iter()
        .filter(|s| s.name == "syncline.v1.ReplicationService/Push")
        .count();
    assert_eq!(pushes, 3, "one span per Push");
    let pull = rpc_spans
        .iter()
        .find(|s| s.span_context.trace_id().to_string() == trace_id)
        .expect("the traced pull continues the caller's trace");
    assert_eq!(pull.name, "syncline.v1.ReplicationService/Pull");
    assert_eq!(pull.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(pull.span_kind, opentelemetry::trace::SpanKind::Server);
    let attr = |k: &str| {
        pull.attributes
            .iter()
            .find(|a| a.key.as_str() == k)
            .map(|a| a.value.to_string())
            .unwrap_or_default()
    };
    assert_eq!(attr("rpc.system"), "grpc");
    assert_eq!(attr("rpc.service"), "syncline.v1.ReplicationService");
    assert_eq!(attr("rpc.method"), "Pull");
    assert_eq!(attr("rpc.grpc.status_code"), "0");
    let db_child = spans
        .iter()
        .find(|s| {
            s.name == "db.read_changes" && s.span_context.trace_id() == pull.span_context.trace_id()
        })
        .expect("a child span for the database read");
    assert_eq!(db_child.parent_span_id, pull.span_context.span_id());
}

/// The sum of every `grpc_server_handled_total` series: RPCs recorded so far.
fn handled_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Scrapes until `ready` holds (bounded).
async fn scrape_until(addr: std::net::SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let m = scrape(addr).await;
        if ready(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "metrics did not reach the expected state:\n{}",
        scrape(addr).await
    );
}

/// The `grpc_server_*` series in a render (names and labels, without values).
fn grpc_series(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

#[test]
fn made_up_method_names_add_no_series() {
    run(made_up_method_names());
}

async fn made_up_method_names() {
    use syncline::proto::PullRequest;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    let metrics_addr = metrics_addr();
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    let server = TestServer::start_with(cfg).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut call = async |path: String| {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(path).unwrap();
        grpc.unary::<HealthCheckRequest, HealthCheckResponse, _>(
            Request::new(HealthCheckRequest::default()),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such method")
    };
    let services = [
        "grpc.health.v1.Health",
        "syncline.v1.ReplicationService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "made.up.Service",
    ];
    let made_up = |i: usize| {
        format!(
            "/{}/M{:016x}",
            services[i % services.len()],
            rand::random::<u64>()
        )
    };
    let unknown = "grpc_server_handled_total{grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"Unimplemented\"}";

    // The first made-up call creates the one "unknown" series; a real call keeps its name.
    assert_eq!(
        call("/made.up.Service/Warmup".into()).await.code(),
        tonic::Code::Unimplemented
    );
    let mut client = server.client().await;
    let pulled = client
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 1,
            selector: Vec::new(),
        })
        .await;
    assert!(pulled.is_ok());
    let pull_ok = "grpc_server_handled_total{grpc_service=\"syncline.v1.ReplicationService\",grpc_method=\"Pull\",grpc_code=\"OK\"}";
    // A call is recorded when its response body ends, just after the client has its answer.
    let before = scrape_until(metrics_addr, |m| m.contains(unknown) && m.contains(pull_ok)).await;

    let mut names = Vec::new();
    for i in 0..1000 {
        let path = made_up(i);
        let status = call(path.clone()).await;
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
        names.push(path);
    }
    let after = scrape_until(metrics_addr, |m| {
        handled_total(m) >= handled_total(&before) + 1000.0
    })
    .await;

    let (b, a) = (grpc_series(&before), grpc_series(&after));
    let added: Vec<_> = a.difference(&b).collect();
    assert!(
        added.is_empty(),
        "1,000 made-up method names added {} series, e.g. {:?}",
        added.len(),
        added.first()
    );
    assert_eq!(
        value(&after, unknown) - value(&before, unknown),
        1000.0,
        "every call is counted, under \"unknown\""
    );
    assert!(a.contains(pull_ok), "implemented methods keep their labels");
    for name in &names {
        let method = name.rsplit('/').next().unwrap();
        assert!(!after.contains(method), "{method} is a label");
    }
}

/// Reads until the server closes the connection; panics if it stays open for 10 s.
async fn until_closed(mut tcp: tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn refused_and_silent_connections_are_counted() {
    run(connection_metrics());
}

async fn connection_metrics() {
    use syncline::proto::PullRequest;

    let metrics_addr = metrics_addr();
    let refused = "syncline_connections_refused_total";
    let timed_out = "syncline_connections_timed_out_total";
    let count = |m: &str, name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };

    // One connection allowed: hold it with a served client (retried while the harness's own
    // connections are still closing), then 5 more are refused.
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    cfg.connections_max = 1;
    let full = TestServer::start_with(cfg).await;
    let mut held = None;
    for _ in 0..400 {
        let mut c = full.client().await;
        let pulled = c
            .pull(PullRequest {
                collection: "tasks".into(),
                checkpoint: None,
                limit: 1,
                selector: Vec::new(),
            })
            .await;
        if pulled.is_ok() {
            held = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(held.is_some(), "no connection was served");
    let before = scrape(metrics_addr).await;
    for _ in 0..5 {
        until_closed(tokio::net::TcpStream::connect(full.addr).await.unwrap()).await;
    }
    let after = scrape(metrics_addr).await;
    assert_eq!(count(&after, refused) - count(&before, refused), 5.0);
    assert!(count(&after, "syncline_connections_open") >= 1.0, "{after}");

    // Connections that never send a request are closed and counted.
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    cfg.handshake_timeout_ms = 200;
    let quiet = TestServer::start_with(cfg).await;
    let before = scrape(metrics_addr).await;
    for _ in 0..3 {
        until_closed(tokio::net::TcpStream::connect(quiet.addr).await.unwrap()).await;
    }
    let after = scrape(metrics_addr).await;
    // At least: a connection of the harness's own readiness probe may also have been slow to
    // close.
    assert!(count(&after, timed_out) - count(&before, timed_out) >= 3.0);
    drop(held);
}

#[test]
fn per_row_refusals_are_counted_by_reason() {
    run(per_row_refusals())
}

async fn per_row_refusals() {
    let metrics_addr = metrics_addr();
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let not_an_object = |id: &str| syncline::proto::Document {
        id: id.into(),
        json: b"[1]".to_vec(),
        ..Default::default()
    };
    let r = c
        .push(syncline::proto::PushRequest {
            collection: "notes".into(),
            rows: vec![
                insert(doc("ok", json!({}))),
                insert(not_an_object("bad1")),
                insert(not_an_object("bad2")),
            ],
            mode: syncline::proto::PushMode::PerRow as i32,
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.refused.len(), 2);
    let series =
        "syncline_push_rows_refused_total{collection=\"notes\",reason=\"INVALID_DOCUMENT\"}";
    let m = scrape_until(metrics_addr, |m| m.contains(series)).await;
    assert_eq!(value(&m, series), 2.0);
    assert_eq!(
        value(
            &m,
            "syncline_push_rows_rejected_total{collection=\"notes\",reason=\"invalid\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&m, "syncline_documents_pushed_total{collection=\"notes\"}"),
        1.0
    );
    drop(c);
    server.stop().await.unwrap();
    drop_database(&db).await;
}

#[test]
fn resolutions_and_replays_are_counted() {
    run(resolutions_and_replays())
}

async fn resolutions_and_replays() {
    let metrics_addr = metrics_addr();
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    let mut later = cfg.collections[0].clone();
    later.name = "later".into();
    later.conflict = Some("last-write-wins".into());
    cfg.collections.push(later);
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    let push = |id: &str, v: i64, key: &str| syncline::proto::PushRequest {
        collection: "later".into(),
        rows: vec![insert(doc(id, json!({ "v": v })))],
        mode: 0,
        idempotency_key: key.into(),
    };
    c.push(push("a", 1, "")).await.unwrap();
    // A stale create: the later push wins and is written as resolved; then its retry.
    let first = c.push(push("a", 2, "k")).await.unwrap().into_inner();
    assert_eq!(first.resolved.len(), 1);
    let again = c.push(push("a", 2, "k")).await.unwrap().into_inner();
    assert!(again.replayed);
    let resolved = "syncline_push_resolutions_total{collection=\"later\",strategy=\"last-write-wins\",outcome=\"written\"}";
    let replays = "syncline_push_replays_total{collection=\"later\"}";
    let m = scrape_until(metrics_addr, |m| {
        m.contains(resolved) && m.contains(replays)
    })
    .await;
    assert_eq!(value(&m, resolved), 1.0);
    assert_eq!(value(&m, replays), 1.0);
    drop(c);
    server.stop().await.unwrap();
    drop_database(&db).await;
}

/// Drops this test's database only.
async fn drop_database(db: &str) {
    use sqlx::Connection;
    let name = db.rsplit_once('/').unwrap().1;
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[test]
fn stored_blobs_are_gauged_and_gc_rounds_counted() {
    run(stored_blobs())
}

/// Uploads `bytes` to `collection` in 64 KiB chunks; returns the digest.
async fn upload_blob(server: &TestServer, collection: &str, bytes: &[u8]) -> String {
    use sha2::Digest;
    use syncline::proto::attachment_service_client::AttachmentServiceClient;
    use syncline::proto::{UploadRequest, UploadStart, upload_request::Part};
    let digest: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut messages = vec![UploadRequest {
        part: Some(Part::Start(UploadStart {
            collection: collection.into(),
            digest: digest.clone(),
            length: bytes.len() as u64,
            content_type: "application/octet-stream".into(),
        })),
    }];
    messages.extend(bytes.chunks(64 * 1024).map(|c| UploadRequest {
        part: Some(Part::Chunk(c.to_vec())),
    }));
    let mut client = AttachmentServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let done = client
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert!(!done.already_stored);
    digest
}

async fn stored_blobs() {
    let metrics_addr = metrics_addr();
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.metrics_enabled = true;
    cfg.metrics_listen = metrics_addr;
    cfg.purge_interval_seconds = 1;
    let server = TestServer::start_with(cfg).await;
    let (a, b, n) = (vec![1u8; 200_000], vec![2u8; 150_001], vec![3u8; 70_000]);
    let da = upload_blob(&server, "tasks", &a).await;
    let db_ = upload_blob(&server, "tasks", &b).await;
    upload_blob(&server, "notes", &n).await;

    // Refreshed by the uploads themselves: exact at once, per collection and back end.
    let stored =
        |c: &str| format!("syncline_blobs_stored{{collection=\"{c}\",store=\"postgres\"}}");
    let bytes =
        |c: &str| format!("syncline_blob_bytes_stored{{collection=\"{c}\",store=\"postgres\"}}");
    let m = scrape(metrics_addr).await;
    assert_eq!(value(&m, &stored("tasks")), 2.0);
    assert_eq!(value(&m, &bytes("tasks")), (a.len() + b.len()) as f64);
    assert_eq!(value(&m, &stored("notes")), 1.0);
    assert_eq!(value(&m, &bytes("notes")), n.len() as f64);

    // `a` is referenced; `b` is not and is made older than the grace period: the server's GC
    // (every second) deletes it, and the gauges follow.
    let mut c = server.client().await;
    let body = json!({"_attachments": {"a": {"digest": da, "length": a.len(), "type": "x/y"}}});
    push(&mut c, "tasks", vec![insert(doc("has-a", body))]).await;
    let mut conn = server.db().await;
    sqlx::query(
        "UPDATE syncline_blobs SET created_at = now() - interval '2 days', \
         touched_at = now() - interval '2 days' WHERE digest = $1",
    )
    .bind(&db_)
    .execute(&mut conn)
    .await
    .unwrap();
    let gone = format!("{} 1", stored("tasks"));
    let m = scrape_until(metrics_addr, |m| m.lines().any(|l| l == gone)).await;
    assert_eq!(value(&m, &bytes("tasks")), a.len() as f64);
    assert_eq!(value(&m, &stored("notes")), 1.0);
    assert_eq!(
        value(&m, "syncline_attachment_gc_deleted_total{kind=\"blob\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "syncline_attachment_gc_bytes_total"),
        b.len() as f64
    );
    assert!(value(&m, "syncline_attachment_gc_runs_total{outcome=\"done\"}") >= 1.0);
    // The totals the gauges read agree with the blobs themselves.
    let (blobs, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(length), 0)::bigint FROM syncline_blobs \
         WHERE collection = 'tasks'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((blobs, total), (1, a.len() as i64));
    drop(conn);
    drop(c);
    server.stop().await.unwrap();
    drop_database(&db).await;
}
