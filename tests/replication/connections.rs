//! Connection limits, before any token is checked: connections beyond `connections_max` are
//! closed while open ones keep working, a connection that never sends a request is closed after
//! `handshake_timeout_ms`, `Health/Watch` streams are capped, and one connection gets at most
//! `streams_per_connection_max` concurrent streams.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common::*;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::subscribe_response::Event;
use syncline::proto::{PullRequest, SubscribeRequest};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn channel(addr: SocketAddr) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()
}

async fn pull_ok(client: &mut ReplicationServiceClient<Channel>) -> Result<(), tonic::Status> {
    client
        .pull(PullRequest {
            collection: "tasks".into(),
            checkpoint: None,
            limit: 1,
            selector: Vec::new(),
        })
        .await
        .map(|_| ())
}

/// A client whose connection has been served a call; retried (bounded) while the server still
/// holds the slots of connections closed a moment ago.
async fn served_client(addr: SocketAddr) -> ReplicationServiceClient<Channel> {
    for _ in 0..400 {
        if let Some(channel) = channel(addr).await {
            let mut client = ReplicationServiceClient::new(channel);
            if pull_ok(&mut client).await.is_ok() {
                return client;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no connection was served");
}

/// Reads until the server closes the connection (EOF or reset); panics if it stays open
/// for `wait`. Returns the bytes the server sent first (its HTTP/2 SETTINGS, if any).
async fn read_until_closed(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open ({} bytes received)",
                received.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_while_open_ones_keep_working() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.connections_max = 2;
    let server = TestServer::start_with(cfg).await;

    let mut a = served_client(server.addr).await;
    let mut b = served_client(server.addr).await;
    // Streams work on the admitted connections too.
    let mut stream = a
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .expect("a stream on an admitted connection")
        .into_inner();

    for round in 0..5 {
        // A raw connection is closed at once, before it sends anything...
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let first = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
        assert!(
            first.is_empty(),
            "round {round}: the refused connection got no HTTP/2 settings"
        );
        // ...and a gRPC client gets no answer on a new connection.
        if let Some(channel) = channel(server.addr).await {
            let status = pull_ok(&mut ReplicationServiceClient::new(channel))
                .await
                .expect_err("a connection beyond connections_max is not served");
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
                "a transport failure, not an answer: {status:?}"
            );
        }
        // The admitted connections keep working.
        pull_ok(&mut a).await.expect("connection a still served");
        pull_ok(&mut b).await.expect("connection b still served");
    }
    push(
        &mut b,
        "tasks",
        vec![insert(doc("c1", serde_json::json!({})))],
    )
    .await;
    let delivered = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream on an admitted connection is served")
            .expect("stream ok")
            .expect("stream open");
        if let Some(Event::Changes(batch)) = msg.event {
            break batch.documents;
        }
    };
    assert_eq!(delivered[0].id, "c1");

    // A closed connection frees its slot.
    drop(stream);
    drop(a);
    let mut c = served_client(server.addr).await;
    pull_ok(&mut c).await.unwrap();
    pull_ok(&mut b).await.unwrap();
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_the_handshake_timeout() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.handshake_timeout_ms = 300;
    cfg.heartbeat_seconds = 1;
    let server = TestServer::start_with(cfg).await;

    // Silent connections, and one that sends the HTTP/2 preface and settings but no request,
    // are all closed (bounded wait: far longer than the timeout).
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut preface_only = TcpStream::connect(server.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    preface_only
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    for tcp in &mut silent {
        read_until_closed(tcp, Duration::from_secs(15)).await;
    }
    read_until_closed(&mut preface_only, Duration::from_secs(15)).await;

    // A connection that made a request is not closed by the timeout: its stream outlives it
    // (two heartbeats, a second apart) and it still serves calls afterwards.
    let mut client = served_client(server.addr).await;
    let mut stream = client
        .subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut heartbeats = 0;
    while heartbeats < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message in time")
            .expect("the stream outlives the handshake timeout")
            .expect("stream open");
        if matches!(msg.event, Some(Event::Heartbeat(_))) {
            heartbeats += 1;
        }
    }
    pull_ok(&mut client).await.unwrap();
}

#[tokio::test]
async fn health_watches_beyond_the_limit_are_resource_exhausted() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.health_watches_max = 3;
    let server = TestServer::start_with(cfg).await;
    let mut health = HealthClient::new(channel(server.addr).await.unwrap());
    let watch = |mut h: HealthClient<Channel>| async move {
        h.watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
    };

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut w = watch(health.clone())
            .await
            .expect("a watch within the limit")
            .into_inner();
        // Served: the first message is the current status.
        tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("a status in time")
            .expect("watch ok")
            .expect("watch open");
        open.push(w);
    }
    for _ in 0..20 {
        let status = watch(health.clone())
            .await
            .expect_err("a watch beyond health_watches_max is refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("health_watches_max"),
            "{status:?}"
        );
    }
    // Check is not a stream and is not limited; nor are other connections' calls.
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Check is unaffected");
    // Ending a watch frees its slot (the server hears the reset shortly after).
    open.pop();
    let mut freed = false;
    for _ in 0..200 {
        if watch(health.clone()).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(freed, "an ended watch frees its slot");
}

/// The SETTINGS the server sends first on a new connection, as (identifier, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header))
        .await
        .expect("settings in time")
        .expect("a frame header");
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut payload))
        .await
        .expect("settings in time")
        .expect("a settings payload");
    payload
        .chunks_exact(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn streams_beyond_the_per_connection_limit_are_not_served_concurrently() {
    const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.streams_per_connection_max = 2;
    let server = TestServer::start_with(cfg).await;

    let settings = server_settings(server.addr).await;
    assert!(
        settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 2)),
        "the server announces its stream limit: {settings:?}"
    );

    let mut client = served_client(server.addr).await;
    let subscribe = |mut c: ReplicationServiceClient<Channel>| async move {
        c.subscribe(SubscribeRequest {
            collection: "tasks".into(),
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
    };
    let first = subscribe(client.clone()).await.unwrap().into_inner();
    let second = subscribe(client.clone()).await.unwrap().into_inner();
    // A third call on the same connection waits for a free stream; it is not served while the
    // two streams are open.
    let mut third = tokio::spawn(subscribe(client.clone()));
    let mut pull = tokio::spawn(async move { pull_ok(&mut client).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third stream was served while two were open"
    );
    assert!(!pull.is_finished(), "a call was served beyond the limit");
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the waiting call is served once a stream ends")
        .unwrap();
    assert!(third.is_ok(), "{third:?}");
    drop(second);
    tokio::time::timeout(Duration::from_secs(10), &mut pull)
        .await
        .expect("the waiting pull is served")
        .unwrap()
        .expect("pull ok");
}

#[tokio::test]
async fn a_flood_of_malformed_requests_gets_a_goaway() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.http2_error_resets_max = 10;
    let server = TestServer::start_with(cfg).await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // 50 requests with only `:method: POST` (HPACK static index 3): no :scheme, no :path, so
    // each is malformed and the server resets it.
    let mut flood = Vec::new();
    for i in 0..50u32 {
        let stream_id = 2 * i + 1;
        flood.extend_from_slice(&[0, 0, 1, HEADERS, 0x5]);
        flood.extend_from_slice(&stream_id.to_be_bytes());
        flood.push(0x83);
    }
    let _ = tcp.write_all(&flood).await; // the server may hang up before reading it all

    let mut resets = 0;
    let goaway = loop {
        let mut header = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut header))
            .await
            .expect("the server answers the flood in time");
        if read.is_err() {
            break None; // closed without a GOAWAY
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            break None;
        }
        match header[3] {
            RST_STREAM => resets += 1,
            GOAWAY if payload.len() >= 8 => {
                break Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
            _ => {}
        }
    };
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "a GOAWAY after {resets} resets"
    );
    assert!(resets <= 10, "{resets} streams reset before the GOAWAY");
}
