//! The load generator's side of gRPC: connections, and Pull / Push / Subscribe helpers on the
//! generated client, anonymous or as a JWT principal; and the document bodies every scenario
//! writes (~300 bytes of JSON).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{
    ChangeRow, Checkpoint, Document, PullRequest, PushRequest, SubscribeRequest, SubscribeResponse,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

pub type Client = ReplicationServiceClient<Channel>;

/// The server accepts at most 200 concurrent streams per HTTP/2 connection; stay well below.
pub const STREAMS_PER_CONNECTION: usize = 100;

/// One HTTP/2 connection, or the error.
pub async fn try_channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URL")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
}

/// One HTTP/2 connection to a running server.
pub async fn channel(addr: SocketAddr) -> Channel {
    try_channel(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to syncline at {addr}: {e}"))
}

/// Enough connections for `streams` concurrent streams.
pub async fn channels_for(addr: SocketAddr, streams: usize) -> Vec<Channel> {
    let n = streams.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(channel(addr).await);
    }
    out
}

/// A client on a connection.
pub fn client(channel: Channel) -> Client {
    ReplicationServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
}

/// A client on a new connection.
pub async fn connect(addr: SocketAddr) -> Client {
    client(channel(addr).await)
}

/// The `authorization` metadata of one JWT principal, sent with each call made as it (per
/// request, so that anonymous calls on the same client type pay nothing for it).
#[derive(Debug, Clone)]
pub struct Bearer(AsciiMetadataValue);

impl Bearer {
    /// An HS256 token for `sub` without scopes (an owner, not a service principal), valid for
    /// a day: longer than any run.
    pub fn hs256(secret: &str, sub: &str) -> Bearer {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "exp": now + 86_400}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign a token");
        Bearer(format!("Bearer {token}").parse().expect("a JWT is ASCII"))
    }
}

/// `message` as a request of `bearer`'s principal, or an anonymous one.
pub fn request<T>(message: T, bearer: Option<&Bearer>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(Bearer(value)) = bearer {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

/// One Pull as `bearer`'s principal (anonymous for `None`): the documents and the checkpoint
/// after them.
pub async fn pull_page_as(
    client: &mut Client,
    bearer: Option<&Bearer>,
    collection: &str,
    token: &str,
    limit: u32,
) -> Result<(Vec<Document>, String), tonic::Status> {
    let message = PullRequest {
        collection: collection.into(),
        checkpoint: Some(Checkpoint {
            token: token.into(),
        }),
        limit,
        selector: Vec::new(),
    };
    let r = client.pull(request(message, bearer)).await?.into_inner();
    Ok((
        r.documents,
        r.checkpoint.map(|c| c.token).unwrap_or_default(),
    ))
}

/// Pulls from `token` until a page comes back empty, handing every page and the checkpoint
/// after it to `on_page`; returns the documents seen and the last checkpoint.
pub async fn pull_all(
    client: &mut Client,
    collection: &str,
    token: &str,
    limit: u32,
    on_page: impl FnMut(Vec<Document>, &str),
) -> (usize, String) {
    pull_all_as(client, None, collection, token, limit, on_page).await
}

/// `pull_all` as `bearer`'s principal.
pub async fn pull_all_as(
    client: &mut Client,
    bearer: Option<&Bearer>,
    collection: &str,
    token: &str,
    limit: u32,
    mut on_page: impl FnMut(Vec<Document>, &str),
) -> (usize, String) {
    let mut token = token.to_owned();
    let mut count = 0;
    loop {
        let (docs, next) = pull_page_as(client, bearer, collection, &token, limit)
            .await
            .unwrap_or_else(|s| panic!("pull {collection}: {s}"));
        if docs.is_empty() {
            return (count, token);
        }
        count += docs.len();
        token = next;
        on_page(docs, &token);
    }
}

/// One Push; returns the whole response.
pub async fn push_response(
    client: &mut Client,
    collection: &str,
    rows: Vec<ChangeRow>,
) -> syncline::proto::PushResponse {
    push_response_as(client, None, collection, rows).await
}

async fn push_response_as(
    client: &mut Client,
    bearer: Option<&Bearer>,
    collection: &str,
    rows: Vec<ChangeRow>,
) -> syncline::proto::PushResponse {
    let message = PushRequest {
        collection: collection.into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    };
    client
        .push(request(message, bearer))
        .await
        .unwrap_or_else(|s| panic!("push to {collection}: {s}"))
        .into_inner()
}

/// One Push; returns the conflicts.
pub async fn push(client: &mut Client, collection: &str, rows: Vec<ChangeRow>) -> Vec<Document> {
    push_as(client, None, collection, rows).await
}

/// `push` as `bearer`'s principal.
pub async fn push_as(
    client: &mut Client,
    bearer: Option<&Bearer>,
    collection: &str,
    rows: Vec<ChangeRow>,
) -> Vec<Document> {
    push_response_as(client, bearer, collection, rows)
        .await
        .conflicts
}

/// Opens a Subscribe stream from `token`.
pub async fn subscribe(
    client: &mut Client,
    collection: &str,
    token: &str,
) -> Result<tonic::Streaming<SubscribeResponse>, tonic::Status> {
    Ok(client
        .subscribe(SubscribeRequest {
            collection: collection.into(),
            checkpoint: Some(Checkpoint {
                token: token.into(),
            }),
            selector: Vec::new(),
        })
        .await?
        .into_inner())
}

/// The document id the scenarios use for number `i` under `prefix`.
pub fn doc_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:08}")
}

/// A ~300-byte JSON body, shaped like the one `load.rs` writes in SQL.
pub fn body(id: &str, i: usize, version: u32) -> Vec<u8> {
    let notes: String = std::iter::repeat_n("0123456789abcdef0123456789abcdef", 6).collect();
    format!(
        r#"{{"id": "{id}", "done": {}, "tags": ["alpha", "beta", "gamma"], "notes": "{notes}", "title": "Document {i}", "version": {version}, "priority": {}}}"#,
        i.is_multiple_of(2),
        i % 5
    )
    .into_bytes()
}

/// A row that believes the document is new.
pub fn insert_row(id: String, json: Vec<u8>) -> ChangeRow {
    ChangeRow {
        new_document_state: Some(Document {
            id,
            json,
            ..Default::default()
        }),
        assumed_master_state: None,
    }
}

/// A row that believes the server holds `assumed_revision`.
/// A row that believes the server holds `base` at `assumed_revision`: the base a merging
/// strategy merges against.
pub fn update_row_with_base(
    id: String,
    json: Vec<u8>,
    assumed_revision: String,
    base: Vec<u8>,
) -> ChangeRow {
    let mut row = update_row(id, json, assumed_revision);
    if let Some(a) = row.assumed_master_state.as_mut() {
        a.json = base;
    }
    row
}

pub fn update_row(id: String, json: Vec<u8>, assumed_revision: String) -> ChangeRow {
    ChangeRow {
        new_document_state: Some(Document {
            id: id.clone(),
            json,
            ..Default::default()
        }),
        assumed_master_state: Some(Document {
            id,
            revision: assumed_revision,
            ..Default::default()
        }),
    }
}
