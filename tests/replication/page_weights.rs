//! Pages cut at their byte budget (issue 17, target 5): a page of small documents is read
//! without the running sum of the weights, and a page that meets a large document (over
//! 4,096 bytes, `migrations/0014_large_documents.sql`) with it. Either way a page is the
//! longest prefix that fits its limits, and every document comes once, in order.

use std::collections::HashSet;

use sqlx::Connection;

use crate::common::{config, fresh_database};
use syncline::store::postgres::PgStore;
use syncline::store::{PageLimit, Position, Resume, Store, StoredDocument};

/// Above this weight a document is large (`LARGE_DOCUMENT_BYTES` in the store).
const LARGE: usize = 4096;

// Documents of exact weights (`StoredDocument::page_bytes`): an id of 7 bytes, an owner of 1,
// a revision of 18 and the 64 of overhead leave `weight - 90` bytes of body text, whose
// `{"p": ""}` takes 9. Stamped like a push, so that the SQL-write triggers leave them be.
const LOAD_SQL: &str = "
INSERT INTO syncline_documents
    (collection, id, owner, body, deleted, revision, updated_at, change_xid, change_seq)
SELECT 'tasks', 'd-' || lpad(n::text, 5, '0'), CASE WHEN n % 3 = 0 THEN 'b' ELSE 'a' END,
       jsonb_build_object('p', repeat('x', w - 99)), false,
       '1-' || lpad(to_hex(n), 16, '0'), now(),
       pg_current_xact_id()::text::bigint, nextval('syncline_change_seq')
FROM unnest($1::int[]) WITH ORDINALITY AS t(w, n)
ORDER BY n";

/// A deterministic mix of weights: mostly small, runs of large ones, and every weight around
/// the threshold and the budgets below.
fn weights() -> Vec<i32> {
    let mut state = 0x2545_f491_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut weights = Vec::new();
    for i in 0..600 {
        let w = match next() % 20 {
            0 => 4096,
            1 => 4097,
            2 => 4095,
            3 => 5_000 + (next() % 40_000) as i32,
            4 if i % 7 == 0 => 300_000,
            _ => 100 + (next() % 900) as i32,
        };
        weights.push(w);
    }
    // A long run of small documents, then large ones back to back.
    weights.extend(std::iter::repeat_n(200, 150));
    weights.extend(std::iter::repeat_n(20_000, 30));
    weights
}

async fn loaded_store() -> (PgStore, Vec<i32>) {
    let db = fresh_database().await;
    let store = syncline::server::open_store(&config(&db)).expect("open the store");
    store.migrate().await.expect("migrate");
    let weights = weights();
    let mut conn = sqlx::PgConnection::connect(&db).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SELECT set_config('syncline.writer', 'push', true)")
        .execute(&mut *tx)
        .await
        .expect("mark the load");
    sqlx::query(LOAD_SQL)
        .bind(&weights)
        .execute(&mut *tx)
        .await
        .expect("load");
    tx.commit().await.expect("commit the load");
    let _ = conn.close().await;
    crate::read_ahead_follow::readable(&store, weights.len()).await;
    (store, weights)
}

/// Pages through everything `owner` may read under `limit`, checking each page: within both
/// limits (one document at least), in change order, and the longest prefix that fits (a page
/// that ends short of its document limit while more follows ends before a document that does
/// not fit). Returns the documents read.
async fn page_through(
    store: &PgStore,
    owner: Option<&str>,
    limit: PageLimit,
) -> Vec<StoredDocument> {
    let mut read: Vec<StoredDocument> = Vec::new();
    let mut after = Resume::new(Position::START, 0);
    for _ in 0..10_000 {
        let page = store
            .read_changes("tasks", owner, after, limit)
            .await
            .expect("read a page");
        assert!(!page.expired);
        let Some(last) = page.documents.last() else {
            assert!(!page.more, "an empty page says nothing follows");
            assert!(
                read.is_empty(),
                "{limit:?}: the page before said nothing followed"
            );
            return read;
        };
        let (count, more) = (page.documents.len(), page.more);
        let weight: usize = page.documents.iter().map(StoredDocument::page_bytes).sum();
        assert!(
            count == 1 || weight <= limit.bytes,
            "{limit:?}: a page of {count} documents weighs {weight}"
        );
        assert!(count <= limit.documents as usize);
        assert!(more || count < limit.documents as usize);
        assert!(
            page.documents
                .windows(2)
                .all(|w| w[0].position < w[1].position),
            "pages are in change order"
        );
        after = Resume::new(last.position, after.floor);
        read.extend(page.documents);
        if !more {
            // Nothing is written meanwhile: a page that says it holds everything does.
            let next = store
                .read_changes("tasks", owner, after, limit)
                .await
                .expect("read after the last page");
            assert!(
                next.documents.is_empty() && !next.more,
                "{limit:?} {owner:?}: a page of {count} said nothing followed, but {} does",
                next.documents.len()
            );
            return read;
        }
        if more && count < limit.documents as usize {
            let next = store
                .read_changes("tasks", owner, after, PageLimit::new(1, usize::MAX))
                .await
                .expect("read the next document");
            let next = next.documents.first().expect("more follows");
            assert!(
                weight + next.page_bytes() > limit.bytes,
                "{limit:?}: a page of {count} documents ({weight} bytes) ended before {} \
                 ({} bytes), which fits",
                next.id,
                next.page_bytes()
            );
        }
    }
    panic!("paging does not end");
}

/// Every document of `weights` that `owner` may read, by id.
fn expected(weights: &[i32], owner: Option<&str>) -> Vec<String> {
    (1..=weights.len())
        .filter(|n| match owner {
            None => true,
            Some("b") => n % 3 == 0,
            Some(_) => n % 3 != 0,
        })
        .map(|n| format!("d-{n:05}"))
        .collect()
}

#[tokio::test]
async fn pages_of_small_and_large_documents_are_the_longest_prefix_within_their_budget() {
    let (store, weights) = loaded_store().await;
    // The weights are what the test meant them to be.
    let all = page_through(&store, None, PageLimit::new(1000, usize::MAX)).await;
    let got: Vec<usize> = all.iter().map(StoredDocument::page_bytes).collect();
    let want: Vec<usize> = weights.iter().map(|w| *w as usize).collect();
    assert_eq!(got, want);
    assert!(want.contains(&LARGE) && want.contains(&(LARGE + 1)));

    // Limits where `documents` small documents always fit (read without the running sum
    // until a large one) and limits where they may not (always with it).
    let limits = [
        PageLimit::new(10, 10 * LARGE),
        PageLimit::new(10, 10 * LARGE - 1),
        PageLimit::new(10, 10 * LARGE + 5_000),
        PageLimit::new(7, 20_000),
        PageLimit::new(100, 400 * LARGE),
        PageLimit::new(1000, 4 << 20),
        PageLimit::new(50, 1),
    ];
    for limit in limits {
        for owner in [None, Some("a"), Some("b")] {
            let read = page_through(&store, owner, limit).await;
            let ids: Vec<String> = read.iter().map(|d| d.id.clone()).collect();
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(
                unique.len(),
                ids.len(),
                "{limit:?} {owner:?}: a document twice"
            );
            assert_eq!(ids, expected(&weights, owner), "{limit:?} {owner:?}");
        }
    }
    store.close().await;
}

#[tokio::test]
async fn the_statement_for_pages_of_small_documents_keeps_no_running_sum() {
    let (store, _) = loaded_store().await;
    let plans = store.explain_queries("tasks").await.expect("explain");
    let (all, owner) = (&plans[3], &plans[4]);
    assert!(all.contains("syncline_documents_large"), "{all}");
    assert!(owner.contains("syncline_documents_owner_large"), "{owner}");
    for plan in [all, owner] {
        assert!(!plan.contains("WindowAgg"), "{plan}");
        assert!(!plan.contains("Sort"), "{plan}");
    }
    store.close().await;
}
