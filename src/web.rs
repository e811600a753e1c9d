//! gRPC-Web for browsers: tonic-web translates the protocol, tower-http answers CORS with the
//! configured origins. Native gRPC is unaffected.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Builds the CORS layer for the allowed origins; errors name a bad origin.
pub fn cors_layer(origins: &[String]) -> Result<CorsLayer, String> {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| format!("cors_allowed_origins: {o:?} is not a valid origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let header = HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("authorization"),
            header("traceparent"),
            // A browser client that decompresses says so, and may compress what it sends.
            header("grpc-accept-encoding"),
            header("grpc-encoding"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("grpc-encoding"),
            header("grpc-accept-encoding"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60)))
}
