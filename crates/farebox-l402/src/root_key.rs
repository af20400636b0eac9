//! Where macaroon root keys come from.
//!
//! Every token is signed from its own root key, looked up by identifier on every request. The
//! lookup is synchronous and must be cheap (it is on the verification hot path): a store-backed
//! implementation should keep its keys in memory.
//!
//! [`DerivedRootKeys`] needs no store at all: `root_key = HMAC-SHA256(master_secret,
//! "farebox-l402-root-key" ‖ token_id)`. The trade-off: a single token cannot be revoked by
//! deleting its key (only the master secret can be rotated, which revokes every token), so single
//! tokens are revoked by listing their ids instead ([`crate::tokens`]); and the master secret is a
//! single point of failure. Aperture instead stores a random key per token under
//! `sha256(identifier)`, which allows revocation by deleting it; a store-backed [`RootKeys`] can
//! do the same.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identifier::Identifier;

/// The domain-separation prefix of [`DerivedRootKeys`].
pub const DERIVATION_LABEL: &[u8] = b"farebox-l402-root-key";
/// Shortest master secret [`DerivedRootKeys`] accepts.
pub const MIN_MASTER_SECRET_LEN: usize = 32;

/// A source of per-token root keys.
pub trait RootKeys: Send + Sync + 'static {
    /// The root key of the token `id`, or `None` when it is unknown or revoked.
    fn root_key(&self, id: &Identifier) -> Option<[u8; 32]>;

    /// The root key for a token being minted. A store-backed implementation creates and records
    /// a fresh random key here; the default returns [`RootKeys::root_key`].
    fn mint_root_key(&self, id: &Identifier) -> Option<[u8; 32]> {
        self.root_key(id)
    }
}

/// The master secret is shorter than [`MIN_MASTER_SECRET_LEN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the L402 master secret must be at least {MIN_MASTER_SECRET_LEN} bytes, got {0}")]
pub struct MasterSecretTooShort(pub usize);

/// Root keys derived from one master secret (see the module docs for the trade-off).
#[derive(Clone)]
pub struct DerivedRootKeys {
    /// HMAC state already keyed with the master secret: saves two SHA-256 compressions a lookup.
    keyed: Hmac<Sha256>,
}

impl DerivedRootKeys {
    pub fn new(master_secret: &[u8]) -> Result<Self, MasterSecretTooShort> {
        if master_secret.len() < MIN_MASTER_SECRET_LEN {
            return Err(MasterSecretTooShort(master_secret.len()));
        }
        let keyed =
            Hmac::<Sha256>::new_from_slice(master_secret).map_err(|_| MasterSecretTooShort(0))?;
        Ok(DerivedRootKeys { keyed })
    }
}

impl RootKeys for DerivedRootKeys {
    fn root_key(&self, id: &Identifier) -> Option<[u8; 32]> {
        let mut mac = self.keyed.clone();
        mac.update(DERIVATION_LABEL);
        mac.update(&id.token_id);
        Some(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for DerivedRootKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedRootKeys { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::macaroon::hmac_sha256;

    #[test]
    fn derivation_is_documented_formula() {
        let master = [42u8; 32];
        let keys = DerivedRootKeys::new(&master).unwrap();
        let id = Identifier::new([1; 32], [2; 32]);
        let mut msg = DERIVATION_LABEL.to_vec();
        msg.extend_from_slice(&[2; 32]);
        assert_eq!(keys.root_key(&id), Some(hmac_sha256(&master, &msg)));
        // Depends on the token id only.
        assert_eq!(keys.root_key(&Identifier::new([3; 32], [2; 32])), keys.root_key(&id));
        assert_eq!(DerivedRootKeys::new(&[0; 31]).unwrap_err(), MasterSecretTooShort(31));
        assert_eq!(format!("{keys:?}"), "DerivedRootKeys { .. }");
    }
}
