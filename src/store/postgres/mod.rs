//! The PostgreSQL store: documents in one table, positions from transaction ids under a
//! visibility horizon (see `migrations/0001_documents.sql` and docs/architecture.md).

mod bulk;
mod dataset;
mod error;
mod filtered;
mod idempotency;
mod keys;
pub mod notify;
mod overwritten;
mod plans;
mod purge;
mod read;
mod read_ahead;
mod reconcile;
pub(crate) use reconcile::bind_filter;
mod write;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use std::collections::HashMap;

use super::{
    ChangePage, Idempotency, PageLimit, PushApplied, PushError, PushPlan, PushTarget, Resume,
    Store, StoreError, StoredDocument,
};

/// The embedded migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use bulk::{ExportError, ExportOptions};
pub use dataset::{DatasetState, Foreign, Restamp};
pub use notify::NOTIFY_CHANNEL;
pub use plans::{HotPlan, PlanProbe};
pub use purge::{ExpiredBatch, PurgeBatch, PurgeHorizon, PurgePreview};

/// Pooled connections idle at least this long are pinged before use.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Pages read ahead when nothing configures it (`from_pool`).
const READ_AHEAD_PAGES: usize = 16;

/// A [`super::Store`] on a PostgreSQL connection pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    read_ahead: std::sync::Arc<read_ahead::ReadAhead>,
    /// `synchronous_commit` of every push transaction (see `with_push_synchronous_commit`).
    push_synchronous_commit: &'static str,
}

/// The `synchronous_commit` levels PostgreSQL accepts, strongest first.
pub const SYNCHRONOUS_COMMIT_LEVELS: [&str; 5] =
    ["remote_apply", "on", "remote_write", "local", "off"];

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool).finish()
    }
}

/// Pool settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Maximum connections.
    pub size: u32,
    /// How long to wait for a connection before failing with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Prepared statements cached per connection (0 for transaction-mode poolers).
    pub statement_cache_capacity: usize,
    /// Next pages read ahead after full pages, at most this many at once (0: off).
    pub read_ahead_pages: usize,
}

impl PgStore {
    /// Opens a pool lazily (the server starts even while the database is down; requests then
    /// fail with UNAVAILABLE until it is back).
    pub fn connect_lazy(url: &str, settings: &PoolSettings) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Internal(format!("database_url: {e}")))?;
        let options = options
            .application_name("syncline")
            .statement_cache_capacity(settings.statement_cache_capacity);
        // sqlx pings every connection it hands out by default: one extra round trip per
        // request. A connection in steady use has just proven itself; only one that sat idle
        // (where a restart or a proxy's idle timeout may have cut it) is worth the ping.
        let custom_plans = settings.statement_cache_capacity > 0;
        let pool = PgPoolOptions::new()
            .max_connections(settings.size)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(false)
            // Plans made for the table as it is, not as it was (see plans.rs).
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if custom_plans {
                        sqlx::Executor::execute(conn, plans::CONNECTION_SETUP_SQL).await?;
                    }
                    Ok(())
                })
            })
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        Ok(PgStore {
            pool,
            read_ahead: std::sync::Arc::new(read_ahead::ReadAhead::new(settings.read_ahead_pages)),
            push_synchronous_commit: "on",
        })
    }

    /// Sets the `synchronous_commit` every push transaction commits with (default `on`:
    /// an acknowledged push survives a crash whatever the database's or role's default).
    /// Unknown levels are refused.
    pub fn with_push_synchronous_commit(mut self, level: &str) -> Result<PgStore, StoreError> {
        self.push_synchronous_commit = SYNCHRONOUS_COMMIT_LEVELS
            .into_iter()
            .find(|l| *l == level)
            .ok_or_else(|| {
                StoreError::Internal(format!(
                    "push_synchronous_commit must be one of {SYNCHRONOUS_COMMIT_LEVELS:?}"
                ))
            })?;
        Ok(self)
    }

    /// Takes a pooled connection, measuring the wait.
    pub(crate) async fn acquire(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let conn = self.pool.acquire().await.map_err(error::to_store_error);
        metrics::histogram!(crate::telemetry::metrics::POOL_ACQUIRE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        conn
    }

    /// Wraps an existing pool (with read-ahead of up to 16 pages).
    pub fn from_pool(pool: PgPool) -> PgStore {
        PgStore {
            pool,
            read_ahead: std::sync::Arc::new(read_ahead::ReadAhead::new(READ_AHEAD_PAGES)),
            push_synchronous_commit: "on",
        }
    }

    /// The underlying pool (health checks, tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations. Safe to run from several processes at once: sqlx
    /// serializes them with an advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => error::to_store_error(inner),
            other => StoreError::Internal(other.to_string()),
        })
    }

    /// The plans of the page (all owners, one owner), push read and page-without-running-sum
    /// (all owners, one owner) queries, with sequential scans discouraged: tests and
    /// benchmarks check that an index serves each of them.
    pub async fn explain_queries(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(error::to_store_error)?;
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .map_err(error::to_store_error)?;
        let mut plans = Vec::new();
        for (sql, kind) in [
            (read::PAGE_SQL, 0),
            (read::OWNER_PAGE_SQL, 1),
            (write::READ_SQL, 2),
            (read::FAST_PAGE_SQL, 3),
            (read::OWNER_FAST_PAGE_SQL, 4),
        ] {
            let explain = sqlx::AssertSqlSafe(format!("EXPLAIN {sql}"));
            let query = sqlx::query_scalar::<_, String>(explain).bind(collection);
            let query = match kind {
                0 => query
                    .bind(0_i64)
                    .bind(0_i64)
                    .bind(100_i64)
                    .bind(1_i64 << 22)
                    .bind(0_i64),
                1 => query
                    .bind(0_i64)
                    .bind(0_i64)
                    .bind(100_i64)
                    .bind(1_i64 << 22)
                    .bind(0_i64)
                    .bind("owner"),
                3 => query.bind(0_i64).bind(0_i64).bind(100_i64).bind(0_i64),
                4 => query
                    .bind(0_i64)
                    .bind(0_i64)
                    .bind(100_i64)
                    .bind(0_i64)
                    .bind("owner"),
                _ => query
                    .bind(vec!["a".to_owned(), "b".to_owned()])
                    .bind(vec![Some("1-x".to_owned()), None]),
            };
            let lines = query
                .fetch_all(&mut *tx)
                .await
                .map_err(error::to_store_error)?;
            plans.push(lines.join("\n"));
        }
        tx.rollback().await.map_err(error::to_store_error)?;
        Ok(plans)
    }

    /// The current snapshot's bounds `(xmin, xmax)`: transactions below xmin have finished;
    /// xmin < xmax means some transaction between them is still running.
    pub async fn snapshot_bounds(&self) -> Result<(i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint \
             FROM pg_current_snapshot() AS s",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(error::to_store_error)
    }

    /// The health check: the database answers and every embedded migration is applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let latest = MIGRATOR
            .migrations
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .map_err(error::to_store_error)?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// Publishes the pool's connection counts as gauges.
    pub fn report_pool_metrics(&self) {
        use crate::telemetry::metrics::POOL_CONNECTIONS;
        let size = self.pool.size() as f64;
        let idle = self.pool.num_idle() as f64;
        metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set(size - idle);
        metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(idle);
        metrics::gauge!(POOL_CONNECTIONS, "state" => "max")
            .set(f64::from(self.pool.options().get_max_connections()));
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Store for PgStore {
    fn read_changes(
        &self,
        collection: &str,
        owner: Option<&str>,
        after: Resume,
        limit: PageLimit,
    ) -> impl Future<Output = Result<ChangePage, StoreError>> + Send {
        self.read_page(collection, owner, after, limit)
    }

    fn read_filtered(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: &crate::store::filter::ReadFilter,
        after: Resume,
        limit: PageLimit,
    ) -> impl Future<Output = Result<ChangePage, StoreError>> + Send {
        self.read_filtered_page(collection, owner, filter, after, limit)
    }

    fn read_moves(
        &self,
        collection: &str,
        after: crate::store::Position,
        upto: crate::store::Position,
        max: u32,
    ) -> impl Future<Output = Result<Vec<crate::store::filter::MoveRecord>, StoreError>> + Send
    {
        self.moves_between(collection, after, upto, max)
    }

    fn declare_filter_fields(
        &self,
        collection: &str,
        paths: &[String],
        index_ddl: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.declare_filter_paths(collection, paths, index_ddl)
    }

    async fn horizon(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&self.pool)
            .await
            .map_err(error::to_store_error)
    }

    fn apply_push<F, E, R>(
        &self,
        collection: &str,
        targets: &[PushTarget],
        decide: F,
        idempotency: Option<&Idempotency<'_, R>>,
    ) -> impl Future<Output = Result<PushApplied<R>, PushError<E>>> + Send
    where
        F: Fn(&HashMap<String, StoredDocument>) -> Result<PushPlan<R>, E> + Send + Sync,
        E: Send,
        R: Send + Sync,
    {
        self.push(collection, targets, decide, idempotency)
    }

    fn overwritten_versions(
        &self,
        collection: &str,
        id: &str,
        owner: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<super::OverwrittenRecord>, StoreError>> + Send {
        self.list_overwritten(collection, id, owner, limit)
    }

    fn checkpoint_key(&self) -> impl Future<Output = Result<[u8; 32], StoreError>> + Send {
        self.load_checkpoint_key()
    }

    fn dataset_generation(&self) -> impl Future<Output = Result<u32, StoreError>> + Send {
        self.load_dataset_generation()
    }

    fn bucket_digests(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: Option<&crate::store::filter::ReadFilter>,
        bits: u32,
        within_bits: u32,
        within: &[u32],
    ) -> impl Future<Output = Result<super::DigestSnapshot, StoreError>> + Send {
        self.reconcile_digests(collection, owner, filter, bits, within_bits, within)
    }

    fn bucket_documents(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: Option<&crate::store::filter::ReadFilter>,
        bits: u32,
        buckets: &[u32],
        max: usize,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send {
        self.reconcile_list(collection, owner, filter, bits, buckets, max)
    }

    fn live_documents(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: Option<&crate::store::filter::ReadFilter>,
        ids: &[String],
        limit: PageLimit,
    ) -> impl Future<Output = Result<(Vec<StoredDocument>, usize), StoreError>> + Send {
        self.fetch_live(collection, owner, filter, ids, limit)
    }

    async fn attachments_held(
        &self,
        collection: &str,
        scope: crate::store::filter::BlobScope<'_>,
        digests: &[String],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let index = crate::blobs::index::BlobIndex::new(self.pool().clone());
        Ok(index
            .available(collection, scope, digests)
            .await?
            .into_iter()
            .collect())
    }
}
