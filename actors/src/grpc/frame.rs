//! gRPC message framing: a 1-byte compressed flag, a 4-byte big-endian
//! length, then the protobuf message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;

use super::status::{Code, Status};

pub const PREFIX_BYTES: usize = 5;
/// Bytes reserved ahead for a message whose bytes have not arrived yet.
pub const RESERVE_AHEAD_MAX: usize = 64 << 10;

/// Encodes one message with its prefix.
pub fn encode<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_BYTES + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// Reads the single message of a unary request body. Refuses messages
/// longer than `max_bytes` as soon as their prefix is seen, with grpc-go's
/// status and message.
pub async fn read_unary<B>(body: B, max_bytes: usize) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    MessageReader::new(body, max_bytes)
        .next()
        .await?
        .ok_or_else(|| {
            Status::new(
                Code::Internal,
                "grpc: request ended before a complete message was received",
            )
        })
}

/// Reads the messages of a streaming request body one at a time.
pub struct MessageReader<B> {
    body: B,
    buf: BytesMut,
    max_bytes: usize,
    want: Option<usize>,
}

impl<B> MessageReader<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B, max_bytes: usize) -> Self {
        MessageReader {
            body,
            buf: BytesMut::new(),
            max_bytes,
            want: None,
        }
    }

    /// The next message, or None when the body ended between messages.
    /// Cancel-safe: bytes read so far stay in the reader.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.want.is_none() && self.buf.len() >= PREFIX_BYTES {
                let buf = &self.buf;
                if buf[0] != 0 {
                    return Err(Status::new(
                        Code::Unimplemented,
                        "grpc: compressed messages are not supported by this server",
                    ));
                }
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if len > self.max_bytes {
                    return Err(Status::new(
                        Code::ResourceExhausted,
                        format!(
                            "grpc: received message larger than max ({len} vs. {})",
                            self.max_bytes
                        ),
                    ));
                }
                // Room for what is claimed, but only up to a bound: memory
                // follows the bytes that arrive, not a prefix's promise.
                let have = self.buf.len();
                self.buf.reserve(
                    (PREFIX_BYTES + len)
                        .saturating_sub(have)
                        .min(RESERVE_AHEAD_MAX),
                );
                self.want = Some(len);
            }
            if let Some(len) = self.want {
                if self.buf.len() >= PREFIX_BYTES + len {
                    crate::metrics::metrics()
                        .client_grpc_received_bytes
                        .inc_by((PREFIX_BYTES + len) as u64);
                    self.buf.advance(PREFIX_BYTES);
                    self.want = None;
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(Status::new(
                        Code::Internal,
                        format!("grpc: error reading request: {e}"),
                    ))
                }
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::new(
                        Code::Internal,
                        "grpc: request ended before a complete message was received",
                    ))
                }
            }
        }
    }
}

/// Decodes a request message with grpc-go's error for malformed input.
pub fn decode<M: prost::Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| {
        Status::new(
            Code::Internal,
            format!("grpc: error unmarshalling request: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn reads_a_message_split_across_frames() {
        let msg = keel_proto::etcdserverpb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![7u8; 1000]),
            ..Default::default()
        };
        let framed = encode(&msg);
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = framed
            .chunks(7)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures_lite::stream::iter(chunks));
        let got = block_on(read_unary(body, 4096)).unwrap();
        let back: keel_proto::etcdserverpb::PutRequest = decode(got).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_and_truncated_and_garbage() {
        let mut big = vec![0u8, 0, 0, 0x10, 0];
        big.extend_from_slice(&[1, 2, 3]);
        let e = block_on(read_unary(Full::new(Bytes::from(big)), 100)).unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert_eq!(
            e.message,
            "grpc: received message larger than max (4096 vs. 100)"
        );
        let e = block_on(read_unary(
            Full::new(Bytes::from_static(&[0, 0, 0, 0, 9, 1])),
            100,
        ))
        .unwrap_err();
        assert_eq!(e.code, Code::Internal);
        let e =
            decode::<keel_proto::etcdserverpb::PutRequest>(Bytes::from_static(&[0x0a, 0xff, 0xff]))
                .unwrap_err();
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.starts_with("grpc: error unmarshalling request"));
    }
}
