//! Addresses typed by people (configuration files, command lines): the one rule for reading
//! them. `0x` and 40 hex digits; all lowercase or all uppercase is taken as written, mixed case
//! must be a valid EIP-55 checksum, so that a mistyped digit is refused rather than paid to an
//! address nobody holds.
//!
//! ```
//! use farebox_evm::address::{AddressError, parse_address};
//!
//! assert!(parse_address("0x036CbD53842c5426634e7929541eC2318f3dCF7e").is_ok());
//! assert!(parse_address("0x036cbd53842c5426634e7929541ec2318f3dcf7e").is_ok());
//! assert_eq!(
//!     parse_address("0x036CbD53842c5426634e7929541eC2318f3dCF7E"),
//!     Err(AddressError::Checksum)
//! );
//! ```

use std::str::FromStr;

use alloy::primitives::Address;

/// Why a text is not an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not `0x` and 40 hex digits.
    #[error("must be 0x and 40 hex digits")]
    Malformed,
    /// Mixed case that is not the EIP-55 checksum of these digits.
    #[error("has a wrong EIP-55 checksum (a mistyped digit?)")]
    Checksum,
}

/// Reads an address a person wrote (see the module docs).
pub fn parse_address(text: &str) -> Result<Address, AddressError> {
    let digits = text.strip_prefix("0x").ok_or(AddressError::Malformed)?;
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AddressError::Malformed);
    }
    let mixed = digits.bytes().any(|b| b.is_ascii_uppercase())
        && digits.bytes().any(|b| b.is_ascii_lowercase());
    if mixed {
        Address::parse_checksummed(text, None).map_err(|_| AddressError::Checksum)
    } else {
        Address::from_str(text).map_err(|_| AddressError::Malformed)
    }
}
