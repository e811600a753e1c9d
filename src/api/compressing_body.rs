//! A response body that compresses the gRPC messages of a stream one by one, those of at least
//! `min_bytes` only (the compressed flag of the gRPC framing is per message).
//!
//! tonic compresses every message of a server stream once an encoding is agreed, a heartbeat
//! of two bytes included, and builds a new compressor for each: with many streams that is CPU
//! spent for nothing. So for streams the server lets tonic send plain messages and this body
//! compresses the large ones.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use tonic::Status;

use crate::config::Compression;

/// gRPC's message prefix: the compressed flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

pin_project_lite::pin_project! {
    /// Re-frames `inner`'s plain messages, compressing each of at least `min_bytes`.
    pub struct CompressingBody<B> {
        #[pin]
        inner: B,
        encoding: Compression,
        min_bytes: usize,
        // Bytes of a message not yet complete.
        pending: BytesMut,
        // Trailers held back until the messages before them are out.
        trailers: Option<Frame<Bytes>>,
    }
}

impl<B> CompressingBody<B> {
    /// Compresses `inner`'s messages of at least `min_bytes` with `encoding`.
    pub fn new(inner: B, encoding: Compression, min_bytes: usize) -> Self {
        CompressingBody {
            inner,
            encoding,
            min_bytes,
            pending: BytesMut::new(),
            trailers: None,
        }
    }
}

impl<B> Body for CompressingBody<B>
where
    B: Body<Data = Bytes, Error = Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut this = self.project();
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let out = reframe(this.pending, *this.encoding, *this.min_bytes)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => {
                        // tonic ends a stream only after whole messages; anything left is
                        // sent as it came.
                        if this.pending.is_empty() {
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        *this.trailers = Some(trailers);
                        let rest = this.pending.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                },
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None if this.pending.is_empty() => return Poll::Ready(None),
                None => {
                    let rest = this.pending.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none() && self.pending.is_empty() && self.inner.is_end_stream()
    }
}

/// Takes the complete messages off `pending` and frames them again, the large ones compressed.
fn reframe(
    pending: &mut BytesMut,
    encoding: Compression,
    min_bytes: usize,
) -> Result<Bytes, Status> {
    let mut out = BytesMut::new();
    while pending.len() >= PREFIX {
        let compressed = pending[0] != 0;
        let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
        if pending.len() < PREFIX + len {
            break;
        }
        let message = pending.split_to(PREFIX + len);
        if compressed || len < min_bytes {
            out.extend_from_slice(&message);
            continue;
        }
        let packed = compress(&message[PREFIX..], encoding)
            .map_err(|e| Status::internal(format!("compressing a reply: {e}")))?;
        let packed_len = u32::try_from(packed.len())
            .map_err(|_| Status::internal("a compressed reply over 4 GiB"))?;
        out.reserve(PREFIX + packed.len());
        out.put_u8(1);
        out.put_u32(packed_len);
        out.extend_from_slice(&packed);
    }
    Ok(out.freeze())
}

/// One message compressed, at the levels tonic uses (gzip 6, zstd's default).
fn compress(message: &[u8], encoding: Compression) -> std::io::Result<Vec<u8>> {
    match encoding {
        Compression::Gzip => {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(message.len() / 2),
                flate2::Compression::new(6),
            );
            encoder.write_all(message)?;
            encoder.finish()
        }
        Compression::Zstd => zstd::bulk::compress(message, zstd::DEFAULT_COMPRESSION_LEVEL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Splits framed bytes into (flag, payload) messages.
    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            out.push((bytes[0], bytes[PREFIX..PREFIX + len].to_vec()));
            bytes = &bytes[PREFIX + len..];
        }
        out
    }

    fn unpack(flag: u8, payload: &[u8], encoding: Compression) -> Vec<u8> {
        if flag == 0 {
            return payload.to_vec();
        }
        let mut out = Vec::new();
        match encoding {
            Compression::Gzip => {
                flate2::read::GzDecoder::new(payload)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(payload)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn large_messages_are_compressed_small_ones_kept_across_any_split() {
        let small = b"hb".to_vec();
        let large = b"a document body ".repeat(200);
        let mut wire = Vec::new();
        for payload in [&small, &large, &small, &large] {
            wire.extend(frame(0, payload));
        }
        for encoding in [Compression::Gzip, Compression::Zstd] {
            // Every way of cutting the stream in two, and byte by byte.
            for cut in (0..wire.len()).step_by(97).chain([1, 5, 6, wire.len() - 1]) {
                let mut pending = BytesMut::new();
                let mut out = Vec::new();
                for part in [&wire[..cut], &wire[cut..]] {
                    pending.extend_from_slice(part);
                    out.extend_from_slice(&reframe(&mut pending, encoding, 1024).unwrap());
                }
                assert!(pending.is_empty());
                let got = messages(&out);
                let flags: Vec<u8> = got.iter().map(|(f, _)| *f).collect();
                assert_eq!(flags, [0, 1, 0, 1], "cut at {cut}");
                assert!(got[1].1.len() < large.len() / 4, "compressed");
                let bodies: Vec<Vec<u8>> =
                    got.iter().map(|(f, p)| unpack(*f, p, encoding)).collect();
                assert_eq!(
                    bodies,
                    [small.clone(), large.clone(), small.clone(), large.clone()]
                );
            }
            let mut pending = BytesMut::new();
            let mut out = Vec::new();
            for byte in &wire {
                pending.put_u8(*byte);
                out.extend_from_slice(&reframe(&mut pending, encoding, 1024).unwrap());
            }
            assert_eq!(messages(&out).len(), 4);
        }
    }
}
