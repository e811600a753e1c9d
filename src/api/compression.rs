//! Message compression: which encodings the replication service speaks, and small replies
//! sent plain.
//!
//! tonic negotiates per call (`grpc-encoding` for requests, `grpc-accept-encoding` for
//! replies) and compresses every reply message once an encoding is agreed. Below
//! `compression_min_bytes` that costs CPU and saves nothing, so a unary handler builds its
//! reply with [`reply`], which turns compression off for a small message
//! (`Response::disable_compression`). tonic still announces the encoding in the reply's
//! headers then; [`CompressionPolicy`] removes the header again, so a plain reply says it is
//! plain.
//!
//! Subscribe is the exception: tonic 0.14 compresses every message of a server stream once an
//! encoding is agreed and offers no per-message switch (its override is read for unary
//! replies only), so stream messages are compressed whatever their size.

use std::task::{Context, Poll};

use tonic::Response;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;

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

/// Wraps the replication service: makes `compression_min_bytes` known to its handlers and
/// drops the `grpc-encoding` header from replies they sent plain.
#[derive(Debug, Clone)]
pub struct CompressionPolicy<S> {
    inner: S,
    min_bytes: usize,
}

impl<S> CompressionPolicy<S> {
    /// Serves `inner`, whose unary replies under `min_bytes` go uncompressed.
    pub fn new(inner: S, min_bytes: usize) -> Self {
        CompressionPolicy { inner, min_bytes }
    }
}

impl<S, R, B> tower::Service<R> for CompressionPolicy<S>
where
    S: tower::Service<R, Response = http::Response<B>>,
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

    fn call(&mut self, request: R) -> Self::Future {
        // The handler runs while this future is polled, so inside the scope.
        let call = MIN_BYTES.scope(self.min_bytes, self.inner.call(request));
        Box::pin(async move {
            let mut response = call.await?;
            if response.extensions().get::<PlainReply>().is_some() {
                response.headers_mut().remove("grpc-encoding");
            }
            Ok(response)
        })
    }
}

impl<S: NamedService> NamedService for CompressionPolicy<S> {
    const NAME: &'static str = S::NAME;
}
