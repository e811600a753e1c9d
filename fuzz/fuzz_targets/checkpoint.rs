//! Checkpoint tokens: any string a client sends is a position or INVALID_ARGUMENT, and every
//! token the server issues opens to the position it was issued for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline::protocol::{Principal, checkpoint};
use syncline::store::Position;

fuzz_target!(|data: &[u8]| {
    let sealer = checkpoint::Sealer::new(&[7u8; checkpoint::KEY_LEN]);
    let tokens = sealer.bind("tasks", &Principal::anonymous_service());
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = tokens.decode(token, "checkpoint", ["tasks", "notes"]);
    }
    if let (Some(tx), Some(seq)) = (data.get(..8), data.get(8..16)) {
        let word = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) & i64::MAX;
        let position = Position {
            tx: word(tx),
            seq: word(seq),
        };
        let token = tokens.encode(position, position.tx / 2);
        let opened = tokens.decode(&token, "checkpoint", ["tasks", "notes"]);
        assert_eq!(
            opened.ok(),
            Some(checkpoint::Resume::new(position, position.tx / 2)),
            "{token}"
        );
    }
});
