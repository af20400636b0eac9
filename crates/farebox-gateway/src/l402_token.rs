//! The L402 token a request presents, read before the paywall: rate limits count per token id,
//! and the payment log counts a token as revenue once, at its first use on any instance.
//!
//! Only the token's identity is read here, never trusted: the L402 rail verifies the token (its
//! signature, caveats, and revocation, which it keeps in the store every instance shares; the
//! admin API revokes through it).

use farebox_l402::Identifier;
use farebox_l402::credential::parse_credential;
use farebox_l402::macaroon::{Macaroon, decode_base64};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The identifier of the L402 token in `headers`' `Authorization`, if it carries one whose
/// payment hash is its preimage's hash.
pub fn presented_token(headers: &HeaderMap) -> Option<Identifier> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let credential = parse_credential(value).ok()?;
    let hash: [u8; 32] = Sha256::digest(credential.preimage).into();
    credential.macaroon_list().find_map(|text| {
        let bytes = decode_base64(text).ok()?;
        let id = Identifier::decode(Macaroon::decode(&bytes).ok()?.identifier()).ok()?;
        (id.payment_hash == hash).then_some(id)
    })
}
