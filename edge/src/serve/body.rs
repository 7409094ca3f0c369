//! Response bodies (whole JSON or a stream fed by a blocking job), JSON errors and SSE frames.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use hyper::{Response, StatusCode, header};
use serde::Serialize;
use tokio::sync::mpsc;

use super::cancel::Cancel;

/// The body type of every response.
pub type RespBody = UnsyncBoxBody<Bytes, Infallible>;
/// A response.
pub type Resp = Response<RespBody>;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed_unsync()
}

/// A 200 JSON response.
pub fn json<T: Serialize>(v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(b))
            .expect("static headers"),
        Err(e) => ApiError::internal(format!("cannot serialise the response: {e}")).response(),
    }
}

/// An error answered as `{"error": {"message", "type", "code"}}` (OpenAI's shape).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for humans.
    pub message: String,
    /// Machine-readable kind.
    pub kind: &'static str,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 500: a bug or a backend failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(kind: &'static str, message: impl Into<String>, retry: u64) -> Self {
        ApiError {
            retry_after: Some(retry),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, message)
        }
    }

    /// The JSON object (also sent inside streams).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "code": self.status.as_u16(),
        }})
    }

    /// The response.
    pub fn response(&self) -> Resp {
        let mut b = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(s) = self.retry_after {
            b = b.header(header::RETRY_AFTER, s.to_string());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            b = b.header(header::WWW_AUTHENTICATE, "Bearer");
        }
        b.body(full(self.to_json().to_string()))
            .expect("static headers")
    }
}

/// A body fed through a bounded channel by a blocking job. When the client goes away hyper
/// drops the body, the channel closes, and the job's next send fails: that cancels the job.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The sending half used from inside a blocking job.
pub struct EventSink {
    tx: mpsc::Sender<Bytes>,
    rt: tokio::runtime::Handle,
    cancel: std::sync::Arc<Cancel>,
}

/// Events buffered between the job and the socket: small, so a client that stops reading
/// soon holds the job back instead of letting it run ahead into memory.
const STREAM_BUFFER: usize = 16;

/// An SSE response whose events come from the returned sink (call from the async handler).
pub fn sse_stream(cancel: std::sync::Arc<Cancel>) -> (Resp, EventSink) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(ChannelBody { rx }.boxed_unsync())
        .expect("static headers");
    let sink = EventSink {
        tx,
        rt: tokio::runtime::Handle::current(),
        cancel,
    };
    (resp, sink)
}

impl EventSink {
    /// Send raw bytes; false (and the job cancelled) when the client is gone or stopped
    /// reading until the deadline.
    pub fn send(&self, b: Bytes) -> bool {
        if self.tx.is_closed() {
            self.cancel.cancel();
            return false;
        }
        let deadline = self.cancel.deadline();
        let sent = self
            .rt
            .block_on(async { tokio::time::timeout_at(deadline.into(), self.tx.send(b)).await });
        match sent {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                self.cancel.cancel();
                false
            }
            // The deadline: `Cancel::is_cancelled` now reports it.
            Err(_) => false,
        }
    }

    /// Send `event: NAME` with `data` as JSON.
    pub fn event(&self, name: &str, data: &serde_json::Value) -> bool {
        self.send(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
    }

    /// Send a bare `data:` line (OpenAI's chunk format).
    pub fn data(&self, data: &str) -> bool {
        self.send(Bytes::from(format!("data: {data}\n\n")))
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
