//! MPP EVM session vouchers: the EIP-712 `Voucher(bytes32 channelId,uint128 cumulativeAmount)`
//! a payer (or its authorized signer) signs for a payment channel of a `SessionEscrow`
//! (`contracts/SessionEscrow.sol`), in the domain `{name: "EVM Payment Channel", version: "1",
//! chainId, verifyingContract: escrow}`.
//!
//! The digest is `keccak256(0x1901 ‖ domainSeparator ‖ keccak256(TYPEHASH ‖ channelId ‖
//! cumulativeAmount))`. Signatures follow the same rules as [`eip3009`]: 65 bytes `r ‖ s ‖ v`,
//! low `s`; [`recover`] accepts `v` ∈ {0, 1, 27, 28}, the contract only {27, 28} ([`sign`]
//! produces 27 / 28).
//!
//! Amounts are cumulative: each voucher replaces the previous one, and the escrow pays the
//! payee `min(cumulativeAmount, deposit) − settled`.
//!
//! ```
//! use farebox_mpp::evm::voucher::{self, Voucher, VoucherDomain};
//! use farebox_evm::{Address, B256, PrivateKeySigner};
//!
//! let payer: PrivateKeySigner =
//!     "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".parse().unwrap();
//! let domain = VoucherDomain::new(84532, Address::repeat_byte(0x11));
//! let v = Voucher { channelId: B256::repeat_byte(7), cumulativeAmount: 300_000 };
//! let signature = voucher::sign(&payer, &domain, &v);
//! assert_eq!(voucher::recover(&domain.signing_hash(&v), &signature), Ok(payer.address()));
//! ```

use alloy::primitives::{Address, B256, U256, b256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;

use farebox_evm::eip3009::{self, SignatureError};

sol! {
    /// A cumulative voucher for a payment channel (field names as in the EIP-712 type).
    #[derive(Debug, Default, PartialEq, Eq, Hash)]
    struct Voucher {
        bytes32 channelId;
        uint128 cumulativeAmount;
    }
}

/// The EIP-712 domain name of EVM session vouchers.
pub const DOMAIN_NAME: &str = "EVM Payment Channel";
/// The EIP-712 domain version of EVM session vouchers.
pub const DOMAIN_VERSION: &str = "1";
/// `keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)")`.
pub const VOUCHER_TYPEHASH: B256 =
    b256!("0xe97c93f01d3ef8eaba1586553df13308f236815bf4ea49c7b696895d8f5ea68a");

/// The voucher domain of one escrow on one chain, with its separator computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoucherDomain {
    chain_id: u64,
    escrow: Address,
    separator: B256,
}

impl VoucherDomain {
    /// `{name: "EVM Payment Channel", version: "1", chainId, verifyingContract: escrow}`.
    pub fn new(chain_id: u64, escrow: Address) -> Self {
        let separator = eip3009::domain_separator(DOMAIN_NAME, DOMAIN_VERSION, chain_id, escrow);
        Self { chain_id, escrow, separator }
    }

    /// EIP-155 chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The escrow contract (`verifyingContract`).
    pub fn escrow(&self) -> Address {
        self.escrow
    }

    /// The cached separator (what the escrow's `domainSeparator()` returns).
    pub fn separator(&self) -> B256 {
        self.separator
    }

    /// The digest to sign for `voucher` in this domain.
    pub fn signing_hash(&self, voucher: &Voucher) -> B256 {
        signing_hash(&self.separator, voucher)
    }
}

/// The EIP-712 struct hash of `voucher`.
pub fn struct_hash(voucher: &Voucher) -> B256 {
    let mut buf = [0u8; 96];
    buf[0..32].copy_from_slice(VOUCHER_TYPEHASH.as_slice());
    buf[32..64].copy_from_slice(voucher.channelId.as_slice());
    buf[64..96].copy_from_slice(&U256::from(voucher.cumulativeAmount).to_be_bytes::<32>());
    keccak256(buf)
}

/// `keccak256(0x1901 ‖ domain_separator ‖ struct_hash(voucher))`.
pub fn signing_hash(domain_separator: &B256, voucher: &Voucher) -> B256 {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator.as_slice());
    buf[34..66].copy_from_slice(struct_hash(voucher).as_slice());
    keccak256(buf)
}

/// Signs `voucher` in `domain`: 65 bytes `r ‖ s ‖ v`, low `s`, `v` ∈ {27, 28}.
///
/// # Panics
/// As [`eip3009::sign`]: never in practice.
pub fn sign(signer: &PrivateKeySigner, domain: &VoucherDomain, voucher: &Voucher) -> [u8; 65] {
    eip3009::sign_hash(signer, &domain.signing_hash(voucher))
}

/// Recovers the signer of a voucher digest (low `s` required, as on chain). The caller compares
/// it with the signer the channel expects *on chain* (its `authorizedSigner`, or the payer when
/// that is zero), never with an address taken from the payload.
pub fn recover(digest: &B256, signature: &[u8]) -> Result<Address, SignatureError> {
    eip3009::recover(digest, signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{SolStruct, eip712_domain};

    #[test]
    fn typehash() {
        assert_eq!(
            keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)"),
            VOUCHER_TYPEHASH
        );
    }

    #[test]
    fn fast_path_matches_alloy_eip712() {
        let escrow = Address::repeat_byte(0xab);
        let domain = VoucherDomain::new(84532, escrow);
        let alloy_domain = eip712_domain! {
            name: "EVM Payment Channel",
            version: "1",
            chain_id: 84532,
            verifying_contract: escrow,
        };
        assert_eq!(domain.separator(), alloy_domain.hash_struct());
        let v = Voucher { channelId: B256::repeat_byte(7), cumulativeAmount: u128::MAX };
        assert_eq!(struct_hash(&v), v.eip712_hash_struct());
        assert_eq!(domain.signing_hash(&v), v.eip712_signing_hash(&alloy_domain));
    }

    const CHANNEL: B256 =
        b256!("0x57e629663a75a0a49f8dc65c9f62ee38ab5dfa9124d7316d160766e4ecbc1227");

    /// The Tempo v1 voucher (same type, domain name "Tempo Stream Channel"): the self-derived
    /// value of `/work/shared/reference/vectors/mpp_voucher.py` (Moderato escrow, amount 50).
    #[test]
    fn tempo_v1_vector() {
        let escrow: Address = "0x9d136eEa063eDE5418A6BC7bEafF009bBb6CFa70".parse().unwrap();
        let separator = eip3009::domain_separator("Tempo Stream Channel", "1", 42431, escrow);
        let v = Voucher { channelId: CHANNEL, cumulativeAmount: 50 };
        assert_eq!(
            signing_hash(&separator, &v),
            b256!("0x4cb52f026723eaa85ee966287ca5ed70bd05e2f2d96f1a1d4febff2766128409")
        );
    }

    /// The EVM domain, computed with the independent keccak of `mpp_voucher.py`
    /// (`voucher_hash('EVM Payment Channel', …, 84532, 0x11…11, CHANNEL, 300000)`).
    /// `tests/escrow.rs` checks that the deployed escrow's `voucherDigest` agrees with
    /// [`VoucherDomain::signing_hash`].
    #[test]
    fn evm_domain_vector() {
        let domain = VoucherDomain::new(84532, Address::repeat_byte(0x11));
        let v = Voucher { channelId: CHANNEL, cumulativeAmount: 300_000 };
        assert_eq!(
            domain.signing_hash(&v),
            b256!("0x9ec798c465493dd6b3e9537dd43fed202da47bec273a429163184e2fb5f6ce09")
        );
    }

    #[test]
    fn sign_recover_roundtrip_and_high_s_refused() {
        let signer: PrivateKeySigner =
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".parse().unwrap();
        let domain = VoucherDomain::new(1, Address::repeat_byte(0x22));
        let v = Voucher { channelId: CHANNEL, cumulativeAmount: 1 };
        let sig = sign(&signer, &domain, &v);
        assert!(sig[64] == 27 || sig[64] == 28);
        let digest = domain.signing_hash(&v);
        assert_eq!(recover(&digest, &sig), Ok(signer.address()));
        // The malleable twin (n - s, flipped v) recovers the same key but is refused.
        let n = U256::from_be_bytes(
            b256!("0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141").0,
        );
        let mut high = sig;
        let s = U256::from_be_slice(&sig[32..64]);
        high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        high[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(recover(&digest, &high), Err(SignatureError::HighS));
    }
}
