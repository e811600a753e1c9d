//! What the attachment throughput work relies on (docs/performance.md, "Attachments
//! throughput"): the server lets clients send large HTTP/2 frames, and a download that
//! starts on a stored chunk's boundary (read as the whole column) or inside one (cut with
//! `substring`) returns exactly the bytes asked for.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::attachments::*;
use crate::common::*;

/// The HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// SETTINGS_MAX_FRAME_SIZE (RFC 9113, 6.5.2).
const MAX_FRAME_SIZE: u16 = 0x5;

/// The server's first SETTINGS frame, as (identifier, value) pairs.
fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(PREFACE).expect("send the preface");
    // Bounded: the server's SETTINGS is its first frame; skip at most a few others.
    for _ in 0..8 {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).expect("a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("a frame payload");
        let (kind, ack) = (head[3], head[4] & 0x1 != 0);
        if kind == 0x4 && !ack {
            return payload
                .chunks_exact(6)
                .map(|e| {
                    (
                        u16::from_be_bytes([e[0], e[1]]),
                        u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                    )
                })
                .collect();
        }
    }
    panic!("no SETTINGS frame from the server");
}

fn announced_frame_size(addr: SocketAddr) -> Option<u32> {
    server_settings(addr)
        .into_iter()
        .find(|(id, _)| *id == MAX_FRAME_SIZE)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn the_server_announces_its_http2_max_frame_size() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let announced = tokio::task::spawn_blocking(move || announced_frame_size(addr))
        .await
        .unwrap();
    assert_eq!(announced, Some(256 * 1024), "the default");

    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.http2_max_frame_size = 1024 * 1024;
    let server = TestServer::start_with(cfg).await;
    let addr = server.addr;
    let announced = tokio::task::spawn_blocking(move || announced_frame_size(addr))
        .await
        .unwrap();
    assert_eq!(announced, Some(1024 * 1024), "the configured size");

    for bad in [0u32, 16_383, 16_777_216] {
        let mut cfg = config(&db);
        cfg.http2_max_frame_size = bad;
        let e = cfg.validate().expect_err("out of HTTP/2's range");
        assert!(e.to_string().contains("http2_max_frame_size"), "{bad}: {e}");
    }
}

#[tokio::test]
async fn ranges_from_a_chunk_boundary_or_inside_one_return_exactly_the_bytes_asked_for() {
    let db = fresh_database().await;
    let cfg = backend_config(&db, Backend::Postgres).expect("the PostgreSQL back end");
    let server = TestServer::start_with(cfg).await;
    let mut c = blobs_client(&server).await;
    let bytes = random_bytes(4 * CHUNK + 777);
    let d = digest(&bytes);
    upload(&mut c, None, "tasks", &bytes).await.unwrap();
    let mut rc = server.client().await;
    push(
        &mut rc,
        "tasks",
        vec![insert(doc("t1", with_attachment("scan", &d, bytes.len())))],
    )
    .await;
    let chunk = CHUNK as u64;
    let cases = [
        (chunk, chunk),          // exactly one stored chunk: the column itself
        (chunk, 1_000),          // a chunk's start, shorter than it: cut
        (chunk, chunk + 1),      // one chunk and a byte of the next
        (2 * chunk, 0),          // from a boundary to the end (the short last chunk)
        (4 * chunk, 0),          // the short last chunk alone
        (2 * chunk - 1, 2),      // across a boundary
        (chunk + 5, chunk - 5),  // inside a chunk to its end
        (0, bytes.len() as u64), // everything, by length
    ];
    for (offset, length) in cases {
        let end = if length == 0 {
            bytes.len()
        } else {
            (offset + length) as usize
        };
        let got = download(&mut c, None, "tasks", &d, offset, length)
            .await
            .unwrap();
        assert!(
            got == bytes[offset as usize..end],
            "offset {offset} length {length}: {} bytes, not the {} asked for",
            got.len(),
            end - offset as usize
        );
    }
}
