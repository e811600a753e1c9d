//! Checkpoint tokens: any string a client sends is a position or INVALID_ARGUMENT.
//! Kept a thin call so that the decoder's signature can change freely.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline::protocol::checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = checkpoint::decode(token, "checkpoint");
    }
});
