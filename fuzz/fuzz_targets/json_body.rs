//! Document bodies: the bytes as the JSON body of one pushed row, and as its assumed state.
//! The fast check (no schema) must agree with the full check (the accept-all schema `{}`):
//! the fast one may only ever be stricter, and then the full one decides.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline::protocol::validate::validate_rows;
use syncline::protocol::{DocumentInput, RowInput};

fn row(json: &[u8], assumed: bool) -> RowInput {
    let state = |json: &[u8]| DocumentInput {
        id: "doc-1".into(),
        json: json.to_vec(),
        ..Default::default()
    };
    if assumed {
        RowInput {
            new_state: Some(state(b"{}")),
            assumed: Some(state(json)),
        }
    } else {
        RowInput {
            new_state: Some(state(json)),
            assumed: None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let world = syncline_fuzz::world();
    let limits = &world.limits;
    let fast = validate_rows(&world.plain, limits, vec![row(data, false)]);
    let full = validate_rows(&world.any, limits, vec![row(data, false)]);
    assert_eq!(
        fast.is_ok(),
        full.is_ok(),
        "fast and full checks disagree: {fast:?} / {full:?}"
    );
    if let Ok(rows) = &fast {
        assert_eq!(
            rows[0].body.as_bytes(),
            data,
            "the client's bytes are stored"
        );
    }
    let _ = validate_rows(&world.typed, limits, vec![row(data, false)]);
    let _ = validate_rows(&world.plain, limits, vec![row(data, true)]);
});
