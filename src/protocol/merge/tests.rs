//! Tables of three-way cases per strategy.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::resolve::NO_BASE;
use super::{CrdtKind, FieldRule, MergePolicy, OnDelete, Resolution, Side, Strategy, resolve};

/// A state: body and tombstone flag.
type State = (Value, bool);

fn live(v: Value) -> State {
    (v, false)
}

fn dead(v: Value) -> State {
    (v, true)
}

fn keep() -> Resolution {
    Resolution::Keep { why: None }
}

fn write(v: Value) -> Resolution {
    Resolution::Write {
        body: v,
        deleted: false,
    }
}

fn write_dead(v: Value) -> Resolution {
    Resolution::Write {
        body: v,
        deleted: true,
    }
}

fn side(s: &State) -> Side<'_> {
    Side {
        body: &s.0,
        deleted: s.1,
    }
}

fn run(policy: &MergePolicy, base: Option<&State>, server: &State, client: &State) -> Resolution {
    resolve(policy, base.map(side), side(server), side(client))
}

fn path(p: &str) -> Option<Vec<String>> {
    Some(p.split('.').map(str::to_owned).collect())
}

struct Case {
    name: &'static str,
    base: Option<State>,
    server: State,
    client: State,
    expect: Resolution,
}

fn case(
    name: &'static str,
    base: Option<State>,
    server: State,
    client: State,
    expect: Resolution,
) -> Case {
    Case {
        name,
        base,
        server,
        client,
        expect,
    }
}

fn check(policy: &MergePolicy, cases: &[Case]) {
    for c in cases {
        let got = run(policy, c.base.as_ref(), &c.server, &c.client);
        assert_eq!(got, c.expect, "{:?}: {}", policy.strategy, c.name);
    }
}

/// Cases every merge strategy decides alike (no CRDT field involved). Rules: `owner` client,
/// `tags` and `p.list` union, `p.q` client; everything else server.
fn merge_cases() -> Vec<Case> {
    vec![
        case(
            "client-only change applied, server-only change kept",
            Some(live(json!({"a": 1, "b": 1}))),
            live(json!({"a": 1, "b": 2})),
            live(json!({"a": 2, "b": 1})),
            write(json!({"a": 2, "b": 2})),
        ),
        case(
            "client-only removal applied",
            Some(live(json!({"a": 1, "b": 1}))),
            live(json!({"a": 1, "b": 2})),
            live(json!({"b": 1})),
            write(json!({"b": 2})),
        ),
        case(
            "client-only addition applied",
            Some(live(json!({"a": 1}))),
            live(json!({"a": 2})),
            live(json!({"a": 1, "n": [1]})),
            write(json!({"a": 2, "n": [1]})),
        ),
        case(
            "server-only removal kept",
            Some(live(json!({"a": 1, "b": 1}))),
            live(json!({"a": 1})),
            live(json!({"a": 1, "b": 1, "c": 3})),
            write(json!({"a": 1, "c": 3})),
        ),
        case(
            "server-only change: the merge is the server's body, nothing to write",
            Some(live(json!({"a": 1, "b": 1}))),
            live(json!({"a": 1, "b": 2})),
            live(json!({"a": 1, "b": 1})),
            keep(),
        ),
        case(
            "both changed, default rule server: nothing to write",
            Some(live(json!({"t": "a"}))),
            live(json!({"t": "s"})),
            live(json!({"t": "c"})),
            keep(),
        ),
        case(
            "both changed (server rule) beside a client-only change",
            Some(live(json!({"t": "a", "x": 0}))),
            live(json!({"t": "s", "x": 0})),
            live(json!({"t": "c", "x": 1})),
            write(json!({"t": "s", "x": 1})),
        ),
        case(
            "both changed to the same value",
            Some(live(json!({"t": "a", "x": 0}))),
            live(json!({"t": "z", "x": 0})),
            live(json!({"t": "z", "x": 1})),
            write(json!({"t": "z", "x": 1})),
        ),
        case(
            "both changed, rule client",
            Some(live(json!({"owner": "a", "x": 0}))),
            live(json!({"owner": "s", "x": 1})),
            live(json!({"owner": "c", "x": 0})),
            write(json!({"owner": "c", "x": 1})),
        ),
        case(
            "both changed, rule client, client removed the field",
            Some(live(json!({"owner": "a"}))),
            live(json!({"owner": "s"})),
            live(json!({})),
            write(json!({})),
        ),
        case(
            "both changed, rule union: server's elements then the client's new ones, once",
            Some(live(json!({"tags": ["a"]}))),
            live(json!({"tags": ["a", "b"]})),
            live(json!({"tags": ["c", "a", "c", "b", {"k": 1.0}]})),
            write(json!({"tags": ["a", "b", "c", {"k": 1.0}]})),
        ),
        case(
            "rule union on a non-array falls back to the server's value",
            Some(live(json!({"tags": ["a"]}))),
            live(json!({"tags": "s"})),
            live(json!({"tags": ["c"], "x": 1})),
            write(json!({"tags": "s", "x": 1})),
        ),
        case(
            "rule union with the field removed on one side keeps the server's",
            Some(live(json!({"tags": ["a"]}))),
            live(json!({"tags": ["a", "b"]})),
            live(json!({"x": 1})),
            write(json!({"tags": ["a", "b"], "x": 1})),
        ),
        case(
            "nested objects merge recursively",
            Some(live(json!({"p": {"a": 1, "b": 1, "c": {"d": 1}}}))),
            live(json!({"p": {"a": 2, "b": 1, "c": {"d": 1, "e": 1}}})),
            live(json!({"p": {"a": 1, "b": 2, "c": {"d": 2}}})),
            write(json!({"p": {"a": 2, "b": 2, "c": {"d": 2, "e": 1}}})),
        ),
        case(
            "nested rule by dotted path",
            Some(live(json!({"p": {"q": 1, "r": 1}}))),
            live(json!({"p": {"q": 2, "r": 2}})),
            live(json!({"p": {"q": 3, "r": 3}})),
            write(json!({"p": {"q": 3, "r": 2}})),
        ),
        case(
            "nested array union by dotted path",
            Some(live(json!({"p": {"list": [1]}}))),
            live(json!({"p": {"list": [1, 2]}})),
            live(json!({"p": {"list": [3]}})),
            write(json!({"p": {"list": [1, 2, 3]}})),
        ),
        case(
            "arrays without a rule are values: both changed, server's",
            Some(live(json!({"l": [1], "x": 0}))),
            live(json!({"l": [1, 2], "x": 0})),
            live(json!({"l": [1, 3], "x": 1})),
            write(json!({"l": [1, 2], "x": 1})),
        ),
        case(
            "an object against a scalar follows the rule",
            Some(live(json!({"p": {"a": 1}, "x": 0}))),
            live(json!({"p": 5, "x": 0})),
            live(json!({"p": {"a": 2}, "x": 1})),
            write(json!({"p": 5, "x": 1})),
        ),
        case(
            "objects created on both sides (base missing) merge",
            Some(live(json!({}))),
            live(json!({"p": {"a": 1}})),
            live(json!({"p": {"b": 2}})),
            write(json!({"p": {"a": 1, "b": 2}})),
        ),
        case(
            "objects replacing a scalar base follow the rule",
            Some(live(json!({"p": 1}))),
            live(json!({"p": {"a": 1}})),
            live(json!({"p": {"b": 2}, "x": 1})),
            write(json!({"p": {"a": 1}, "x": 1})),
        ),
        case(
            "values compare as jsonb does: 1.0 is 1, key order is irrelevant",
            Some(live(json!({"n": 1.0, "o": {"a": 1, "b": 2}}))),
            live(json!({"n": 1, "o": {"b": 2, "a": 1.0}, "m": 1})),
            live(json!({"n": 2, "o": {"a": 1, "b": 2}})),
            write(json!({"n": 2, "o": {"a": 1.0, "b": 2}, "m": 1})),
        ),
        case(
            "client deleted, server live: delete wins",
            Some(live(json!({"a": 1}))),
            live(json!({"a": 2})),
            dead(json!({"a": 1, "gone": true})),
            write_dead(json!({"a": 1, "gone": true})),
        ),
        case(
            "server deleted, client live: delete wins",
            Some(live(json!({"a": 1}))),
            dead(json!({"a": 1})),
            live(json!({"a": 2})),
            keep(),
        ),
        case(
            "both deleted",
            Some(live(json!({"a": 1}))),
            dead(json!({"a": 2})),
            dead(json!({"a": 3})),
            keep(),
        ),
        case(
            "re-create: no base over a tombstone writes the client's state",
            None,
            dead(json!({"a": 1})),
            live(json!({"a": 5})),
            write(json!({"a": 5})),
        ),
        case(
            "no base over a live document cannot merge",
            None,
            live(json!({"a": 1})),
            live(json!({"a": 5})),
            Resolution::Keep {
                why: Some(NO_BASE.to_owned()),
            },
        ),
        case(
            "no base, both deleted",
            None,
            dead(json!({"a": 1})),
            dead(json!({"a": 2})),
            keep(),
        ),
        case(
            "base a tombstone (re-created locally): merged against {}",
            Some(dead(json!({"a": 1}))),
            live(json!({"a": 1, "b": 1})),
            live(json!({"a": 2, "c": 1})),
            write(json!({"a": 1, "b": 1, "c": 1})),
        ),
    ]
}

fn merge_policy(strategy: Strategy) -> MergePolicy {
    MergePolicy {
        strategy,
        rules: HashMap::from([
            ("owner".to_owned(), FieldRule::Client),
            ("tags".to_owned(), FieldRule::Union),
            ("p.q".to_owned(), FieldRule::Client),
            ("p.list".to_owned(), FieldRule::Union),
        ]),
        ..MergePolicy::default()
    }
}

#[test]
fn field_merge_table() {
    check(&merge_policy(Strategy::FieldMerge), &merge_cases());
}

#[test]
fn crdt_without_crdt_fields_merges_like_field_merge() {
    check(&merge_policy(Strategy::Crdt), &merge_cases());
}

#[test]
fn edit_wins_keeps_edits_against_tombstones_both_ways() {
    for strategy in [Strategy::FieldMerge, Strategy::Crdt] {
        let policy = MergePolicy {
            on_delete: OnDelete::EditWins,
            ..merge_policy(strategy)
        };
        check(
            &policy,
            &[
                case(
                    "client deleted, server live: the edit stands",
                    Some(live(json!({"a": 1}))),
                    live(json!({"a": 2})),
                    dead(json!({"a": 1})),
                    keep(),
                ),
                case(
                    "server deleted, client live: the edit brings it back",
                    Some(live(json!({"a": 1}))),
                    dead(json!({"a": 1})),
                    live(json!({"a": 2})),
                    write(json!({"a": 2})),
                ),
                case(
                    "both deleted",
                    Some(live(json!({"a": 1}))),
                    dead(json!({})),
                    dead(json!({"a": 1})),
                    keep(),
                ),
            ],
        );
    }
}

#[test]
fn first_write_wins_always_keeps() {
    let policy = MergePolicy::default();
    assert_eq!(policy.strategy, Strategy::FirstWriteWins);
    for c in merge_cases() {
        assert_eq!(
            run(&policy, c.base.as_ref(), &c.server, &c.client),
            keep(),
            "{}",
            c.name
        );
    }
}

fn lww(field: Option<&str>) -> MergePolicy {
    MergePolicy {
        strategy: Strategy::LastWriteWins,
        lww_field: field.and_then(path),
        ..MergePolicy::default()
    }
}

#[test]
fn last_write_wins_table() {
    let base = Some(live(json!({"u": 0})));
    let later = |s: Value, c: Value| case("", base.clone(), live(s), live(c.clone()), write(c));
    let earlier = |s: Value, c: Value| case("", base.clone(), live(s), live(c), keep());
    let mut cases = vec![
        later(json!({"u": 1, "x": "s"}), json!({"u": 2, "x": "c"})),
        earlier(json!({"u": 2, "x": "s"}), json!({"u": 1, "x": "c"})),
        later(json!({"u": 2}), json!({"u": 2.5})),
        earlier(json!({"u": 2.5}), json!({"u": 2})),
        later(json!({"u": -3}), json!({"u": u64::MAX})),
        // Exact integer comparison where f64 would see two equal values.
        later(
            json!({"u": 9_007_199_254_740_992i64}),
            json!({"u": 9_007_199_254_740_993i64}),
        ),
        // 10:00 at +02:00 is 08:00Z: earlier than 09:00Z although its text sorts after.
        earlier(
            json!({"u": "2026-01-01T09:00:00Z"}),
            json!({"u": "2026-01-01T10:00:00+02:00"}),
        ),
        later(
            json!({"u": "2026-01-01T10:00:00+02:00"}),
            json!({"u": "2026-01-01T09:00:00Z"}),
        ),
        later(
            json!({"u": "2026-01-01T09:00:00Z"}),
            json!({"u": "2026-01-01T09:00:00.001Z"}),
        ),
        // Missing or unorderable values sort lowest.
        later(json!({}), json!({"u": -1})),
        earlier(json!({"u": -1}), json!({})),
        earlier(json!({"u": 0}), json!({"u": true})),
        earlier(
            json!({"u": "2020-01-01T00:00:00Z"}),
            json!({"u": "yesterday"}),
        ),
        later(json!({"u": null}), json!({"u": "2020-01-01T00:00:00Z"})),
        earlier(json!({"u": "2020-01-01T00:00:00Z"}), json!({"u": [5]})),
        // A tombstone is a write like any other, ordered by the body sent with the delete.
        case(
            "later tombstone wins",
            base.clone(),
            live(json!({"u": 1})),
            dead(json!({"u": 2})),
            write_dead(json!({"u": 2})),
        ),
        case(
            "earlier tombstone loses",
            base.clone(),
            live(json!({"u": 3})),
            dead(json!({"u": 2})),
            keep(),
        ),
        case(
            "later edit over a tombstone",
            None,
            dead(json!({"u": 1})),
            live(json!({"u": 2})),
            write(json!({"u": 2})),
        ),
    ];
    check(&lww(Some("u")), &cases);

    cases = vec![
        later(
            json!({"m": {"at": 1}, "u": 9}),
            json!({"m": {"at": 2}, "u": 1}),
        ),
        earlier(json!({"m": {"at": 2}}), json!({"m": {"at": 1}, "u": 9})),
        earlier(json!({"m": {"at": 1}}), json!({"m": [{"at": 2}]})),
    ];
    check(&lww(Some("m.at")), &cases);
}

#[test]
fn last_write_wins_without_field_takes_the_later_push() {
    let policy = lww(None);
    for c in merge_cases() {
        let expect = Resolution::Write {
            body: c.client.0.clone(),
            deleted: c.client.1,
        };
        assert_eq!(
            run(&policy, c.base.as_ref(), &c.server, &c.client),
            expect,
            "{}",
            c.name
        );
    }
}

/// The document `a` and `b` agree on as the later write, asked both ways round; `None` when
/// neither side's push is written (the same state).
fn winner(policy: &MergePolicy, a: &State, b: &State) -> Option<State> {
    let pick = |server: &State, client: &State| match run(policy, None, server, client) {
        Resolution::Write { body, deleted } => {
            assert_eq!((&body, deleted), (&client.0, client.1));
            Some(client.clone())
        }
        Resolution::Keep { why: None } => None,
        other => panic!("unexpected {other:?}"),
    };
    match (pick(a, b), pick(b, a)) {
        (Some(w), None) | (None, Some(w)) => Some(w),
        (None, None) => None,
        (Some(_), Some(_)) => panic!("both arrival orders write: {a:?} {b:?}"),
    }
}

#[test]
fn last_write_wins_ties_are_symmetric() {
    let policy = lww(Some("u"));
    let pairs = [
        // Same value: the canonical body text decides.
        (
            live(json!({"u": 1, "x": "a"})),
            live(json!({"u": 1, "x": "b"})),
        ),
        (
            live(json!({"u": 1, "x": 2})),
            live(json!({"u": 1.0, "x": 1})),
        ),
        // Same instant written with different offsets.
        (
            live(json!({"u": "2026-01-01T10:00:00+01:00", "x": 1})),
            live(json!({"u": "2026-01-01T09:00:00Z", "x": 2})),
        ),
        // Both missing, both unorderable, a number against a timestamp.
        (live(json!({"x": 1})), live(json!({"x": 2}))),
        (live(json!({"u": "a"})), live(json!({"u": false}))),
        (
            live(json!({"u": 5})),
            live(json!({"u": "2026-01-01T09:00:00Z"})),
        ),
        // Same body: the tombstone wins.
        (live(json!({"u": 1})), dead(json!({"u": 1}))),
    ];
    for (a, b) in &pairs {
        assert!(winner(&policy, a, b).is_some(), "{a:?} vs {b:?}");
    }
    let tombstone = winner(&policy, &pairs[6].0, &pairs[6].1);
    assert_eq!(tombstone, Some(dead(json!({"u": 1}))));
    // The same state (numbers by value, keys in any order) is written by neither.
    assert_eq!(
        winner(
            &policy,
            &live(json!({"u": 1, "x": [1.0]})),
            &live(json!({"x": [1], "u": 1}))
        ),
        None
    );
}

fn crdt_policy(lww_field: Option<&str>) -> MergePolicy {
    MergePolicy {
        strategy: Strategy::Crdt,
        lww_field: lww_field.and_then(path),
        crdt: HashMap::from([
            ("likes".to_owned(), CrdtKind::Counter),
            ("score".to_owned(), CrdtKind::Counter),
            ("stats.views".to_owned(), CrdtKind::Counter),
            ("tags".to_owned(), CrdtKind::GSet),
            ("status".to_owned(), CrdtKind::Lww),
            ("at".to_owned(), CrdtKind::Lww),
        ]),
        ..MergePolicy::default()
    }
}

#[test]
fn crdt_table() {
    let b = |v: Value| Some(live(v));
    let cases = [
        case(
            "counter: server plus the client's delta",
            b(json!({"likes": 5})),
            live(json!({"likes": 8})),
            live(json!({"likes": 7})),
            write(json!({"likes": 10})),
        ),
        case(
            "counter: the same increment on both sides counts twice",
            b(json!({"likes": 5})),
            live(json!({"likes": 8})),
            live(json!({"likes": 8})),
            write(json!({"likes": 11})),
        ),
        case(
            "counter: decrements",
            b(json!({"likes": 5})),
            live(json!({"likes": 8})),
            live(json!({"likes": 2})),
            write(json!({"likes": 5})),
        ),
        case(
            "counter: floats",
            b(json!({"score": 1.5})),
            live(json!({"score": 2.0})),
            live(json!({"score": 2.25})),
            write(json!({"score": 2.75})),
        ),
        case(
            "counter: base missing counts as 0",
            b(json!({})),
            live(json!({"likes": 4})),
            live(json!({"likes": 1})),
            write(json!({"likes": 5})),
        ),
        case(
            "counter: created by the client only",
            b(json!({"x": 0})),
            live(json!({"x": 1})),
            live(json!({"x": 0, "likes": 1})),
            write(json!({"x": 1, "likes": 1})),
        ),
        case(
            "counter: unchanged by the client, server's value",
            b(json!({"likes": 5, "x": 0})),
            live(json!({"likes": 9, "x": 0})),
            live(json!({"likes": 5, "x": 1})),
            write(json!({"likes": 9, "x": 1})),
        ),
        case(
            "counter: 64-bit overflow falls back to the field rule (server)",
            b(json!({"likes": 0, "x": 0})),
            live(json!({"likes": u64::MAX, "x": 0})),
            live(json!({"likes": 1, "x": 1})),
            write(json!({"likes": u64::MAX, "x": 1})),
        ),
        case(
            "counter: negative overflow falls back too",
            b(json!({"likes": 0})),
            live(json!({"likes": i64::MIN})),
            live(json!({"likes": i64::MIN})),
            keep(),
        ),
        case(
            "counter: results beyond i64 stay exact as u64",
            b(json!({"likes": 0})),
            live(json!({"likes": i64::MAX})),
            live(json!({"likes": 1})),
            write(json!({"likes": 9_223_372_036_854_775_808u64})),
        ),
        case(
            "counter: float overflow falls back",
            b(json!({"score": -1e308})),
            live(json!({"score": 1e308})),
            live(json!({"score": 1e308, "x": 1})),
            write(json!({"score": 1e308, "x": 1})),
        ),
        case(
            "counter: a non-numeric server value falls back",
            b(json!({"likes": 0})),
            live(json!({"likes": "many"})),
            live(json!({"likes": 2, "x": 1})),
            write(json!({"likes": "many", "x": 1})),
        ),
        case(
            "counter: nested, under equal parents on both sides",
            b(json!({"stats": {"views": 1}})),
            live(json!({"stats": {"views": 2}, "x": 1})),
            live(json!({"stats": {"views": 2}})),
            write(json!({"stats": {"views": 3}, "x": 1})),
        ),
        case(
            "g-set: union, the client's removal never wins",
            b(json!({"tags": ["a", "b"]})),
            live(json!({"tags": ["a", "b", "c"]})),
            live(json!({"tags": ["a", "d"]})),
            write(json!({"tags": ["a", "b", "c", "d"]})),
        ),
        case(
            "g-set: removed by the server only, the client's copy restores it",
            b(json!({"tags": ["a", "b"]})),
            live(json!({"tags": ["a"]})),
            live(json!({"tags": ["a", "b"]})),
            write(json!({"tags": ["a", "b"]})),
        ),
        case(
            "g-set: the whole field removed by the client",
            b(json!({"tags": ["a"]})),
            live(json!({"tags": ["a"], "x": 1})),
            live(json!({"y": 1})),
            write(json!({"tags": ["a"], "x": 1, "y": 1})),
        ),
        case(
            "g-set: a non-array falls back to the field rule",
            b(json!({"tags": ["a"]})),
            live(json!({"tags": "s"})),
            live(json!({"tags": ["a", "b"], "x": 1})),
            write(json!({"tags": "s", "x": 1})),
        ),
        case(
            "lww register without lww_field: the client's",
            b(json!({"status": "a"})),
            live(json!({"status": "s"})),
            live(json!({"status": "c"})),
            write(json!({"status": "c"})),
        ),
        case(
            "undeclared fields follow field-merge",
            b(json!({"t": "a", "likes": 1})),
            live(json!({"t": "s", "likes": 2})),
            live(json!({"t": "c", "likes": 3})),
            write(json!({"t": "s", "likes": 4})),
        ),
        case(
            "merged equals the server's body: nothing to write",
            b(json!({"likes": 1, "tags": ["a"]})),
            live(json!({"likes": 3, "tags": ["a", "b"]})),
            live(json!({"likes": 1, "tags": []})),
            keep(),
        ),
        case(
            "tombstone against edit: delete wins by default",
            b(json!({"likes": 1})),
            live(json!({"likes": 2})),
            dead(json!({"likes": 1})),
            write_dead(json!({"likes": 1})),
        ),
        case(
            "re-create over a tombstone",
            None,
            dead(json!({"likes": 7})),
            live(json!({"likes": 1})),
            write(json!({"likes": 1})),
        ),
    ];
    check(&crdt_policy(None), &cases);

    let by_at = crdt_policy(Some("at"));
    let cases = [
        case(
            "lww register: the later document's value",
            b(json!({"status": "a", "at": 1})),
            live(json!({"status": "s", "at": 2})),
            live(json!({"status": "c", "at": 3})),
            write(json!({"status": "c", "at": 3})),
        ),
        case(
            "lww register: the earlier document's value loses",
            b(json!({"status": "a", "at": 1})),
            live(json!({"status": "s", "at": 3})),
            live(json!({"status": "c", "at": 2, "likes": 1})),
            write(json!({"status": "s", "at": 3, "likes": 1})),
        ),
        case(
            "lww register: decided by document order even when only the server changed it",
            b(json!({"status": "a", "at": 1})),
            live(json!({"status": "s", "at": 2})),
            live(json!({"status": "a", "at": 3})),
            write(json!({"status": "a", "at": 3})),
        ),
        case(
            "lww register: a tie goes to the greater canonical body",
            b(json!({"status": "a", "at": "2026-01-01T00:00:00Z"})),
            live(json!({"status": "s", "at": "2026-01-01T01:00:00Z"})),
            live(json!({"status": "t", "at": "2026-01-01T01:00:00Z"})),
            write(json!({"status": "t", "at": "2026-01-01T01:00:00Z"})),
        ),
        case(
            // Equal instants; the server's text sorts above ("01:00" > "00:00"): its values.
            "lww register: a tie between offsets goes to the greater canonical body",
            b(json!({"status": "a", "at": "2026-01-01T00:00:00Z"})),
            live(json!({"status": "s", "at": "2026-01-01T01:00:00+01:00"})),
            live(json!({"status": "t", "at": "2026-01-01T00:00:00Z"})),
            keep(),
        ),
    ];
    check(&by_at, &cases);
}

#[test]
fn field_merge_ignores_crdt_declarations() {
    // Schema annotations fill `crdt` whatever the strategy; only `crdt` applies them.
    let policy = MergePolicy {
        strategy: Strategy::FieldMerge,
        ..crdt_policy(None)
    };
    let base = live(json!({"likes": 5, "tags": ["a", "b"]}));
    let server = live(json!({"likes": 8, "tags": ["a", "b"]}));
    let client = live(json!({"likes": 7, "tags": ["a"]}));
    assert_eq!(
        run(&policy, Some(&base), &server, &client),
        write(json!({"likes": 8, "tags": ["a"]}))
    );
}

#[test]
fn deep_bodies_do_not_overflow() {
    let mut b = json!(0);
    let mut s = json!(1);
    let mut c = json!(2);
    for _ in 0..400 {
        b = json!({"n": b});
        s = json!({"n": s});
        c = json!({"n": c});
    }
    for policy in [merge_policy(Strategy::FieldMerge), crdt_policy(Some("n"))] {
        let r = run(
            &policy,
            Some(&live(b.clone())),
            &live(s.clone()),
            &live(c.clone()),
        );
        assert!(matches!(
            r,
            Resolution::Keep { .. } | Resolution::Write { .. }
        ));
    }
}
