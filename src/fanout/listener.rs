//! The process's one LISTEN connection. Notifications carry `<tx>:<collection>` only; they
//! wake the hub. When the connection drops, it reconnects with backoff and wakes every
//! subscriber, because notifications sent while it was away are lost.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::store::postgres::NOTIFY_CHANNEL;

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
    let mut listener = PgListener::connect(url).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    *connected = true;
    on_state(true);
    // Anything committed while we were away was not signalled: everyone re-reads.
    hub.wake_all();
    tracing::info!("change listener connected");
    while let Some(n) = listener.try_recv().await? {
        dispatch(hub, n.payload());
    }
    Ok(())
}

fn dispatch(hub: &Hub, payload: &str) {
    match payload.split_once(':') {
        Some((tx, collection)) => match tx.parse::<i64>() {
            Ok(tx) => hub.notify(collection, tx),
            Err(_) => tracing::warn!(payload, "malformed change notification"),
        },
        None => tracing::warn!(payload, "malformed change notification"),
    }
}
