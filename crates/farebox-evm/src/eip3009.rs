//! EIP-3009 `TransferWithAuthorization`: the EIP-712 domain of a token, the digest a payer
//! signs, signing, and address recovery with FiatToken's rules.
//!
//! The digest is `keccak256(0x1901 ‖ domainSeparator ‖ structHash)` with
//! `structHash = keccak256(TYPEHASH ‖ from ‖ to ‖ value ‖ validAfter ‖ validBefore ‖ nonce)`.
//! [`signing_hash`] computes it from a precomputed separator ([`TokenDomain`] caches it) into
//! stack buffers: no allocation.
//!
//! [`recover`] mirrors FiatToken's `ECRecover`: 65 bytes `r ‖ s ‖ v`, `s` in the lower half of
//! the curve order (a high-`s` signature is malleable and FiatToken reverts on it), `v` in
//! `{27, 28}`, and additionally `{0, 1}`, which wallets produce and which [`to_vrs`] normalizes
//! before the signature goes on chain.
//!
//! ```
//! use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
//! use farebox_evm::{Address, PrivateKeySigner, U256, B256};
//!
//! let payer: PrivateKeySigner =
//!     "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".parse().unwrap();
//! let domain = TokenDomain::new("USDC", "2", 84532, Address::repeat_byte(0x11));
//! let auth = TransferWithAuthorization {
//!     from: payer.address(),
//!     to: Address::repeat_byte(0x22),
//!     value: U256::from(10_000u64),
//!     validAfter: U256::ZERO,
//!     validBefore: U256::from(u64::MAX),
//!     nonce: B256::repeat_byte(0x33),
//! };
//! let signature = eip3009::sign(&payer, &domain, &auth);
//! let digest = eip3009::signing_hash(&domain.separator(), &auth);
//! assert_eq!(eip3009::recover(&digest, &signature), Ok(payer.address()));
//! ```

use alloy::primitives::{Address, B256, U256, b256, keccak256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;

sol! {
    /// The EIP-3009 authorization a payer signs (field names as in the EIP-712 type).
    #[derive(Debug, Default, PartialEq, Eq, Hash)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// `keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")`.
pub const EIP712_DOMAIN_TYPEHASH: B256 =
    b256!("0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f");
/// `keccak256("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")`.
pub const TRANSFER_WITH_AUTHORIZATION_TYPEHASH: B256 =
    b256!("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267");
/// `keccak256("ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")`.
pub const RECEIVE_WITH_AUTHORIZATION_TYPEHASH: B256 =
    b256!("0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8");
/// `keccak256("CancelAuthorization(address authorizer,bytes32 nonce)")`.
pub const CANCEL_AUTHORIZATION_TYPEHASH: B256 =
    b256!("0x158b0a9edf7a828aad02f63cd515c68ef2f50ba807396f6d12842833a1597429");

/// secp256k1's group order n.
const SECP256K1_N: U256 = U256::from_be_bytes(
    b256!("0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141").0,
);
/// n / 2: the largest `s` FiatToken accepts.
const SECP256K1_HALF_N: U256 = U256::from_be_bytes(
    b256!("0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0").0,
);

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not 65 bytes (ERC-1271 / EIP-6492 signatures are checked on chain, not here).
    #[error("signature must be 65 bytes (r, s, v), got {0}")]
    InvalidLength(usize),
    /// `v` is not 0, 1, 27 or 28.
    #[error("signature v must be 0, 1, 27 or 28, got {0}")]
    InvalidV(u8),
    /// `r` is zero or not below the curve order.
    #[error("signature r is out of range")]
    InvalidR,
    /// `s` is zero or not below the curve order.
    #[error("signature s is out of range")]
    InvalidS,
    /// `s` is in the upper half of the curve order: a malleable signature that FiatToken refuses.
    #[error("signature s is in the upper half of the curve order (malleable)")]
    HighS,
    /// No public key recovers from this signature and digest.
    #[error("no public key recovers from this signature")]
    Unrecoverable,
}

/// The EIP-712 domain of an EIP-3009 token, with its separator computed once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenDomain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: Address,
    separator: B256,
}

impl TokenDomain {
    /// A domain `{name, version, chainId, verifyingContract}`; computes the separator.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        chain_id: u64,
        verifying_contract: Address,
    ) -> Self {
        let name = name.into();
        let version = version.into();
        let separator = domain_separator(&name, &version, chain_id, verifying_contract);
        Self { name, version, chain_id, verifying_contract, separator }
    }

    /// EIP-712 `name` (the token's `name()`, e.g. `"USDC"` or `"USD Coin"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// EIP-712 `version` (USDC: `"2"`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// EIP-155 chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The token contract.
    pub fn verifying_contract(&self) -> Address {
        self.verifying_contract
    }

    /// The cached domain separator (what the token's `DOMAIN_SEPARATOR()` returns).
    pub fn separator(&self) -> B256 {
        self.separator
    }

    /// The digest to sign for `auth` in this domain.
    pub fn signing_hash(&self, auth: &TransferWithAuthorization) -> B256 {
        signing_hash(&self.separator, auth)
    }
}

/// The EIP-712 domain separator of `{name, version, chainId, verifyingContract}`.
pub fn domain_separator(
    name: &str,
    version: &str,
    chain_id: u64,
    verifying_contract: Address,
) -> B256 {
    let mut buf = [0u8; 160];
    buf[0..32].copy_from_slice(EIP712_DOMAIN_TYPEHASH.as_slice());
    buf[32..64].copy_from_slice(keccak256(name.as_bytes()).as_slice());
    buf[64..96].copy_from_slice(keccak256(version.as_bytes()).as_slice());
    buf[96..128].copy_from_slice(&U256::from(chain_id).to_be_bytes::<32>());
    buf[140..160].copy_from_slice(verifying_contract.as_slice());
    keccak256(buf)
}

/// The EIP-712 struct hash of `auth`.
pub fn struct_hash(auth: &TransferWithAuthorization) -> B256 {
    let mut buf = [0u8; 224];
    buf[0..32].copy_from_slice(TRANSFER_WITH_AUTHORIZATION_TYPEHASH.as_slice());
    buf[44..64].copy_from_slice(auth.from.as_slice());
    buf[76..96].copy_from_slice(auth.to.as_slice());
    buf[96..128].copy_from_slice(&auth.value.to_be_bytes::<32>());
    buf[128..160].copy_from_slice(&auth.validAfter.to_be_bytes::<32>());
    buf[160..192].copy_from_slice(&auth.validBefore.to_be_bytes::<32>());
    buf[192..224].copy_from_slice(auth.nonce.as_slice());
    keccak256(buf)
}

/// The digest a payer signs: `keccak256(0x1901 ‖ domain_separator ‖ struct_hash(auth))`.
pub fn signing_hash(domain_separator: &B256, auth: &TransferWithAuthorization) -> B256 {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator.as_slice());
    buf[34..66].copy_from_slice(struct_hash(auth).as_slice());
    keccak256(buf)
}

/// Signs `auth` in `domain`: 65 bytes `r ‖ s ‖ v`, low `s`, `v` ∈ {27, 28}.
///
/// # Panics
/// Never in practice: ECDSA signing with a valid key fails only with negligible probability
/// (a nonce producing `r = 0` or `s = 0`).
pub fn sign(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    auth: &TransferWithAuthorization,
) -> [u8; 65] {
    sign_hash(signer, &domain.signing_hash(auth))
}

/// Signs a 32-byte digest: 65 bytes `r ‖ s ‖ v`, low `s`, `v` ∈ {27, 28}.
///
/// # Panics
/// As [`sign`].
pub fn sign_hash(signer: &PrivateKeySigner, digest: &B256) -> [u8; 65] {
    #[allow(clippy::expect_used)]
    let signature =
        signer.sign_hash_sync(digest).expect("ECDSA signing with a valid key does not fail");
    signature.as_bytes()
}

/// Checks a 65-byte signature against FiatToken's rules and returns `(v, r, s)` with `v`
/// normalized to 27 / 28, as the `transferWithAuthorization(…, v, r, s)` overload wants.
pub fn to_vrs(signature: &[u8]) -> Result<(u8, B256, B256), SignatureError> {
    let (parity, r, s) = parse(signature)?;
    Ok((27 + u8::from(parity), B256::from(r), B256::from(s)))
}

fn parse(signature: &[u8]) -> Result<(bool, U256, U256), SignatureError> {
    let Ok(bytes) = <&[u8; 65]>::try_from(signature) else {
        return Err(SignatureError::InvalidLength(signature.len()));
    };
    let parity = match bytes[64] {
        0 | 27 => false,
        1 | 28 => true,
        v => return Err(SignatureError::InvalidV(v)),
    };
    let r = U256::from_be_slice(&bytes[0..32]);
    let s = U256::from_be_slice(&bytes[32..64]);
    if r.is_zero() || r >= SECP256K1_N {
        return Err(SignatureError::InvalidR);
    }
    if s.is_zero() || s >= SECP256K1_N {
        return Err(SignatureError::InvalidS);
    }
    if s > SECP256K1_HALF_N {
        return Err(SignatureError::HighS);
    }
    Ok((parity, r, s))
}

/// Recovers the signer of `digest` from a 65-byte `r ‖ s ‖ v` signature with `v` ∈
/// {0, 1, 27, 28}; refuses high-`s` signatures as FiatToken does.
pub fn recover(digest: &B256, signature: &[u8]) -> Result<Address, SignatureError> {
    let (parity, r, s) = parse(signature)?;
    alloy::primitives::Signature::new(r, s, parity)
        .recover_address_from_prehash(digest)
        .map_err(|_| SignatureError::Unrecoverable)
}

/// The account an EIP-3009 payment draws on: `eip155:<chain id>:<token>:<payer>`, addresses in
/// lowercase hex. Rails name a payer's funds so when they hold them while a payment is in
/// flight (`farebox_core::store::Hold`), so that every rail charging one token sees the others'
/// holds.
pub fn payer_account(chain_id: u64, token: Address, payer: Address) -> String {
    format!("eip155:{chain_id}:{token:#x}:{payer:#x}")
}

/// The chain id, token and payer of a [`payer_account`].
pub fn parse_payer_account(account: &str) -> Option<(u64, Address, Address)> {
    let mut parts = account.strip_prefix("eip155:")?.split(':');
    let chain_id = parts.next()?.parse().ok()?;
    let token = parts.next()?.parse().ok()?;
    let payer = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((chain_id, token, payer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{SolStruct, eip712_domain};

    #[test]
    fn fast_path_matches_alloy_eip712() {
        let contract = Address::repeat_byte(0xab);
        let domain = TokenDomain::new("USD Coin", "2", 8453, contract);
        let alloy_domain = eip712_domain! {
            name: "USD Coin",
            version: "2",
            chain_id: 8453,
            verifying_contract: contract,
        };
        assert_eq!(domain.separator(), alloy_domain.hash_struct());
        let auth = TransferWithAuthorization {
            from: Address::repeat_byte(1),
            to: Address::repeat_byte(2),
            value: U256::from(123_456u64),
            validAfter: U256::from(1u64),
            validBefore: U256::MAX,
            nonce: B256::repeat_byte(7),
        };
        assert_eq!(struct_hash(&auth), auth.eip712_hash_struct());
        assert_eq!(domain.signing_hash(&auth), auth.eip712_signing_hash(&alloy_domain));
        assert_eq!(auth.eip712_type_hash(), TRANSFER_WITH_AUTHORIZATION_TYPEHASH);
    }

    #[test]
    fn constants() {
        assert_eq!(
            keccak256(
                "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
            ),
            EIP712_DOMAIN_TYPEHASH
        );
        assert_eq!(
            keccak256(
                "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
            ),
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH
        );
        assert_eq!(
            keccak256("CancelAuthorization(address authorizer,bytes32 nonce)"),
            CANCEL_AUTHORIZATION_TYPEHASH
        );
        assert_eq!(SECP256K1_N >> 1, SECP256K1_HALF_N);
    }

    #[test]
    fn payer_accounts_round_trip() {
        let (token, payer) = (Address::repeat_byte(0xAB), Address::repeat_byte(0x0C));
        let account = payer_account(84532, token, payer);
        assert_eq!(account, format!("eip155:84532:{token:#x}:{payer:#x}"));
        assert_eq!(account, account.to_lowercase());
        assert_eq!(parse_payer_account(&account), Some((84532, token, payer)));
        assert_eq!(parse_payer_account(&format!("{account}:extra")), None);
        assert_eq!(parse_payer_account("eip155:1:0x12"), None);
    }
}
