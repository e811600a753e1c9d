//! Builds and runs the whole server from a configuration: shared by `main` and the tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::api::ReplicationApi;
use crate::api::auth::AuthInterceptor;
use crate::api::codec::WireLimited;
use crate::api::compression::CompressionPolicy;
use crate::api::push_scan::WireLimits;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::config::TlsConfig;
use crate::proto::replication_service_server::ReplicationServiceServer;
use crate::protocol::fanout::{Hub, listener};
use crate::protocol::{Collections, Limits, Replicator, ReplicatorParts};
use crate::store::StoreError;
use crate::store::postgres::{DatasetState, PgStore, PoolSettings, Restamp};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot be served (missing database URL, bad schema file...).
    #[error("{0}")]
    Config(String),
    /// The database refused the migrations or could not be reached.
    #[error("database: {0}")]
    Database(#[from] StoreError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the store described by the configuration (lazily: nothing connects yet).
pub fn open_store(config: &Config) -> Result<PgStore, ServerError> {
    let url = config.database_url.as_deref().ok_or_else(|| {
        ServerError::Config("no database: set database_url or DATABASE_URL".into())
    })?;
    let settings = PoolSettings {
        size: config.pool_size,
        acquire_timeout: Duration::from_secs(config.acquire_timeout_seconds),
        statement_cache_capacity: config.statement_cache_capacity,
        read_ahead_pages: config.read_ahead_pages,
    };
    Ok(PgStore::connect_lazy(url, &settings)?
        .with_push_synchronous_commit(&config.push_synchronous_commit)?)
}

/// Everything `serve` checks before connecting: collection schemas, auth keys, TLS files.
pub fn check(config: &Config) -> Result<(), ServerError> {
    Collections::from_config(config).map_err(ServerError::Config)?;
    config.attachments.check().map_err(ServerError::Config)?;
    if let Some(auth) = &config.auth {
        Authenticator::from_config(auth).map_err(ServerError::Config)?;
    }
    if let Some(tls) = &config.tls {
        tls_config(tls)?;
    }
    Ok(())
}

/// Applies the database migrations, re-stamps positions that come from another cluster (see
/// [`restamp`]), and returns.
pub async fn migrate(config: &Config) -> Result<(), ServerError> {
    migrate_and_report(config, false).await.map(drop)
}

/// `syncline migrate`: [`migrate`], returning what it did as text; with `check`, only
/// reports whether the positions would be re-stamped, and writes nothing.
pub async fn migrate_and_report(config: &Config, check: bool) -> Result<String, ServerError> {
    let store = open_store(config)?;
    let result = migrate_store(&store, config, check).await;
    store.close().await;
    result
}

async fn migrate_store(
    store: &PgStore,
    config: &Config,
    check: bool,
) -> Result<String, ServerError> {
    if !check {
        store.migrate().await?;
        return Ok(match restamp(store, config).await? {
            Some(r) => format!(
                "migrations applied; re-stamped {} document positions in {} transactions \
                 because {}: the dataset is now generation {}, older checkpoints get \
                 FAILED_PRECONDITION (CHECKPOINT_EXPIRED) and clients reconcile",
                r.rows, r.batches, r.why, r.generation
            ),
            None => "migrations applied; positions are this cluster's".to_owned(),
        });
    }
    Ok(match store.dataset_state().await? {
        DatasetState::Current { generation } => {
            format!("positions are this cluster's (dataset generation {generation}): nothing to do")
        }
        DatasetState::Foreign { why, generation } => format!(
            "positions must be re-stamped because {why}: `syncline migrate` (or the next \
             start) moves the dataset from generation {generation} to {}",
            generation.saturating_add(1)
        ),
        DatasetState::Standby => "a read-only standby: nothing to check here".to_owned(),
        DatasetState::NotMigrated => "migrations are pending: run `syncline migrate`".to_owned(),
    })
}

/// Before serving: when the stored positions come from another cluster's transaction ids (a
/// logical restore), gives every row a new one and moves the dataset to a new generation, so
/// every document is readable again and old checkpoints are refused (clients reconcile).
/// Nothing happens on the cluster that wrote them, a physical replica or backup of it, or a
/// read-only standby (which must not write).
pub async fn restamp(store: &PgStore, config: &Config) -> Result<Option<Restamp>, ServerError> {
    Ok(restamp_store(store, config.restamp_batch_rows).await?)
}

async fn restamp_store(store: &PgStore, batch_rows: u32) -> Result<Option<Restamp>, StoreError> {
    match store.dataset_state().await? {
        DatasetState::Standby => {
            tracing::info!("read-only standby: positions are not checked for a restore");
            return Ok(None);
        }
        DatasetState::NotMigrated => {
            tracing::warn!("migrations pending: positions not checked for a restore");
            return Ok(None);
        }
        DatasetState::Current { .. } | DatasetState::Foreign { .. } => {}
    }
    store.restamp_if_foreign(batch_rows).await
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains: streams end with
/// UNAVAILABLE (clients reconnect elsewhere), in-flight calls finish, the pool closes.
///
/// Everything fallible is built before any background task starts, so an error returns
/// without leaving tasks behind. Background tasks run on one [`TaskTracker`] and stop in one
/// order (docs/architecture.md, "Shutdown"): the database prober first, so that health stays
/// NOT_SERVING; the change listener, the stream tails and the JWKS watcher only after the
/// streams ended, so that streams keep receiving every process's changes while draining.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    crate::crypto::install_provider();
    let collections = Collections::from_config(&config).map_err(ServerError::Config)?;
    let auth_config = config
        .auth
        .as_ref()
        .ok_or_else(|| ServerError::Config("no [auth] configuration".into()))?;
    let authenticator = Authenticator::from_config(auth_config).map_err(ServerError::Config)?;
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let checkpoint_key = config
        .checkpoint_key_bytes()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let listen_url = config
        .listener_url()
        .ok_or_else(|| ServerError::Config("no database URL for the listener".into()))?
        .to_owned();
    // Both reflection versions: many tools in use (grpcurl before 1.9, grpcui, Evans,
    // Postman) still ask for v1alpha.
    let reflection_error = |e| ServerError::Config(format!("reflection: {e}"));
    let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(reflection_error)?;
    let (cors, web) = if config.grpc_web {
        let cors =
            crate::web::cors_layer(&config.cors_allowed_origins).map_err(ServerError::Config)?;
        (Some(cors), Some(tonic_web::GrpcWebLayer::new()))
    } else {
        (None, None)
    };
    let edge = crate::transport::Edge::from_config(&config);
    let mut builder = edge.configure(tonic::transport::Server::builder());
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let retentions = crate::purge::retentions(&config).map_err(ServerError::Config)?;
    config.attachments.check().map_err(ServerError::Config)?;
    let attachment_collections = Collections::from_config(&config).map_err(ServerError::Config)?;
    let store = Arc::new(open_store(&config)?);
    let blobs = crate::blobs::open(&config.attachments, store.pool().clone())
        .map_err(ServerError::Config)?;
    if config.migrate_on_start {
        store.migrate().await?;
    }
    if config.metrics_enabled {
        crate::telemetry::metrics::install(config.metrics_listen).map_err(ServerError::Config)?;
    }

    // Stopped in this order at shutdown: prober, streams (and their tails), the rest.
    let prober_stop = CancellationToken::new();
    let streams_shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();

    let hub = Hub::new(collections.names());
    tasks.spawn(crate::horizon::watch(
        (*store).clone(),
        hub.clone(),
        collections.names().map(str::to_owned).collect(),
        Duration::from_secs(config.health_check_seconds.max(1)),
        Duration::from_secs(config.horizon_warn_seconds),
        background.clone(),
    ));
    tasks.spawn(listener::run(
        listen_url,
        hub.clone(),
        background.clone(),
        |connected| {
            use crate::telemetry::metrics::{LISTENER_RECONNECTS, LISTENER_UP};
            metrics::gauge!(LISTENER_UP).set(if connected { 1.0 } else { 0.0 });
            if !connected {
                metrics::counter!(LISTENER_RECONNECTS).increment(1);
            }
        },
    ));
    // Always: besides tombstones, it expires idempotency keys and overwritten versions.
    tasks.spawn(crate::purge::run(
        (*store).clone(),
        retentions,
        Duration::from_secs(config.purge_interval_seconds),
        config.purge_batch_rows,
        background.clone(),
    ));
    tasks.spawn(crate::blobs::gc::run(
        blobs.clone(),
        config.attachments.gc_grace().map_err(ServerError::Config)?,
        config.attachments.gc_batch_blobs,
        Duration::from_secs(config.purge_interval_seconds),
        background.clone(),
    ));
    let replicator = Arc::new(
        Replicator::new(ReplicatorParts {
            store: store.clone(),
            collections,
            limits: Limits::from_config(&config),
            hub,
            streams_max: config.streams_max,
            stream_buffer_documents: config.stream_buffer_documents,
            streams_per_principal_max: config.streams_per_principal_max,
            page_bytes_max: config.page_bytes_max,
            stream_buffer_bytes: config.stream_buffer_bytes,
            stream_bytes_per_principal_max: config.stream_bytes_per_principal_max,
            heartbeat: Duration::from_secs(config.heartbeat_seconds),
            visibility_wait: Duration::from_millis(config.visibility_wait_ms),
            shutdown: streams_shutdown.clone(),
            checkpoint_key,
        })
        .with_reconcile_limits(crate::protocol::reconcile::ReconcileLimits::from_config(
            &config,
        ))
        .with_idempotency_retention(
            config
                .idempotency_retention()
                .map_err(ServerError::Config)?,
        ),
    );
    // Before serving when the database is ready; else `start` retries it in the background.
    if let Err(e) = replicator.declare_filters().await {
        tracing::warn!(error = %e.message, "cannot declare the filterable fields yet; retrying in the background");
    }
    replicator.start(&tasks);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            crate::health::LIVENESS_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    // NOT_SERVING until positions restored from another cluster are re-stamped (see
    // `restamp`); only then does the database prober publish readiness. Requests that come
    // in meanwhile wait for the re-stamp before sealing their first token.
    crate::health::set_ready(&reporter, false).await;
    tasks.spawn(restamp_then_probe(
        (*store).clone(),
        reporter.clone(),
        config.restamp_batch_rows,
        Duration::from_secs(config.health_check_seconds.max(1)),
        prober_stop.clone(),
        tasks.clone(),
    ));
    if let Authenticator::Jwt(verifier) = &authenticator {
        tasks.spawn(
            verifier
                .clone()
                .watch_jwks(Duration::from_secs(2), background.clone()),
        );
    }
    let api = Arc::new(ReplicationApi::new(replicator));
    let mut service = ReplicationServiceServer::from_arc(api.clone())
        .max_decoding_message_size(config.decoding_message_bytes_max())
        .max_encoding_message_size(config.encoding_message_bytes_max());
    for &compression in &config.compression {
        let encoding = crate::api::compression::encoding(compression);
        service = service
            .accept_compressed(encoding)
            .send_compressed(encoding);
    }
    // Subscribe with batches encoded once per view (see api::subscribe).
    let service = crate::api::subscribe::SubscribeFrames::new(
        service,
        api,
        config
            .compression
            .iter()
            .map(|&c| crate::api::compression::encoding(c))
            .collect(),
        config.decoding_message_bytes_max(),
        config.encoding_message_bytes_max(),
    );
    let service = CompressionPolicy::new(
        service,
        config.compression.clone(),
        config.compression_min_bytes,
    );
    let service = WireLimited::new(
        service,
        WireLimits::from_limits(&Limits::from_config(&config)),
    );
    let attachments = attachment_service(
        &config,
        blobs,
        attachment_collections,
        store.pool().clone(),
        &authenticator,
    );
    let service = InterceptedService::new(service, AuthInterceptor::new(authenticator));

    if config.max_connection_age_seconds > 0 {
        builder =
            builder.max_connection_age(Duration::from_secs(config.max_connection_age_seconds));
    }
    if config.keepalive_seconds > 0 {
        builder = builder
            .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_seconds)))
            .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_seconds)));
    }
    let local = listener.local_addr().ok();
    tracing::info!(address = ?local, "serving gRPC");
    let drain_for = Duration::from_secs(config.drain_seconds);
    let drain = {
        let streams_shutdown = streams_shutdown.clone();
        let prober_stop = prober_stop.clone();
        let reporter = reporter.clone();
        async move {
            shutdown.await;
            // Stop the prober so it cannot flip us back, report NOT_SERVING, keep serving
            // (streams included, still fed by the listener) while load balancers notice,
            // then end streams (clients reconnect elsewhere) and let tonic finish in-flight
            // calls.
            prober_stop.cancel();
            crate::health::set_ready(&reporter, false).await;
            tracing::info!(
                drain_seconds = drain_for.as_secs(),
                "shutting down: NOT_SERVING"
            );
            tokio::time::sleep(drain_for).await;
            tracing::info!("ending streams, finishing in-flight calls");
            streams_shutdown.cancel();
        }
    };
    let result = builder
        .accept_http1(config.grpc_web)
        .layer(tower::util::option_layer(cors))
        .layer(tower::util::option_layer(web))
        .layer(crate::telemetry::rpc_layer::RpcLayer)
        .layer(edge.layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(service)
        .add_service(attachments)
        .serve_with_incoming_shutdown(edge.incoming(listener), drain)
        .await;

    // Also reached when serving failed before any shutdown signal: stop everything anyway.
    prober_stop.cancel();
    streams_shutdown.cancel();
    background.cancel();
    tasks.close();
    tasks.wait().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(result?)
}

/// The attachment service: messages bounded by the chunk size, authenticated like replication.
fn attachment_service(
    config: &Config,
    blobs: crate::blobs::AnyBlobs,
    collections: Collections,
    pool: sqlx::PgPool,
    authenticator: &Authenticator,
) -> InterceptedService<
    crate::proto::attachment_service_server::AttachmentServiceServer<
        crate::api::attachments::AttachmentApi<crate::blobs::AnyBlobs>,
    >,
    AuthInterceptor,
> {
    let index = crate::blobs::index::BlobIndex::new(pool);
    let attachments =
        crate::blobs::Attachments::new(blobs, index, collections, config.attachments.clone());
    // A chunk plus the few fields around it.
    let message_max = config.attachments.chunk_bytes_max + 4096;
    let service = crate::proto::attachment_service_server::AttachmentServiceServer::new(
        crate::api::attachments::AttachmentApi::new(Arc::new(attachments)),
    )
    .max_decoding_message_size(message_max)
    .max_encoding_message_size(message_max);
    InterceptedService::new(service, AuthInterceptor::new(authenticator.clone()))
}

/// Re-stamps positions restored from another cluster (retrying while the database is away),
/// then starts the database prober, which publishes readiness. Stopped with the prober: a
/// re-stamp cut short rolls its batch back and resumes at the next start.
async fn restamp_then_probe(
    store: PgStore,
    reporter: tonic_health::server::HealthReporter,
    batch_rows: u32,
    interval: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let done = tokio::select! {
            _ = stop.cancelled() => return,
            done = restamp_store(&store, batch_rows) => done,
        };
        match done {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "positions not checked for a restore yet: NOT_SERVING")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    tasks.spawn(crate::health::watch_database(
        store, reporter, interval, stop,
    ));
}

/// Server reflection over the replication and health services.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Reads the PEM files of the `[tls]` table; a client CA turns on mutual TLS.
fn tls_config(tls: &TlsConfig) -> Result<ServerTlsConfig, ServerError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServerError::Config(format!("tls: {}: {e}", path.display())))
    };
    let identity = Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}
