//! Known USDC deployments: address, EIP-712 domain name / version, decimals.
//!
//! These are **defaults** for building payment requirements. Verification always takes the
//! EIP-712 domain from the payment requirements (`extra.name` / `extra.version`), never from this
//! table. Note that the domain name differs per chain: `"USD Coin"` on Base, `"USDC"` on Base
//! Sepolia.

use alloy::primitives::{Address, address};

use crate::eip3009::TokenDomain;

/// One USDC deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsdcDeployment {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The token contract (FiatToken proxy).
    pub address: Address,
    /// EIP-712 domain `name`.
    pub name: &'static str,
    /// EIP-712 domain `version`.
    pub version: &'static str,
    /// Base units per token: 10^decimals.
    pub decimals: u8,
}

/// USDC on Base mainnet (`eip155:8453`).
pub const BASE: UsdcDeployment = UsdcDeployment {
    chain_id: 8453,
    address: address!("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    name: "USD Coin",
    version: "2",
    decimals: 6,
};

/// USDC on Base Sepolia (`eip155:84532`).
pub const BASE_SEPOLIA: UsdcDeployment = UsdcDeployment {
    chain_id: 84_532,
    address: address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
    name: "USDC",
    version: "2",
    decimals: 6,
};

/// All known deployments.
pub const KNOWN: &[UsdcDeployment] = &[BASE, BASE_SEPOLIA];

/// The default USDC deployment of a chain.
pub fn for_chain(chain_id: u64) -> Option<&'static UsdcDeployment> {
    KNOWN.iter().find(|d| d.chain_id == chain_id)
}

impl UsdcDeployment {
    /// The deployment's EIP-712 domain (computes the separator).
    pub fn domain(&self) -> TokenDomain {
        TokenDomain::new(self.name, self.version, self.chain_id, self.address)
    }
}
