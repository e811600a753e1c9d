//! `grpc.health.v1.Health`: SERVING only while the database answers and every migration is
//! applied, NOT_SERVING while it does not and during shutdown. The overall
//! status ("") and `syncline.v1.ReplicationService` move together; the service name
//! `liveness` stays SERVING while the process runs, for liveness probes that must not restart
//! pods during a database outage.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::postgres::PgStore;

/// The health service name that reports only that the process is alive.
pub const LIVENESS_SERVICE: &str = "liveness";
/// The replication service's fully qualified name.
pub const REPLICATION_SERVICE: &str = "syncline.v1.ReplicationService";

/// Sets the readiness status of the overall server and the replication service.
pub async fn set_ready(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(REPLICATION_SERVICE, status)
        .await;
}

/// Probes the database every `interval` until `stop`, publishing readiness on every change.
pub async fn watch_database(
    store: PgStore,
    reporter: HealthReporter,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        let ok = matches!(
            tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ready()).await,
            Ok(Ok(true))
        );
        store.report_pool_metrics();
        if last != Some(ok) {
            if ok {
                tracing::info!("database reachable: SERVING");
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
            }
            set_ready(&reporter, ok).await;
            last = Some(ok);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
