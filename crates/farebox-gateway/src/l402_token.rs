//! The L402 token a request presents: rate limits count per token id, and a token counts as a
//! payment once, at its first paid answer on any instance.
//!
//! Only the token's identity is read here, never trusted: the L402 rail verifies the token (its
//! signature, caveats, and revocation, which it keeps in the store every instance shares; the
//! admin API revokes through it), on every request.
//!
//! The rail has already decoded a credential it verified, so the gateway does not decode it a
//! second time on every request: [`SeenTokens`] remembers, per SHA-256 of an `Authorization`
//! value the gateway has served a paid answer for, the identifier in it. A request presenting the
//! same value again costs one SHA-256 of the header and a map lookup; the identifier is decoded
//! ([`presented_token`]) only the first time a value is served, or, for a per-token rate limit,
//! for a value never served. [`SeenTokens`] also remembers which token ids have their first paid
//! answer claimed in the payment log's token table, so that the claim (a database write) is made
//! once per token and instance.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use farebox_l402::Identifier;
use farebox_l402::credential::{SCHEMES, parse_credential};
use farebox_l402::macaroon::{Macaroon, decode_base64};
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// Most entries [`SeenTokens`] keeps in each of its maps before it starts over.
pub const MAX_SEEN: usize = 100_000;

/// The identifier of the L402 token in `headers`' `Authorization`, if it carries one whose
/// payment hash is its preimage's hash.
pub fn presented_token(headers: &HeaderMap) -> Option<Identifier> {
    token_in(headers.get(http::header::AUTHORIZATION)?)
}

/// The identifier of the L402 token in an `Authorization` value (see [`presented_token`]).
pub fn token_in(value: &HeaderValue) -> Option<Identifier> {
    let credential = parse_credential(value.to_str().ok()?).ok()?;
    let hash: [u8; 32] = Sha256::digest(credential.preimage).into();
    credential.macaroon_list().find_map(|text| {
        let bytes = decode_base64(text).ok()?;
        let id = Identifier::decode(Macaroon::decode(&bytes).ok()?.identifier()).ok()?;
        (id.payment_hash == hash).then_some(id)
    })
}

/// The `Authorization` value of a request that names the L402 (or LSAT) scheme, and its
/// SHA-256: the key [`SeenTokens`] remembers it by.
pub fn l402_credential(headers: &HeaderMap) -> Option<(&HeaderValue, [u8; 32])> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    let text = value.as_bytes().trim_ascii_start();
    let scheme = text.split(|b| *b == b' ' || *b == b'\t').next()?;
    if !SCHEMES.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(scheme)) {
        return None;
    }
    Some((value, Sha256::digest(value.as_bytes()).into()))
}

#[derive(Default)]
struct Seen {
    /// SHA-256 of a served `Authorization` value → the identifier in it.
    served: HashMap<[u8; 32], Identifier>,
    /// Token ids whose first paid answer is claimed (by this instance or another).
    claimed: HashSet<[u8; 32]>,
}

/// What this instance has learnt about the L402 tokens it served (see the module docs). Bounded:
/// a full map starts over, which costs a decode or a claim again, never a wrong answer.
#[derive(Default)]
pub struct SeenTokens {
    seen: Mutex<Seen>,
}

impl SeenTokens {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The identifier in the `Authorization` value whose SHA-256 is `key`, if the gateway has
    /// served a paid answer for that value.
    pub fn served(&self, key: &[u8; 32]) -> Option<Identifier> {
        self.lock().served.get(key).copied()
    }

    /// Remembers that a paid answer was served for the `Authorization` value whose SHA-256 is
    /// `key` (after the L402 rail verified it), and returns the identifier in it.
    pub fn serve(&self, key: [u8; 32], value: &HeaderValue) -> Option<Identifier> {
        let id = token_in(value)?;
        let mut seen = self.lock();
        if seen.served.len() >= MAX_SEEN {
            seen.served.clear();
        }
        seen.served.insert(key, id);
        Some(id)
    }

    /// Whether the first paid answer of `token_id` is known to be claimed.
    pub fn is_claimed(&self, token_id: &[u8; 32]) -> bool {
        self.lock().claimed.contains(token_id)
    }

    /// Remembers that the first paid answer of `token_id` is claimed.
    pub fn claimed(&self, token_id: [u8; 32]) {
        let mut seen = self.lock();
        if seen.claimed.len() >= MAX_SEEN {
            seen.claimed.clear();
        }
        seen.claimed.insert(token_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(scheme: &str, payment_hash: [u8; 32], preimage: [u8; 32]) -> HeaderValue {
        let id = Identifier::new(payment_hash, [7; 32]);
        let m = farebox_l402::macaroon::OwnedMacaroon::new(&[1; 32], &id.encode(), None);
        format!("{scheme} {}:{}", m.to_base64(), hex::encode(preimage)).parse().unwrap()
    }

    #[test]
    fn a_served_credential_is_known_by_its_digest_and_others_are_not() {
        let preimage = [9u8; 32];
        let hash: [u8; 32] = Sha256::digest(preimage).into();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, credential("LSAT", hash, preimage));
        let (value, key) = l402_credential(&headers).expect("an L402 credential");
        let seen = SeenTokens::new();
        assert_eq!(seen.served(&key), None);
        let id = seen.serve(key, value).expect("its identifier");
        assert_eq!(id.token_id, [7; 32]);
        assert_eq!(seen.served(&key), Some(id));
        assert_eq!(presented_token(&headers), Some(id));

        // Another value (the other scheme name) is another key.
        headers.insert(http::header::AUTHORIZATION, credential("L402", hash, preimage));
        let (_, other) = l402_credential(&headers).unwrap();
        assert_ne!(other, key);
        assert_eq!(seen.served(&other), None);
        // A token whose preimage does not match its payment hash has no identity here.
        headers.insert(http::header::AUTHORIZATION, credential("L402", [0; 32], preimage));
        assert_eq!(presented_token(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert!(l402_credential(&headers).is_none());

        assert!(!seen.is_claimed(&id.token_id));
        seen.claimed(id.token_id);
        assert!(seen.is_claimed(&id.token_id));
    }
}
