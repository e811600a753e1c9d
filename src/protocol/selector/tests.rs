//! Unit tests of selectors: parsing, errors, bounds, SQL text, matching, claims, digests.
//! The SQL's agreement with the matcher on a real PostgreSQL is in
//! `tests/replication/selector_sql.rs`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::protocol::{Kind, ProtocolError, Reason};

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
    FilterFields::from_config("tasks", &declared).expect("valid filter_fields")
}

fn parse(v: Value) -> Selector {
    Selector::parse(&v, &fields()).unwrap_or_else(|e| panic!("{v}: {e:?}"))
}

fn error(v: Value) -> ProtocolError {
    match Selector::parse(&v, &fields()) {
        Ok(s) => panic!("{v} parsed: {s:?}"),
        Err(e) => e,
    }
}

fn m(selector: Value, doc: Value) -> bool {
    let s = parse(selector);
    let by_value = s.matches(&doc);
    let by_text = s.matches_json(&doc.to_string());
    assert_eq!(by_value, by_text, "matches and matches_json disagree");
    by_value
}

// ---- declared fields ----

#[test]
fn filter_fields_parse_types_and_refuse_bad_keys() {
    let f = fields();
    assert_eq!(
        f.get("meta.region").map(|d| d.ty.to_string()),
        Some("string".into())
    );
    assert_eq!(
        f.get("tags").map(|d| d.ty.to_string()),
        Some("string[]".into())
    );
    let bad = |k: &str, t: &str| {
        let declared = BTreeMap::from([(k.to_owned(), t.to_owned())]);
        FilterFields::from_config("tasks", &declared).expect_err(k)
    };
    let e = bad("done", "bool");
    assert!(
        e.contains("collection \"tasks\"") && e.contains("filter_fields.\"done\""),
        "{e}"
    );
    assert!(e.contains("unknown type \"bool\""), "{e}");
    for key in [
        "a.0", "0", "a b", "a'b", "$a", "a..b", "", "a-b", "a\\b", "a,b", "a}b", "é", "-1", "a.",
    ] {
        let e = bad(key, "string");
        assert!(e.contains("filter_fields."), "{key}: {e}");
    }
    assert!(bad(&format!("{}a", "a.".repeat(8)), "string").contains("segments"));
}

#[test]
fn index_expressions_are_built_from_the_declaration() {
    let f = fields();
    let region = f.get("meta.region").unwrap();
    assert_eq!(
        region.index_expression(),
        "collection, ((CASE WHEN jsonb_typeof((body #> '{meta,region}')) = 'string' THEN (body #> '{meta,region}') #>> '{}' END) COLLATE \"C\")"
    );
    let priority = f.get("priority").unwrap();
    assert_eq!(
        priority.index_expression(),
        "collection, ((CASE WHEN jsonb_typeof((body #> '{priority}')) = 'number' THEN (body #> '{priority}')::numeric END))"
    );
    assert_eq!(
        f.get("tags").unwrap().index_expression(),
        "(body #> '{tags}') jsonb_path_ops"
    );
    let ddl = priority.index_ddl(true);
    assert!(
        ddl.starts_with("CREATE INDEX CONCURRENTLY IF NOT EXISTS syncline_filter_"),
        "{ddl}"
    );
    assert!(
        f.get("tags")
            .unwrap()
            .index_ddl(false)
            .contains("USING gin")
    );
    assert_eq!(f.index_ddl(false).len(), 7);
    assert_ne!(priority.index_name(), region.index_name());
}

// ---- parsing ----

#[test]
fn every_operator_parses() {
    for v in [
        json!({}),
        json!({"done": false}),
        json!({"priority": 3, "team": "a"}),
        json!({"meta.region": "eu"}),
        json!({"priority": {"$eq": 1, "$ne": 2, "$gt": 0, "$gte": 1.5, "$lt": 9, "$lte": 8e2}}),
        json!({"team": {"$in": ["a", "b"], "$nin": []}}),
        json!({"team": {"$exists": true}, "done": {"$exists": false}}),
        json!({"$and": [{"done": true}, {"$or": [{"team": "a"}, {"tags": "x"}]}]}),
        json!({"tags": {"$gt": "m"}, "scores": {"$in": [1, 2]}, "flags": true}),
    ] {
        parse(v);
    }
}

#[test]
fn errors_name_the_path_and_the_declared_type() {
    let e = error(json!({"priority": {"$gte": "3"}}));
    assert_eq!(e.kind, Kind::InvalidArgument);
    assert_eq!(e.reason, Reason::InvalidRequest);
    assert_eq!(e.field.as_deref(), Some("selector.priority.$gte"));
    assert_eq!(
        e.message,
        "selector.priority.$gte: expected a number (priority is declared number)"
    );
    let e = error(json!({"secret": 1}));
    assert_eq!(
        e.message,
        "selector.secret: not a filterable field of collection \"tasks\" (filter_fields)"
    );
    let e = error(json!({"$or": [{"done": true}, {"tags": {"$in": ["a", 3]}}]}));
    assert_eq!(e.field.as_deref(), Some("selector.$or[1].tags.$in[1]"));
    assert!(
        e.message
            .contains("expected a string (tags is declared string[])"),
        "{}",
        e.message
    );
    let cases = [
        (
            json!({"done": "true"}),
            "selector.done",
            "expected a boolean",
        ),
        (
            json!({"done": null}),
            "selector.done",
            "null is not supported",
        ),
        (
            json!({"team": {"name": "a"}}),
            "selector.team",
            "expected a string",
        ),
        (json!({"team": ["a"]}), "selector.team", "expected a string"),
        (json!({"tags": ["a"]}), "selector.tags", "expected a string"),
        (
            json!({"team": {"$regex": "a"}}),
            "selector.team.$regex",
            "unsupported operator",
        ),
        (
            json!({"team": {"$eq": "a", "x": 1}}),
            "selector.team.x",
            "mixed",
        ),
        (
            json!({"$nor": [{"done": true}]}),
            "selector.$nor",
            "unsupported operator",
        ),
        (
            json!({"$where": "1"}),
            "selector.$where",
            "unsupported operator",
        ),
        (json!({"$or": []}), "selector.$or", "non-empty array"),
        (
            json!({"$and": {"done": true}}),
            "selector.$and",
            "non-empty array",
        ),
        (
            json!({"$and": [3]}),
            "selector.$and[0]",
            "expected an object",
        ),
        (
            json!({"team": {"$in": "a"}}),
            "selector.team.$in",
            "expected an array of strings",
        ),
        (
            json!({"team": {"$exists": 1}}),
            "selector.team.$exists",
            "expected true or false",
        ),
        (
            json!({"team": {"$claim": "team"}}),
            "selector.team.$claim",
            "only allowed",
        ),
        (
            json!({"team": {"$in": [{"$claim": "t"}]}}),
            "selector.team.$in[0].$claim",
            "only allowed",
        ),
        (json!({"team": "a\u{0}b"}), "selector.team", "NUL"),
        (
            json!({"meta": {"region": "eu"}}),
            "selector.meta",
            "not a filterable field",
        ),
        (json!(["done"]), "selector", "expected an object"),
    ];
    for (v, field, text) in cases {
        let e = error(v.clone());
        assert_eq!(e.kind, Kind::InvalidArgument, "{v}");
        assert_eq!(e.field.as_deref(), Some(field), "{v}: {}", e.message);
        assert!(
            e.message.starts_with(&format!("{field}: ")),
            "{v}: {}",
            e.message
        );
        assert!(e.message.contains(text), "{v}: {}", e.message);
    }
}

#[test]
fn echoed_keys_are_cut() {
    let key = "k".repeat(100_000);
    let e = error(json!({ key: 1 }));
    assert!(e.message.len() < 300, "{}", e.message.len());
    assert!(e.field.unwrap().len() < 100);
}

#[test]
fn bounds_are_enforced() {
    let limit = |e: ProtocolError| {
        assert_eq!(e.kind, Kind::InvalidArgument);
        assert_eq!(e.reason, Reason::LimitExceeded, "{}", e.message);
        e
    };
    // Depth.
    let mut deep = json!({"done": true});
    for _ in 0..DEPTH_MAX {
        deep = json!({ "$and": [deep] });
    }
    parse(deep.clone());
    limit(error(json!({ "$or": [deep] })));
    // Clauses.
    let many: Vec<Value> = (0..=CLAUSES_MAX).map(|i| json!({"priority": i})).collect();
    let e = limit(error(json!({ "$or": many })));
    assert!(e.message.contains("more than 64"), "{}", e.message);
    let ok: Vec<Value> = (0..CLAUSES_MAX).map(|i| json!({"priority": i})).collect();
    parse(json!({ "$or": ok }));
    // $in values.
    let values: Vec<u32> = (0..=IN_VALUES_MAX as u32).collect();
    let e = limit(error(json!({"priority": {"$in": values}})));
    assert_eq!(e.field.as_deref(), Some("selector.priority.$in"));
    // Values in all.
    let lists: Vec<Value> = (0..5)
        .map(|_| json!({"priority": {"$in": (0..IN_VALUES_MAX as u32).collect::<Vec<_>>()}}))
        .collect();
    limit(error(json!({ "$and": lists })));
    // String bytes.
    let e = limit(error(json!({"team": "x".repeat(STRING_BYTES_MAX + 1)})));
    assert!(e.message.contains("more than 1024"), "{}", e.message);
    parse(json!({"team": "x".repeat(STRING_BYTES_MAX)}));
    // Numbers numeric cannot hold.
    for n in ["1e131072", "1e-16384", "1e999999999999"] {
        let text = format!("{{\"priority\": {n}}}");
        let e = Selector::parse_json(text.as_bytes(), &fields()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("selector.priority"), "{n}");
        assert!(e.message.contains("numeric"), "{}", e.message);
    }
    assert!(Selector::parse_json(b"{\"priority\": 1e131071}", &fields()).is_ok());
    // JSON bytes, refused before parsing.
    let big = format!("{{\"team\": \"{}\"}}", "x".repeat(SELECTOR_BYTES_MAX));
    let e = limit(Selector::parse_json(big.as_bytes(), &fields()).unwrap_err());
    assert_eq!(e.field.as_deref(), Some("selector"));
    let e = Selector::parse_json(b"{\"team\": ", &fields()).unwrap_err();
    assert!(e.message.starts_with("selector: not JSON"), "{}", e.message);
    assert!(
        Selector::parse_json(b"", &fields())
            .unwrap()
            .is_everything()
    );
    assert!(Selector::parse_json(b"{\"done\": true}", &fields()).is_ok());
}

/// Numbers are compared as the client wrote them, not as a (best-effort) f64 reading.
#[test]
fn wire_numbers_keep_their_digits() {
    let p = |text: &str| {
        Selector::parse_json(text.as_bytes(), &fields())
            .unwrap()
            .to_sql(1)
            .unwrap()
            .params
    };
    assert_eq!(
        p(r#"{"priority": 1.8217090164508454}"#),
        vec![SqlParam::Numeric("18217090164508454e-16".into())]
    );
    assert_eq!(
        p(r#"{"priority": 123456789012345678901234567890}"#),
        vec![SqlParam::Numeric("12345678901234567890123456789e1".into())]
    );
    let s = Selector::parse_json(br#"{"priority": 0.30000000000000000001}"#, &fields()).unwrap();
    assert!(s.matches_json(r#"{"priority": 0.30000000000000000001}"#));
    assert!(!s.matches_json(r#"{"priority": 0.3}"#));
    // Repeated keys: the last one, as serde_json and jsonb keep.
    let s = Selector::parse_json(br#"{"team": "a", "team": "b"}"#, &fields()).unwrap();
    assert_eq!(s.canonical(), r#"{"team":{"$eq":"b"}}"#);
}

// ---- SQL ----

fn sql(v: Value, first: usize) -> SqlPredicate {
    parse(v).to_sql(first).expect("compiles")
}

#[test]
fn compiles_scalar_operators_with_numbered_params() {
    let p = sql(
        json!({"priority": {"$gte": 3, "$lt": 10.5}, "team": "a"}),
        4,
    );
    let k_priority = "(CASE WHEN jsonb_typeof((d.body #> '{priority}')) = 'number' THEN (d.body #> '{priority}')::numeric END)";
    let k_team = "(CASE WHEN jsonb_typeof((d.body #> '{team}')) = 'string' THEN (d.body #> '{team}') #>> '{}' END) COLLATE \"C\"";
    assert_eq!(
        p.sql,
        format!(
            "(({k_priority} >= $4::text::numeric) AND ({k_priority} < $5::text::numeric) AND ({k_team} = $6::text))"
        )
    );
    assert_eq!(
        p.params,
        vec![
            SqlParam::Numeric("3".into()),
            SqlParam::Numeric("105e-1".into()),
            SqlParam::Text("a".into())
        ]
    );
    let p = sql(
        json!({"done": {"$ne": true}, "team": {"$nin": ["a", "b"]}}),
        1,
    );
    assert!(p.sql.contains("= $1::boolean) IS NOT TRUE)"), "{}", p.sql);
    assert!(
        p.sql.contains("= ANY($2::text[])) IS NOT TRUE)"),
        "{}",
        p.sql
    );
    assert_eq!(
        p.params[1],
        SqlParam::TextArray(vec!["a".into(), "b".into()])
    );
    let p = sql(json!({"priority": {"$in": [1, 2.50]}}), 1);
    assert!(
        p.sql.ends_with("= ANY($1::text[]::numeric[]))"),
        "{}",
        p.sql
    );
    assert_eq!(
        p.params,
        vec![SqlParam::NumericArray(vec!["1".into(), "25e-1".into()])]
    );
    let p = sql(
        json!({"meta.region": {"$exists": true}, "team": {"$exists": false}}),
        1,
    );
    assert_eq!(
        p.sql,
        "(((d.body #> '{meta,region}') IS NOT NULL) AND ((d.body #> '{team}') IS NULL))"
    );
    assert!(p.params.is_empty());
    assert_eq!(sql(json!({}), 1).sql, "true");
    let p = sql(json!({"$or": [{"done": true}, {"done": false}]}), 7);
    assert!(
        p.sql.starts_with("((") && p.sql.contains(" OR "),
        "{}",
        p.sql
    );
    assert_eq!(p.params, vec![SqlParam::Bool(true), SqlParam::Bool(false)]);
}

#[test]
fn compiles_array_operators() {
    let p = sql(json!({"tags": "a"}), 1);
    assert_eq!(p.sql, "((d.body #> '{tags}') @> $1::text::jsonb)");
    assert_eq!(p.params, vec![SqlParam::Jsonb("[\"a\"]".into())]);
    let p = sql(json!({"scores": {"$in": [1, 2]}, "tags": {"$ne": "x"}}), 1);
    assert!(p.sql.contains("((d.body #> '{scores}') @> $1::text::jsonb OR (d.body #> '{scores}') @> $2::text::jsonb)"), "{}", p.sql);
    assert!(
        p.sql
            .contains("(((d.body #> '{tags}') @> $3::text::jsonb) IS NOT TRUE)"),
        "{}",
        p.sql
    );
    let p = sql(json!({"tags": {"$in": []}, "flags": {"$nin": []}}), 1);
    assert_eq!(p.sql, "((false IS NOT TRUE) AND false)");
    let p = sql(json!({"scores": {"$gt": 5}}), 1);
    assert!(
        p.sql
            .starts_with("(EXISTS (SELECT 1 FROM jsonb_array_elements("),
        "{}",
        p.sql
    );
    assert!(p.sql.ends_with("> $1::text::numeric))"), "{}", p.sql);
}

/// Hostile values: the SQL text is exactly the one of the same selector with harmless
/// values, so no client text reaches it.
#[test]
fn client_values_never_reach_the_sql_text() {
    let hostile = [
        "1=1) OR (1=1",
        "'; DROP TABLE syncline_documents; --",
        "\\' OR 1=1 --",
        "\"",
        "$1",
        "'{secret}') OR true OR ('",
        "é😀\u{202e}",
        "\u{7f}\u{1}",
    ];
    for h in hostile {
        let build = |s: &str| {
            json!({
                "team": s,
                "meta.region": {"$in": [s, "x"], "$gt": s, "$ne": s},
                "tags": {"$in": [s], "$lt": s, "$ne": s},
                "$or": [{"team": {"$nin": [s]}}, {"tags": s}],
            })
        };
        let evil = sql(build(h), 1);
        let plain = sql(build("x"), 1);
        assert_eq!(evil.sql, plain.sql, "{h:?}");
        // (Short ones like `"` or `$1` are also fixed fragments.)
        assert!(h.len() < 4 || !evil.sql.contains(h), "{h:?}");
        assert!(
            evil.params
                .iter()
                .any(|p| matches!(p, SqlParam::Text(t) if t == h))
        );
    }
    // Hostile paths are not declared, so refused before any SQL.
    for path in [
        "team') OR (1=1",
        "team,secret",
        "team}'",
        "meta.region\u{0}",
        "tags\"",
        "\\",
    ] {
        let e = error(json!({ path: "x" }));
        assert!(
            e.message.contains("not a filterable field"),
            "{}",
            e.message
        );
    }
    // NUL, which PostgreSQL text cannot hold, is refused rather than failing the query.
    assert!(
        error(json!({"tags": {"$in": ["\u{0}"]}}))
            .message
            .contains("NUL")
    );
}

// ---- matching ----

#[test]
fn scalar_semantics_follow_mingo() {
    // implicit $eq, types never cross
    assert!(m(json!({"priority": 3}), json!({"priority": 3})));
    assert!(m(json!({"priority": 3}), json!({"priority": 3.0})));
    assert!(!m(json!({"priority": 3}), json!({"priority": "3"})));
    assert!(!m(json!({"done": false}), json!({"done": 0})));
    assert!(!m(json!({"done": false}), json!({})));
    // $ne / $nin match absent fields, other types and nulls
    assert!(m(json!({"priority": {"$ne": 3}}), json!({})));
    assert!(m(
        json!({"priority": {"$ne": 3}}),
        json!({"priority": null})
    ));
    assert!(m(json!({"priority": {"$ne": 3}}), json!({"priority": "3"})));
    assert!(!m(json!({"priority": {"$ne": 3}}), json!({"priority": 3})));
    assert!(m(json!({"team": {"$nin": ["a"]}}), json!({"team": null})));
    assert!(!m(json!({"team": {"$nin": ["a"]}}), json!({"team": "a"})));
    assert!(!m(json!({"team": {"$in": []}}), json!({"team": "a"})));
    assert!(m(json!({"team": {"$nin": []}}), json!({})));
    // comparisons need the type
    assert!(!m(
        json!({"priority": {"$gt": 1}}),
        json!({"priority": "9"})
    ));
    assert!(!m(
        json!({"priority": {"$lt": 1}}),
        json!({"priority": null})
    ));
    assert!(!m(json!({"team": {"$lt": "b"}}), json!({})));
    assert!(m(json!({"done": {"$gt": false}}), json!({"done": true})));
    // $exists: present, null included; paths through non-objects do not exist
    assert!(m(json!({"team": {"$exists": true}}), json!({"team": null})));
    assert!(m(
        json!({"meta.region": {"$exists": false}}),
        json!({"meta": "eu"})
    ));
    assert!(m(
        json!({"meta.region": {"$exists": false}}),
        json!({"meta": [{"region": "eu"}]})
    ));
    assert!(m(
        json!({"meta.region": "eu"}),
        json!({"meta": {"region": "eu"}})
    ));
    // a scalar field holding an array has no candidate (the declaration rules)
    assert!(!m(json!({"team": "a"}), json!({"team": ["a"]})));
    assert!(m(json!({"team": {"$ne": "a"}}), json!({"team": ["a"]})));
    // $and / $or / implicit and
    let s = json!({"done": false, "$or": [{"priority": {"$gte": 5}}, {"team": "ops"}]});
    assert!(m(s.clone(), json!({"done": false, "priority": 7})));
    assert!(m(s.clone(), json!({"done": false, "team": "ops"})));
    assert!(!m(s.clone(), json!({"done": true, "team": "ops"})));
    assert!(!m(s, json!({"done": false, "priority": 4, "team": "dev"})));
    assert!(m(json!({}), json!({"anything": 1})));
}

#[test]
fn array_semantics_are_some_element() {
    let doc = json!({"tags": ["b", 3, null, ["a"], {"x": "a"}], "scores": [1, 10]});
    assert!(m(json!({"tags": "b"}), doc.clone()));
    assert!(
        !m(json!({"tags": "a"}), doc.clone()),
        "nested arrays and objects are not elements"
    );
    assert!(m(json!({"tags": {"$ne": "a"}}), doc.clone()));
    assert!(!m(json!({"tags": {"$ne": "b"}}), doc.clone()));
    assert!(m(json!({"tags": {"$in": ["z", "b"]}}), doc.clone()));
    assert!(!m(json!({"tags": {"$nin": ["z", "b"]}}), doc.clone()));
    // each operator alone, as in MongoDB: 1 > 0 and 10 > 5 although no element is in (5, 0)
    assert!(m(json!({"scores": {"$gt": 5, "$lt": 2}}), doc.clone()));
    assert!(!m(json!({"scores": {"$gt": 10}}), doc.clone()));
    assert!(m(json!({"scores": 1.0}), doc.clone()));
    // a scalar where an array is declared has no element
    assert!(!m(json!({"tags": "b"}), json!({"tags": "b"})));
    assert!(m(json!({"tags": {"$ne": "b"}}), json!({"tags": "b"})));
    assert!(!m(json!({"tags": "b"}), json!({"tags": []})));
    assert!(m(json!({"tags": {"$exists": true}}), json!({"tags": []})));
}

#[test]
fn strings_order_as_bytes_and_numbers_exactly() {
    assert!(m(json!({"team": {"$lt": "a"}}), json!({"team": "Z"})));
    assert!(m(json!({"team": {"$gt": "z"}}), json!({"team": "é"})));
    assert!(m(
        json!({"team": {"$gt": "\u{ffff}"}}),
        json!({"team": "😀"})
    ));
    assert!(m(json!({"team": {"$lt": "ab"}}), json!({"team": "a"})));
    assert!(m(json!({"team": "é"}), json!({"team": "\u{e9}"})));
    assert!(
        !m(json!({"team": "é"}), json!({"team": "e\u{301}"})),
        "no normalization"
    );
    let num = |s: &str| Num::parse(s).unwrap();
    assert_eq!(num("1"), num("1.000"));
    assert_eq!(num("100"), num("1e2"));
    assert_eq!(num("-0.0"), num("0"));
    assert_eq!(num("0.5").canonical(), "5e-1");
    assert!(num("-2") < num("-1.5") && num("-1.5") < num("0") && num("0") < num("1e-300"));
    assert!(num("9007199254740993") > num("9007199254740992"));
    assert!(num("12") < num("123") && num("12") < num("1.23e1") && num("13") > num("1.23e1"));
    assert!(num("99") < num("1e2") && num("-99") > num("-1e2"));
    // exact on text, where f64 rounds
    let s = parse(json!({"priority": {"$gt": 0.3}}));
    assert!(s.matches_json(r#"{"priority": 0.30000000000000000001}"#));
    assert!(!s.matches_json(r#"{"priority": 0.3}"#));
    let s = parse(json!({"priority": {"$gte": 18446744073709551615u64}}));
    assert!(s.matches_json(r#"{"priority": 18446744073709551616}"#));
    assert!(!s.matches_json(r#"{"priority": 18446744073709551614}"#));
    assert!(s.matches(&json!({"priority": 18446744073709551615u64})));
    // duplicate keys: the last one, as jsonb keeps
    assert!(parse(json!({"team": "b"})).matches_json(r#"{"team": "a", "team": "b"}"#));
    assert!(!parse(json!({})).matches_json("not json"));
}

#[test]
fn projections_keep_what_selectors_read() {
    let f = fields();
    let body = r#"{"done": false, "meta": {"region": "eu", "x": 1}, "tags": ["a", 1],
        "priority": 1.000000000000000000001, "title": "secret", "team": null, "flags": {}}"#;
    let p = f.project_json(body).expect("JSON");
    let v: Value = serde_json::from_str(&p).expect("projection is JSON");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["done", "flags", "meta.region", "priority", "tags", "team"]
    );
    assert!(p.contains("\"priority\":1.000000000000000000001"), "{p}");
    assert!(!p.contains("secret"));
    assert_eq!(f.project_json("{\"meta\": \"eu\"}").unwrap(), "{}");
    assert_eq!(f.project_json("nope"), None);
    for sel in [
        json!({"priority": {"$gt": 1}}),
        json!({"priority": 1}),
        json!({"meta.region": "eu", "done": false}),
        json!({"team": {"$exists": true}, "scores": {"$exists": false}}),
        json!({"tags": "a", "flags": {"$ne": true}}),
        json!({"tags": {"$in": ["b"]}}),
        json!({"meta.region": {"$exists": false}}),
    ] {
        let s = parse(sel.clone());
        let want = s.matches_json(body);
        assert_eq!(s.matches_projection(&p), want, "{sel}");
        assert_eq!(
            s.matches_projected(&f.project(body).unwrap()),
            want,
            "{sel}"
        );
        assert_eq!(
            s.matches_projected(&Projection::from_json(&p).unwrap()),
            want,
            "{sel}"
        );
    }
    assert!(f.project("[1").is_none() && Projection::from_json("[]").is_none());
    assert!(
        f.projection_sql("OLD.body")
            .starts_with("(SELECT coalesce(jsonb_object_agg(")
    );
}

// ---- claims ----

fn rule(v: Value) -> Selector {
    Selector::parse_rule(&v, &fields(), "read_filter").expect("valid rule")
}

#[test]
fn claims_bind_and_missing_claims_match_nothing() {
    let r = rule(json!({"team": {"$claim": "team"}, "done": {"$ne": {"$claim": "hide"}}}));
    assert!(r.has_unbound_claims());
    assert!(!r.matches(&json!({"team": "a"})), "unbound matches nothing");
    assert_eq!(r.to_sql(1).unwrap_err().kind, Kind::Internal);
    let bound = r.bind_claims(&json!({"team": "a", "hide": true})).unwrap();
    assert!(!bound.has_unbound_claims());
    assert!(bound.matches(&json!({"team": "a", "done": false})));
    assert!(!bound.matches(&json!({"team": "b", "done": false})));
    assert!(!bound.matches(&json!({"team": "a", "done": true})));
    // A missing (or null) claim: nothing, even through $ne / $nin / $or.
    for claims in [
        json!({"team": "a"}),
        json!({"team": "a", "hide": null}),
        json!({}),
        json!(null),
    ] {
        let b = r.bind_claims(&claims).unwrap();
        assert!(!b.matches(&json!({"team": "a", "done": false})), "{claims}");
        assert_eq!(b.to_sql(1).unwrap().sql, "false");
    }
    let r = rule(json!({"$or": [{"team": {"$nin": {"$claim": "banned"}}}, {"done": true}]}));
    assert!(
        !r.bind_claims(&json!({}))
            .unwrap()
            .matches(&json!({"done": true}))
    );
    // Wrong type: PERMISSION_DENIED naming the claim, not its value.
    let e = rule(json!({"team": {"$claim": "team"}}))
        .bind_claims(&json!({"team": 12345}))
        .unwrap_err();
    assert_eq!(e.kind, Kind::PermissionDenied);
    assert!(
        e.message.contains("\"team\"") && !e.message.contains("12345"),
        "{}",
        e.message
    );
    // Lists: a whole list, a scalar as a list of one, dotted and namespaced names.
    let r = rule(json!({"team": {"$in": {"$claim": "teams"}}}));
    let b = r.bind_claims(&json!({"teams": ["a", "b"]})).unwrap();
    assert!(b.matches(&json!({"team": "b"})) && !b.matches(&json!({"team": "c"})));
    let b = r.bind_claims(&json!({"teams": "c"})).unwrap();
    assert!(b.matches(&json!({"team": "c"})));
    assert!(r.bind_claims(&json!({"teams": [1]})).is_err());
    let too_many: Vec<String> = (0..=IN_VALUES_MAX).map(|i| i.to_string()).collect();
    assert!(r.bind_claims(&json!({ "teams": too_many })).is_err());
    let r = rule(
        json!({"meta.region": {"$claim": "org.region"}, "team": {"$claim": "https://x.io/team"}}),
    );
    let b = r
        .bind_claims(&json!({"org": {"region": "eu"}, "https://x.io/team": "a"}))
        .unwrap();
    assert!(b.matches(&json!({"meta": {"region": "eu"}, "team": "a"})));
    // A rule without claims binds to itself.
    let plain = rule(json!({"done": false}));
    assert_eq!(plain.bind_claims(&json!({})).unwrap(), plain);
}

#[test]
fn intersect_only_narrows() {
    let read = rule(json!({"team": {"$claim": "team"}}))
        .bind_claims(&json!({"team": "a"}))
        .unwrap();
    let mine = parse(json!({"$or": [{"team": "b"}, {"done": false}]}));
    let both = Selector::intersect(&mine, &read);
    assert!(both.matches(&json!({"team": "a", "done": false})));
    assert!(
        !both.matches(&json!({"team": "b", "done": false})),
        "cannot widen to team b"
    );
    assert!(!both.matches(&json!({"team": "a", "done": true})));
    let unbound = rule(json!({"team": {"$claim": "team"}}));
    assert!(Selector::intersect(&mine, &unbound).has_unbound_claims());
    assert!(!Selector::nothing().matches(&json!({})));
    assert!(Selector::everything().matches(&json!({})));
}

#[test]
fn access_rules_from_the_configuration() {
    let text = r#"
        [auth]
        mode = "none"

        [[collections]]
        name = "tasks"
        filter_fields = { team = "string", done = "boolean", "meta.region" = "string", tags = "string[]" }
        access = "either"
        read_filter = { team = { "$claim" = "team" } }
        write_filter = { "$and" = [ { team = { "$claim" = "team" } }, { done = false } ] }
    "#;
    let config = crate::config::Config::from_toml(text).expect("config parses");
    let c = &config.collections[0];
    let f = FilterFields::from_config(&c.name, &c.filter_fields).unwrap();
    let rules = AccessRules::from_config(
        &f,
        c.access.as_deref(),
        c.read_filter.as_ref(),
        c.write_filter.as_ref(),
    )
    .unwrap();
    assert_eq!(rules.access, Access::Either);
    let write = rules
        .write
        .unwrap()
        .bind_claims(&json!({"team": "a"}))
        .unwrap();
    assert!(write.matches(&json!({"team": "a", "done": false})));
    assert!(!write.matches(&json!({"team": "a", "done": true})));
    // Bad combinations name the collection.
    let rf = json!({"team": {"$claim": "team"}});
    let e = AccessRules::from_config(&f, None, Some(&rf), None).unwrap_err();
    assert!(e.contains("\"tasks\"") && e.contains("need access"), "{e}");
    let e = AccessRules::from_config(&f, Some("claims"), Some(&rf), None).unwrap_err();
    assert!(e.contains("needs both"), "{e}");
    let e = AccessRules::from_config(&f, Some("all"), None, None).unwrap_err();
    assert!(e.contains("\"all\""), "{e}");
    let bad = json!({"secret": {"$claim": "team"}});
    let e = AccessRules::from_config(&f, Some("claims"), Some(&bad), Some(&json!({}))).unwrap_err();
    assert!(
        e.contains("collection \"tasks\": read_filter.secret: not a filterable field"),
        "{e}"
    );
    assert_eq!(
        AccessRules::from_config(&f, None, None, None)
            .unwrap()
            .access,
        Access::Owner
    );
}

// ---- canonical form and digest ----

#[test]
fn canonical_form_ignores_spelling() {
    let same = [
        json!({"team": "a", "priority": {"$gte": 1}}),
        json!({"priority": {"$gte": 1.0}, "team": {"$eq": "a"}}),
        json!({"$and": [{"priority": {"$gte": 10e-1}}, {"$and": [{"team": "a"}, {"team": "a"}]}]}),
    ];
    let canon: Vec<String> = same.iter().map(|v| parse(v.clone()).canonical()).collect();
    assert_eq!(
        canon[0],
        r#"{"$and":[{"priority":{"$gte":1}},{"team":{"$eq":"a"}}]}"#
    );
    assert!(canon.iter().all(|c| c == &canon[0]), "{canon:?}");
    let digests: Vec<[u8; 32]> = same.iter().map(|v| parse(v.clone()).digest()).collect();
    assert!(digests.iter().all(|d| d == &digests[0]));
    assert_eq!(
        parse(json!({"team": {"$in": ["b", "a", "b"]}})).canonical(),
        parse(json!({"team": {"$in": ["a", "b"]}})).canonical()
    );
    assert_eq!(parse(json!({})).canonical(), "{}");
    assert_eq!(Selector::nothing().canonical(), r#"{"$or":[]}"#);
    // Different selectors, different digests.
    let differ = [
        json!({}),
        json!({"team": "a"}),
        json!({"team": "b"}),
        json!({"team": {"$ne": "a"}}),
        json!({"tags": "a"}),
        json!({"priority": 1}),
        json!({"priority": 1.5}),
        json!({"$or": [{"team": "a"}, {"priority": 1}]}),
        json!({"team": "a", "priority": 1}),
    ];
    let mut seen = std::collections::HashSet::new();
    for v in differ {
        assert!(seen.insert(parse(v.clone()).digest()), "{v}");
    }
    // The declared type is part of the digest.
    let other = FilterFields::from_config(
        "tasks",
        &BTreeMap::from([("team".to_owned(), "string[]".to_owned())]),
    )
    .unwrap();
    let v = json!({"team": "a"});
    assert_ne!(
        Selector::parse(&v, &other).unwrap().digest(),
        parse(v.clone()).digest()
    );
    assert_eq!(
        Selector::parse(&v, &other).unwrap().canonical(),
        parse(v).canonical()
    );
}

/// Random JSON, mostly selector-shaped junk: parsing never panics, refusals are always
/// INVALID_ARGUMENT naming a path under `selector`, and what parses compiles and matches.
#[test]
fn random_input_is_refused_cleanly() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    fn junk(rng: &mut StdRng, depth: usize) -> Value {
        let keys = [
            "done",
            "priority",
            "team",
            "meta.region",
            "tags",
            "scores",
            "flags",
            "meta",
            "$and",
            "$or",
            "$eq",
            "$ne",
            "$gt",
            "$in",
            "$nin",
            "$exists",
            "$claim",
            "$not",
            "",
            "x.y",
        ];
        match rng.random_range(0..if depth > 4 { 6 } else { 9 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.random_bool(0.5)),
            2 => json!(rng.random_range(-5.0..5.0)),
            3 => json!(rng.random_range(-3i64..3)),
            4 => json!(["a", "b", "\u{0}", "é"][rng.random_range(0..4)]),
            5 => json!(u64::MAX),
            6 | 7 => {
                let mut map = serde_json::Map::new();
                for _ in 0..rng.random_range(0..4) {
                    let key = keys[rng.random_range(0..keys.len())].to_owned();
                    map.insert(key, junk(rng, depth + 1));
                }
                Value::Object(map)
            }
            _ => Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| junk(rng, depth + 1))
                    .collect(),
            ),
        }
    }
    let mut rng = StdRng::seed_from_u64(15);
    let f = fields();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let v = junk(&mut rng, 0);
        match Selector::parse(&v, &f) {
            Ok(s) => {
                ok += 1;
                let p = s.to_sql(1).expect("a parsed selector compiles");
                let placeholders = p.sql.matches('$').count();
                assert_eq!(placeholders, p.params.len(), "{v}: {}", p.sql);
                s.matches(&v);
                s.matches_json(&v.to_string());
                let again = Selector::parse_json(s.canonical().as_bytes(), &f);
                if let Ok(again) = again {
                    assert_eq!(again.canonical(), s.canonical(), "{v}");
                }
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.kind, Kind::InvalidArgument, "{v}: {e:?}");
                let field = e.field.clone().unwrap_or_default();
                assert!(field.starts_with("selector"), "{v}: {e:?}");
                assert!(e.message.starts_with(&format!("{field}: ")), "{v}: {e:?}");
            }
        }
    }
    assert!(
        ok > 1000 && refused > 1000,
        "{ok} parsed, {refused} refused"
    );
}
