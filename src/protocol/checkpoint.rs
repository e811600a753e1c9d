//! Checkpoint tokens: opaque to clients, self-checking so that a token the server did not issue
//! is refused instead of silently read as some other position.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::ProtocolError;
use crate::store::Position;

const VERSION: u8 = 1;
const TAG_LEN: usize = 6;
const RAW_LEN: usize = 1 + 8 + 8 + TAG_LEN;

fn tag(body: &[u8]) -> [u8; TAG_LEN] {
    let digest = Sha256::new()
        .chain_update(b"syncline checkpoint v1")
        .chain_update(body)
        .finalize();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&digest[..TAG_LEN]);
    out
}

/// Encodes a position as a token. [`Position::START`] is the empty token.
pub fn encode(position: Position) -> String {
    if position == Position::START {
        return String::new();
    }
    let mut raw = Vec::with_capacity(RAW_LEN);
    raw.push(VERSION);
    raw.extend_from_slice(&position.tx.to_be_bytes());
    raw.extend_from_slice(&position.seq.to_be_bytes());
    let t = tag(&raw);
    raw.extend_from_slice(&t);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a token; empty means the beginning. `field` names the request field in errors.
pub fn decode(token: &str, field: &str) -> Result<Position, ProtocolError> {
    if token.is_empty() {
        return Ok(Position::START);
    }
    let refuse = || {
        ProtocolError::InvalidArgument(format!(
            "{field}: not a checkpoint issued by this server; send the token from a response, or an empty one to start over"
        ))
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| refuse())?;
    if raw.len() != RAW_LEN || raw[0] != VERSION {
        return Err(refuse());
    }
    let (body, t) = raw.split_at(RAW_LEN - TAG_LEN);
    if tag(body) != t {
        return Err(refuse());
    }
    let mut tx = [0u8; 8];
    let mut seq = [0u8; 8];
    tx.copy_from_slice(&body[1..9]);
    seq.copy_from_slice(&body[9..17]);
    let position = Position {
        tx: i64::from_be_bytes(tx),
        seq: i64::from_be_bytes(seq),
    };
    if position.tx < 0 || position.seq < 0 {
        return Err(refuse());
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for p in [
            Position { tx: 1, seq: 0 },
            Position { tx: 747, seq: 12 },
            Position {
                tx: i64::MAX,
                seq: i64::MAX,
            },
        ] {
            assert_eq!(decode(&encode(p), "checkpoint").unwrap(), p);
        }
        assert_eq!(encode(Position::START), "");
        assert_eq!(decode("", "checkpoint").unwrap(), Position::START);
    }

    #[test]
    fn refuses_foreign_tokens() {
        let good = encode(Position { tx: 9, seq: 3 });
        let mut flipped = good.clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        for bad in [
            "x".to_owned(),
            "not a token!".to_owned(),
            String::from_utf8(flipped).unwrap(),
            good[..good.len() - 1].to_owned(),
            URL_SAFE_NO_PAD.encode([0u8; RAW_LEN]),
        ] {
            let err = decode(&bad, "checkpoint.token").unwrap_err();
            assert!(
                matches!(&err, ProtocolError::InvalidArgument(m) if m.starts_with("checkpoint.token")),
                "{bad}: {err:?}"
            );
        }
    }
}
