//! One tower layer for every RPC: an OpenTelemetry-convention span (continuing the caller's W3C
//! `traceparent`) and the go-grpc-prometheus-shaped metrics. The status code is taken from the
//! response headers (trailers-only errors) or the trailers at the end of the body, so streams
//! are measured over their whole life.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::TraceContextExt;
use prost::Message as _;
use tower::{Layer, Service};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{GRPC_HANDLED, GRPC_HANDLING_SECONDS};

/// Descriptor sets of every service this server implements. Only their methods become metric
/// labels; any other path is "unknown", so made-up paths cannot grow the number of series.
const IMPLEMENTED: &[&[u8]] = &[
    crate::proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The label for every path that is not an implemented method.
const UNKNOWN: &str = "unknown";

/// `/package.Service/Method` -> (`package.Service`, `Method`) for every implemented method,
/// read once from the generated descriptors (so a new RPC is labelled without a code change).
fn implemented_methods() -> &'static HashMap<String, (String, String)> {
    static METHODS: OnceLock<HashMap<String, (String, String)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut methods = HashMap::new();
        for encoded in IMPLEMENTED {
            // Compiled into the binary: a decode failure is a build bug, and only costs labels.
            let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for method in &service.method {
                        methods.insert(
                            format!("/{service_name}/{}", method.name()),
                            (service_name.clone(), method.name().to_owned()),
                        );
                    }
                }
            }
        }
        methods
    })
}

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

/// The (service, method) labels of a request path: an implemented method, else "unknown".
fn labels(path: &str) -> (&'static str, &'static str) {
    match implemented_methods().get(path) {
        Some((service, method)) => (service.as_str(), method.as_str()),
        None => (UNKNOWN, UNKNOWN),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
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
            rpc.method = method,
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
    method: &'static str,
    code: Option<tonic::Code>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        metrics::counter!(GRPC_HANDLED, "grpc_service" => self.service, "grpc_method" => self.method, "grpc_code" => code_label(code))
            .increment(1);
        metrics::histogram!(GRPC_HANDLING_SECONDS, "grpc_service" => self.service, "grpc_method" => self.method)
            .record(self.start.elapsed().as_secs_f64());
        self.span.record("rpc.grpc.status_code", code as i32);
    }
}

/// The `grpc_code` label: the name go-grpc-prometheus uses (Go's `codes.Code` names, e.g.
/// `InvalidArgument`, `Canceled`), so existing gRPC dashboards and alerts work unchanged.
/// Exhaustive over `tonic::Code`, so the label set is fixed at 17 values.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
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
                    observer.code = Some(tonic::Code::Unknown);
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
    fn only_implemented_methods_are_labels() {
        for (path, service, method) in [
            (
                "/syncline.v1.ReplicationService/Pull",
                "syncline.v1.ReplicationService",
                "Pull",
            ),
            (
                "/syncline.v1.ReplicationService/Subscribe",
                "syncline.v1.ReplicationService",
                "Subscribe",
            ),
            (
                "/grpc.health.v1.Health/Check",
                "grpc.health.v1.Health",
                "Check",
            ),
            (
                "/grpc.health.v1.Health/Watch",
                "grpc.health.v1.Health",
                "Watch",
            ),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo",
            ),
        ] {
            assert_eq!(labels(path), (service, method), "{path}");
        }
        for path in [
            "/made.up.Service/X",
            "/syncline.v1.ReplicationService/",
            "/syncline.v1.ReplicationService/Pul",
            "/grpc.health.v1.Health/Random123",
            "/grpc.health.v1.Health/Check/extra",
            "grpc.health.v1.Health/Check",
            "",
        ] {
            assert_eq!(labels(path), (UNKNOWN, UNKNOWN), "{path}");
        }
    }

    #[test]
    fn status_labels_are_code_names() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        let code = grpc_status(&headers).unwrap();
        assert_eq!(code_label(code), "InvalidArgument");
        headers.insert("grpc-status", http::HeaderValue::from_static("999"));
        assert_eq!(code_label(grpc_status(&headers).unwrap()), "Unknown");
        assert_eq!(code_label(tonic::Code::Cancelled), "Canceled");
    }
}
