//! Selectors compiled to SQL agree with the in-memory matcher on a real PostgreSQL, and the
//! declared fields' indexes serve them.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Connection, Postgres, Row};
use syncline::protocol::selector::{FilterFields, Projection, Selector, SqlParam};
use syncline::store::postgres::PgStore;

use crate::common::fresh_database;

fn fields() -> FilterFields {
    let declared: BTreeMap<String, String> = [
        ("done", "boolean"),
        ("priority", "number"),
        ("team", "string"),
        ("meta.region", "string"),
        ("tags", "string[]"),
        ("scores", "number[]"),
        ("flags", "boolean[]"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    FilterFields::from_config("tasks", &declared).expect("filter_fields")
}

/// A database whose default collation is ICU `en-US` (`"a" < "B" < "b"`), unlike the bytes
/// order selectors compare strings in: the compiled SQL must not depend on the database's
/// collation. Dropped (`WITH (FORCE)`) when the guard is, a panicking test's included.
struct IcuDatabase {
    admin: String,
    name: String,
    url: String,
}

impl IcuDatabase {
    async fn create() -> IcuDatabase {
        let admin = crate::common::admin_url();
        let name = format!(
            "syncline_t_{}_icu_{:012x}",
            std::process::id(),
            rand::random::<u64>() >> 16
        );
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8' \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )))
        .execute(&mut conn)
        .await
        .expect("create an ICU database");
        let _ = conn.close().await;
        let url = crate::common::with_database(&admin, &name);
        IcuDatabase { admin, name, url }
    }
}

impl Drop for IcuDatabase {
    fn drop(&mut self) {
        // psql, not sqlx: no runtime may be left to run a query when this runs.
        let dropped = std::process::Command::new("psql")
            .arg(&self.admin)
            .args(["-XqAt", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
        if !dropped.is_ok_and(|out| out.status.success()) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A fresh database with the real schema and the declared fields' indexes.
async fn migrated(fields: &FilterFields) -> (sqlx::PgPool, sqlx::PgConnection) {
    migrated_at(&fresh_database().await, fields).await
}

async fn migrated_at(url: &str, fields: &FilterFields) -> (sqlx::PgPool, sqlx::PgConnection) {
    let pool = sqlx::PgPool::connect(url).await.expect("pool");
    PgStore::from_pool(pool.clone())
        .migrate()
        .await
        .expect("migrate");
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    for ddl in fields.index_ddl(false) {
        sqlx::query(sqlx::AssertSqlSafe(ddl.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
    (pool, conn)
}

fn bind<'q>(q: Query<'q, Postgres, PgArguments>, p: &SqlParam) -> Query<'q, Postgres, PgArguments> {
    match p {
        SqlParam::Text(s) | SqlParam::Numeric(s) | SqlParam::Jsonb(s) => q.bind(s.clone()),
        SqlParam::Bool(b) => q.bind(*b),
        SqlParam::TextArray(v) | SqlParam::NumericArray(v) => q.bind(v.clone()),
        SqlParam::BoolArray(v) => q.bind(v.clone()),
    }
}

/// Ids in `collection` matching the compiled selector (placeholders from `$2`).
async fn sql_ids(conn: &mut sqlx::PgConnection, selector: &Selector) -> BTreeSet<String> {
    let p = selector.to_sql(2).expect("compiles");
    let text = format!(
        "SELECT id FROM syncline_documents d WHERE d.collection = $1 AND ({})",
        p.sql
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(text.clone())).bind("tasks");
    for param in &p.params {
        q = bind(q, param);
    }
    let rows = q
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

/// Ids of removal records in `collection` whose previous projection matches the selector
/// compiled over `m.previous` (placeholders from `$2`).
async fn moved_ids(conn: &mut sqlx::PgConnection, selector: &Selector) -> BTreeSet<String> {
    let p = selector
        .to_projection_sql(2, "m.previous")
        .expect("compiles");
    let text = format!(
        "SELECT id FROM syncline_moves m WHERE m.collection = $1 AND ({})",
        p.sql
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(text.clone())).bind("moved");
    for param in &p.params {
        q = bind(q, param);
    }
    let rows = q
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

// ---- random documents, as JSON text (numbers keep their exact digits) ----

const STRINGS: &[&str] = &[
    "",
    "a",
    "b",
    "B",
    "ab",
    "a b",
    "Z",
    "z",
    "é",
    "e\u{301}",
    "😀",
    "\u{ffff}",
    "\u{7f}",
    "ｚ",
    "1=1) OR (1=1",
    "'",
    "\\",
    "\"",
    "eu",
    "us",
    "1",
];
/// Numbers an f64 holds exactly as written (serde_json's `Value` reads them right).
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "1.0",
    "1.5",
    "-1",
    "2",
    "10",
    "1e2",
    "100",
    "0.1",
    "0.30000000000000004",
    "9007199254740993",
    "-9007199254740993",
    "1e-20",
    "3.14159",
    "-2.5e3",
    "18446744073709551615",
];
/// Numbers with more digits than an f64: only the text matcher reads them exactly.
const WIDE_NUMBERS: &[&str] = &[
    "123456789012345678901234567890",
    "99999999999999999999.5",
    "0.30000000000000000001",
    "1.00000000000000000000001",
];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

fn string(rng: &mut StdRng) -> String {
    serde_json::to_string(pick(rng, STRINGS)).expect("string")
}

/// A number's text; sets `wide` when it is one f64 cannot hold.
fn number(rng: &mut StdRng, wide: &mut bool) -> String {
    if rng.random_bool(0.1) {
        *wide = true;
        pick(rng, WIDE_NUMBERS).to_owned()
    } else {
        pick(rng, NUMBERS).to_owned()
    }
}

fn scalar(rng: &mut StdRng, ty: &str, wide: &mut bool) -> String {
    match ty {
        "string" => string(rng),
        "number" => number(rng, wide),
        _ => rng.random_bool(0.5).to_string(),
    }
}

/// Any JSON value, mostly of type `ty` (an element type for arrays).
fn value(rng: &mut StdRng, ty: &str, array: bool, wide: &mut bool) -> String {
    let other = ["string", "number", "boolean"][rng.random_range(0..3)];
    match rng.random_range(0..20) {
        0 => "null".to_owned(),
        1 => format!("{{\"x\": {}}}", scalar(rng, ty, wide)),
        2 => scalar(rng, other, wide),
        3 | 4 => {
            let n = rng.random_range(0..4);
            let items: Vec<String> = (0..n)
                .map(|_| match rng.random_range(0..8) {
                    0 => "null".to_owned(),
                    1 => format!("[{}]", scalar(rng, ty, wide)),
                    2 => scalar(rng, other, wide),
                    _ => scalar(rng, ty, wide),
                })
                .collect();
            format!("[{}]", items.join(", "))
        }
        _ if array => {
            let n = rng.random_range(0..5);
            let items: Vec<String> = (0..n).map(|_| scalar(rng, ty, wide)).collect();
            format!("[{}]", items.join(","))
        }
        _ => scalar(rng, ty, wide),
    }
}

/// A document's JSON text and whether it holds a number f64 cannot.
fn document(rng: &mut StdRng) -> (String, bool) {
    let mut wide = false;
    let mut parts = Vec::new();
    for (key, ty, array) in [
        ("done", "boolean", false),
        ("priority", "number", false),
        ("team", "string", false),
        ("tags", "string", true),
        ("scores", "number", true),
        ("flags", "boolean", true),
    ] {
        if rng.random_bool(0.8) {
            parts.push(format!("\"{key}\": {}", value(rng, ty, array, &mut wide)));
        }
    }
    match rng.random_range(0..6) {
        0 => {}
        1 => parts.push(format!("\"meta\": {}", string(rng))),
        2 => parts.push(format!("\"meta\": [{{\"region\": {}}}]", string(rng))),
        3 => parts.push("\"meta\": {}".to_owned()),
        _ => parts.push(format!(
            "\"meta\": {{\"region\": {}, \"other\": 1}}",
            value(rng, "string", false, &mut wide)
        )),
    }
    parts.push("\"title\": \"x\"".to_owned());
    (format!("{{{}}}", parts.join(", ")), wide)
}

// ---- random selectors (always valid) ----

const FIELDS: &[(&str, &str)] = &[
    ("done", "boolean"),
    ("priority", "number"),
    ("team", "string"),
    ("meta.region", "string"),
    ("tags", "string"),
    ("scores", "number"),
    ("flags", "boolean"),
];

fn operand(rng: &mut StdRng, ty: &str) -> Value {
    let mut wide = false;
    let text = match ty {
        // Selector numbers pass through f64 on the wire: the pool holds both kinds anyway.
        "number" => number(rng, &mut wide),
        _ => scalar(rng, ty, &mut wide),
    };
    serde_json::from_str(&text).expect("operand JSON")
}

fn clause(rng: &mut StdRng) -> (String, Value) {
    let (path, ty) = FIELDS[rng.random_range(0..FIELDS.len())];
    let op = [
        "", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
    ][rng.random_range(0..10)];
    let arg = match op {
        "" => return (path.to_owned(), operand(rng, ty)),
        "$in" | "$nin" => {
            let n = rng.random_range(0..4);
            Value::Array((0..n).map(|_| operand(rng, ty)).collect())
        }
        "$exists" => Value::Bool(rng.random_bool(0.5)),
        _ => operand(rng, ty),
    };
    (path.to_owned(), json!({ op: arg }))
}

fn selector(rng: &mut StdRng, depth: usize) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..rng.random_range(1..=3) {
        if depth < 2 && rng.random_bool(0.25) {
            let op = if rng.random_bool(0.5) { "$and" } else { "$or" };
            let n = rng.random_range(1..=3);
            let items = (0..n).map(|_| selector(rng, depth + 1)).collect();
            map.insert(op.to_owned(), Value::Array(items));
        } else {
            let (path, arg) = clause(rng);
            map.insert(path, arg);
        }
    }
    Value::Object(map)
}

/// Seeded documents and selectors: the rows PostgreSQL returns for the compiled SQL are
/// exactly the documents the matcher accepts (on the body text PostgreSQL gives back, on
/// serde_json values when their numbers fit an f64, and on the declared fields' projections
/// computed in SQL and in Rust).
#[tokio::test]
async fn compiled_sql_agrees_with_the_matcher() {
    let fields = fields();
    let database = IcuDatabase::create().await;
    let (_pool, mut conn) = migrated_at(&database.url, &fields).await;
    let unlike_bytes: bool = sqlx::query_scalar("SELECT 'a' < 'B'")
        .fetch_one(&mut conn)
        .await
        .expect("collation check");
    assert!(
        unlike_bytes,
        "the database's collation should not be bytewise"
    );
    let seed: u64 = std::env::var("SELECTOR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5e1ec7);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut wide_ids = BTreeSet::new();
    for i in 0..400 {
        let (body, wide) = document(&mut rng);
        let id = format!("d{i:03}");
        if wide {
            wide_ids.insert(id.clone());
        }
        sqlx::query(
            "INSERT INTO syncline_documents (collection, id, body) VALUES ('tasks', $1, $2::jsonb)",
        )
        .bind(&id)
        .bind(&body)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{body}: {e}"));
    }
    // Another collection's documents never match.
    sqlx::query("INSERT INTO syncline_documents (collection, id, body) VALUES ('other', 'o1', '{\"done\": true}')")
        .execute(&mut conn)
        .await
        .expect("insert other");
    // The same documents in a collection declaring the fields, then deleted: the moves trigger
    // (migrations/0012) records each one's previous projection, which the selector compiled
    // over `m.previous` must judge as the matcher judges the body.
    sqlx::query(
        "INSERT INTO syncline_filter_paths (collection, path, segments) \
         SELECT 'moved', p, string_to_array(p, '.') FROM unnest($1::text[]) AS p",
    )
    .bind(fields.iter().map(|f| f.path.clone()).collect::<Vec<_>>())
    .execute(&mut conn)
    .await
    .expect("declare paths");
    sqlx::query(
        "INSERT INTO syncline_documents (collection, id, body) \
         SELECT 'moved', id, body FROM syncline_documents WHERE collection = 'tasks'",
    )
    .execute(&mut conn)
    .await
    .expect("copy");
    sqlx::query("UPDATE syncline_documents SET deleted = true WHERE collection = 'moved'")
        .execute(&mut conn)
        .await
        .expect("delete the copies");
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM syncline_moves WHERE collection = 'moved'")
            .fetch_one(&mut conn)
            .await
            .expect("count moves");
    assert_eq!(
        recorded, 400,
        "one removal record per deleted live document"
    );
    // Bodies as PostgreSQL gives them back, and the projections removal records would keep.
    let read = format!(
        "SELECT id, body::text, {}::text FROM syncline_documents d WHERE collection = 'tasks'",
        fields.projection_sql("d.body")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(read))
        .fetch_all(&mut conn)
        .await
        .expect("read back");
    let docs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let projections: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let body: String = r.get(1);
            (r.get(2), fields.project_json(&body).expect("body is JSON"))
        })
        .collect();
    let projected: Vec<Projection> = docs
        .iter()
        .map(|(_, body)| fields.project(body).expect("body is JSON"))
        .collect();
    assert_eq!(docs.len(), 400);

    let (mut some, mut checked) = (0, 0);
    for round in 0..400 {
        let v = selector(&mut rng, 0);
        let s = Selector::parse(&v, &fields).unwrap_or_else(|e| panic!("{v}: {e:?}"));
        let from_sql = sql_ids(&mut conn, &s).await;
        let by_text: BTreeSet<String> = docs
            .iter()
            .filter(|(_, body)| s.matches_json(body))
            .map(|(id, _)| id.clone())
            .collect();
        let from_moves = moved_ids(&mut conn, &s).await;
        assert_eq!(
            from_moves,
            by_text,
            "seed {seed} round {round}: {v} over the removal records: {:?}",
            s.to_projection_sql(2, "m.previous").unwrap().sql
        );
        let diff: Vec<_> = from_sql.symmetric_difference(&by_text).collect();
        assert!(
            diff.is_empty(),
            "seed {seed} round {round}: {v}\nsql {:?}\ndisagree on {:?}: {:?}",
            s.to_sql(2).unwrap().sql,
            diff,
            docs.iter()
                .filter(|(id, _)| diff.contains(&id))
                .collect::<Vec<_>>()
        );
        for (((id, _), (in_sql, in_rust)), once) in docs.iter().zip(&projections).zip(&projected) {
            let want = by_text.contains(id);
            assert_eq!(s.matches_projected(once), want, "{v} on {id}");
            assert_eq!(s.matches_projection(in_sql), want, "{v} on {in_sql}");
            assert_eq!(s.matches_projection(in_rust), want, "{v} on {in_rust}");
            let parsed = Projection::from_json(in_sql).expect("projection JSON");
            assert_eq!(s.matches_projected(&parsed), want, "{v} on {in_sql}");
        }
        for (id, body) in &docs {
            if !wide_ids.contains(id) {
                let value: Value = serde_json::from_str(body).expect("body JSON");
                assert_eq!(s.matches(&value), by_text.contains(id), "{v} on {body}");
                checked += 1;
            }
        }
        if !from_sql.is_empty() && from_sql.len() < docs.len() {
            some += 1;
        }
    }
    // The selectors do discriminate (not all trivially everything or nothing).
    assert!(
        some > 150,
        "only {some} of 400 selectors split the documents"
    );
    assert!(
        checked > 10_000 && wide_ids.len() > 20,
        "{checked} {}",
        wide_ids.len()
    );
}

/// A bound claim rule and an intersection compile and agree as well.
#[tokio::test]
async fn bound_rules_agree_with_the_matcher() {
    let fields = fields();
    let (_pool, mut conn) = migrated(&fields).await;
    for (id, body) in [
        ("a1", json!({"team": "a", "done": false})),
        ("a2", json!({"team": "a", "done": true})),
        ("b1", json!({"team": "b", "done": false, "tags": ["x"]})),
        ("n1", json!({"done": false})),
    ] {
        sqlx::query(
            "INSERT INTO syncline_documents (collection, id, body) VALUES ('tasks', $1, $2::jsonb)",
        )
        .bind(id)
        .bind(body.to_string())
        .execute(&mut conn)
        .await
        .expect("insert");
    }
    let rule = Selector::parse_rule(
        &json!({"team": {"$in": {"$claim": "teams"}}}),
        &fields,
        "read_filter",
    )
    .expect("rule");
    let mine = Selector::parse(&json!({"$or": [{"done": false}, {"tags": "x"}]}), &fields).unwrap();
    let cases = [
        (json!({"teams": ["a"]}), vec!["a1"]),
        (json!({"teams": ["a", "b"]}), vec!["a1", "b1"]),
        (json!({"teams": []}), vec![]),
        (json!({}), vec![]),
    ];
    for (claims, want) in cases {
        let s = Selector::intersect(&mine, &rule.bind_claims(&claims).expect("bind"));
        let got = sql_ids(&mut conn, &s).await;
        let want: BTreeSet<String> = want.into_iter().map(str::to_owned).collect();
        assert_eq!(got, want, "{claims}");
    }
}

/// `access = "either"`: the owner rule beside a claim rule, `(owner OR rule) AND selector`,
/// selects the same documents in SQL (the owner column) and in memory (the projection with
/// its owner), and a missing claim leaves only the owner's documents.
#[tokio::test]
async fn owner_or_rule_agrees_with_the_matcher() {
    let fields = fields();
    let (_pool, mut conn) = migrated(&fields).await;
    let docs = [
        ("a1", "alice", json!({"team": "a", "done": false})),
        ("a2", "bob", json!({"team": "a", "done": false})),
        ("b1", "alice", json!({"team": "b", "done": false})),
        ("b2", "bob", json!({"team": "b", "done": true})),
        ("n1", "carol", json!({"done": false})),
    ];
    for (id, owner, body) in &docs {
        sqlx::query(
            "INSERT INTO syncline_documents (collection, id, owner, body) \
             VALUES ('tasks', $1, $2, $3::jsonb)",
        )
        .bind(id)
        .bind(owner)
        .bind(body.to_string())
        .execute(&mut conn)
        .await
        .expect("insert");
    }
    let rule = Selector::parse_rule(&json!({"team": {"$claim": "team"}}), &fields, "read_filter")
        .expect("rule");
    let open = Selector::parse(&json!({"done": false}), &fields).unwrap();
    let cases = [
        ("alice", json!({"team": "a"}), vec!["a1", "a2", "b1"]),
        ("bob", json!({"team": "b"}), vec!["a2", "b1"]),
        ("carol", json!({}), vec!["n1"]),
        ("dan", json!({"team": "c"}), vec![]),
    ];
    for (subject, claims, want) in cases {
        let allowed = Selector::union(
            &Selector::owned_by(subject),
            &rule.bind_claims(&claims).expect("bind"),
        );
        let s = Selector::intersect(&open, &allowed);
        let want: BTreeSet<String> = want.into_iter().map(str::to_owned).collect();
        assert_eq!(sql_ids(&mut conn, &s).await, want, "{subject} {claims}");
        let in_memory: BTreeSet<String> = docs
            .iter()
            .filter(|(_, owner, body)| {
                let p = fields.project(&body.to_string()).expect("projects");
                s.matches_projected_of(&p, owner)
            })
            .map(|(id, _, _)| (*id).to_owned())
            .collect();
        assert_eq!(in_memory, want, "in memory: {subject} {claims}");
        // Without an owner (a body alone), the owner clause never matches.
        assert!(!Selector::owned_by(subject).matches(&json!({})));
    }
}

/// With the declared fields' indexes, 10,000 documents and fresh statistics, the compiled
/// predicates are served by those indexes (btree for scalars, GIN for arrays), also under the
/// page query's order and limit.
#[tokio::test]
async fn declared_field_indexes_serve_compiled_predicates() {
    let fields = fields();
    let (_pool, mut conn) = migrated(&fields).await;
    sqlx::query(
        "INSERT INTO syncline_documents (collection, id, body)
         SELECT 'tasks', 'd' || i, jsonb_build_object(
             'team', 't' || (i % 100), 'priority', i % 1000, 'done', i % 2 = 0,
             'meta', jsonb_build_object('region', 'r' || (i % 50)),
             'tags', jsonb_build_array('x' || (i % 200), 'common'),
             'scores', jsonb_build_array(i % 300))
         FROM generate_series(1, 10000) AS i",
    )
    .execute(&mut conn)
    .await
    .expect("insert 10k");
    sqlx::query("ANALYZE syncline_documents")
        .execute(&mut conn)
        .await
        .expect("analyze");
    let index = |path: &str| fields.get(path).expect("declared").index_name();
    let cases = [
        (json!({"team": "t7"}), index("team")),
        (json!({"team": {"$in": ["t7", "t8"]}}), index("team")),
        (json!({"meta.region": "r3"}), index("meta.region")),
        (json!({"priority": {"$gte": 990}}), index("priority")),
        (
            json!({"priority": {"$gt": 10, "$lte": 12}}),
            index("priority"),
        ),
        (json!({"tags": "x17"}), index("tags")),
        (json!({"scores": {"$in": [5, 6]}}), index("scores")),
        (
            json!({"$or": [{"team": "t1"}, {"tags": "x3"}]}),
            index("tags"),
        ),
    ];
    for (v, want) in cases {
        let s = Selector::parse(&v, &fields).expect("parse");
        let p = s.to_sql(2).expect("compile");
        for order in ["", " ORDER BY change_xid, change_seq LIMIT 100"] {
            let text = format!(
                "EXPLAIN SELECT id FROM syncline_documents d WHERE d.collection = $1 AND ({}){order}",
                p.sql
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text)).bind("tasks");
            for param in &p.params {
                q = bind(q, param);
            }
            let plan: Vec<String> = q
                .fetch_all(&mut conn)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains(&want), "{v}{order}: expected {want}:\n{plan}");
        }
    }
}

/// Numbers with more digits than an f64, in documents and in selectors from the wire: SQL
/// and the matcher compare them exactly, and agree.
#[tokio::test]
async fn wide_numbers_compare_exactly_in_sql_and_in_memory() {
    let fields = fields();
    let (_pool, mut conn) = migrated(&fields).await;
    let bodies = [
        ("n1", r#"{"priority": 0.3}"#),
        ("n2", r#"{"priority": 0.30000000000000000001}"#),
        ("n3", r#"{"priority": 0.30000000000000000002}"#),
        ("n4", r#"{"priority": 123456789012345678901234567890}"#),
        ("n5", r#"{"priority": 123456789012345678901234567891}"#),
        ("n6", r#"{"scores": [1.8217090164508454, 7]}"#),
    ];
    for (id, body) in bodies {
        sqlx::query(
            "INSERT INTO syncline_documents (collection, id, body) VALUES ('tasks', $1, $2::jsonb)",
        )
        .bind(id)
        .bind(body)
        .execute(&mut conn)
        .await
        .expect("insert");
    }
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, body::text FROM syncline_documents WHERE collection = 'tasks' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read");
    let cases: [(&str, &[&str]); 6] = [
        (
            r#"{"priority": {"$gt": 0.30000000000000000001}}"#,
            &["n3", "n4", "n5"],
        ),
        (r#"{"priority": 0.30000000000000000001}"#, &["n2"]),
        (r#"{"priority": {"$lte": 0.3}}"#, &["n1"]),
        (
            r#"{"priority": {"$gte": 123456789012345678901234567891}}"#,
            &["n5"],
        ),
        (
            r#"{"priority": {"$in": [123456789012345678901234567890, 0.3]}}"#,
            &["n1", "n4"],
        ),
        (r#"{"scores": 1.8217090164508454}"#, &["n6"]),
    ];
    for (text, want) in cases {
        let s = Selector::parse_json(text.as_bytes(), &fields).expect("parse");
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(sql_ids(&mut conn, &s).await, want, "{text} in SQL");
        let in_memory: BTreeSet<String> = stored
            .iter()
            .filter(|(_, body)| s.matches_json(body))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(in_memory, want, "{text} in memory");
    }
}
