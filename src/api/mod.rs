//! gRPC: thin handlers that decode, call the protocol, encode and map errors.

pub mod attachments;
pub mod auth;
pub mod codec;
pub mod compressing_body;
pub mod compression;
pub mod convert;
pub mod push_scan;
pub mod status;
pub mod subscribe;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::replication_service_server::ReplicationService;
use crate::proto::{
    BucketDigests, ChangeBatch, FetchRequest, FetchResponse, Heartbeat, IdRevision,
    ListOverwrittenRequest, ListOverwrittenResponse, PullRequest, PullResponse, PushRequest,
    PushResponse, ReconcileListRequest, ReconcileListResponse, ReconcileRequest, ReconcileResponse,
    Resync, SubscribeRequest, SubscribeResponse, subscribe_response,
};
use crate::protocol::fanout::shared::Batch;
use crate::protocol::{IdempotentPush, PushReply, Replicator, StreamEvent, StreamItem};
use crate::store::Store;
use codec::Frame;

/// The `syncline.v1.ReplicationService` implementation.
pub struct ReplicationApi<S> {
    replicator: Arc<Replicator<S>>,
}

impl<S> ReplicationApi<S> {
    /// Serves the given replicator.
    pub fn new(replicator: Arc<Replicator<S>>) -> Self {
        ReplicationApi { replicator }
    }
}

/// The Subscribe response stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// A batch's documents as they appear inside `ChangeBatch` on the wire, encoded by whichever
/// stream sends the batch first and shared by the others.
fn encoded(documents: &Batch) -> Bytes {
    documents.encoded(|documents| {
        codec::encode_documents(documents.iter().cloned().map(convert::document))
    })
}

/// A stream item as the Subscribe codec sends it ([`subscribe::SubscribeFrames`]).
fn frame(item: StreamItem) -> Result<Frame, Status> {
    Ok(match item? {
        StreamEvent::Changes {
            documents,
            checkpoint,
        } => Frame::Changes {
            documents: encoded(&documents),
            checkpoint: proto::Checkpoint { token: checkpoint },
        },
        StreamEvent::Heartbeat => message(subscribe_response::Event::Heartbeat(Heartbeat {})),
        StreamEvent::Resync { reason } => {
            message(subscribe_response::Event::Resync(Resync { reason }))
        }
    })
}

fn message(event: subscribe_response::Event) -> Frame {
    Frame::Message(SubscribeResponse { event: Some(event) })
}

/// A stream item as a typed message, for a server without [`subscribe::SubscribeFrames`]
/// (the bytes were encoded for the other streams of the view anyway).
fn event(item: StreamItem) -> Result<SubscribeResponse, Status> {
    match frame(item)? {
        Frame::Message(message) => Ok(message),
        Frame::Changes {
            documents,
            checkpoint,
        } => {
            let mut batch = <ChangeBatch as prost::Message>::decode(documents).map_err(|e| {
                tracing::error!(error = %e, "a shared change batch does not decode");
                status::internal()
            })?;
            batch.checkpoint = Some(checkpoint);
            Ok(SubscribeResponse {
                event: Some(subscribe_response::Event::Changes(batch)),
            })
        }
    }
}

/// The Subscribe stream as [`subscribe::SubscribeFrames`] sends it.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

impl<S: Store> ReplicationApi<S> {
    /// Opens a Subscribe stream: its items, before they are encoded.
    async fn open(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<ReceiverStream<StreamItem>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let events = self
            .replicator
            .subscribe(
                &principal,
                &r.collection,
                &convert::token(r.checkpoint),
                &r.selector,
            )
            .await?;
        Ok(ReceiverStream::new(events))
    }

    /// Serves Subscribe with change batches encoded once per view.
    pub async fn subscribe_frames(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<FrameStream>, Status> {
        let stream = self.open(request).await?.map(frame);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl<S: Store> ReplicationService for ReplicationApi<S> {
    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let page = self
            .replicator
            .pull(
                &principal,
                &r.collection,
                &convert::token(r.checkpoint),
                r.limit,
                &r.selector,
            )
            .await?;
        Ok(compression::reply(PullResponse {
            documents: page.documents.into_iter().map(convert::document).collect(),
            checkpoint: convert::checkpoint(page.checkpoint),
        }))
    }

    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let principal = auth::principal(&request)?;
        let mut r = request.into_inner();
        let mode = convert::push_mode(r.mode)?;
        // A retry must repeat the request exactly: its digest is remembered with the key.
        let request_hash = (!r.idempotency_key.is_empty()).then(|| {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            hash.update(prost::Message::encode_to_vec(&r));
            <[u8; 32]>::from(hash.finalize())
        });
        let respond = |result: &crate::protocol::PushResult| {
            prost::Message::encode_to_vec(&convert::push_response(result.clone()))
        };
        let idempotency = request_hash.map(|request_hash| IdempotentPush {
            key: &r.idempotency_key,
            request_hash,
            respond: &respond,
        });
        let rows = std::mem::take(&mut r.rows)
            .into_iter()
            .map(convert::row)
            .collect();
        let reply = self
            .replicator
            .push_with(&principal, &r.collection, rows, mode, idempotency)
            .await?;
        let response = match reply {
            PushReply::Fresh(result) => convert::push_response(result),
            PushReply::Replayed(bytes) => {
                let mut response = <PushResponse as prost::Message>::decode(bytes.as_slice())
                    .map_err(|e| {
                        tracing::error!(error = %e, "a remembered push response does not decode");
                        Status::internal("a remembered push response does not decode")
                    })?;
                response.replayed = true;
                response
            }
        };
        Ok(compression::reply(response))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = self.open(request).await?.map(event);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn reconcile(
        &self,
        request: Request<ReconcileRequest>,
    ) -> Result<Response<ReconcileResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let digests = r.digests.unwrap_or_default();
        let round = self
            .replicator
            .reconcile(
                &principal,
                &r.collection,
                r.bucket_bits,
                r.within_bits,
                &r.within,
                (&digests.buckets, &digests.counts, &digests.sums),
                &r.selector,
            )
            .await?;
        let mut differing = BucketDigests::default();
        for (bucket, d) in round.differing {
            differing.buckets.push(bucket);
            // A bucket never holds more documents than a u32 counts in practice; saturate.
            differing
                .counts
                .push(u32::try_from(d.count).unwrap_or(u32::MAX));
            differing.sums.push(d.sum);
        }
        Ok(compression::reply(ReconcileResponse {
            differing: Some(differing),
            checkpoint: convert::checkpoint(round.checkpoint),
        }))
    }

    async fn reconcile_list(
        &self,
        request: Request<ReconcileListRequest>,
    ) -> Result<Response<ReconcileListResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let listed = self
            .replicator
            .reconcile_list(
                &principal,
                &r.collection,
                r.bucket_bits,
                &r.buckets,
                &r.selector,
            )
            .await?;
        Ok(compression::reply(ReconcileListResponse {
            documents: listed
                .into_iter()
                .map(|(id, revision)| IdRevision { id, revision })
                .collect(),
        }))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let fetched = self
            .replicator
            .fetch(&principal, &r.collection, &r.ids, &r.selector)
            .await?;
        Ok(compression::reply(FetchResponse {
            documents: fetched
                .documents
                .into_iter()
                .map(convert::document)
                .collect(),
            answered: u32::try_from(fetched.answered).unwrap_or(u32::MAX),
        }))
    }

    async fn list_overwritten(
        &self,
        request: Request<ListOverwrittenRequest>,
    ) -> Result<Response<ListOverwrittenResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        let versions = self
            .replicator
            .list_overwritten(&principal, &r.collection, &r.id, r.limit)
            .await?;
        Ok(compression::reply(ListOverwrittenResponse {
            versions: versions.into_iter().map(convert::overwritten).collect(),
        }))
    }
}
