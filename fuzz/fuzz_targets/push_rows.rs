//! A Push request as it arrives: protobuf bytes decoded, rows converted, every row validated.
//! Whatever the bytes, the result is a value or an INVALID_ARGUMENT, never a panic; rows that
//! pass keep the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use syncline::api::convert;
use syncline::proto::PushRequest;
use syncline::protocol::Kind;
use syncline::protocol::validate::validate_rows;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = PushRequest::decode(data) else {
        return;
    };
    let world = syncline_fuzz::world();
    for collection in [&world.plain, &world.typed] {
        let rows = request.rows.iter().cloned().map(convert::row).collect();
        match validate_rows(collection, &world.limits, rows) {
            Ok(valid) => {
                assert!(valid.len() <= world.limits.push_rows_max);
                for row in valid {
                    assert!(!row.id.is_empty() && row.id.len() <= world.limits.id_bytes_max);
                    assert!(!row.id.contains('\0'));
                    assert!(row.body.len() <= world.limits.document_bytes_max.max(2));
                }
            }
            Err(e) if e.kind == Kind::InvalidArgument => {
                assert!(e.message.starts_with("rows"), "{}", e.message);
            }
            Err(other) => panic!("a push is refused as INVALID_ARGUMENT, not {other:?}"),
        }
    }
});
