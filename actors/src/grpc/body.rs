//! Response bodies: one gRPC message then trailers, a trailers-only error,
//! plain bytes for HTTP/1.1, or a stream of messages fed through a bounded
//! channel and ended by trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;

/// What a streaming handler sends to its response body.
#[derive(Debug)]
pub enum StreamItem {
    /// One framed gRPC message.
    Message(Bytes),
    /// The status trailers; nothing follows.
    End(HeaderMap),
}

#[derive(Debug, Default)]
pub struct ResponseBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    stream: Option<tokio::sync::mpsc::Receiver<StreamItem>>,
    /// A gRPC stream: counted in `grpc_server_handled_total` when it ends
    /// (Canceled when the client goes first), its messages in
    /// `etcd_network_client_grpc_sent_bytes_total`.
    call: Option<GrpcCall>,
}

/// A gRPC call being served, for its metrics: counted as handled when
/// finished, or as Canceled when dropped first (the client went away).
#[derive(Debug)]
pub struct GrpcCall {
    /// grpc_type, grpc_service, grpc_method.
    pub labels: [&'static str; 3],
    pub started: std::time::Instant,
    pub finished: bool,
}

impl GrpcCall {
    pub fn new(labels: [&'static str; 3]) -> GrpcCall {
        GrpcCall {
            labels,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    fn record(&self, code: crate::grpc::status::Code) {
        let m = crate::metrics::metrics();
        let [kind, service, method] = self.labels;
        m.grpc_handled
            .with_label_values(&[kind, service, method, code.name()])
            .inc();
        m.observe_handling(&self.labels, self.started);
    }

    /// Counts the call as handled with `code`.
    pub fn finish(mut self, code: crate::grpc::status::Code) {
        self.record(code);
        self.finished = true;
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        if !self.finished {
            self.record(crate::grpc::status::Code::Cancelled);
        }
    }
}

/// The gRPC status code in trailers (Unknown when there is none).
fn code_of(trailers: &HeaderMap) -> crate::grpc::status::Code {
    trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
        .map_or(
            crate::grpc::status::Code::Unknown,
            crate::grpc::status::Code::from_u8,
        )
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::default()
    }

    pub fn bytes(data: Bytes) -> ResponseBody {
        ResponseBody {
            data: Some(data),
            ..ResponseBody::default()
        }
    }

    pub fn with_trailers(data: Bytes, trailers: HeaderMap) -> ResponseBody {
        ResponseBody {
            data: Some(data),
            trailers: Some(trailers),
            ..ResponseBody::default()
        }
    }

    /// Messages as the handler sends them; if the handler goes away
    /// without ending the stream, `lost` ends it.
    pub fn stream(rx: tokio::sync::mpsc::Receiver<StreamItem>, lost: HeaderMap) -> ResponseBody {
        ResponseBody {
            trailers: Some(lost),
            stream: Some(rx),
            ..ResponseBody::default()
        }
    }

    /// As [`stream`](Self::stream), for a gRPC call whose end and sent
    /// bytes are counted.
    pub fn grpc_stream(
        rx: tokio::sync::mpsc::Receiver<StreamItem>,
        lost: HeaderMap,
        call: GrpcCall,
    ) -> ResponseBody {
        ResponseBody {
            call: Some(call),
            ..ResponseBody::stream(rx, lost)
        }
    }

    fn end(&mut self, trailers: &HeaderMap) {
        if let Some(call) = self.call.take() {
            call.finish(code_of(trailers));
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(rx) = self.stream.as_mut() {
            match rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(StreamItem::Message(m))) => {
                    if self.call.is_some() {
                        crate::metrics::metrics()
                            .client_grpc_sent_bytes
                            .inc_by(m.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(m))));
                }
                Poll::Ready(Some(StreamItem::End(t))) => {
                    self.stream = None;
                    self.trailers = None;
                    self.end(&t);
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Poll::Ready(None) => self.stream = None,
            }
        }
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            self.end(&t);
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none() && self.stream.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // Exact when no trailers follow, so HTTP/1.1 sends Content-Length.
        match (&self.data, &self.trailers, &self.stream) {
            (Some(d), None, None) => http_body::SizeHint::with_exact(d.len() as u64),
            (None, None, None) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// A gRPC request body: a client's HTTP/2 stream, or the framed messages
/// the JSON gateway made from a client's JSON.
pub enum RequestBody {
    Http2(hyper::body::Incoming),
    Gateway(tokio::sync::mpsc::Receiver<Bytes>),
}

/// Why a request body could not be read.
#[derive(Debug)]
pub struct RequestBodyError(String);

impl std::fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RequestBodyError {}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| RequestBodyError(e.to_string())))),
            RequestBody::Gateway(rx) => rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b)))),
        }
    }
}
