//! Seeded randomized convergence: replicas edit one document offline from the same base, then
//! their rows reach the server one after another in two different random orders.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::json::canonical;
use super::{CrdtKind, MergePolicy, Resolution, Side, Strategy, resolve};

const COUNTERS: [&[&str]; 3] = [&["c0"], &["c1"], &["stats", "likes"]];
const SETS: [&[&str]; 2] = [&["tags"], &["meta", "labels"]];

fn policy() -> MergePolicy {
    MergePolicy {
        strategy: Strategy::Crdt,
        lww_field: Some(vec!["at".to_owned()]),
        crdt: HashMap::from([
            ("c0".to_owned(), CrdtKind::Counter),
            ("c1".to_owned(), CrdtKind::Counter),
            ("stats.likes".to_owned(), CrdtKind::Counter),
            ("tags".to_owned(), CrdtKind::GSet),
            ("meta.labels".to_owned(), CrdtKind::GSet),
            ("at".to_owned(), CrdtKind::Lww),
            ("status".to_owned(), CrdtKind::Lww),
        ]),
        ..MergePolicy::default()
    }
}

fn base() -> Value {
    json!({
        "c0": 0,
        "c1": 10,
        "stats": {"likes": 0, "note": "n"},
        "tags": ["t0"],
        "meta": {"labels": []},
        "title": "t",
        "nested": {"a": 0, "b": 0},
        "at": 0,
        "status": "s0",
    })
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn at_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| &mut v[*k])
}

/// What every replica did, summed: counter increments and set additions.
#[derive(Default)]
struct Totals {
    increments: [i64; COUNTERS.len()],
    added: [BTreeSet<String>; SETS.len()],
    /// The greatest `at` written and the status written with it.
    latest: Option<(i64, String)>,
}

/// One replica's offline edits to a copy of `base`. `fields` adds plain field edits (not
/// commutative: the merge rules decide between them).
fn edit(
    rng: &mut StdRng,
    base: &Value,
    replica: usize,
    at_value: i64,
    fields: bool,
    totals: &mut Totals,
) -> Value {
    let mut doc = base.clone();
    for _ in 0..rng.random_range(1..=6) {
        match rng.random_range(0..if fields { 4 } else { 2 }) {
            0 => {
                let which = rng.random_range(0..COUNTERS.len());
                // Small deltas, so replicas often make the same increment.
                let delta = rng.random_range(-2..=3);
                let field = at_mut(&mut doc, COUNTERS[which]);
                *field = json!(field.as_i64().unwrap_or(0) + delta);
                totals.increments[which] += delta;
            }
            1 => {
                let which = rng.random_range(0..SETS.len());
                let element = format!("e{}", rng.random_range(0..12));
                if let Value::Array(items) = at_mut(&mut doc, SETS[which])
                    && !items.contains(&json!(element))
                {
                    items.push(json!(element));
                }
                totals.added[which].insert(element);
            }
            2 => doc["title"] = json!(format!("r{replica}-{}", rng.random_range(0..100))),
            _ => {
                let nested = doc["nested"].as_object_mut();
                if let Some(nested) = nested {
                    if rng.random_bool(0.5) {
                        nested.insert("a".into(), json!(rng.random_range(0..5)));
                    } else if nested.remove("b").is_none() {
                        nested.insert("b".into(), json!(replica));
                    }
                }
            }
        }
    }
    // Every replica stamps its write; stamps are distinct so the register has one winner.
    let status = format!("r{replica}");
    doc["at"] = json!(at_value);
    doc["status"] = json!(status);
    if totals.latest.as_ref().is_none_or(|(t, _)| at_value > *t) {
        totals.latest = Some((at_value, status));
    }
    doc
}

fn side(body: &Value) -> Side<'_> {
    Side {
        body,
        deleted: false,
    }
}

/// The server's state after the replicas' rows arrive in `order`. A row whose base is the
/// server's state does not conflict and is written as sent; the others are resolved.
fn push_all(policy: &MergePolicy, base: &Value, replicas: &[Value], order: &[usize]) -> Value {
    let mut server = base.clone();
    for &i in order {
        if server == *base {
            server = replicas[i].clone();
            continue;
        }
        match resolve(policy, Some(side(base)), side(&server), side(&replicas[i])) {
            Resolution::Write { body, deleted } => {
                assert!(!deleted);
                server = body;
            }
            Resolution::Keep { why: None } => {}
            Resolution::Keep { why: Some(why) } => panic!("not merged: {why}"),
        }
    }
    server
}

/// The set at `path` as a set of element texts, asserting it holds no duplicates.
fn set_of(doc: &Value, path: &[&str]) -> BTreeSet<String> {
    let items = at(doc, path).as_array().cloned().unwrap_or_default();
    let set: BTreeSet<String> = items.iter().map(canonical).collect();
    assert_eq!(set.len(), items.len(), "duplicates in {path:?}: {items:?}");
    set
}

/// `doc` with its sets sorted: set element order depends on arrival order, membership not.
fn normalized(mut doc: Value) -> Value {
    for path in SETS {
        if let Value::Array(items) = at_mut(&mut doc, path) {
            items.sort_by_key(canonical);
        }
    }
    doc
}

fn run(seed: u64, fields: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = policy();
    let base = base();
    let n = rng.random_range(2..=8);
    let mut stamps: Vec<i64> = (1..=n as i64).collect();
    stamps.shuffle(&mut rng);
    let mut totals = Totals::default();
    let replicas: Vec<Value> = (0..n)
        .map(|i| edit(&mut rng, &base, i, stamps[i], fields, &mut totals))
        .collect();
    let mut orders = [(0..n).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>()];
    for order in &mut orders {
        order.shuffle(&mut rng);
    }
    let results = orders
        .clone()
        .map(|order| push_all(&policy, &base, &replicas, &order));
    for (result, order) in results.iter().zip(&orders) {
        let ctx = format!("seed {seed}, order {order:?}: {result}");
        for (which, path) in COUNTERS.iter().enumerate() {
            let expected = at(&base, path).as_i64().unwrap_or(0) + totals.increments[which];
            assert_eq!(at(result, path).as_i64(), Some(expected), "{path:?} {ctx}");
        }
        for (which, path) in SETS.iter().enumerate() {
            let mut expected = set_of(&base, path);
            expected.extend(totals.added[which].iter().map(|e| canonical(&json!(e))));
            assert_eq!(set_of(result, path), expected, "{path:?} {ctx}");
        }
        let (latest, status) = totals.latest.clone().unwrap_or_default();
        assert_eq!(result["at"], json!(latest), "{ctx}");
        assert_eq!(result["status"], json!(status), "{ctx}");
        assert_eq!(result["stats"]["note"], json!("n"), "{ctx}");
    }
    if !fields {
        let [one, other] = results.map(normalized);
        assert_eq!(one, other, "seed {seed}: orders {orders:?} diverge");
    }
}

#[test]
fn commutative_edits_converge_in_any_order() {
    for seed in 0..300 {
        run(seed, false);
    }
}

#[test]
fn counters_and_sets_stay_exact_beside_field_edits() {
    for seed in 1000..1300 {
        run(seed, true);
    }
}
