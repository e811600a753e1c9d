//! The one mapping from errors to gRPC statuses, with `google.rpc` details programs can read:
//! `ErrorInfo` (domain [`DOMAIN`], the stable reason, the field in its metadata) on every
//! error, `BadRequest` on INVALID_ARGUMENT, `RetryInfo` on UNAVAILABLE and RESOURCE_EXHAUSTED.
//! Internal details are logged here and never sent.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::protocol::{Kind, ProtocolError, Reason};

/// `ErrorInfo.domain` of every Syncline error.
pub const DOMAIN: &str = "syncline";
/// What an INTERNAL status says: the text is in the server log.
pub const INTERNAL_MESSAGE: &str = "internal error; see the server log";

/// The delay suggested in `RetryInfo`: long enough not to hammer a struggling database or a
/// full server, short enough that a client recovers quickly.
pub fn retry_delay(reason: Reason) -> Duration {
    match reason {
        Reason::Contention => Duration::from_millis(200),
        Reason::ShuttingDown => Duration::from_millis(500),
        Reason::DatabaseUnavailable => Duration::from_secs(1),
        _ => Duration::from_secs(5),
    }
}

/// A status with Syncline's details: `reason`, and `field` (the request field's path) when
/// there is one. INTERNAL carries only the reason.
pub fn status(
    code: Code,
    reason: Reason,
    field: Option<&str>,
    message: impl Into<String>,
) -> Status {
    let message = message.into();
    let mut metadata = HashMap::new();
    if let Some(field) = field {
        metadata.insert("field".to_owned(), field.to_owned());
    }
    let mut details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata);
    match code {
        Code::InvalidArgument => {
            details.add_bad_request_violation(field.unwrap_or_default(), message.clone());
        }
        Code::Unavailable | Code::ResourceExhausted => {
            details.set_retry_info(Some(retry_delay(reason)));
        }
        _ => {}
    }
    Status::with_error_details(code, message, details)
}

/// Converts a protocol error to the status a client sees.
pub fn to_status(err: ProtocolError) -> Status {
    let code = match err.kind {
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::Unauthenticated => Code::Unauthenticated,
        Kind::PermissionDenied => Code::PermissionDenied,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::Unavailable => Code::Unavailable,
        Kind::Internal => {
            tracing::error!(error = %err.message, "internal error");
            return internal();
        }
    };
    status(code, err.reason, err.field.as_deref(), err.message)
}

/// INTERNAL, with the reason `INTERNAL` and nothing else.
pub fn internal() -> Status {
    status(Code::Internal, Reason::Internal, None, INTERNAL_MESSAGE)
}

impl From<ProtocolError> for Status {
    fn from(err: ProtocolError) -> Status {
        to_status(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_follow_the_code() {
        let s = to_status(ProtocolError::invalid(
            Reason::InvalidDocument,
            "rows[3].new_document_state.json",
            "rows[3] (id \"a\"): new_document_state.json: must be a JSON object",
        ));
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_DOCUMENT", DOMAIN)
        );
        assert_eq!(info.metadata["field"], "rows[3].new_document_state.json");
        let bad = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(
            bad.field_violations[0].field,
            "rows[3].new_document_state.json"
        );
        assert_eq!(bad.field_violations[0].description, s.message());
        assert!(s.get_details_retry_info().is_none());

        let s = to_status(ProtocolError::resource_exhausted("too many streams"));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let retry = s.get_details_retry_info().expect("RetryInfo");
        assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()));

        let s = to_status(ProtocolError::internal("secret database text"));
        assert_eq!(s.message(), INTERNAL_MESSAGE);
        let details = s.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("INTERNAL")
        );
        assert!(details.error_info().is_some_and(|i| i.metadata.is_empty()));
        assert!(details.bad_request().is_none() && details.retry_info().is_none());
    }

    #[test]
    fn reasons_are_upper_snake_case_and_distinct() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for n in names {
            assert!(n.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{n}");
        }
    }
}
