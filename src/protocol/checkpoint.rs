//! Checkpoint tokens: a position sealed under a key that clients never see, bound to the
//! collection and scope it was issued for, so that a token is refused anywhere else and reveals
//! nothing of the position (how many transactions other owners made in between).
//!
//! A token is `base64url(version ‖ nonce ‖ ciphertext ‖ tag)`, 57 bytes, 76 characters:
//! - `version` (1 byte, in clear): the format, so that a later format can be told apart;
//! - `nonce` (12 random bytes);
//! - `ciphertext` of `generation (u32) ‖ tx (i64) ‖ seq (i64) ‖ floor (i64)`, 28 bytes: the
//!   dataset generation (0 until restores move a dataset to a new one), the position, and the
//!   reader's floor (see [`Resume::floor`]);
//! - `tag` (16 bytes), AES-256-GCM-SIV's authentication tag.
//!
//! Version 2 tokens (66 characters, without the floor) are still accepted, with floor 0: the
//! most careful reading (any purge past their position expires them).
//!
//! Version 4 tokens (87 characters) are issued on collections with claim-based access rules:
//! their plaintext also holds an 8-byte fingerprint of the reader's bound read rule (its
//! claims as the rule uses them). A token whose fingerprint differs from the caller's (its
//! claims changed, or the collection's rules did) is expired rather than refused: the copy it
//! was issued for may hold documents the caller can no longer read, or lack ones it now can,
//! and Reconcile mends exactly that.
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
//! authentication key); its 12-byte nonce keeps tokens at 76 characters where XChaCha20's 24
//! bytes would take 92; and AES runs in hardware on servers. A random rather than a fixed nonce
//! keeps two tokens for the same position unlinkable and the cipher within its distinct-nonce
//! bounds however many tokens a key seals.

use std::sync::Arc;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Principal, ProtocolError, Reason};
use crate::store::Position;
pub use crate::store::Resume;

/// Bytes of the key that seals tokens.
pub const KEY_LEN: usize = 32;

const VERSION: u8 = 3;
/// The format before the floor: accepted, never issued.
const VERSION_2: u8 = 2;
const NONCE_LEN: usize = 12;
const PLAIN_LEN: usize = 4 + 8 + 8 + 8;
const PLAIN_LEN_2: usize = 4 + 8 + 8;
/// The format with the read rule's fingerprint (see the module doc).
const VERSION_4: u8 = 4;
const PLAIN_LEN_4: usize = PLAIN_LEN + RULE_LEN;
/// Bytes of a read rule's fingerprint.
pub const RULE_LEN: usize = 8;
const RAW_LEN_4: usize = 1 + NONCE_LEN + PLAIN_LEN_4 + TAG_LEN;
const TOKEN_LEN_4: usize = (RAW_LEN_4 * 4).div_ceil(3);
const TAG_LEN: usize = 16;
const RAW_LEN: usize = 1 + NONCE_LEN + PLAIN_LEN + TAG_LEN;
const RAW_LEN_2: usize = 1 + NONCE_LEN + PLAIN_LEN_2 + TAG_LEN;
/// Length of every non-empty token (unpadded base64 of [`RAW_LEN`] bytes).
pub const TOKEN_LEN: usize = (RAW_LEN * 4).div_ceil(3);
/// Length of a version 2 token.
const TOKEN_LEN_2: usize = (RAW_LEN_2 * 4).div_ceil(3);
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
        self.bind_filtered(collection, principal, None, None)
    }

    /// The tokens of `principal` on `collection` for reads under the filter whose digest is
    /// `filter` (`None`: unfiltered): a token of one filter does not open under another, so a
    /// client changing its filter starts a new sync. `rule` is the fingerprint of the
    /// reader's bound read rule on a collection with claim-based access rules (`None`
    /// elsewhere): sealed inside, so that a token of other claims is expired.
    pub fn bind_filtered(
        &self,
        collection: &str,
        principal: &Principal,
        filter: Option<&[u8; 32]>,
        rule: Option<[u8; RULE_LEN]>,
    ) -> Tokens {
        let version = if rule.is_some() { VERSION_4 } else { VERSION };
        let scope = scope_data(principal.owner_filter(), filter.map_or(&[][..], |d| &d[..]));
        let associated = associated_data_of(version, collection, &scope);
        let unfiltered = filter.map(|_| {
            associated_data_of(
                version,
                collection,
                &scope_data(principal.owner_filter(), b""),
            )
            .into_boxed_slice()
        });
        Tokens {
            cipher: self.cipher.clone(),
            generation: self.generation,
            scope_at: associated.len() - scope.len(),
            associated: associated.into_boxed_slice(),
            unfiltered,
            version,
            rule,
        }
    }
}

/// Encodes what a token is bound to besides its collection: the owner filter (or the service
/// scope, which sees every owner) and the read filter. Each part is tagged and
/// length-prefixed, so that no subject can pose as the service or another subject.
fn scope_data(owner: Option<&str>, filter: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + owner.map_or(0, str::len) + 8 + filter.len());
    match owner {
        None => out.push(0),
        Some(subject) => {
            out.push(1);
            put(&mut out, subject.as_bytes());
        }
    }
    // The digest of the filter a read was issued under; empty for unfiltered reads (which is
    // what tokens issued before filtered reads existed carry).
    put(&mut out, filter);
    out
}

/// Where the collection name starts in [`associated_data`]: after the domain, the version and
/// the name's length.
const COLLECTION_AT: usize = DOMAIN.len() + 1 + 8;

fn associated_data_of(version: u8, collection: &str, scope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 1 + 8 + collection.len() + scope.len());
    out.extend_from_slice(DOMAIN);
    out.push(version);
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
    /// For a filtered reader, the associated data of the same reader unfiltered: only to
    /// explain a refusal.
    unfiltered: Option<Box<[u8]>>,
    /// Where the scope part of `associated` starts (the collection name ends there).
    scope_at: usize,
    /// The format issued: [`VERSION`], or [`VERSION_4`] with `rule`.
    version: u8,
    /// The reader's read rule fingerprint (claim-based access rules only).
    rule: Option<[u8; RULE_LEN]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Seals a position and the reader's floor. [`Position::START`] is the empty token.
    pub fn encode(&self, position: Position, floor: i64) -> String {
        if position == Position::START {
            return String::new();
        }
        let (raw_len, plain_len) = match self.rule {
            Some(_) => (RAW_LEN_4, PLAIN_LEN_4),
            None => (RAW_LEN, PLAIN_LEN),
        };
        let mut buffer = [0u8; RAW_LEN_4];
        let raw = &mut buffer[..raw_len];
        raw[0] = self.version;
        let nonce: [u8; NONCE_LEN] = rand::random();
        raw[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        let (plain, tag) = raw[1 + NONCE_LEN..].split_at_mut(plain_len);
        plain[..4].copy_from_slice(&self.generation.to_be_bytes());
        plain[4..12].copy_from_slice(&position.tx.to_be_bytes());
        plain[12..20].copy_from_slice(&position.seq.to_be_bytes());
        plain[20..28].copy_from_slice(&floor.to_be_bytes());
        if let Some(rule) = &self.rule {
            plain[28..].copy_from_slice(rule);
        }
        let nonce = Nonce::from(nonce);
        match self
            .cipher
            .encrypt_inout_detached(&nonce, &self.associated, plain.into())
        {
            Ok(t) => tag.copy_from_slice(&t),
            // Only inputs over 2^36 bytes fail: the plaintext is 36 bytes at most and the associated
            // data a collection name and a credential's subject, both bounded far below that.
            Err(_) => unreachable!("AES-GCM-SIV refused a 36-byte plaintext"),
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
    ) -> Result<Resume, ProtocolError> {
        if token.is_empty() {
            return Ok(Resume::default());
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
        let (version, raw_len, plain_len) = match token.len() {
            TOKEN_LEN => (VERSION, RAW_LEN, PLAIN_LEN),
            TOKEN_LEN_2 => (VERSION_2, RAW_LEN_2, PLAIN_LEN_2),
            TOKEN_LEN_4 => (VERSION_4, RAW_LEN_4, PLAIN_LEN_4),
            _ => return Err(foreign()),
        };
        let mut buffer = [0u8; RAW_LEN_4];
        let raw = &mut buffer[..raw_len];
        match URL_SAFE_NO_PAD.decode_slice(token, raw) {
            Ok(n) if n == raw_len => {}
            _ => return Err(foreign()),
        }
        if raw[0] != version {
            return Err(foreign());
        }
        let associated =
            |collection: &str, scope: &[u8]| associated_data_of(version, collection, scope);
        let this = &self.associated[COLLECTION_AT..self.scope_at];
        let scope = &self.associated[self.scope_at..];
        let opened = if version == self.version {
            self.open(raw, plain_len, &self.associated)
        } else {
            // Rare (tokens issued before an upgrade, or before the collection's access rules
            // changed): the associated data is rebuilt.
            let this = std::str::from_utf8(this).unwrap_or_default();
            self.open(raw, plain_len, &associated(this, scope))
        };
        let Some(plain) = opened else {
            let elsewhere = collections.into_iter().any(|other| {
                other.as_bytes() != this
                    && self
                        .open(raw, plain_len, &associated(other, scope))
                        .is_some()
            });
            let unfiltered = version == self.version
                && self
                    .unfiltered
                    .as_ref()
                    .is_some_and(|ad| self.open(raw, plain_len, ad).is_some());
            return Err(if elsewhere {
                refuse("issued for another collection")
            } else if unfiltered {
                refuse("issued for a pull without a selector; a new selector starts a new sync")
            } else {
                // Authentication cannot tell these apart: the associated data differs either way.
                refuse(
                    "not issued to this caller for this collection and selector (another \
                     principal's checkpoint, one issued under another selector, or an altered one)",
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
            // A genuine token whose positions belong to an earlier dataset (a restore moved it
            // to a new generation): not forged, but no longer servable. The client reconciles.
            return Err(ProtocolError::checkpoint_expired(
                field,
                format!(
                    "{field}: issued for generation {generation} of the dataset, which is now at \
                     generation {}; reconcile your copy (Reconcile) or start over from an empty checkpoint",
                    self.generation
                ),
            ));
        }
        let position = Position {
            tx: word(4),
            seq: word(12),
        };
        // Version 2 has no floor: 0, the most careful.
        let floor = if plain_len >= PLAIN_LEN { word(20) } else { 0 };
        if position.tx < 0 || position.seq < 0 || floor < 0 {
            return Err(foreign());
        }
        let rule = (plain_len == PLAIN_LEN_4).then(|| {
            let mut r = [0u8; RULE_LEN];
            r.copy_from_slice(&plain[PLAIN_LEN..PLAIN_LEN_4]);
            r
        });
        if rule != self.rule {
            // Genuine, for this caller, but its copy was filled under other claims (or other
            // rules): documents may have entered or left its scope before the position.
            return Err(ProtocolError::checkpoint_expired(
                field,
                format!(
                    "{field}: issued under other access rules or token claims than this call's; \
                     reconcile your copy (Reconcile) or start over from an empty checkpoint"
                ),
            ));
        }
        Ok(Resume { position, floor })
    }

    /// The plaintext of `raw` (whose ciphertext is `plain_len` bytes) when it authenticates
    /// under `associated`, zero-padded to [`PLAIN_LEN_4`].
    fn open(&self, raw: &[u8], plain_len: usize, associated: &[u8]) -> Option<[u8; PLAIN_LEN_4]> {
        let (nonce, rest) = raw.get(1..)?.split_at_checked(NONCE_LEN)?;
        let (sealed, tag) = rest.split_at_checked(plain_len)?;
        let nonce = Nonce::try_from(nonce).ok()?;
        let tag = Tag::try_from(tag).ok()?;
        let mut plain = [0u8; PLAIN_LEN_4];
        plain.get_mut(..plain_len)?.copy_from_slice(sealed);
        self.cipher
            .decrypt_inout_detached(&nonce, associated, plain[..plain_len].as_mut().into(), &tag)
            .ok()?;
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::protocol::Kind;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
    const COLLECTIONS: [&str; 2] = ["tasks", "notes"];

    fn user(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            scopes: HashSet::new(),
            service: false,
            expires_at: None,
            claims: Default::default(),
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
            let token = tokens("tasks", &alice).encode(p, 0);
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
            assert_eq!(
                elsewhere.decode(&token, "c", COLLECTIONS).unwrap().position,
                p
            );
        }
        let t = tokens("tasks", &alice);
        assert_eq!(t.encode(Position::START, 0), "");
        assert_eq!(t.decode("", "c", COLLECTIONS).unwrap(), Resume::default());
    }

    #[test]
    fn refuses_garbage_altered_and_foreign_tokens() {
        let t = tokens("tasks", &user("alice"));
        let good = t.encode(Position { tx: 9, seq: 3 }, 0);
        // The earlier format: unkeyed, unbound, forgeable. No longer accepted.
        let v1 = URL_SAFE_NO_PAD.encode([1u8; 23]);
        let mut wrong_version = URL_SAFE_NO_PAD.decode(&good).unwrap();
        wrong_version[0] = 4;
        let other_key = Sealer::new(&[8; KEY_LEN])
            .bind("tasks", &user("alice"))
            .encode(Position { tx: 9, seq: 3 }, 0);
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
        let on_tasks = tokens("tasks", &alice).encode(position, 0);

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
        let as_service = tokens("tasks", &service).encode(position, 0);
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
    fn a_token_of_another_dataset_generation_is_expired() {
        let alice = user("alice");
        let old = Sealer::new(&KEY)
            .bind("tasks", &alice)
            .encode(Position { tx: 5, seq: 5 }, 0);
        let now = Sealer::new(&KEY).with_generation(1).bind("tasks", &alice);
        let e = now
            .decode(&old, "checkpoint.token", COLLECTIONS)
            .unwrap_err();
        assert_eq!(
            (e.kind, e.reason),
            (Kind::FailedPrecondition, Reason::CheckpointExpired)
        );
        assert_eq!(e.field.as_deref(), Some("checkpoint.token"));
        assert!(e.message.contains("generation 0"), "{}", e.message);
    }

    #[test]
    fn the_floor_round_trips_and_version_2_tokens_open_with_floor_0() {
        let alice = user("alice");
        let t = tokens("tasks", &alice);
        let p = Position { tx: 77, seq: 3 };
        let token = t.encode(p, 70);
        assert_eq!(token.len(), 76);
        assert_eq!(
            t.decode(&token, "c", COLLECTIONS).unwrap(),
            Resume::new(p, 70)
        );
        // A token of the earlier format, sealed as the earlier server did.
        let mut raw = [0u8; RAW_LEN_2];
        raw[0] = VERSION_2;
        let nonce = [5u8; NONCE_LEN];
        raw[1..1 + NONCE_LEN].copy_from_slice(&nonce);
        let (plain, tag) = raw[1 + NONCE_LEN..].split_at_mut(PLAIN_LEN_2);
        plain[4..12].copy_from_slice(&p.tx.to_be_bytes());
        plain[12..].copy_from_slice(&p.seq.to_be_bytes());
        let scope = scope_data(alice.owner_filter(), b"");
        let sealed = t
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &associated_data_of(VERSION_2, "tasks", &scope),
                plain.into(),
            )
            .unwrap();
        tag.copy_from_slice(&sealed);
        let old = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(old.len(), 66);
        assert_eq!(t.decode(&old, "c", COLLECTIONS).unwrap(), Resume::new(p, 0));
        // Still bound to its collection and caller.
        let m = refusal(&tokens("notes", &alice), &old);
        assert!(m.contains("issued for another collection"), "{m}");
        refusal(&tokens("tasks", &user("bob")), &old);
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
                URL_SAFE_NO_PAD.decode(t.encode(next, 0)).unwrap()
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
        assert_ne!(t.encode(p, 0), t.encode(p, 0));
    }

    /// Under claim rules a token carries the reader's rule fingerprint: the same fingerprint
    /// opens it, another (or none, or an older token without one) finds it expired, not
    /// forged; an altered one is still refused.
    #[test]
    fn a_rule_fingerprint_change_expires_tokens() {
        let alice = user("alice");
        let sealer = Sealer::new(&KEY);
        let blue = sealer.bind_filtered("tasks", &alice, None, Some([1; RULE_LEN]));
        let red = sealer.bind_filtered("tasks", &alice, None, Some([2; RULE_LEN]));
        let plain = sealer.bind("tasks", &alice);
        let p = Position { tx: 42, seq: 3 };
        let token = blue.encode(p, 7);
        assert_eq!(token.len(), TOKEN_LEN_4);
        assert_eq!(token.len(), 87);
        let opened = blue
            .decode(&token, "checkpoint.token", COLLECTIONS)
            .unwrap();
        assert_eq!((opened.position, opened.floor), (p, 7));
        let expired = |t: &Tokens, token: &str| {
            let e = t
                .decode(token, "checkpoint.token", COLLECTIONS)
                .unwrap_err();
            (e.kind, e.reason)
        };
        let want = (Kind::FailedPrecondition, Reason::CheckpointExpired);
        assert_eq!(expired(&red, &token), want, "other claims");
        assert_eq!(expired(&plain, &token), want, "the rules were removed");
        assert_eq!(
            expired(&blue, &plain.encode(p, 0)),
            want,
            "a token from before the rules"
        );
        // Another principal's token stays foreign, whatever its rule.
        let bob = sealer.bind_filtered("tasks", &user("bob"), None, Some([1; RULE_LEN]));
        assert_eq!(
            expired(&bob, &token),
            (Kind::InvalidArgument, Reason::CheckpointInvalid)
        );
        let mut altered = token.into_bytes();
        altered[40] = if altered[40] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            expired(&blue, &altered),
            (Kind::InvalidArgument, Reason::CheckpointInvalid)
        );
    }
}
