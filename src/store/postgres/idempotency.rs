//! Idempotency keys of pushes (migrations/0010_conflicts.sql): claimed first in the push's
//! transaction, answered with the remembered response when already there.

use super::write::marked;
use crate::store::Idempotency;

// Claims the key, or replaces a leftover row that has expired (the purge may not have got to
// it yet). A row of a concurrent transaction makes this wait on the primary key until that
// transaction ends: committed, the row is found here; rolled back, the key is claimed here.
// ON CONFLICT DO UPDATE locks an existing row even when its WHERE is false, so the row found
// cannot be replaced or purged before this transaction reads it. The marker is that of every
// push statement (write.rs), so that a push that stores only its key commits as durably as one
// that writes documents. Returns a row only when the key was claimed.
const CLAIM_KEY_SQL: &str = concat!(
    "
INSERT INTO syncline_push_keys AS k (principal, key, request_hash, created_at, expires_at)
SELECT $1, $2, $3, now(), now() + $4::float8 * interval '1 second'
WHERE ",
    marked!("$5"),
    "
ON CONFLICT (principal, key) DO UPDATE
SET request_hash = excluded.request_hash, response = NULL,
    created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE k.expires_at <= now()
RETURNING true"
);

// The remembered request and response of a key this transaction found (and holds locked).
const REMEMBERED_SQL: &str =
    "SELECT request_hash, response FROM syncline_push_keys WHERE principal = $1 AND key = $2";

// The response of the push that claimed the key, in its own transaction before it commits.
const RESPOND_SQL: &str =
    "UPDATE syncline_push_keys SET response = $3 WHERE principal = $1 AND key = $2";

// A keyed push that writes no document stores its key and response alone (a push that
// writes stores them in its write statement: write.rs WRITE_SQL). Returns a row only when the
// key was stored (absent, or expired and replaced); a concurrent push's key is waited for.
const STORE_KEY_SQL: &str = concat!(
    "
INSERT INTO syncline_push_keys AS k
    (principal, key, request_hash, response, created_at, expires_at)
SELECT $1, $2, $3, $4, now(), now() + $5::float8 * interval '1 second'
WHERE ",
    marked!("$6"),
    "
ON CONFLICT (principal, key) DO UPDATE
SET request_hash = excluded.request_hash, response = excluded.response,
    created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE k.expires_at <= now()
RETURNING true"
);

/// Longest retention stored (about 100 years): a longer one would overflow the timestamp.
const RETENTION_MAX_SECONDS: f64 = 100.0 * 365.25 * 86_400.0;

/// What claiming a key found.
pub(super) enum Claim {
    /// The key is this transaction's: decide and write, then [`respond`].
    Claimed,
    /// An earlier push holds the key (not expired): its request hash and response.
    Remembered {
        request_hash: Vec<u8>,
        response: Option<Vec<u8>>,
    },
    /// The row vanished between the claim and the read (cannot happen while it is locked):
    /// try again.
    Vanished,
}

/// Claims `key` in the transaction on `conn` (see CLAIM_KEY_SQL).
pub(super) async fn claim<R>(
    conn: &mut sqlx::PgConnection,
    key: &Idempotency<'_, R>,
    synchronous_commit: &str,
) -> Result<Claim, sqlx::Error> {
    let seconds = retention_seconds(key);
    let claimed: Option<bool> = sqlx::query_scalar(CLAIM_KEY_SQL)
        .bind(key.principal)
        .bind(key.key.as_bytes())
        .bind(&key.request_hash[..])
        .bind(seconds)
        .bind(synchronous_commit)
        .fetch_optional(&mut *conn)
        .await?;
    if claimed.is_some() {
        return Ok(Claim::Claimed);
    }
    let row: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(REMEMBERED_SQL)
        .bind(key.principal)
        .bind(key.key.as_bytes())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some((request_hash, response)) => Claim::Remembered {
            request_hash,
            response,
        },
        None => Claim::Vanished,
    })
}

/// Stores `response` for the key this transaction claimed.
pub(super) async fn respond<R>(
    conn: &mut sqlx::PgConnection,
    key: &Idempotency<'_, R>,
    response: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(RESPOND_SQL)
        .bind(key.principal)
        .bind(key.key.as_bytes())
        .bind(response)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// How long `key` is remembered, in seconds, within what a timestamp can hold.
pub(super) fn retention_seconds<R>(key: &Idempotency<'_, R>) -> f64 {
    key.retention.as_secs_f64().min(RETENTION_MAX_SECONDS)
}

/// Stores `key` with `response` on `conn` (see STORE_KEY_SQL); false when another push holds
/// it.
pub(super) async fn store<R>(
    conn: &mut sqlx::PgConnection,
    key: &Idempotency<'_, R>,
    response: &[u8],
    synchronous_commit: &str,
) -> Result<bool, sqlx::Error> {
    let stored: Option<bool> = sqlx::query_scalar(STORE_KEY_SQL)
        .bind(key.principal)
        .bind(key.key.as_bytes())
        .bind(&key.request_hash[..])
        .bind(response)
        .bind(retention_seconds(key))
        .bind(synchronous_commit)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(stored.is_some())
}
