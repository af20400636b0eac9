//! What the conformance tests' servers share: the MPP EVM methods on a test chain's USDC-like
//! token (EIP-712 domain as USDC on Base Sepolia).
#![allow(dead_code)]

use farebox_evm::{Address, EvmRpc, PrivateKeySigner};
use farebox_mpp::{EvmChargeConfig, EvmSessionConfig};

/// The `evm` charge of `token`, paid to `recipient`, settled with `gas`'s key.
pub fn usdc_charge(
    rpc: &EvmRpc,
    gas: &PrivateKeySigner,
    token: Address,
    recipient: Address,
) -> EvmChargeConfig {
    EvmChargeConfig::builder(rpc.clone(), gas.clone())
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .recipient(recipient)
        .build()
        .unwrap()
}

/// `evm` sessions of `token` in `escrow`, for `payee`.
pub fn usdc_session(
    rpc: &EvmRpc,
    payee: &PrivateKeySigner,
    escrow: Address,
    token: Address,
) -> EvmSessionConfig {
    EvmSessionConfig::builder(rpc.clone(), payee.clone())
        .escrow(escrow)
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .build()
        .unwrap()
}
