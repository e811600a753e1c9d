//! The protobuf codec of the replication service: prost's, with a small starting buffer per
//! response stream and an exact reservation per message, and a decoder that checks a Push's
//! wire bytes against the limits before decoding and never answers decoder text.
//!
//! tonic's default allocates 8 KiB per RPC for encoding and keeps it for the RPC's life: on an
//! idle Subscribe stream that buffer outweighs everything else the stream holds. Reserving each
//! message's exact encoded length instead keeps a 400 KiB Pull page to one allocation.
//!
//! The generated code builds the codec with `Default`, so the server's limits reach the decoder
//! through a task-local set by [`WireLimited`] around each call of the service.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::push_scan::{self, MALFORMED, ScanError, WireLimits};
use super::status::status;
use crate::proto;
use crate::protocol::Reason;

/// Starting size of the encoding buffer (tonic's default is 8 KiB).
const ENCODE_BUFFER_BYTES: usize = 256;
/// tonic's default: how much it encodes before yielding to send.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

tokio::task_local! {
    /// The limits of the server whose call is being polled.
    static WIRE_LIMITS: WireLimits;
}

/// Codec for the generated client and server (`codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireChecked + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = CheckingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckingDecoder { _type: PhantomData }
    }
}

/// Encodes with prost after reserving the message's exact length.
#[derive(Debug, Clone)]
pub struct ReservingEncoder<T> {
    _type: PhantomData<T>,
}

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| {
            tracing::error!(error = %e, "encoding a response");
            super::status::internal()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}

/// A message the decoder may check on the wire before decoding it.
pub trait WireChecked {
    /// Refuses bytes over the limits before anything is built; most messages hold nothing
    /// that grows per element and pass.
    fn check_wire(_bytes: &[u8], _limits: &WireLimits) -> Result<(), ScanError> {
        Ok(())
    }
}

impl WireChecked for proto::PushRequest {
    fn check_wire(bytes: &[u8], limits: &WireLimits) -> Result<(), ScanError> {
        push_scan::scan_push(bytes, limits)
    }
}
impl WireChecked for proto::PullRequest {}
impl WireChecked for proto::SubscribeRequest {}
// Responses, for the generated client.
impl WireChecked for proto::PushResponse {}
impl WireChecked for proto::PullResponse {}
impl WireChecked for proto::SubscribeResponse {}
// Reconcile and Fetch hold only packed numbers and short strings, bounded by the message size;
// their counts are checked right after decoding (see protocol::reconcile).
impl WireChecked for proto::ReconcileRequest {}
impl WireChecked for proto::ReconcileResponse {}
impl WireChecked for proto::ReconcileListRequest {}
impl WireChecked for proto::ReconcileListResponse {}
impl WireChecked for proto::FetchRequest {}
impl WireChecked for proto::FetchResponse {}
impl WireChecked for proto::ListOverwrittenRequest {}
impl WireChecked for proto::ListOverwrittenResponse {}

/// Decodes with prost after the wire check; a decoding failure is INVALID_ARGUMENT with a
/// generic message (prost's text names internals and is no use to a client).
#[derive(Debug, Clone)]
pub struct CheckingDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default + WireChecked> Decoder for CheckingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let limits = WIRE_LIMITS.try_with(|l| *l).ok();
        // tonic hands over one contiguous buffer; copy only if that ever changes.
        if buf.chunk().len() == buf.remaining() {
            let n = buf.remaining();
            let item = decode_checked(buf.chunk(), limits.as_ref());
            buf.advance(n);
            item.map(Some)
        } else {
            let bytes = buf.copy_to_bytes(buf.remaining());
            decode_checked(&bytes, limits.as_ref()).map(Some)
        }
    }
}

/// The wire check (when limits are known: on the server), then prost.
pub fn decode_checked<U: Message + Default + WireChecked>(
    bytes: &[u8],
    limits: Option<&WireLimits>,
) -> Result<U, Status> {
    if let Some(limits) = limits {
        U::check_wire(bytes, limits).map_err(|e| match e {
            ScanError::Malformed => malformed(),
            ScanError::Limit { field, message } => status(
                Code::InvalidArgument,
                Reason::LimitExceeded,
                Some(&field),
                message,
            ),
        })?;
    }
    U::decode(bytes).map_err(|e| {
        tracing::debug!(error = %e, "undecodable request");
        malformed()
    })
}

/// The one refusal of an undecodable request.
fn malformed() -> Status {
    status(
        Code::InvalidArgument,
        Reason::InvalidRequest,
        None,
        MALFORMED,
    )
}

/// Wraps the replication service so that its decoder sees the server's limits.
#[derive(Debug, Clone)]
pub struct WireLimited<S> {
    inner: S,
    limits: WireLimits,
}

impl<S> WireLimited<S> {
    /// Serves `inner`, decoding its requests under `limits`.
    pub fn new(inner: S, limits: WireLimits) -> Self {
        WireLimited { inner, limits }
    }
}

impl<S, R> tower::Service<R> for WireLimited<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<WireLimits, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The body is decoded while this future is polled, so inside the scope.
        WIRE_LIMITS.scope(self.limits, self.inner.call(request))
    }
}

impl<S: NamedService> NamedService for WireLimited<S> {
    const NAME: &'static str = S::NAME;
}

/// One message of a Subscribe stream as [`FrameCodec`] encodes it.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A change batch: its documents already encoded, once for every stream that sends them
    /// (see [`encode_documents`]), and this stream's own checkpoint.
    Changes {
        /// `ChangeBatch.documents` on the wire: each document as field 1, in order.
        documents: Bytes,
        /// The checkpoint after them.
        checkpoint: proto::Checkpoint,
    },
    /// Any other message, encoded by prost.
    Message(proto::SubscribeResponse),
}

/// `SubscribeResponse.changes`.
const CHANGES_FIELD: u32 = 1;
/// `ChangeBatch.checkpoint`.
const CHECKPOINT_FIELD: u32 = 2;

/// The documents of a change batch as they appear inside `ChangeBatch` on the wire.
pub fn encode_documents(documents: impl IntoIterator<Item = proto::Document>) -> Bytes {
    let batch = proto::ChangeBatch {
        documents: documents.into_iter().collect(),
        checkpoint: None,
    };
    Bytes::from(batch.encode_to_vec())
}

impl Frame {
    /// The length of the `ChangeBatch` of a [`Frame::Changes`].
    fn batch_len(documents: &Bytes, checkpoint: &proto::Checkpoint) -> usize {
        documents.len() + prost::encoding::message::encoded_len(CHECKPOINT_FIELD, checkpoint)
    }

    /// The encoded length of the whole `SubscribeResponse`.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Changes {
                documents,
                checkpoint,
            } => {
                let batch = Frame::batch_len(documents, checkpoint);
                prost::encoding::key_len(CHANGES_FIELD)
                    + prost::encoding::encoded_len_varint(batch as u64)
                    + batch
            }
            Frame::Message(message) => message.encoded_len(),
        }
    }

    /// Writes the `SubscribeResponse`, byte for byte what prost writes for the same message:
    /// prost writes fields in field-number order, so the documents (field 1) come before the
    /// checkpoint (field 2).
    pub fn encode(&self, buf: &mut impl bytes::BufMut) -> Result<(), prost::EncodeError> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        match self {
            Frame::Changes {
                documents,
                checkpoint,
            } => {
                encode_key(CHANGES_FIELD, WireType::LengthDelimited, buf);
                encode_varint(Frame::batch_len(documents, checkpoint) as u64, buf);
                buf.put_slice(documents);
                prost::encoding::message::encode(CHECKPOINT_FIELD, checkpoint, buf);
                Ok(())
            }
            Frame::Message(message) => message.encode(buf),
        }
    }
}

/// The Subscribe codec of the server: [`Frame`]s out, checked `SubscribeRequest`s in.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec;

impl Codec for FrameCodec {
    type Encode = Frame;
    type Decode = proto::SubscribeRequest;
    type Encoder = FrameEncoder;
    type Decoder = CheckingDecoder<proto::SubscribeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckingDecoder { _type: PhantomData }
    }
}

/// Copies a frame's shared bytes after reserving its exact length.
#[derive(Debug, Clone)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| {
            tracing::error!(error = %e, "encoding a stream message");
            super::status::internal()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ChangeRow, PushRequest};

    /// Counts the bytes allocated by the current thread while it is switched on.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static ON: Cell<bool> = const { Cell::new(false) };
            static BYTES: Cell<usize> = const { Cell::new(0) };
        }

        pub struct Counting;

        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = ON.try_with(|on| {
                    if on.get() {
                        let _ = BYTES.try_with(|b| b.set(b.get() + layout.size()));
                    }
                });
                // SAFETY: forwarded unchanged to the system allocator.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System.alloc` with this layout.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static ALLOCATOR: Counting = Counting;

        /// Bytes allocated by this thread while running `f`.
        pub fn allocated<R>(f: impl FnOnce() -> R) -> (R, usize) {
            BYTES.with(|b| b.set(0));
            ON.with(|on| on.set(true));
            let r = f();
            ON.with(|on| on.set(false));
            (r, BYTES.with(Cell::get))
        }
    }

    fn limits() -> WireLimits {
        WireLimits {
            push_rows_max: 1000,
            push_bytes_max: 64 << 20,
            document_bytes_max: 1 << 20,
            id_bytes_max: 512,
            owner_bytes_max: 256,
        }
    }

    #[test]
    fn a_million_empty_rows_are_refused_before_any_row_is_built() {
        let bytes = PushRequest {
            collection: "tasks".into(),
            rows: vec![ChangeRow::default(); 1_000_000],
            mode: 0,
            idempotency_key: String::new(),
        }
        .encode_to_vec();
        assert!(bytes.len() < 2_100_000, "2 bytes per row");
        let (result, allocated) =
            counting::allocated(|| decode_checked::<PushRequest>(&bytes, Some(&limits())));
        let status = result.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "rows: 1000000 rows exceed the limit of 1000 per push"
        );
        // The error message, nothing per row (decoding would build 1,000,000 rows of 100+
        // bytes each).
        assert!(allocated < 4096, "{allocated} bytes allocated");
    }

    #[test]
    fn frames_are_byte_for_byte_what_prost_writes() {
        let documents: Vec<proto::Document> = (0..3)
            .map(|i| proto::Document {
                id: format!("d{i}"),
                json: format!("{{\"n\":{i}}}").into_bytes(),
                deleted: i == 1,
                revision: format!("{i}-abc"),
                updated_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + i,
                    nanos: 5,
                }),
                owner: if i == 2 {
                    String::new()
                } else {
                    "alice".into()
                },
                left_scope: i == 1,
            })
            .collect();
        // Both token kinds: an empty token still sends an (empty) checkpoint message.
        for token in ["", "tok-123"] {
            let expected = proto::SubscribeResponse {
                event: Some(proto::subscribe_response::Event::Changes(
                    proto::ChangeBatch {
                        documents: documents.clone(),
                        checkpoint: Some(proto::Checkpoint {
                            token: token.into(),
                        }),
                    },
                )),
            }
            .encode_to_vec();
            let frame = Frame::Changes {
                documents: encode_documents(documents.clone()),
                checkpoint: proto::Checkpoint {
                    token: token.into(),
                },
            };
            let mut bytes = Vec::new();
            frame.encode(&mut bytes).expect("encodes");
            assert_eq!(bytes, expected, "token {token:?}");
            assert_eq!(frame.encoded_len(), expected.len());
        }
        let heartbeat = proto::SubscribeResponse {
            event: Some(proto::subscribe_response::Event::Heartbeat(
                proto::Heartbeat {},
            )),
        };
        let mut bytes = Vec::new();
        Frame::Message(heartbeat.clone())
            .encode(&mut bytes)
            .expect("encodes");
        assert_eq!(bytes, heartbeat.encode_to_vec());
    }

    #[test]
    fn decoding_failures_are_invalid_argument_without_decoder_text() {
        let invalid_utf8 = [0x0a, 0x02, 0xc3, 0x28]; // collection: invalid UTF-8
        for bad in [&invalid_utf8[..], &[0x0a, 0x05, b'a'][..], &[0x08][..]] {
            for limits in [None, Some(&limits())] {
                let status = decode_checked::<PushRequest>(bad, limits).expect_err("refused");
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                assert_eq!(status.message(), MALFORMED);
            }
            let status = decode_checked::<proto::PullRequest>(bad, None).expect_err("refused");
            assert_eq!(status.message(), MALFORMED);
            use tonic_types::StatusExt;
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, "INVALID_REQUEST");
            assert!(status.get_details_bad_request().is_some());
        }
    }
}
