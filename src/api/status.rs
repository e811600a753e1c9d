//! The one mapping from protocol errors to gRPC statuses. Internal details are logged here and
//! never sent.

use tonic::{Code, Status};

use crate::protocol::ProtocolError;

/// Converts a protocol error to the status a client sees.
pub fn to_status(err: ProtocolError) -> Status {
    match err {
        ProtocolError::InvalidArgument(m) => Status::invalid_argument(m),
        ProtocolError::NotFound(m) => Status::not_found(m),
        ProtocolError::Unauthenticated(m) => Status::unauthenticated(m),
        ProtocolError::PermissionDenied(m) => Status::permission_denied(m),
        ProtocolError::ResourceExhausted(m) => Status::resource_exhausted(m),
        ProtocolError::Unavailable(m) => Status::unavailable(m),
        ProtocolError::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::new(Code::Internal, "internal error; see the server log")
        }
    }
}

impl From<ProtocolError> for Status {
    fn from(err: ProtocolError) -> Status {
        to_status(err)
    }
}
