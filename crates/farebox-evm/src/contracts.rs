//! Bindings for the project's Solidity contracts, generated at compile time from the committed
//! artifacts in this crate's `artifacts/` folder (rebuild them with `cargo xtask contracts`), so
//! the ABI has one source.
//!
//! [`FareboxUSD`] is the project's EIP-3009 test token that follows FiatTokenV2_2's rules
//! (`contracts/FareboxUSD.sol`). Its call types work against real USDC too: the function
//! signatures are FiatToken's. Overloads are numbered in ABI order; the aliases
//! [`TransferWithAuthorizationVrsCall`] and [`TransferWithAuthorizationBytesCall`] name them.

use alloy::primitives::Bytes;
use alloy::sol;
use alloy::sol_types::SolConstructor;

sol!(
    #[allow(missing_docs)]
    #[derive(Debug, PartialEq, Eq)]
    FareboxUSD,
    "artifacts/FareboxUSD.json"
);

sol!(
    #[allow(missing_docs)]
    #[derive(Debug, PartialEq, Eq)]
    SessionEscrow,
    "artifacts/SessionEscrow.json"
);

/// `transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)`,
/// selector `0xe3ee160e`: for 65-byte EOA signatures.
pub type TransferWithAuthorizationVrsCall = FareboxUSD::transferWithAuthorization_1Call;

/// `transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)`, selector
/// `0xcf092995` (FiatTokenV2_2): ECDSA for accounts without code, ERC-1271 for contracts.
pub type TransferWithAuthorizationBytesCall = FareboxUSD::transferWithAuthorization_0Call;

/// FareboxUSD's creation code followed by its ABI-encoded constructor arguments: what to send
/// in a contract-creation transaction.
pub fn fareboxusd_deploy_code(name: &str, version: &str) -> Bytes {
    let args = FareboxUSD::constructorCall { name_: name.to_owned(), version_: version.to_owned() }
        .abi_encode();
    let mut code = FareboxUSD::BYTECODE.to_vec();
    code.extend_from_slice(&args);
    code.into()
}

/// SessionEscrow's creation code with its constructor argument: `close_grace_period` seconds
/// between `requestClose` and the earliest `withdraw`.
pub fn session_escrow_deploy_code(close_grace_period: u64) -> Bytes {
    let args =
        SessionEscrow::constructorCall { closeGracePeriod_: close_grace_period }.abi_encode();
    let mut code = SessionEscrow::BYTECODE.to_vec();
    code.extend_from_slice(&args);
    code.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::SolCall;

    #[test]
    fn overload_aliases_have_fiattoken_selectors() {
        assert_eq!(TransferWithAuthorizationVrsCall::SELECTOR, [0xe3, 0xee, 0x16, 0x0e]);
        assert_eq!(TransferWithAuthorizationBytesCall::SELECTOR, [0xcf, 0x09, 0x29, 0x95]);
        assert_eq!(FareboxUSD::authorizationStateCall::SELECTOR, [0xe9, 0x4a, 0x01, 0x02]);
    }

    #[test]
    fn artifact_has_code() {
        assert!(FareboxUSD::BYTECODE.len() > 1000);
        assert!(FareboxUSD::DEPLOYED_BYTECODE.len() > 1000);
        assert!(fareboxusd_deploy_code("USDC", "2").len() > FareboxUSD::BYTECODE.len());
        assert!(SessionEscrow::BYTECODE.len() > 1000);
        assert_eq!(session_escrow_deploy_code(900).len(), SessionEscrow::BYTECODE.len() + 32);
    }
}
