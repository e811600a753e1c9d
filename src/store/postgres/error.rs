//! Classifies sqlx errors by SQLSTATE: what a client may retry, what the store retries itself,
//! and what is internal (logged, never sent).

use super::super::StoreError;

/// How the push loop should treat a database error.
pub(super) enum Class {
    /// Serialization failure or deadlock: run the transaction again.
    Retry,
    /// Give up with this error.
    Fail(StoreError),
}

/// Maps an error from a statement or connection, counting it.
pub(super) fn classify(err: sqlx::Error) -> Class {
    let class = classify_only(err);
    let kind = match &class {
        Class::Retry => "contention",
        Class::Fail(StoreError::Unavailable(_)) => "unavailable",
        Class::Fail(_) => "internal",
    };
    metrics::counter!(crate::telemetry::metrics::DB_ERRORS, "kind" => kind).increment(1);
    class
}

fn classify_only(err: sqlx::Error) -> Class {
    match &err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Serialization failure, deadlock, or a push planned on a stale state (the guard in
            // the write statement, see write.rs).
            Some("40001") | Some("40P01") | Some("SY001") => Class::Retry,
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
            // and the whole connection-exception class.
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "53300"
                    || code == "53000" =>
            {
                Class::Fail(StoreError::Unavailable(db.message().to_owned()))
            }
            _ => Class::Fail(StoreError::Internal(err.to_string())),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Class::Fail(StoreError::Unavailable(err.to_string())),
        _ => Class::Fail(StoreError::Internal(err.to_string())),
    }
}

/// Maps an error where a retry is not an option.
pub(super) fn to_store_error(err: sqlx::Error) -> StoreError {
    match classify(err) {
        Class::Retry => StoreError::Contention("serialization failure".into()),
        Class::Fail(e) => e,
    }
}
