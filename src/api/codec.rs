//! The protobuf codec of the replication service: prost's, with a small starting buffer per
//! response stream and an exact reservation per message.
//!
//! tonic's default allocates 8 KiB per RPC for encoding and keeps it for the RPC's life: on an
//! idle Subscribe stream that buffer outweighs everything else the stream holds. Reserving each
//! message's exact encoded length instead keeps a 400 KiB Pull page to one allocation.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Starting size of the encoding buffer (tonic's default is 8 KiB).
const ENCODE_BUFFER_BYTES: usize = 256;
/// tonic's default: how much it encodes before yielding to send.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

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
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
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
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a response: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}
