//! Arbitrary `authorization` values through the authenticator: UNAUTHENTICATED or a
//! principal, never a panic. (Random bytes never carry a valid signature: `jwt_claims` signs
//! what it fuzzes.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline::protocol::Kind;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let auth = &syncline_fuzz::world().auth;
    for header in [value.to_owned(), format!("Bearer {value}")] {
        match auth.authenticate(Some(&header)) {
            Ok(_) => {}
            Err(e) if e.kind == Kind::Unauthenticated => {}
            Err(other) => panic!("a token is refused as UNAUTHENTICATED, not {other:?}"),
        }
    }
});
