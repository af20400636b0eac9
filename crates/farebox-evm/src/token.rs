//! [`TokenInfo`]: what the EVM payment methods need to know about a token besides its address
//! (its symbol and decimals for prices, its EIP-712 domain for signed authorizations), and the
//! one place that checks it for every method.

use crate::usdc::UsdcDeployment;

/// Most decimals a token may have: amounts are `u128` base units (10^36 of 3.4·10^38 leaves
/// room for many whole tokens).
pub const MAX_DECIMALS: u8 = 36;

/// How prices and signatures describe a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// As prices name it (`USDC`).
    pub symbol: String,
    /// Base units per token: 10^decimals.
    pub decimals: u8,
    /// The EIP-712 domain name payers sign EIP-3009 authorizations under (`"USDC"` on Base
    /// Sepolia, `"USD Coin"` on Base); empty where nothing is signed under it.
    pub eip712_name: String,
    /// Its EIP-712 domain version (`"2"` for USDC); empty where nothing is signed under it.
    pub eip712_version: String,
}

impl TokenInfo {
    /// A token nothing is signed under by its EIP-712 domain (an ERC-20 a channel holds).
    pub fn unsigned(symbol: impl Into<String>, decimals: u8) -> Self {
        TokenInfo {
            symbol: symbol.into(),
            decimals,
            eip712_name: String::new(),
            eip712_version: String::new(),
        }
    }

    /// The field that is wrong and why, if any; `signed`: payers sign under its EIP-712 domain,
    /// which must then be given.
    pub fn problem(&self, signed: bool) -> Option<(&'static str, &'static str)> {
        if self.symbol.trim().is_empty() {
            return Some(("symbol", "must not be empty"));
        }
        if self.decimals > MAX_DECIMALS {
            return Some(("decimals", "must be at most 36"));
        }
        if signed && (self.eip712_name.trim().is_empty() || self.eip712_version.trim().is_empty()) {
            return Some(("eip712_domain", "name and version must not be empty"));
        }
        None
    }
}

impl From<&UsdcDeployment> for TokenInfo {
    fn from(usdc: &UsdcDeployment) -> Self {
        TokenInfo {
            symbol: "USDC".into(),
            decimals: usdc.decimals,
            eip712_name: usdc.name.into(),
            eip712_version: usdc.version.into(),
        }
    }
}
