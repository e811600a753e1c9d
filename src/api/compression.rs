//! Message compression: which encodings the replication service speaks, and messages under
//! `compression_min_bytes` sent plain.
//!
//! tonic negotiates per call (`grpc-encoding` for requests, `grpc-accept-encoding` for
//! replies) and compresses every reply message once an encoding is agreed. Below
//! `compression_min_bytes` that costs CPU and saves nothing, so:
//! - a unary handler builds its reply with [`reply`], which turns compression off for a small
//!   message (`Response::disable_compression`); tonic still announces the encoding in the
//!   reply's headers then, and [`CompressionPolicy`] removes the header again, so a plain
//!   reply says it is plain;
//! - for Subscribe, tonic offers no per-message switch (its override is read for unary
//!   replies only) and would compress every heartbeat with a new compressor, so
//!   [`CompressionPolicy`] hides the client's `grpc-accept-encoding` from tonic, announces the
//!   encoding itself and compresses the stream's large messages one by one
//!   ([`super::compressing_body`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Response;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;

use super::compressing_body::CompressingBody;
use crate::config::Compression;

tokio::task_local! {
    /// `compression_min_bytes` of the server whose call is being polled.
    static MIN_BYTES: usize;
}

/// Marks a reply sent uncompressed on purpose, for [`CompressionPolicy`].
#[derive(Debug, Clone, Copy)]
struct PlainReply;

/// tonic's name for a configured compression.
pub fn encoding(compression: Compression) -> CompressionEncoding {
    match compression {
        Compression::Gzip => CompressionEncoding::Gzip,
        Compression::Zstd => CompressionEncoding::Zstd,
    }
}

/// The name of an encoding in `grpc-encoding` and `grpc-accept-encoding`.
fn header_name(compression: Compression) -> &'static str {
    match compression {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// A unary reply, left uncompressed when smaller than the server's `compression_min_bytes`.
pub fn reply<T: prost::Message>(message: T) -> Response<T> {
    let small = MIN_BYTES
        .try_with(|min| message.encoded_len() < *min)
        .unwrap_or(false);
    let mut response = Response::new(message);
    if small {
        response.disable_compression();
        response.extensions_mut().insert(PlainReply);
    }
    response
}

/// The server-streaming methods, whose messages [`CompressionPolicy`] compresses itself.
const STREAMING_PATHS: [&str; 1] = ["/syncline.v1.ReplicationService/Subscribe"];

/// Wraps the replication service: makes `compression_min_bytes` known to its handlers, drops
/// the `grpc-encoding` header from unary replies they sent plain, and compresses streams'
/// messages of at least `compression_min_bytes`.
#[derive(Debug, Clone)]
pub struct CompressionPolicy<S> {
    inner: S,
    // Shared: tonic clones the service for every call.
    encodings: Arc<[Compression]>,
    min_bytes: usize,
}

impl<S> CompressionPolicy<S> {
    /// Serves `inner`, whose replies under `min_bytes` go uncompressed; `encodings` are those
    /// the server answers with (the same as configured on `inner`).
    pub fn new(inner: S, encodings: Vec<Compression>, min_bytes: usize) -> Self {
        CompressionPolicy {
            inner,
            encodings: encodings.into(),
            min_bytes,
        }
    }

    /// The encoding of this name, when the server speaks it.
    fn speaks(&self, name: &str) -> Option<Compression> {
        self.encodings
            .iter()
            .copied()
            .find(|e| header_name(*e) == name)
    }

    /// The first encoding of the client's `grpc-accept-encoding` that the server speaks.
    fn negotiate(&self, headers: &http::HeaderMap) -> Option<Compression> {
        let accepted = headers.get(ACCEPT_ENCODING)?.to_str().ok()?;
        accepted
            .split(',')
            .find_map(|name| self.speaks(name.trim()))
    }
}

/// Whether a reply is tonic's INTERNAL for a request message it could not decompress.
fn is_undecompressable(headers: &http::HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v == "13")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"Error%20decompressing"))
}

const ACCEPT_ENCODING: &str = "grpc-accept-encoding";
const ENCODING: &str = "grpc-encoding";

impl<S, B> tower::Service<http::Request<B>> for CompressionPolicy<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let stream_encoding = if STREAMING_PATHS.contains(&request.uri().path()) {
            let agreed = self.negotiate(request.headers());
            // tonic then sends the stream plain; its large messages are compressed below.
            request.headers_mut().remove(ACCEPT_ENCODING);
            agreed
        } else {
            None
        };
        // Only an encoding the server speaks gets this far; the others are UNIMPLEMENTED.
        let request_encoding = request
            .headers()
            .get(ENCODING)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| self.speaks(name));
        let min_bytes = self.min_bytes;
        // The handler runs while this future is polled, so inside the scope.
        let call = MIN_BYTES.scope(min_bytes, self.inner.call(request));
        Box::pin(async move {
            let mut response = call.await?;
            if let Some(compression) = request_encoding
                && is_undecompressable(response.headers())
            {
                // tonic answers INTERNAL for a request it cannot decompress: the client's
                // fault, not the server's.
                let status = tonic::Status::invalid_argument(format!(
                    "message: not valid {} data (grpc-encoding)",
                    header_name(compression)
                ));
                let _ = status.add_header(response.headers_mut());
            }
            if response.extensions().get::<PlainReply>().is_some() {
                response.headers_mut().remove(ENCODING);
            }
            // A stream refused at once answers its status in the headers, with no messages.
            if let Some(agreed) = stream_encoding
                && !response.headers().contains_key("grpc-status")
            {
                response.headers_mut().insert(
                    ENCODING,
                    http::HeaderValue::from_static(header_name(agreed)),
                );
                response = response.map(|body| {
                    tonic::body::Body::new(CompressingBody::new(body, agreed, min_bytes))
                });
            }
            Ok(response)
        })
    }
}

impl<S: NamedService> NamedService for CompressionPolicy<S> {
    const NAME: &'static str = S::NAME;
}
