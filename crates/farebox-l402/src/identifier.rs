//! The L402 macaroon identifier: what ties a token to its invoice.
//!
//! ```text
//! offset size field
//!      0    2 version       u16 big-endian, 0
//!      2   32 payment_hash  sha256 of the invoice preimage
//!     34   32 token_id      32 random bytes
//! ```
//!
//! Aperture's decoder reads without checking the length; this one enforces exactly 66 bytes for
//! version 0 and refuses every other version.

use std::fmt;

/// Length of a version-0 identifier.
pub const IDENTIFIER_LEN: usize = 66;
/// The only identifier version defined.
pub const IDENTIFIER_VERSION: u16 = 0;

/// Why bytes are not an L402 identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("unknown identifier version {0}")]
    UnknownVersion(u16),
    #[error("identifier is {0} bytes, expected {IDENTIFIER_LEN}")]
    BadLength(usize),
}

/// A decoded version-0 L402 identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identifier {
    pub payment_hash: [u8; 32],
    pub token_id: [u8; 32],
}

impl Identifier {
    pub fn new(payment_hash: [u8; 32], token_id: [u8; 32]) -> Self {
        Identifier { payment_hash, token_id }
    }

    /// Decodes an identifier. The version is checked first, so a future version with another
    /// length is reported as an unknown version.
    pub fn decode(bytes: &[u8]) -> Result<Self, IdentifierError> {
        let Some(version) = bytes.get(..2) else {
            return Err(IdentifierError::BadLength(bytes.len()));
        };
        let version = u16::from_be_bytes([version[0], version[1]]);
        if version != IDENTIFIER_VERSION {
            return Err(IdentifierError::UnknownVersion(version));
        }
        if bytes.len() != IDENTIFIER_LEN {
            return Err(IdentifierError::BadLength(bytes.len()));
        }
        let mut id = Identifier { payment_hash: [0; 32], token_id: [0; 32] };
        id.payment_hash.copy_from_slice(&bytes[2..34]);
        id.token_id.copy_from_slice(&bytes[34..66]);
        Ok(id)
    }

    /// The 66-byte encoding.
    pub fn encode(&self) -> [u8; IDENTIFIER_LEN] {
        let mut out = [0u8; IDENTIFIER_LEN];
        out[..2].copy_from_slice(&IDENTIFIER_VERSION.to_be_bytes());
        out[2..34].copy_from_slice(&self.payment_hash);
        out[34..].copy_from_slice(&self.token_id);
        out
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identifier")
            .field("payment_hash", &hex::encode(self.payment_hash))
            .field("token_id", &hex::encode(self.token_id))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let id = Identifier::new([7; 32], [9; 32]);
        let bytes = id.encode();
        assert_eq!(Identifier::decode(&bytes), Ok(id));
        assert_eq!(Identifier::decode(&bytes[..65]), Err(IdentifierError::BadLength(65)));
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(Identifier::decode(&long), Err(IdentifierError::BadLength(67)));
        let mut v1 = bytes;
        v1[1] = 1;
        assert_eq!(Identifier::decode(&v1), Err(IdentifierError::UnknownVersion(1)));
        assert_eq!(Identifier::decode(&[0]), Err(IdentifierError::BadLength(1)));
    }
}
