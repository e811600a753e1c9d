//! Read-ahead two pages deep (issue 17, target 5): once a reader has been served a page read
//! ahead, the page after the next is read too, so that PostgreSQL works on two pages of a sync
//! while the server sends one. A page read two ahead is served only under the same rule as
//! the next one: none of its documents was written since.

use std::time::Duration;

use sqlx::Connection;

use crate::common::{config, fresh_database};
use syncline::store::postgres::PgStore;
use syncline::store::{PageLimit, Position, Resume, Store, StoredDocument};

/// Documents `d0`..`d{n-1}` of `tasks`, inserted by SQL one statement each (the SQL-write
/// triggers give each a position, in this order).
async fn store_with(n: usize) -> (PgStore, sqlx::PgConnection) {
    let db = fresh_database().await;
    let store = syncline::server::open_store(&config(&db)).expect("open the store");
    store.migrate().await.expect("migrate");
    let mut conn = sqlx::PgConnection::connect(&db).await.expect("connect");
    for i in 0..n {
        sqlx::query(
            "INSERT INTO syncline_documents (collection, id, body, deleted) \
             VALUES ('tasks', $1, jsonb_build_object('v', 0), false)",
        )
        .bind(format!("d{i}"))
        .execute(&mut conn)
        .await
        .expect("insert");
    }
    readable(&store, n).await;
    (store, conn)
}

/// Waits (bounded) until `n` documents are readable: another test's open transaction holds the
/// cluster's visibility horizon back. The read is not full, so it starts no read-ahead.
pub async fn readable(store: &PgStore, n: usize) {
    for _ in 0..3000 {
        let page = store
            .read_changes(
                "tasks",
                None,
                Resume::default(),
                PageLimit::new(100_000, usize::MAX),
            )
            .await
            .expect("read everything");
        if page.documents.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} documents are not readable within 60 s");
}

/// Waits (bounded) until the store holds `n` pages read ahead; false if it never does.
async fn read_ahead_reaches(store: &PgStore, n: usize) -> bool {
    for _ in 0..500 {
        if store.pages_read_ahead() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn page(store: &PgStore, after: Resume) -> (Vec<StoredDocument>, Resume) {
    let page = store
        .read_changes("tasks", None, after, PageLimit::new(2, 1 << 20))
        .await
        .expect("read a page");
    let last = page.documents.last().expect("a document").position;
    (page.documents, Resume::new(last, after.floor))
}

fn states(documents: &[StoredDocument]) -> Vec<(String, String)> {
    documents
        .iter()
        .map(|d| (d.id.clone(), d.body.clone()))
        .collect()
}

#[tokio::test]
async fn a_sync_under_way_has_the_next_two_pages_read_ahead() {
    let (store, conn) = store_with(12).await;
    let start = Resume::new(Position::START, 0);
    let (first, after) = page(&store, start).await;
    assert_eq!(states(&first)[0].0, "d0");
    // Pages 2 and 3 (page 3 once page 2 came back full).
    assert!(
        read_ahead_reaches(&store, 2).await,
        "{} pages read ahead after the first",
        store.pages_read_ahead()
    );
    // Served page 2 from its read ahead: pages 3 and 4 are read ahead now.
    let (second, after) = page(&store, after).await;
    assert_eq!(states(&second)[0].0, "d2");
    assert!(
        read_ahead_reaches(&store, 2).await,
        "{} pages read ahead after the second",
        store.pages_read_ahead()
    );
    let (third, _) = page(&store, after).await;
    assert_eq!(states(&third)[0].0, "d4");
    drop(conn);
    store.close().await;
}

#[tokio::test]
async fn a_page_read_two_ahead_is_never_served_once_one_of_its_documents_changed() {
    for round in 0..5 {
        let (store, mut conn) = store_with(8).await;
        let start = Resume::new(Position::START, 0);
        let (_, after) = page(&store, start).await;
        assert!(read_ahead_reaches(&store, 2).await, "round {round}");
        // d4 is on page 3, read two ahead: written again, it moves past d7.
        sqlx::query("UPDATE syncline_documents SET body = '{\"v\": 1}' WHERE id = 'd4'")
            .execute(&mut conn)
            .await
            .expect("update");
        let (second, after) = page(&store, after).await;
        assert_eq!(
            states(&second),
            [
                ("d2".into(), "{\"v\": 0}".into()),
                ("d3".into(), "{\"v\": 0}".into())
            ]
        );
        let (third, after) = page(&store, after).await;
        assert_eq!(
            states(&third),
            [
                ("d5".to_owned(), "{\"v\": 0}".to_owned()),
                ("d6".into(), "{\"v\": 0}".into())
            ],
            "round {round}: page 3 as it was before d4 was written"
        );
        // The new d4 is readable once the horizon passes it.
        let mut fourth = Vec::new();
        for _ in 0..3000 {
            fourth = page(&store, after).await.0;
            if fourth.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            states(&fourth),
            [
                ("d7".to_owned(), "{\"v\": 0}".to_owned()),
                ("d4".into(), "{\"v\": 1}".into())
            ]
        );
        drop(conn);
        store.close().await;
    }
}
