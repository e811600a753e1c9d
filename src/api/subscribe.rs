//! Subscribe served through [`FrameCodec`]: with many streams following a collection, the
//! documents of a change batch are encoded once for every stream of the same view and only
//! each stream's checkpoint is encoded per stream (see `protocol::fanout::shared`).
//!
//! The generated service fixes Subscribe's message type to `SubscribeResponse`, which cannot
//! carry bytes already encoded; so this layer answers Subscribe's path itself, the way the
//! generated code does (same decoder, limits and accepted compressions), and passes every
//! other call on. The bytes on the wire are the same.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::codec::{Frame, FrameCodec};
use super::{FrameStream, ReplicationApi};
use crate::proto::SubscribeRequest;
use crate::store::Store;

/// Subscribe's path.
const PATH: &str = "/syncline.v1.ReplicationService/Subscribe";

/// Wraps the generated replication service (`inner`) and serves Subscribe itself.
pub struct SubscribeFrames<I, S> {
    inner: I,
    api: Arc<ReplicationApi<S>>,
    accepted: Arc<[CompressionEncoding]>,
    decoding_max: usize,
    encoding_max: usize,
}

impl<I: Clone, S> Clone for SubscribeFrames<I, S> {
    fn clone(&self) -> Self {
        SubscribeFrames {
            inner: self.inner.clone(),
            api: self.api.clone(),
            accepted: self.accepted.clone(),
            decoding_max: self.decoding_max,
            encoding_max: self.encoding_max,
        }
    }
}

impl<I, S> SubscribeFrames<I, S> {
    /// Serves Subscribe from `api`, with the message limits and the request compressions
    /// accepted configured on `inner`, and everything else from `inner`.
    pub fn new(
        inner: I,
        api: Arc<ReplicationApi<S>>,
        accepted: Vec<CompressionEncoding>,
        decoding_max: usize,
        encoding_max: usize,
    ) -> Self {
        SubscribeFrames {
            inner,
            api,
            accepted: accepted.into(),
            decoding_max,
            encoding_max,
        }
    }
}

/// Subscribe's handler, as tonic's server-streaming machinery calls it.
struct Handler<S>(Arc<ReplicationApi<S>>);

impl<S: Store> ServerStreamingService<SubscribeRequest> for Handler<S> {
    type Response = Frame;
    type ResponseStream = FrameStream;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<FrameStream>, Status>> + Send>,
    >;

    fn call(&mut self, request: Request<SubscribeRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.subscribe_frames(request).await })
    }
}

impl<I, S, B> tower::Service<http::Request<B>> for SubscribeFrames<I, S>
where
    I: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    I::Future: Send + 'static,
    S: Store,
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PATH {
            return Box::pin(self.inner.call(request));
        }
        let handler = Handler(self.api.clone());
        let mut grpc = Grpc::new(FrameCodec)
            .max_decoding_message_size(self.decoding_max)
            .max_encoding_message_size(self.encoding_max);
        for &encoding in self.accepted.iter() {
            grpc = grpc.accept_compressed(encoding);
        }
        // Replies are never compressed here: `CompressionPolicy` (outside) hides the client's
        // accepted encodings from tonic and compresses the stream's large messages itself.
        Box::pin(async move { Ok(grpc.server_streaming(handler, request).await) })
    }
}

impl<I: NamedService, S> NamedService for SubscribeFrames<I, S> {
    const NAME: &'static str = I::NAME;
}
