//! Checkpoint tokens: a position sealed under a key that clients never see, bound to the
//! collection and scope it was issued for, so that a token is refused anywhere else and reveals
//! nothing of the position (how many transactions other owners made in between).
//!
//! A token is `base64url(version ‖ nonce ‖ ciphertext ‖ tag)`, 49 bytes, 66 characters:
//! - `version` (1 byte, in clear): the format, so that a later format can be told apart;
//! - `nonce` (12 random bytes);
//! - `ciphertext` of `generation (u32) ‖ tx (i64) ‖ seq (i64)`, 20 bytes: the dataset
//!   generation (0 until restores move a dataset to a new one) and the position;
//! - `tag` (16 bytes), AES-256-GCM-SIV's authentication tag.
//!
//! What the token is bound to is not carried: the server rebuilds it from the request and
//! passes it as the AEAD's associated data (the version, the collection, the scope: the owner
//! filter or "service", and a filter field left empty until filtered reads exist). A token of
//! another collection or scope then fails authentication exactly like a forged one; to still
//! say which, a failed token is tried against the other declared collections under the same
//! scope (a handful of 20-byte decryptions), and otherwise the message names both causes.
//!
//! Why AES-256-GCM-SIV with a random nonce: it is misuse-resistant, so even a nonce that
//! repeats (a birthday event after ~2^48 tokens) only shows that two tokens seal the same
//! position for the same binding, never the plaintext or the key (AES-GCM would leak its
//! authentication key); its 12-byte nonce keeps tokens at 66 characters where XChaCha20's 24
//! bytes would take 82; and AES runs in hardware on servers. A random rather than a fixed nonce
//! keeps two tokens for the same position unlinkable and the cipher within its distinct-nonce
//! bounds however many tokens a key seals.

use std::sync::Arc;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Principal, ProtocolError, Reason};
use crate::store::Position;

/// Bytes of the key that seals tokens.
pub const KEY_LEN: usize = 32;

const VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
const PLAIN_LEN: usize = 4 + 8 + 8;
const TAG_LEN: usize = 16;
const RAW_LEN: usize = 1 + NONCE_LEN + PLAIN_LEN + TAG_LEN;
/// Length of every non-empty token (unpadded base64 of [`RAW_LEN`] bytes).
pub const TOKEN_LEN: usize = (RAW_LEN * 4).div_ceil(3);
/// Separates checkpoint associated data from anything else the key might ever authenticate.
const DOMAIN: &[u8] = b"syncline/checkpoint";

/// Seals and opens checkpoint tokens with one key. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    cipher: Arc<Aes256GcmSiv>,
    generation: u32,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for dataset generation 0.
    pub fn new(key: &[u8; KEY_LEN]) -> Sealer {
        Sealer {
            cipher: Arc::new(Aes256GcmSiv::new(key.into())),
            generation: 0,
        }
    }

    /// The same key for another dataset generation: tokens of any other generation are refused.
    pub fn with_generation(mut self, generation: u32) -> Sealer {
        self.generation = generation;
        self
    }

    /// The tokens of `principal` on `collection`.
    pub fn bind(&self, collection: &str, principal: &Principal) -> Tokens {
        let scope = scope_data(principal.owner_filter());
        let associated = associated_data(collection, &scope);
        Tokens {
            cipher: self.cipher.clone(),
            generation: self.generation,
            scope_at: associated.len() - scope.len(),
            associated: associated.into_boxed_slice(),
        }
    }
}

/// Encodes what a token is bound to besides its collection: the owner filter (or the service
/// scope, which sees every owner) and the read filter. Each part is tagged and
/// length-prefixed, so that no subject can pose as the service or another subject.
fn scope_data(owner: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + owner.map_or(0, str::len) + 8);
    match owner {
        None => out.push(0),
        Some(subject) => {
            out.push(1);
            put(&mut out, subject.as_bytes());
        }
    }
    // The filter a read was issued under; empty until filtered reads exist.
    put(&mut out, b"");
    out
}

/// Where the collection name starts in [`associated_data`]: after the domain, the version and
/// the name's length.
const COLLECTION_AT: usize = DOMAIN.len() + 1 + 8;

fn associated_data(collection: &str, scope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 1 + 8 + collection.len() + scope.len());
    out.extend_from_slice(DOMAIN);
    out.push(VERSION);
    put(&mut out, collection.as_bytes());
    out.extend_from_slice(scope);
    out
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_be_bytes());
    out.extend_from_slice(part);
}

/// Issues and checks the tokens of one principal on one collection.
#[derive(Clone)]
pub struct Tokens {
    cipher: Arc<Aes256GcmSiv>,
    generation: u32,
    /// Built once: every stream holds one, so it is kept to one allocation.
    associated: Box<[u8]>,
    /// Where the scope part of `associated` starts (the collection name ends there).
    scope_at: usize,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Seals a position. [`Position::START`] is the empty token.
    pub fn encode(&self, position: Position) -> String {
        if position == Position::START {
            return String::new();
        }
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        let nonce: [u8; NONCE_LEN] = rand::random();
        raw[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        let (plain, tag) = raw[1 + NONCE_LEN..].split_at_mut(PLAIN_LEN);
        plain[..4].copy_from_slice(&self.generation.to_be_bytes());
        plain[4..12].copy_from_slice(&position.tx.to_be_bytes());
        plain[12..].copy_from_slice(&position.seq.to_be_bytes());
        let nonce = Nonce::from(nonce);
        match self
            .cipher
            .encrypt_inout_detached(&nonce, &self.associated, plain.into())
        {
            Ok(t) => tag.copy_from_slice(&t),
            // Only inputs over 2^36 bytes fail: the plaintext is 20 bytes and the associated
            // data a collection name and a credential's subject, both bounded far below that.
            Err(_) => unreachable!("AES-GCM-SIV refused a 20-byte plaintext"),
        }
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Opens a token; empty means the beginning. `field` names the request field in errors;
    /// `collections` are the declared collections, tried to explain a token of another one.
    pub fn decode<'a>(
        &self,
        token: &str,
        field: &str,
        collections: impl IntoIterator<Item = &'a str>,
    ) -> Result<Position, ProtocolError> {
        if token.is_empty() {
            return Ok(Position::START);
        }
        let refuse = |why: &str| {
            ProtocolError::invalid(
                Reason::CheckpointInvalid,
                field,
                format!(
                    "{field}: {why}; send a checkpoint from this collection's responses to \
                     this caller, or an empty one to start over"
                ),
            )
        };
        let foreign = || refuse("not a checkpoint issued by this server");
        // The length first: nothing is decoded or allocated for an oversized token.
        if token.len() != TOKEN_LEN {
            return Err(foreign());
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(foreign()),
        }
        if raw[0] != VERSION {
            return Err(foreign());
        }
        let Some(plain) = self.open(&raw, &self.associated) else {
            let this = &self.associated[COLLECTION_AT..self.scope_at];
            let scope = &self.associated[self.scope_at..];
            let elsewhere = collections.into_iter().any(|other| {
                other.as_bytes() != this
                    && self.open(&raw, &associated_data(other, scope)).is_some()
            });
            return Err(if elsewhere {
                refuse("issued for another collection")
            } else {
                // Authentication cannot tell these apart: the associated data differs either way.
                refuse(
                    "not issued to this caller for this collection (another principal's checkpoint, or an altered one)",
                )
            });
        };
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&plain[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let generation = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]);
        if generation != self.generation {
            // Restores move the dataset to a new generation (issue 13): such a token will be
            // FAILED_PRECONDITION then, sending the client to reconcile.
            return Err(refuse(&format!(
                "issued for generation {generation} of the dataset, which is now at generation {}",
                self.generation
            )));
        }
        let position = Position {
            tx: word(4),
            seq: word(12),
        };
        if position.tx < 0 || position.seq < 0 {
            return Err(foreign());
        }
        Ok(position)
    }

    /// The plaintext of `raw` when it authenticates under `associated`.
    fn open(&self, raw: &[u8; RAW_LEN], associated: &[u8]) -> Option<[u8; PLAIN_LEN]> {
        let (nonce, rest) = raw[1..].split_at(NONCE_LEN);
        let (sealed, tag) = rest.split_at(PLAIN_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        let tag = Tag::try_from(tag).ok()?;
        let mut plain = [0u8; PLAIN_LEN];
        plain.copy_from_slice(sealed);
        self.cipher
            .decrypt_inout_detached(&nonce, associated, plain.as_mut_slice().into(), &tag)
            .ok()?;
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
    const COLLECTIONS: [&str; 2] = ["tasks", "notes"];

    fn user(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            scopes: HashSet::new(),
            service: false,
            expires_at: None,
        }
    }

    fn tokens(collection: &str, principal: &Principal) -> Tokens {
        Sealer::new(&KEY).bind(collection, principal)
    }

    fn refusal(t: &Tokens, token: &str) -> String {
        match t.decode(token, "checkpoint.token", COLLECTIONS) {
            Err(e) => {
                assert_eq!(e.reason, Reason::CheckpointInvalid);
                assert_eq!(e.field.as_deref(), Some("checkpoint.token"));
                let m = e.message;
                assert!(m.starts_with("checkpoint.token: "), "{m}");
                m
            }
            other => panic!("{token:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn round_trips_on_any_replica_with_the_same_key() {
        let alice = user("alice");
        for p in [
            Position { tx: 1, seq: 0 },
            Position { tx: 747, seq: 12 },
            Position {
                tx: i64::MAX,
                seq: i64::MAX,
            },
        ] {
            let token = tokens("tasks", &alice).encode(p);
            assert_eq!(token.len(), TOKEN_LEN);
            assert!(token.len() < 80);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "URL-safe: {token}"
            );
            // Another Sealer from the same key: another replica, or this one after a restart.
            let elsewhere = Sealer::new(&KEY).bind("tasks", &alice);
            assert_eq!(elsewhere.decode(&token, "c", COLLECTIONS).unwrap(), p);
        }
        let t = tokens("tasks", &alice);
        assert_eq!(t.encode(Position::START), "");
        assert_eq!(t.decode("", "c", COLLECTIONS).unwrap(), Position::START);
    }

    #[test]
    fn refuses_garbage_altered_and_foreign_tokens() {
        let t = tokens("tasks", &user("alice"));
        let good = t.encode(Position { tx: 9, seq: 3 });
        // The earlier format: unkeyed, unbound, forgeable. No longer accepted.
        let v1 = URL_SAFE_NO_PAD.encode([1u8; 23]);
        let mut wrong_version = URL_SAFE_NO_PAD.decode(&good).unwrap();
        wrong_version[0] = 3;
        let other_key = Sealer::new(&[8; KEY_LEN])
            .bind("tasks", &user("alice"))
            .encode(Position { tx: 9, seq: 3 });
        for bad in [
            "x".to_owned(),
            "not a token!".to_owned(),
            "=".repeat(TOKEN_LEN),
            v1,
            good[..good.len() - 1].to_owned(),
            format!("{good}A"),
            URL_SAFE_NO_PAD.encode([0u8; RAW_LEN]),
            URL_SAFE_NO_PAD.encode(wrong_version),
            other_key,
        ] {
            refusal(&t, &bad);
        }
        // Every single bit of the sealed bytes is covered by the tag.
        let raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
        for byte in 0..RAW_LEN {
            for bit in 0..8 {
                let mut altered = raw.clone();
                altered[byte] ^= 1 << bit;
                refusal(&t, &URL_SAFE_NO_PAD.encode(altered));
            }
        }
    }

    #[test]
    fn a_token_is_bound_to_its_collection_and_scope() {
        let position = Position { tx: 42, seq: 1 };
        let alice = user("alice");
        let service = Principal::anonymous_service();
        let on_tasks = tokens("tasks", &alice).encode(position);

        let m = refusal(&tokens("notes", &alice), &on_tasks);
        assert!(m.contains("issued for another collection"), "{m}");

        for other in [
            user("bob"),
            user("alice "),
            user("service"),
            service.clone(),
        ] {
            let m = refusal(&tokens("tasks", &other), &on_tasks);
            assert!(m.contains("not issued to this caller"), "{other:?}: {m}");
        }
        // A service token is no user's token, not even one whose subject looks like it.
        let as_service = tokens("tasks", &service).encode(position);
        for other in [user(""), user("service")] {
            let m = refusal(&tokens("tasks", &other), &as_service);
            assert!(m.contains("not issued to this caller"), "{m}");
        }
        // Another collection and another caller at once: no collection explains it.
        let m = refusal(&tokens("notes", &user("bob")), &on_tasks);
        assert!(m.contains("not issued to this caller"), "{m}");
        // A collection that is no longer declared is not tried.
        let m = match tokens("notes", &alice).decode(&on_tasks, "c", ["notes"]) {
            Err(e) => e.message,
            other => panic!("{other:?}"),
        };
        assert!(m.contains("not issued to this caller"), "{m}");
    }

    #[test]
    fn a_token_of_another_dataset_generation_is_refused() {
        let alice = user("alice");
        let old = Sealer::new(&KEY)
            .bind("tasks", &alice)
            .encode(Position { tx: 5, seq: 5 });
        let now = Sealer::new(&KEY).with_generation(1).bind("tasks", &alice);
        let m = refusal(&now, &old);
        assert!(m.contains("generation 0"), "{m}");
    }

    #[test]
    fn tokens_reveal_nothing_of_the_position() {
        let t = tokens("tasks", &user("alice"));
        let p = Position {
            tx: 0x0123_4567_89ab_cdef,
            seq: 0x0fed_cba9_8765_4321,
        };
        let raw: Vec<Vec<u8>> = (0..64)
            .map(|i| {
                let next = Position {
                    tx: p.tx + i / 8,
                    seq: p.seq + i,
                };
                URL_SAFE_NO_PAD.decode(t.encode(next)).unwrap()
            })
            .collect();
        for r in &raw {
            for word in [p.tx.to_be_bytes(), p.seq.to_be_bytes()] {
                assert!(
                    !r.windows(4).any(|w| word.windows(4).any(|x| x == w)),
                    "the position shows in clear: {r:?}"
                );
            }
        }
        // Consecutive positions share nothing but the version byte: every other byte varies.
        for at in 1..RAW_LEN {
            let values: HashSet<u8> = raw.iter().map(|r| r[at]).collect();
            assert!(values.len() > 1, "byte {at} is the same in all 64 tokens");
        }
        // The same position twice gives two different tokens.
        assert_ne!(t.encode(p), t.encode(p));
    }
}
