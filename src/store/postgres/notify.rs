//! The change notifications of the PostgreSQL store: their channel, their payload format and
//! the LISTEN side that reads them.
//!
//! A payload is `<xid>:<collection>` (written in SQL as
//! `pg_current_xact_id()::text || ':' || collection` by the push statement in `write.rs` and by
//! the SQL-write trigger in `migrations/0004_sql_writes.sql`): the id of the transaction that committed writes to the
//! collection. Any database role can NOTIFY this channel, so a payload is an untrusted hint:
//! it may wake readers, never make them wait for a transaction that cannot exist. A
//! notification is delivered only after its transaction committed, so a genuine one always
//! names a transaction below the `xmax` of any snapshot taken after it arrived; a payload at
//! or beyond that bound (a forged one, or one remembered from before a failover to a cluster
//! whose counter is behind) is dropped.

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};

/// NOTIFY channel that carries `<xid>:<collection>` after every committed write: every push,
/// and every SQL write (the triggers of `migrations/0004_sql_writes.sql`).
pub const NOTIFY_CHANNEL: &str = "syncline_changes";

/// `application_name` of the LISTEN connection.
pub const LISTENER_APPLICATION_NAME: &str = "syncline-listener";

/// Notifications handled per database round trip at most; the rest wait for the next batch.
const BATCH_MAX: usize = 1024;

/// One decoded notification: transaction `tx` committed writes to `collection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The committing transaction's id.
    pub tx: i64,
    /// The collection written.
    pub collection: String,
}

/// Why a payload was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not `<xid>:<collection>`.
    Malformed,
    /// Names a transaction that has not started yet: forged, or from another cluster.
    Impossible,
}

/// Parses a payload. Collections are 1-64 bytes (the configuration's rule); anything else is
/// malformed.
pub fn decode(payload: &str) -> Option<Change> {
    let (tx, collection) = payload.split_once(':')?;
    let tx = tx.parse::<i64>().ok().filter(|tx| *tx > 0)?;
    if collection.is_empty() || collection.len() > 64 {
        return None;
    }
    Some(Change {
        tx,
        collection: collection.to_owned(),
    })
}

const XMAX_SQL: &str = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint";

/// The LISTEN connection: batches of checked notifications.
pub struct ChangeListener {
    listener: PgListener,
    /// Every transaction below this had started when it was read; refreshed only when a
    /// payload names one at or beyond it, so a steady stream costs one query per batch.
    known_xmax: i64,
}

impl ChangeListener {
    /// Connects and listens.
    pub async fn connect(url: &str) -> Result<ChangeListener, sqlx::Error> {
        // Named, so that operators (and the fault tests) can find it in pg_stat_activity.
        let options = url
            .parse::<PgConnectOptions>()?
            .application_name(LISTENER_APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let known_xmax = sqlx::query_scalar(XMAX_SQL)
            .fetch_one(&mut listener)
            .await?;
        Ok(ChangeListener {
            listener,
            known_xmax,
        })
    }

    /// The cluster's transaction counter when connected (or last checked): no genuine
    /// notification heard later names a transaction at or above a value taken after it.
    pub fn known_xmax(&self) -> i64 {
        self.known_xmax
    }

    /// Waits for notifications; returns the usable ones and calls `dropped` for the others.
    /// `Ok(None)` when the connection ended.
    pub async fn next_batch(
        &mut self,
        mut dropped: impl FnMut(Dropped, &str),
    ) -> Result<Option<Vec<Change>>, sqlx::Error> {
        let Some(first) = self.listener.try_recv().await? else {
            return Ok(None);
        };
        let mut raw: Vec<PgNotification> = vec![first];
        while raw.len() < BATCH_MAX {
            match self.listener.next_buffered() {
                Some(n) => raw.push(n),
                None => break,
            }
        }
        let mut changes = Vec::with_capacity(raw.len());
        for n in &raw {
            match decode(n.payload()) {
                Some(change) => changes.push(change),
                None => dropped(Dropped::Malformed, n.payload()),
            }
        }
        if changes.iter().any(|c| c.tx >= self.known_xmax) {
            self.known_xmax = sqlx::query_scalar(XMAX_SQL)
                .fetch_one(&mut self.listener)
                .await?;
        }
        let known_xmax = self.known_xmax;
        changes.retain(|c| {
            let possible = c.tx < known_xmax;
            if !possible {
                dropped(Dropped::Impossible, &format!("{}:{}", c.tx, c.collection));
            }
            possible
        });
        Ok(Some(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_writers_send_and_nothing_else() {
        assert_eq!(
            decode("747:tasks"),
            Some(Change {
                tx: 747,
                collection: "tasks".into()
            })
        );
        // A collection name may itself hold a colon only after the first one.
        assert_eq!(decode("9:a:b").map(|c| c.collection), Some("a:b".into()));
        for bad in [
            "",
            "tasks",
            ":tasks",
            "x:tasks",
            "-5:tasks",
            "0:tasks",
            "7:",
            "99999999999999999999:tasks",
            &format!("7:{}", "c".repeat(65)),
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
