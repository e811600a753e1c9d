//! Hostile inputs: numbers and text PostgreSQL would refuse, NUL and oversized owners and
//! revisions, echoed values, and conflict checks that compare numbers as jsonb does.

use serde_json::json;
use sqlx::Connection;
use tonic::Code;

use crate::common::*;
use syncline::proto::{ChangeRow, Document, PullRequest, PushRequest, SubscribeRequest};

async fn push_err(server: &TestServer, rows: Vec<ChangeRow>) -> tonic::Status {
    let mut c = server.client().await;
    c.push(PushRequest {
        collection: "tasks".into(),
        rows,
        mode: 0,
        idempotency_key: String::new(),
    })
    .await
    .expect_err("push refused")
}

fn raw(id: &str, json: &str) -> Document {
    Document {
        id: id.into(),
        json: json.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn numbers_postgres_refuses_are_invalid_argument_naming_row_and_path() {
    let server = TestServer::start().await;
    let cases = [
        "1e-16384".to_owned(),
        "1e-20000".to_owned(),
        "-1.50e-16382".to_owned(),
        "0e-99999".to_owned(),
        format!("0.{}", "1".repeat(20_000)),
        "1".repeat(131_073),
    ];
    for n in &cases {
        let body = format!(r#"{{"ok":1,"v":[true,{n}]}}"#);
        let err = push_err(&server, vec![insert(raw("n-1", &body))]).await;
        let shown = &n[..n.len().min(20)];
        assert_eq!(err.code(), Code::InvalidArgument, "{shown}: {err:?}");
        let m = err.message();
        assert!(m.len() < 400, "{shown}: a short message");
        // serde reads a 131,073-digit integer as an f64 overflow: invalid JSON either way.
        assert!(
            m.starts_with("rows[0] (id \"n-1\"): new_document_state.json: ")
                && (m.contains("the number at /v/1 is out of PostgreSQL's numeric range")
                    || m.contains("invalid JSON: number out of range")),
            "{shown}: {m}"
        );
    }
    let mut db = server.db().await;
    assert!(table(&mut db, "tasks").await.is_empty());
}

/// Whatever PostgreSQL's jsonb refuses, a push refuses as INVALID_ARGUMENT; whatever it
/// accepts is stored, except numbers beyond the f64 range (serde_json refuses them).
#[tokio::test]
async fn number_checks_agree_with_postgres() {
    use rand::{Rng, SeedableRng};
    let server = TestServer::start().await;
    let mut db = sqlx::PgConnection::connect(&server.db_url).await.unwrap();
    let mut numbers: Vec<String> = [
        "0",
        "-0",
        "1e-16383",
        "1e-16384",
        "0e-16383",
        "0e-16384",
        "1.5e-16382",
        "1.50e-16382",
        "100e-16385",
        "1e131071",
        "1e131072",
        "1e308",
        "1e309",
        "0e99999999",
        "0e1073741822",
        "0e1073741823",
        "-0.0e-16383",
        "12.5E+3",
        "1e-400",
        "7e-16383",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    numbers.push(format!("0.{}", "9".repeat(16_383)));
    numbers.push(format!("0.{}", "9".repeat(16_384)));
    numbers.push(format!("1.{}e-1", "0".repeat(16_382)));
    numbers.push(format!("1.{}e-1", "0".repeat(16_383)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..60 {
        let frac: String = (0..rng.random_range(0..4))
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        let frac = if frac.is_empty() {
            frac
        } else {
            format!(".{frac}")
        };
        let exp = -16_390 + rng.random_range(0..12);
        numbers.push(format!("{}{frac}e{exp}", rng.random_range(0..10)));
    }
    let mut c = server.client().await;
    for (i, n) in numbers.iter().enumerate() {
        let body = format!(r#"{{"v":{n}}}"#);
        let pg_accepts = sqlx::query("SELECT $1::text::jsonb")
            .bind(&body)
            .execute(&mut db)
            .await
            .is_ok();
        let pushed = c
            .push(PushRequest {
                collection: "tasks".into(),
                rows: vec![insert(raw(&format!("n{i}"), &body))],
                mode: 0,
                idempotency_key: String::new(),
            })
            .await;
        let shown = &n[..n.len().min(30)];
        match pushed {
            Ok(_) => assert!(pg_accepts, "{shown}: stored although PostgreSQL refuses it"),
            Err(e) => {
                assert_eq!(e.code(), Code::InvalidArgument, "{shown}: {e:?}");
                let beyond_f64 = e.message().contains("number out of range");
                assert!(
                    !pg_accepts || beyond_f64,
                    "{shown}: refused although PostgreSQL accepts it: {}",
                    e.message()
                );
            }
        }
    }
}

#[tokio::test]
async fn nul_and_oversized_owners_and_revisions_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    push(&mut c, "tasks", vec![insert(doc("a", json!({"v": 1})))]).await;
    let owned = |owner: String| {
        let mut d = doc("b", json!({}));
        d.owner = owner;
        insert(d)
    };
    let mut nul_revision = doc("a", json!({}));
    nul_revision.revision = "1-\0".into();
    let mut long_revision = doc("a", json!({}));
    long_revision.revision = "1-".repeat(100);
    let cases: Vec<(ChangeRow, &str)> = vec![
        (
            update(doc("a", json!({"v": 2})), nul_revision),
            "rows[0] (id \"a\"): assumed_master_state.revision must not contain NUL",
        ),
        (
            update(doc("a", json!({"v": 2})), long_revision),
            "rows[0] (id \"a\"): assumed_master_state.revision is 200 bytes; revisions are at most 128",
        ),
        (
            owned("svc\0x".into()),
            "rows[0] (id \"b\"): new_document_state.owner must not contain NUL",
        ),
        (
            owned("o".repeat(257)),
            "rows[0] (id \"b\"): new_document_state.owner is 257 bytes, over the limit of 256",
        ),
        (
            owned("o".repeat(10_000_000)),
            "rows[0] (id \"b\"): new_document_state.owner is 10000000 bytes, over the limit of 256",
        ),
    ];
    for (row, expected) in cases {
        let err = push_err(&server, vec![row]).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}: {err:?}");
        assert_eq!(err.message(), expected);
    }
    // A 256-byte owner is fine.
    assert!(
        push(&mut c, "tasks", vec![owned("o".repeat(256))])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn echoed_values_are_cut() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let huge = "c".repeat(16 << 20);
    let short = |s: &tonic::Status| {
        assert!(s.message().len() < 300, "{} bytes", s.message().len());
        assert!(s.message().contains("\"cccc"), "{}", s.message());
    };
    let err = c
        .pull(PullRequest {
            collection: huge.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown collection");
    assert_eq!(err.code(), Code::NotFound);
    short(&err);
    let err = c
        .push(PushRequest {
            collection: huge.clone(),
            rows: vec![insert(doc("a", json!({})))],
            mode: 0,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("unknown collection");
    assert_eq!(err.code(), Code::NotFound);
    short(&err);
    let err = c
        .subscribe(SubscribeRequest {
            collection: huge,
            checkpoint: None,
            selector: Vec::new(),
        })
        .await
        .expect_err("unknown collection");
    assert_eq!(err.code(), Code::NotFound);
    short(&err);

    // Values inside rows: a differing assumed id, a primary key field holding a large value.
    let big = "c".repeat(500_000);
    let err = push_err(
        &server,
        vec![update(doc("a", json!({})), doc(&big[..500], json!({})))],
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument);
    short(&err);
    let err = push_err(&server, vec![insert(doc("a", json!({"id": {"x": big}})))]).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    short(&err);
}

#[tokio::test]
async fn a_stale_push_with_a_near_equal_number_conflicts() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let stored = r#"{"n":100000000000000000000,"f":0.3}"#;
    assert!(
        push(&mut c, "tasks", vec![insert(raw("a", stored))])
            .await
            .is_empty()
    );
    // Assumed states without a revision compare by value, as jsonb does.
    let stale = [
        r#"{"n":100000000000000000001,"f":0.3}"#,
        r#"{"n":100000000000000000000,"f":0.30000000000000001}"#,
    ];
    for assumed in stale {
        let conflicts = push(
            &mut c,
            "tasks",
            vec![update(raw("a", r#"{"n":0}"#), raw("a", assumed))],
        )
        .await;
        assert_eq!(conflicts.len(), 1, "{assumed} is not the stored state");
        assert_eq!(
            body(&conflicts[0]),
            serde_json::from_str::<serde_json::Value>(stored).unwrap()
        );
    }
    // The same value written differently is not a conflict.
    let conflicts = push(
        &mut c,
        "tasks",
        vec![update(
            raw("a", r#"{"n":1}"#),
            raw("a", r#"{"f":3e-1,"n":1e20}"#),
        )],
    )
    .await;
    assert!(conflicts.is_empty());
    let (docs, _) = pull_all(&mut c, "tasks", "", 10).await;
    assert_eq!(body(&docs[0]), json!({"n": 1}));
}

/// Numbers are stored and sent back without exponents: `1e-16000` is 8 bytes pushed and
/// 16 KB on every pull. A body is limited by its stored size, so a small push cannot become
/// pages no client can receive.
#[tokio::test]
async fn numbers_that_expand_when_stored_count_against_the_document_limit() {
    let server = TestServer::start().await;
    // 70 x ~16 KB as stored: over the default 1 MiB.
    let numbers = ["1e-16000"; 70].join(",");
    let err = push_err(
        &server,
        vec![insert(raw("n-2", &format!(r#"{{"v":[{numbers}]}}"#)))],
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("rows[0] (id \"n-2\"): new_document_state.json is ")
            && err.message().contains("as stored"),
        "{}",
        err.message()
    );
    // A few are fine, and come back in full.
    let numbers = ["1e-16000"; 3].join(",");
    let mut c = server.client().await;
    push(
        &mut c,
        "tasks",
        vec![insert(raw("n-3", &format!(r#"{{"v":[{numbers}]}}"#)))],
    )
    .await;
    let (docs, _) = pull(&mut c, "tasks", "", 10).await;
    assert_eq!(docs.len(), 1);
    assert!(docs[0].json.len() > 3 * 16_000);
}
