//! Reconcile: bring a client's copy back in line with the server after its checkpoint expired,
//! transferring little more than what differs.
//!
//! The client and the server hash what they hold into buckets and compare digests, recursing
//! into the buckets that differ, then the client lists the last differing buckets, fetches the
//! documents it lacks or holds at another revision, drops the ids not listed, and pulls from
//! the checkpoint of the first round. The pure functions here are the client's half too: the
//! tests and the benchmark use them as the reference client. See README "Reconcile".

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::{ProtocolError, Reason, Replicator};
use crate::config::Config;
use crate::store::{BucketDigest, PageLimit, Position, Store, StoredDocument};

/// The deepest bucket level a request may name: the store buckets by the first 4 bytes of the
/// id's hash, and 2^24 buckets is already far more than any reply may hold.
pub const BUCKET_BITS_MAX: u32 = 24;

/// Request limits of the reconcile RPCs (configuration keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileLimits {
    /// Most bucket digests (or `within` prefixes, or listed buckets) in one request.
    pub digests_max: usize,
    /// Most (id, revision) pairs in one ReconcileList reply.
    pub list_max: usize,
    /// Most ids in one Fetch.
    pub fetch_ids_max: usize,
}

impl Default for ReconcileLimits {
    fn default() -> Self {
        ReconcileLimits {
            digests_max: 65_536,
            list_max: 10_000,
            fetch_ids_max: 1_000,
        }
    }
}

impl ReconcileLimits {
    /// Takes the limits from the configuration.
    pub fn from_config(c: &Config) -> ReconcileLimits {
        ReconcileLimits {
            digests_max: c.reconcile_digests_max,
            list_max: c.reconcile_list_max,
            fetch_ids_max: c.fetch_ids_max,
        }
    }
}

fn sha8(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// The bucket of `id` at `bits` bits (0 to [`BUCKET_BITS_MAX`]): the top bits of the first 8
/// bytes of sha256(id), big-endian.
pub fn bucket_of(id: &str, bits: u32) -> u32 {
    let bits = bits.min(BUCKET_BITS_MAX);
    if bits == 0 {
        return 0;
    }
    (sha8(&[id.as_bytes()]) >> (64 - bits)) as u32
}

/// The hash of one (id, revision) pair: the first 8 bytes of sha256(id || "\n" || revision),
/// big-endian.
pub fn item_hash(id: &str, revision: &str) -> u64 {
    sha8(&[id.as_bytes(), b"\n", revision.as_bytes()])
}

/// A bucket's digest: how many documents and the wrapping sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Documents in the bucket.
    pub count: u64,
    /// Wrapping sum of their [`item_hash`]es.
    pub sum: u64,
}

/// What the digests need of one (id, revision): its bucket at [`BUCKET_BITS_MAX`] bits (the
/// bucket at fewer bits is a prefix of it) and its [`item_hash`]. A client computes it once per
/// document it holds and reuses it in every round.
pub fn key(id: &str, revision: &str) -> (u32, u64) {
    (bucket_of(id, BUCKET_BITS_MAX), item_hash(id, revision))
}

/// Digests of the non-empty buckets at `bits` of `items` (id, revision), keeping only buckets
/// under one of the `within` prefixes at `within_bits` (all when `within_bits` is 0).
pub fn digests<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a str)>,
    bits: u32,
    within_bits: u32,
    within: &[u32],
) -> BTreeMap<u32, Digest> {
    let keys = items.into_iter().map(|(id, revision)| key(id, revision));
    digests_of_keys(keys, bits, within_bits, within)
}

/// [`digests`] of items already turned into [`key`]s.
pub fn digests_of_keys(
    keys: impl IntoIterator<Item = (u32, u64)>,
    bits: u32,
    within_bits: u32,
    within: &[u32],
) -> BTreeMap<u32, Digest> {
    let bits = bits.min(BUCKET_BITS_MAX);
    let within: std::collections::HashSet<u32> = within.iter().copied().collect();
    let mut out: BTreeMap<u32, Digest> = BTreeMap::new();
    for (top, hash) in keys {
        let bucket = top >> (BUCKET_BITS_MAX - bits);
        if within_bits > 0 && !within.contains(&(bucket >> (bits - within_bits.min(bits)))) {
            continue;
        }
        let d = out.entry(bucket).or_default();
        d.count += 1;
        d.sum = d.sum.wrapping_add(hash);
    }
    out
}

/// The server's digests of the buckets whose digests differ between `client` and `server`
/// (an empty [`Digest`] where the server has none), in bucket order.
pub fn differing(
    client: &BTreeMap<u32, Digest>,
    server: &BTreeMap<u32, Digest>,
) -> Vec<(u32, Digest)> {
    let mut out: Vec<(u32, Digest)> = server
        .iter()
        .filter(|(b, d)| client.get(b) != Some(d))
        .map(|(b, d)| (*b, *d))
        .collect();
    out.extend(
        client
            .keys()
            .filter(|b| !server.contains_key(b))
            .map(|b| (*b, Digest::default())),
    );
    out.sort_by_key(|(b, _)| *b);
    out
}

/// The buckets a round compares: those at `bits` under the `within` prefixes at `within_bits`
/// (every bucket when `within_bits` is 0).
#[derive(Debug, Clone, Copy)]
pub struct Compared<'a> {
    /// Level of the compared buckets.
    pub bits: u32,
    /// Level of the prefixes.
    pub within_bits: u32,
    /// The prefixes.
    pub within: &'a [u32],
}

/// The client's digests as a request sends them (three parallel arrays), checked: equal
/// lengths, buckets distinct, in range and among the `compared`, and no more than `max`.
/// `field` names the request field in errors.
pub fn parse_digests(
    (buckets, counts, sums): (&[u32], &[u32], &[u64]),
    compared: Compared<'_>,
    max: usize,
    field: &str,
) -> Result<BTreeMap<u32, Digest>, ProtocolError> {
    let Compared {
        bits,
        within_bits,
        within,
    } = compared;
    if buckets.len() > max {
        return Err(ProtocolError::invalid(
            Reason::LimitExceeded,
            format!("{field}.buckets"),
            format!(
                "{field}.buckets: {} buckets, at most {max} per request; send fewer (deeper \
                 rounds only for the buckets that differed)",
                buckets.len()
            ),
        ));
    }
    if counts.len() != buckets.len() || sums.len() != buckets.len() {
        return Err(ProtocolError::invalid(
            Reason::InvalidRequest,
            format!("{field}.counts"),
            format!(
                "{field}.counts: buckets, counts and sums must have one entry per bucket \
                 ({}, {}, {})",
                buckets.len(),
                counts.len(),
                sums.len()
            ),
        ));
    }
    // A set: a request may hold tens of thousands of both buckets and prefixes.
    let prefixes: std::collections::HashSet<u32> = within.iter().copied().collect();
    let mut out = BTreeMap::new();
    for (i, &bucket) in buckets.iter().enumerate() {
        let at = format!("{field}.buckets[{i}]");
        check_bucket(bucket, bits, &at)?;
        if within_bits > 0 && !prefixes.contains(&(bucket >> (bits - within_bits.min(bits)))) {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                at.clone(),
                format!("{at}: bucket {bucket} is not under any `within` prefix"),
            ));
        }
        let digest = Digest {
            count: u64::from(counts[i]),
            sum: sums[i],
        };
        if out.insert(bucket, digest).is_some() {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                at.clone(),
                format!("{at}: bucket {bucket} appears twice"),
            ));
        }
    }
    Ok(out)
}

/// Refuses a bucket level above [`BUCKET_BITS_MAX`].
pub fn check_bits(bits: u32, field: &str) -> Result<(), ProtocolError> {
    if bits > BUCKET_BITS_MAX {
        return Err(ProtocolError::invalid(
            Reason::InvalidRequest,
            field,
            format!("{field}: {bits} bits, at most {BUCKET_BITS_MAX}"),
        ));
    }
    Ok(())
}

/// Refuses a bucket number that does not exist at `bits`.
pub fn check_bucket(bucket: u32, bits: u32, field: &str) -> Result<(), ProtocolError> {
    if u64::from(bucket) >> bits != 0 {
        return Err(ProtocolError::invalid(
            Reason::InvalidRequest,
            field,
            format!("{field}: bucket {bucket} does not exist at {bits} bits"),
        ));
    }
    Ok(())
}

/// The checkpoint C0 of a snapshot with this xmin: just before every position of a
/// transaction at or above it (those the snapshot may not have seen in full).
pub fn checkpoint_position(xmin: i64) -> Position {
    Position {
        tx: xmin.saturating_sub(1).max(0),
        seq: i64::MAX,
    }
}

/// One reconcile round's answer.
#[derive(Debug, Clone)]
pub struct ReconcileRound {
    /// The server's digests of the compared buckets that differ, in bucket order.
    pub differing: Vec<(u32, Digest)>,
    /// The checkpoint of this round's snapshot.
    pub checkpoint: String,
}

/// A Fetch reply.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The live documents in scope, in request order.
    pub documents: Vec<StoredDocument>,
    /// How many requested ids (a prefix) this answers.
    pub answered: usize,
}

impl<S: Store> Replicator<S> {
    /// Compares the client's digests of the buckets at `bits` (under `within`) with the live
    /// documents `principal` may read.
    #[allow(clippy::too_many_arguments)]
    pub async fn reconcile(
        &self,
        principal: &super::Principal,
        collection: &str,
        bits: u32,
        within_bits: u32,
        within: &[u32],
        client: (&[u32], &[u32], &[u64]),
        selector: &[u8],
    ) -> Result<ReconcileRound, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_read(&collection)?;
        let scope = self.scope(&collection, principal, selector)?;
        let max = self.reconcile_limits.digests_max;
        check_bits(bits, "bucket_bits")?;
        if within_bits > bits {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "within_bits",
                format!("within_bits: {within_bits}, at most bucket_bits ({bits})"),
            ));
        }
        if within_bits > 0 {
            if within.len() > max {
                return Err(ProtocolError::invalid(
                    Reason::LimitExceeded,
                    "within",
                    format!("within: {} prefixes, at most {max}", within.len()),
                ));
            }
            for (i, &p) in within.iter().enumerate() {
                check_bucket(p, within_bits, &format!("within[{i}]"))?;
            }
        }
        let compared = Compared {
            bits,
            within_bits,
            within,
        };
        let client = parse_digests(client, compared, max, "digests")?;
        // The reply lists at most every compared bucket: bound that number, not only the
        // request's, so that a round over a deep level cannot make the server list a bucket
        // per document.
        let compared_buckets = if within_bits == 0 {
            1u64 << bits
        } else {
            (within.len() as u64) << (bits - within_bits)
        };
        if compared_buckets > max as u64 {
            return Err(ProtocolError::invalid(
                Reason::LimitExceeded,
                "bucket_bits",
                format!(
                    "bucket_bits: this round compares {compared_buckets} buckets, at most {max} \
                     (reconcile_digests_max); compare fewer prefixes at once, or go one level \
                     deeper at a time"
                ),
            ));
        }
        let tokens = self
            .filtered_tokens(&collection.name, principal, &scope)
            .await?;
        let snapshot = self
            .store
            .bucket_digests(
                &collection.name,
                scope.owner(),
                scope.filter.as_ref().map(|f| &f.read),
                bits,
                within_bits,
                within,
            )
            .await?;
        let server: BTreeMap<u32, Digest> = snapshot
            .digests
            .iter()
            .map(|d: &BucketDigest| {
                (
                    d.bucket,
                    Digest {
                        count: d.count,
                        sum: d.sum,
                    },
                )
            })
            .collect();
        Ok(ReconcileRound {
            differing: differing(&client, &server),
            // The floor is the snapshot's xmin, as for a Pull from scratch (the client's copy
            // now reflects this snapshot): a later purge expires C0 exactly when it removes a
            // tombstone above C0, one the Pull from C0 would otherwise have delivered.
            checkpoint: tokens.encode(checkpoint_position(snapshot.xmin), snapshot.xmin),
        })
    }

    /// The (id, revision) pairs of the live documents `principal` may read in `buckets`.
    pub async fn reconcile_list(
        &self,
        principal: &super::Principal,
        collection: &str,
        bits: u32,
        buckets: &[u32],
        selector: &[u8],
    ) -> Result<Vec<(String, String)>, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_read(&collection)?;
        let scope = self.scope(&collection, principal, selector)?;
        check_bits(bits, "bucket_bits")?;
        let limits = self.reconcile_limits;
        if buckets.len() > limits.digests_max {
            return Err(ProtocolError::invalid(
                Reason::LimitExceeded,
                "buckets",
                format!(
                    "buckets: {} buckets, at most {}",
                    buckets.len(),
                    limits.digests_max
                ),
            ));
        }
        for (i, &b) in buckets.iter().enumerate() {
            check_bucket(b, bits, &format!("buckets[{i}]"))?;
        }
        let listed = self
            .store
            .bucket_documents(
                &collection.name,
                scope.owner(),
                scope.filter.as_ref().map(|f| &f.read),
                bits,
                buckets,
                limits.list_max.saturating_add(1),
            )
            .await?;
        if listed.len() > limits.list_max {
            return Err(ProtocolError::resource_exhausted(format!(
                "buckets: these buckets hold more than {} documents (reconcile_list_max); \
                 list fewer buckets at once, or compare deeper buckets first",
                limits.list_max
            ))
            .at("buckets"));
        }
        Ok(listed)
    }

    /// The live documents `principal` may read among `ids`, bounded like a Pull page.
    pub async fn fetch(
        &self,
        principal: &super::Principal,
        collection: &str,
        ids: &[String],
        selector: &[u8],
    ) -> Result<Fetched, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_read(&collection)?;
        let scope = self.scope(&collection, principal, selector)?;
        let max = self.reconcile_limits.fetch_ids_max;
        if ids.len() > max {
            return Err(ProtocolError::invalid(
                Reason::LimitExceeded,
                "ids",
                format!(
                    "ids: {} ids, at most {max} per Fetch (fetch_ids_max)",
                    ids.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if id.is_empty() || id.len() > self.limits.id_bytes_max {
                return Err(ProtocolError::invalid(
                    Reason::InvalidRequest,
                    format!("ids[{i}]"),
                    format!(
                        "ids[{i}]: an id has 1 to {} bytes, got {}",
                        self.limits.id_bytes_max,
                        id.len()
                    ),
                ));
            }
            if !seen.insert(id.as_str()) {
                return Err(ProtocolError::invalid(
                    Reason::InvalidRequest,
                    format!("ids[{i}]"),
                    format!("ids[{i}]: {} appears twice", super::shown(id)),
                ));
            }
        }
        if ids.is_empty() {
            return Ok(Fetched {
                documents: Vec::new(),
                answered: 0,
            });
        }
        let limit = PageLimit::new(self.limits.pull_max, self.page_bytes);
        let (documents, answered) = self
            .store
            .live_documents(
                &collection.name,
                scope.owner(),
                scope.filter.as_ref().map(|f| &f.read),
                ids,
                limit,
            )
            .await?;
        Ok(Fetched {
            documents,
            answered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_prefixes() {
        // sha256("a") = ca978112ca1bbdca...
        assert_eq!(sha8(&[b"a"]), 0xca97_8112_ca1b_bdca);
        assert_eq!(bucket_of("a", 12), 0xca9);
        assert_eq!(bucket_of("a", 0), 0);
        assert_eq!(bucket_of("a", 24), 0xca9781);
        assert_eq!(item_hash("a", "1-x"), sha8(&[b"a\n1-x"]));
    }

    #[test]
    fn digests_sum_and_count_and_nest() {
        let items = [("a", "1"), ("b", "1"), ("c", "2"), ("d", "3")];
        let top = digests(items, 4, 0, &[]);
        let total: u64 = top.values().map(|d| d.count).sum();
        assert_eq!(total, 4);
        // A bucket's digest is the combination of its sub-buckets' digests.
        for (&b, d) in &top {
            let sub = digests(items, 8, 4, &[b]);
            assert!(sub.keys().all(|&s| s >> 4 == b));
            let count: u64 = sub.values().map(|d| d.count).sum();
            let sum = sub.values().fold(0u64, |s, d| s.wrapping_add(d.sum));
            assert_eq!((count, sum), (d.count, d.sum));
        }
    }

    #[test]
    fn differing_reports_the_server_side_and_missing_buckets() {
        let mut client = BTreeMap::new();
        let mut server = BTreeMap::new();
        client.insert(1, Digest { count: 1, sum: 5 });
        server.insert(1, Digest { count: 1, sum: 5 });
        client.insert(2, Digest { count: 1, sum: 6 });
        server.insert(2, Digest { count: 1, sum: 7 });
        client.insert(3, Digest { count: 2, sum: 1 });
        server.insert(4, Digest { count: 1, sum: 1 });
        assert_eq!(
            differing(&client, &server),
            vec![
                (2, Digest { count: 1, sum: 7 }),
                (3, Digest::default()),
                (4, Digest { count: 1, sum: 1 }),
            ]
        );
    }

    #[test]
    fn bad_digests_are_refused_naming_the_field() {
        fn c(bits: u32, within_bits: u32, within: &[u32]) -> Compared<'_> {
            Compared {
                bits,
                within_bits,
                within,
            }
        }
        let err = parse_digests((&[1, 2], &[1], &[1, 2]), c(4, 0, &[]), 10, "digests").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("digests.counts"));
        let err = parse_digests((&[16], &[1], &[1]), c(4, 0, &[]), 10, "digests").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("digests.buckets[0]"));
        let err = parse_digests((&[1, 1], &[1, 1], &[1, 1]), c(4, 0, &[]), 10, "d").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("d.buckets[1]"));
        let err = parse_digests((&[0x21], &[1], &[1]), c(8, 4, &[1]), 10, "d").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("d.buckets[0]"));
        let err = parse_digests((&[1, 2, 3], &[1; 3], &[1; 3]), c(4, 0, &[]), 2, "d").unwrap_err();
        assert_eq!(err.reason, Reason::LimitExceeded);
        assert!(parse_digests((&[0x12], &[1], &[1]), c(8, 4, &[1]), 10, "d").is_ok());
        assert!(check_bits(25, "bucket_bits").is_err());
    }

    #[test]
    fn checkpoint_position_precedes_every_write_of_the_snapshot_xmin() {
        let c0 = checkpoint_position(100);
        assert!(c0 < Position { tx: 100, seq: 0 });
        assert!(
            c0 >= Position {
                tx: 99,
                seq: i64::MAX
            }
        );
    }
}
