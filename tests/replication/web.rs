//! gRPC-Web over HTTP/1.1 with CORS, as a browser sends it.

use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use syncline::proto::PullRequest;

/// Sends one raw HTTP/1.1 request and returns the whole response as text (lossy).
async fn http1(server: &TestServer, request: Vec<u8>) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("response in time")
    .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn grpc_web_pull(origin: &str) -> Vec<u8> {
    let message = PullRequest {
        collection: "tasks".into(),
        checkpoint: None,
        limit: 10,
        selector: Vec::new(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let mut request = format!(
        "POST /syncline.v1.ReplicationService/Pull HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nOrigin: {origin}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

#[tokio::test]
async fn browsers_can_pull_through_grpc_web_from_allowed_origins_only() {
    let db = fresh_database().await;
    let mut cfg = config(&db);
    cfg.grpc_web = true;
    cfg.cors_allowed_origins = vec!["http://app.test".into()];
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(doc("web-1", json!({"from": "native"})))],
    )
    .await;

    let response = http1(&server, grpc_web_pull("http://app.test")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: http://app.test"),
        "{response}"
    );
    assert!(
        response.contains("web-1"),
        "the document comes back: {response}"
    );
    assert!(
        response.contains("grpc-status:0"),
        "trailers frame says OK: {response}"
    );

    let response = http1(&server, grpc_web_pull("http://evil.test")).await;
    assert!(
        !response
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{response}"
    );

    let preflight = "OPTIONS /syncline.v1.ReplicationService/Pull HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Origin: http://app.test\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,authorization\r\nConnection: close\r\n\r\n";
    let response = http1(&server, preflight.as_bytes().to_vec())
        .await
        .to_ascii_lowercase();
    assert!(
        response.contains("access-control-allow-origin: http://app.test"),
        "{response}"
    );
    assert!(response.contains("authorization"), "{response}");
}
