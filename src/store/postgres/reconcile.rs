//! Reconcile reads: hash-bucket digests of a scope's live documents, the (id, revision) pairs
//! of some buckets, and live documents by id. The hashes are computed here with `sha256()`,
//! exactly as [`crate::protocol::reconcile`] computes them on the client side.

use sqlx::Row;

use super::PgStore;
use super::error::to_store_error;
use super::read::document_at;
use crate::store::filter::{ReadFilter, SqlParam};
use crate::store::{BucketDigest, DigestSnapshot, PageLimit, StoreError, StoredDocument};

// The bucket is the top `$2` bits of the first 4 bytes of sha256(id) (enough for the 24 bits
// a request may ask for). The item hash is the first 8 bytes of sha256(id || '\n' || revision)
// as a signed bigint: the sum of the signed values modulo 2^64 equals the unsigned one.
// `convert_to` rather than a `::bytea` cast, which would read backslashes as escapes.
macro_rules! keyed_sql {
    ($owner_filter:literal) => {
        concat!(
            "SELECT ((('x' || encode(substr(sha256(convert_to(id, 'UTF8')), 1, 4), 'hex'))
              ::bit(32)::int::bigint & 4294967295) >> (32 - $2::int)) AS bucket,
       ('x' || encode(substr(sha256(convert_to(id || E'\\n' || revision, 'UTF8')), 1, 8), 'hex'))
              ::bit(64)::bigint AS h,
       id, revision
FROM syncline_documents d
WHERE collection = $1 AND NOT deleted",
            $owner_filter
        )
    };
}

// One GROUP BY pass; `$3 = 0` compares every bucket, else only those under the `$3`-bit
// prefixes `$4`. Bucket sets are matched with `IN (SELECT unnest(..))`, a hashed lookup:
// `= ANY($n)` compares each row with the whole array in a generic plan (10x slower with a few
// thousand buckets).
macro_rules! digest_sql {
    ($owner_filter:literal) => {
        concat!(
            "WITH k AS (",
            keyed_sql!($owner_filter),
            "), s AS (
    SELECT bucket, count(*) AS n, mod(mod(sum(h::numeric), 18446744073709551616)
                                      + 18446744073709551616, 18446744073709551616) AS total
    FROM k
    WHERE $3::int = 0 OR (bucket >> ($2::int - $3::int)) IN (SELECT unnest($4::bigint[]))
    GROUP BY bucket
)
SELECT bucket, n, (CASE WHEN total >= 9223372036854775808 THEN total - 18446744073709551616
                        ELSE total END)::bigint
FROM s ORDER BY bucket"
        )
    };
}

const DIGEST_SQL: &str = digest_sql!("");
const OWNER_DIGEST_SQL: &str = digest_sql!(" AND owner = $5");
// With a reader's filter (selective sync): `FILTER` is replaced by its predicate, whose
// placeholders follow the statement's own.
const FILTERED_DIGEST_SQL: &str = digest_sql!(" AND (FILTER)");
const OWNER_FILTERED_DIGEST_SQL: &str = digest_sql!(" AND owner = $5 AND (FILTER)");

macro_rules! list_sql {
    ($owner_filter:literal) => {
        concat!(
            "WITH k AS (",
            keyed_sql!($owner_filter),
            ")
SELECT id, revision FROM k WHERE bucket IN (SELECT unnest($3::bigint[])) ORDER BY id LIMIT $4"
        )
    };
}

const LIST_SQL: &str = list_sql!("");
const OWNER_LIST_SQL: &str = list_sql!(" AND owner = $5");
const FILTERED_LIST_SQL: &str = list_sql!(" AND (FILTER)");
const OWNER_FILTERED_LIST_SQL: &str = list_sql!(" AND owner = $5 AND (FILTER)");

// Live documents by id in request order, cut at the byte budget `$3` as the page statement
// cuts (see read.rs): the first document always fits, and the first that does not comes back
// without its body, to say where the reply ended.
macro_rules! fetch_sql {
    ($owner_filter:literal) => {
        concat!(
            "SELECT w.n, w.id, w.owner, CASE WHEN w.r = 1 OR w.total <= $3 THEN w.body::text END,
       w.deleted, w.revision, w.updated_at, w.change_xid, w.change_seq
FROM (
    SELECT i.n, d.id, d.owner, d.body, d.deleted, d.revision, d.updated_at, d.change_xid,
           d.change_seq, row_number() OVER w AS r,
           sum(d.body_bytes + octet_length(d.id) + octet_length(d.owner)
               + octet_length(d.revision) + 64) OVER w AS total,
           d.body_bytes + octet_length(d.id) + octet_length(d.owner)
               + octet_length(d.revision) + 64 AS size
    FROM unnest($2::text[]) WITH ORDINALITY AS i(id, n)
    JOIN syncline_documents d ON d.collection = $1 AND d.id = i.id AND NOT d.deleted",
            $owner_filter,
            "
    WINDOW w AS (ORDER BY i.n ROWS UNBOUNDED PRECEDING)
) w
WHERE w.r <= 2 OR w.total - w.size <= $3
ORDER BY w.n"
        )
    };
}

const FETCH_SQL: &str = fetch_sql!("");
const OWNER_FETCH_SQL: &str = fetch_sql!(" AND d.owner = $4");
const FILTERED_FETCH_SQL: &str = fetch_sql!(" AND (FILTER)");
const OWNER_FILTERED_FETCH_SQL: &str = fetch_sql!(" AND d.owner = $4 AND (FILTER)");

/// The statement for a scope: `plain` / `owned` without a filter, else the filtered text with
/// the predicate placed after the statement's `binds` own parameters.
fn statement(
    filter: Option<&ReadFilter>,
    owner: bool,
    [plain, owned, filtered, owned_filtered]: [&'static str; 4],
    binds: usize,
) -> String {
    match (filter, owner) {
        (None, false) => plain.to_owned(),
        (None, true) => owned.to_owned(),
        (Some(f), false) => filtered.replace("FILTER", &f.current_from(binds + 1)),
        (Some(f), true) => owned_filtered.replace("FILTER", &f.current_from(binds + 2)),
    }
}

pub(crate) fn bind_filter<'q, O>(
    mut query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: Option<&'q ReadFilter>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    for param in filter.map(|f| f.params.as_slice()).unwrap_or_default() {
        query = match param {
            SqlParam::Text(s) | SqlParam::Numeric(s) | SqlParam::Jsonb(s) => query.bind(s.as_str()),
            SqlParam::Bool(b) => query.bind(*b),
            SqlParam::TextArray(v) | SqlParam::NumericArray(v) => query.bind(v.as_slice()),
            SqlParam::BoolArray(v) => query.bind(v.as_slice()),
        };
    }
    query
}

impl PgStore {
    /// Digests of the live documents' buckets, in one REPEATABLE READ snapshot whose xmin
    /// comes back with them.
    pub(crate) async fn reconcile_digests(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: Option<&ReadFilter>,
        bits: u32,
        within_bits: u32,
        within: &[u32],
    ) -> Result<DigestSnapshot, StoreError> {
        let mut conn = self.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(to_store_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(to_store_error)?;
        // The first statement takes the snapshot; the digests read the same one.
        let xmin: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *tx)
                .await
                .map_err(to_store_error)?;
        let within: Vec<i64> = within.iter().map(|&b| i64::from(b)).collect();
        let sql = statement(
            filter,
            owner.is_some(),
            [
                DIGEST_SQL,
                OWNER_DIGEST_SQL,
                FILTERED_DIGEST_SQL,
                OWNER_FILTERED_DIGEST_SQL,
            ],
            4,
        );
        // Audited: fixed text, and a compiled filter of placeholders and configured paths.
        let mut query = sqlx::query_as::<_, (i64, i64, i64)>(sqlx::AssertSqlSafe(sql))
            .persistent(filter.is_none())
            .bind(collection)
            .bind(bits as i32)
            .bind(within_bits as i32)
            .bind(&within);
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        let rows = bind_filter(query, filter)
            .fetch_all(&mut *tx)
            .await
            .map_err(to_store_error)?;
        tx.commit().await.map_err(to_store_error)?;
        let mut digests = Vec::with_capacity(rows.len());
        for &(bucket, count, sum) in &rows {
            digests.push(BucketDigest {
                bucket: u32::try_from(bucket).map_err(|_| bad("bucket"))?,
                count: u64::try_from(count).map_err(|_| bad("count"))?,
                sum: sum as u64,
            });
        }
        Ok(DigestSnapshot { digests, xmin })
    }

    /// Up to `max` (id, revision) pairs of the live documents in `buckets`, in id order.
    pub(crate) async fn reconcile_list(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: Option<&ReadFilter>,
        bits: u32,
        buckets: &[u32],
        max: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let buckets: Vec<i64> = buckets.iter().map(|&b| i64::from(b)).collect();
        let sql = statement(
            filter,
            owner.is_some(),
            [
                LIST_SQL,
                OWNER_LIST_SQL,
                FILTERED_LIST_SQL,
                OWNER_FILTERED_LIST_SQL,
            ],
            4,
        );
        let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql))
            .persistent(filter.is_none())
            .bind(collection)
            .bind(bits as i32)
            .bind(&buckets)
            .bind(i64::try_from(max).unwrap_or(i64::MAX));
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        let mut conn = self.acquire().await?;
        bind_filter(query, filter)
            .fetch_all(&mut *conn)
            .await
            .map_err(to_store_error)
    }

    /// The live documents among `ids` in request order, and how many ids that answers.
    pub(crate) async fn fetch_live(
        &self,
        collection: &str,
        owner: Option<&str>,
        filter: Option<&ReadFilter>,
        ids: &[String],
        limit: PageLimit,
    ) -> Result<(Vec<StoredDocument>, usize), StoreError> {
        let sql = statement(
            filter,
            owner.is_some(),
            [
                FETCH_SQL,
                OWNER_FETCH_SQL,
                FILTERED_FETCH_SQL,
                OWNER_FILTERED_FETCH_SQL,
            ],
            3,
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(filter.is_none())
            .bind(collection)
            .bind(ids)
            .bind(i64::try_from(limit.bytes).unwrap_or(i64::MAX));
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        for param in filter.map(|f| f.params.as_slice()).unwrap_or_default() {
            query = super::filtered::bind_param(query, param);
        }
        let mut conn = self.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await.map_err(to_store_error)?;
        let mut documents = Vec::with_capacity(rows.len());
        let mut answered = ids.len();
        for row in &rows {
            let n: i64 = row.try_get(0).map_err(to_store_error)?;
            if row
                .try_get::<Option<&str>, _>(3)
                .map_err(to_store_error)?
                .is_none()
            {
                // Ordinality is 1-based: the ids before this one are answered.
                answered = usize::try_from(n - 1).unwrap_or(0);
                break;
            }
            documents.push(document_at(row, 1).map_err(to_store_error)?);
        }
        Ok((documents, answered))
    }
}

fn bad(column: &str) -> StoreError {
    StoreError::Internal(format!("reconcile digest: {column} out of range"))
}
