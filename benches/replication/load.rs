//! Fast loading of large collections straight into `syncline_documents` (the server must
//! have applied its migrations first), in transactions of 1,000 rows on two connections, with
//! the same metadata the server writes: a change position from the writing transaction and
//! the change sequence, a `<generation>-<hash>` revision, and optionally spread over owners.

use sqlx::Connection;

/// Rows per loading transaction.
const CHUNK: usize = 1_000;
/// Loading connections (one per core here).
const LOADERS: usize = 2;

// Bodies are ~300 bytes, shaped like `client::body`; ids and revisions like `doc_id` and
// `loaded_revision`; owners like `owner` (`$5` = 0: the column's default, no owner).
const INSERT_SQL: &str = "
INSERT INTO syncline_documents
    (collection, id, owner, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT $1, $2 || lpad(i::text, 8, '0'),
       CASE WHEN $5::bigint = 0 THEN '' ELSE 'owner-' || (i % $5::bigint) END,
       jsonb_build_object(
           'id', $2 || lpad(i::text, 8, '0'), 'title', 'Document ' || i, 'done', i % 2 = 0,
           'priority', i % 5, 'tags', jsonb_build_array('alpha', 'beta', 'gamma'),
           'version', 1, 'notes', repeat(md5(i::text), 6)),
       false, '1-' || lpad(to_hex(i), 16, '0'), now(),
       pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
FROM generate_series($3::bigint, $4::bigint) AS i";

/// The revision `load` gives document number `i`.
pub fn loaded_revision(i: usize) -> String {
    format!("1-{i:016x}")
}

/// The owner `documents_owned` gives document number `i` when spreading over `owners`.
pub fn owner(i: usize, owners: usize) -> String {
    format!("owner-{}", i % owners)
}

/// Inserts documents `0..n` of `collection` with ids `client::doc_id(prefix, i)` and no owner.
pub async fn documents(db_url: &str, collection: &str, prefix: &str, n: usize) {
    documents_owned(db_url, collection, prefix, n, 0).await;
}

/// Inserts documents `0..n` of `collection` with ids `client::doc_id(prefix, i)`, document `i`
/// owned by `owner(i, owners)` (no owner when `owners` is 0), then vacuums and analyzes the
/// table so plans and visibility are as in a settled database.
pub async fn documents_owned(
    db_url: &str,
    collection: &str,
    prefix: &str,
    n: usize,
    owners: usize,
) {
    insert(db_url, collection, prefix, n, owners).await;
    let mut conn = sqlx::PgConnection::connect(db_url)
        .await
        .expect("connect to vacuum");
    sqlx::query("VACUUM ANALYZE syncline_documents")
        .execute(&mut conn)
        .await
        .expect("vacuum analyze");
}

/// Inserts documents `0..n` as `documents` does, and leaves the table as a bulk load does:
/// neither vacuumed nor analyzed.
pub async fn documents_unanalyzed(db_url: &str, collection: &str, prefix: &str, n: usize) {
    insert(db_url, collection, prefix, n, 0).await;
}

async fn insert(db_url: &str, collection: &str, prefix: &str, n: usize, owners: usize) {
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(CHUNK)
        .map(|start| (start, (start + CHUNK).min(n) - 1))
        .collect();
    let mut tasks = Vec::new();
    for loader in 0..LOADERS {
        let mine: Vec<(usize, usize)> = chunks
            .iter()
            .skip(loader)
            .step_by(LOADERS)
            .copied()
            .collect();
        let (db_url, collection, prefix) =
            (db_url.to_owned(), collection.to_owned(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut conn = crate::cluster::writer_connection(&db_url).await;
            for (first, last) in mine {
                sqlx::query(INSERT_SQL)
                    .bind(&collection)
                    .bind(&prefix)
                    .bind(first as i64)
                    .bind(last as i64)
                    .bind(owners as i64)
                    .execute(&mut conn)
                    .await
                    .expect("load documents");
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader task");
    }
}
