//! The one place calls are authenticated: a tonic interceptor that verifies the bearer token
//! and leaves the [`Principal`] in the request extensions for the handlers.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::auth::Authenticator;
use crate::protocol::{Principal, ProtocolError};

/// Authenticates every call of the service it wraps.
#[derive(Clone)]
pub struct AuthInterceptor {
    authenticator: Authenticator,
}

impl AuthInterceptor {
    /// Wraps an authenticator.
    pub fn new(authenticator: Authenticator) -> Self {
        AuthInterceptor { authenticator }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let principal = self.authenticator.authenticate(header)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal the interceptor attached.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ProtocolError::internal("request reached a handler unauthenticated").into())
}
