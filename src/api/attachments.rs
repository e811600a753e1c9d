//! gRPC handlers of `syncline.v1.AttachmentService`: decode, call `blobs::Attachments`,
//! encode. The rules are in `blobs::transfer`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::auth;
use super::codec::WireChecked;
use crate::blobs::{Attachments, Blobs, UploadStart};
use crate::proto::attachment_service_server::AttachmentService;
use crate::proto::{
    DownloadRequest, DownloadResponse, MissingRequest, MissingResponse, UploadRequest,
    UploadResponse, upload_request,
};
use crate::protocol::{ProtocolError, Reason, cut_text};

// Chunks are bounded by the decoding limit the server sets on this service; nothing else in
// these messages grows.
impl WireChecked for UploadRequest {}
impl WireChecked for UploadResponse {}
impl WireChecked for DownloadRequest {}
impl WireChecked for DownloadResponse {}
impl WireChecked for MissingRequest {}
impl WireChecked for MissingResponse {}

/// The `syncline.v1.AttachmentService` implementation.
pub struct AttachmentApi<B> {
    attachments: Arc<Attachments<B>>,
}

impl<B> AttachmentApi<B> {
    /// Serves `attachments`.
    pub fn new(attachments: Arc<Attachments<B>>) -> Self {
        AttachmentApi { attachments }
    }
}

/// The Download response stream.
pub type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadResponse, Status>> + Send>>;

/// A failed read of the upload stream, as the protocol reports it.
fn stream_error(status: Status) -> ProtocolError {
    let message = cut_text(status.message(), 200);
    match status.code() {
        Code::ResourceExhausted | Code::OutOfRange => ProtocolError::invalid(
            Reason::LimitExceeded,
            "chunk",
            format!("a message over the size limit (attachments.chunk_bytes_max): {message}"),
        ),
        _ => ProtocolError::invalid(
            Reason::InvalidRequest,
            "chunk",
            format!("the upload stream failed: {message}"),
        ),
    }
}

#[tonic::async_trait]
impl<B: Blobs> AttachmentService for AttachmentApi<B> {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let principal = auth::principal(&request)?;
        let mut messages = request.into_inner();
        let first = messages
            .message()
            .await
            .map_err(|s| Status::from(stream_error(s)))?;
        let Some(upload_request::Part::Start(start)) = first.and_then(|m| m.part) else {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "start",
                "the first message of an upload must be `start`",
            )
            .into());
        };
        let chunks = messages.map(|m| match m {
            Ok(UploadRequest {
                part: Some(upload_request::Part::Chunk(bytes)),
            }) => Ok(bytes::Bytes::from(bytes)),
            Ok(_) => Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "chunk",
                "after `start`, every message of an upload must be a `chunk`",
            )),
            Err(status) => Err(stream_error(status)),
        });
        let done = self
            .attachments
            .upload(
                &principal,
                UploadStart {
                    collection: start.collection,
                    digest: start.digest,
                    length: start.length,
                    content_type: start.content_type,
                },
                chunks,
            )
            .await?;
        Ok(Response::new(UploadResponse {
            digest: done.digest,
            length: done.length,
            already_stored: done.already_stored,
        }))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let (start, bytes) = self
            .attachments
            .download(&principal, &r.collection, &r.digest, r.offset, r.length)
            .await?;
        let total = start.length;
        let first = DownloadResponse {
            offset: start.offset,
            chunk: Vec::new(),
            total_length: total,
            content_type: start.content_type.clone(),
        };
        // Each chunk carries its offset; the content type rides on the first.
        let stream = bytes
            .scan(
                (start.offset, Some(first)),
                move |(offset, first), chunk| {
                    let item = chunk.map(|chunk| {
                        let mut message = first.take().unwrap_or_else(|| DownloadResponse {
                            offset: *offset,
                            total_length: total,
                            ..Default::default()
                        });
                        *offset += chunk.len() as u64;
                        message.chunk = Vec::from(chunk);
                        message
                    });
                    futures::future::ready(Some(
                        item.map_err(|e| Status::from(ProtocolError::from(e))),
                    ))
                },
            )
            .boxed();
        // An empty range still answers once, with the blob's length and type.
        let stream = if start.offset == start.end {
            let only = DownloadResponse {
                offset: start.offset,
                chunk: Vec::new(),
                total_length: total,
                content_type: start.content_type,
            };
            futures::stream::once(futures::future::ready(Ok(only))).boxed()
        } else {
            stream
        };
        Ok(Response::new(stream))
    }

    async fn missing(
        &self,
        request: Request<MissingRequest>,
    ) -> Result<Response<MissingResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let digests = self
            .attachments
            .missing(&principal, &r.collection, r.digests)
            .await?;
        Ok(Response::new(MissingResponse { digests }))
    }
}
