//! One tower layer for every RPC: an OpenTelemetry-convention span (continuing the caller's W3C
//! `traceparent`) and the go-grpc-prometheus-shaped metrics. The status code is taken from the
//! response headers (trailers-only errors) or the trailers at the end of the body, so streams
//! are measured over their whole life.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::TraceContextExt;
use tower::{Layer, Service};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{GRPC_HANDLED, GRPC_HANDLING_SECONDS};

/// gRPC services whose names may appear as metric labels; anything else is "unknown", so a
/// client cannot grow label cardinality with made-up paths.
const KNOWN_SERVICES: &[&str] = &[
    "syncline.v1.ReplicationService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

/// gRPC's CANCELLED: a response dropped before its status was sent.
const CANCELLED: i32 = 1;

/// How much earlier than the deadline this layer answers DEADLINE_EXCEEDED: before tonic's own
/// timer (which answers CANCELLED) and before the caller's (started earlier, one trip away).
fn deadline_margin(deadline: std::time::Duration) -> std::time::Duration {
    (deadline / 20).min(std::time::Duration::from_millis(50)) + std::time::Duration::from_millis(2)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner }
    }
}

/// The service the layer wraps around the router.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

fn labels(path: &str) -> (&'static str, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    match KNOWN_SERVICES.iter().find(|s| **s == service) {
        Some(known) if !method.is_empty() && method.len() <= 64 && !method.contains('/') => {
            (known, method.to_owned())
        }
        _ => ("unknown", "unknown".to_owned()),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = bytes::Bytes> + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
        });
        let caller_trace = parent.span().span_context().trace_id();
        let _ = span.set_parent(parent);
        // The OpenTelemetry span's trace when traces are on, else the caller's, so that JSON
        // logs carry a trace id either way.
        let mut trace_id = span.context().span().span_context().trace_id();
        if trace_id == opentelemetry::trace::TraceId::INVALID {
            trace_id = caller_trace;
        }
        if trace_id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        let start = Instant::now();
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let future = tracing::Instrument::instrument(future, span.clone());
            // tonic's own deadline (outside this layer) answers CANCELLED; Go and Java clients
            // expect DEADLINE_EXCEEDED, and the call must still be counted. Fire just before it.
            let response = match deadline {
                None => future.await?.map(tonic::body::Body::new),
                Some(d) => {
                    match tokio::time::timeout(d.saturating_sub(deadline_margin(d)), future).await {
                        Ok(response) => response?.map(tonic::body::Body::new),
                        Err(_) => tonic::Status::deadline_exceeded("the call's deadline expired")
                            .into_http::<tonic::body::Body>(),
                    }
                }
            };
            let code = grpc_status(response.headers());
            let observer = Observer {
                span,
                start,
                service,
                method,
                code,
            };
            Ok(response.map(|inner| {
                tonic::body::Body::new(ObservedBody {
                    inner,
                    observer: Some(observer),
                })
            }))
        })
    }
}

/// Records the RPC's outcome once, when its status is known or its response is dropped.
struct Observer {
    span: Span,
    start: Instant,
    service: &'static str,
    method: String,
    code: Option<i32>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(CANCELLED);
        let name = code_name(code);
        metrics::counter!(GRPC_HANDLED, "grpc_service" => self.service, "grpc_method" => self.method.clone(), "grpc_code" => name)
            .increment(1);
        metrics::histogram!(GRPC_HANDLING_SECONDS, "grpc_service" => self.service, "grpc_method" => self.method.clone())
            .record(self.start.elapsed().as_secs_f64());
        self.span.record("rpc.grpc.status_code", code);
    }
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the final status when its trailers pass (or it is dropped).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        observer: Option<Observer>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut observer) = this.observer.take()
                {
                    observer.code = grpc_status(trailers).or(observer.code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut observer) = this.observer.take() {
                    observer.code = Some(2);
                }
            }
            Poll::Ready(None) => {
                // Trailers-only responses carry the status in the headers, kept in `code`.
                this.observer.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "5x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            labels("/syncline.v1.ReplicationService/Pull"),
            ("syncline.v1.ReplicationService", "Pull".into())
        );
        assert_eq!(labels("/made.up.Service/X"), ("unknown", "unknown".into()));
        assert_eq!(
            labels("/syncline.v1.ReplicationService/"),
            ("unknown", "unknown".into())
        );
    }
}
