//! The process's one LISTEN connection, feeding the hub. Notifications are hints (decoded and
//! checked in [`crate::store::postgres::notify`]); when the connection drops, it reconnects
//! with backoff and wakes every subscriber, because notifications sent while it was away are
//! lost.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::store::postgres::notify::{ChangeListener, Dropped};
use crate::telemetry::metrics::NOTIFICATIONS_DROPPED;

/// Runs until `shutdown` is cancelled. `on_state` is told whether the listener is connected.
pub async fn run(url: String, hub: Hub, shutdown: CancellationToken, on_state: impl Fn(bool)) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut connected = false;
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = session(&url, &hub, &on_state, &mut connected) => outcome,
        };
        if connected {
            on_state(false);
            backoff = Duration::from_millis(100);
        }
        match outcome {
            Ok(()) => tracing::warn!("change listener lost its connection; reconnecting"),
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_ms = backoff.as_millis() as u64,
                "change listener failed"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: connect, listen, wake everyone, dispatch until the connection ends.
async fn session(
    url: &str,
    hub: &Hub,
    on_state: &impl Fn(bool),
    connected: &mut bool,
) -> Result<(), sqlx::Error> {
    let mut listener = ChangeListener::connect(url).await?;
    *connected = true;
    on_state(true);
    // A failover or restore may have put us on a cluster whose counter is behind what we
    // remember; and anything committed while we were away was not signalled: everyone
    // re-reads.
    hub.forget_from(listener.known_xmax());
    hub.wake_all();
    tracing::info!("change listener connected");
    let mut logged = 0u32;
    while let Some(changes) = listener
        .next_batch(|why, payload| dropped(why, payload, &mut logged))
        .await?
    {
        for change in changes {
            hub.notify(&change.collection, change.tx);
        }
    }
    Ok(())
}

/// Counts a dropped notification; logs the first few of each connection (any database role
/// can send them, so the log must not become theirs to fill).
fn dropped(why: Dropped, payload: &str, logged: &mut u32) {
    let reason = match why {
        Dropped::Malformed => "malformed",
        Dropped::Impossible => "impossible",
    };
    metrics::counter!(NOTIFICATIONS_DROPPED, "reason" => reason).increment(1);
    if *logged < 10 {
        *logged += 1;
        let shown: String = payload.chars().take(80).collect();
        tracing::warn!(reason, payload = %shown, "change notification ignored");
    }
}
