//! EVM networks: CAIP-2 ids (`eip155:<chain id>`, x402 v2), x402 v1 network names
//! (`base-sepolia`, …), and the networks farebox knows by default.
//!
//! ```
//! use farebox_evm::network::{self, Network};
//!
//! assert_eq!(network::parse_caip2("eip155:84532"), Ok(84532));
//! assert_eq!(network::v1_name_to_caip2("base"), Some("eip155:8453".to_owned()));
//! assert_eq!(Network::from_chain_id(84532), Some(network::BASE_SEPOLIA));
//! ```

use std::fmt;

/// A CAIP-2 id that is not `eip155:<decimal chain id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// Longer than CAIP-2 allows (8 + 1 + 32 characters).
    #[error("CAIP-2 id is too long ({0} bytes)")]
    TooLong(usize),
    /// The namespace is not `eip155` (or the `:` is missing).
    #[error("not an eip155 CAIP-2 id: {0:?}")]
    NotEip155(String),
    /// The reference is not a canonical decimal chain id in `1..=u64::MAX`.
    #[error("invalid eip155 chain id: {0:?}")]
    InvalidChainId(String),
}

/// The longest CAIP-2 id: namespace (≤ 8) + `:` + reference (≤ 32).
const CAIP2_MAX_LEN: usize = 41;

/// Parses `eip155:<chain id>` into the chain id. The reference must be canonical decimal (no
/// sign, no leading zero, no whitespace) and non-zero.
pub fn parse_caip2(id: &str) -> Result<u64, NetworkError> {
    if id.len() > CAIP2_MAX_LEN {
        return Err(NetworkError::TooLong(id.len()));
    }
    let Some(reference) = id.strip_prefix("eip155:") else {
        return Err(NetworkError::NotEip155(id.to_owned()));
    };
    let bad = || NetworkError::InvalidChainId(reference.to_owned());
    if reference.is_empty()
        || !reference.bytes().all(|b| b.is_ascii_digit())
        || reference.starts_with('0')
    {
        return Err(bad());
    }
    reference.parse::<u64>().map_err(|_| bad())
}

/// `eip155:<chain id>`.
pub fn caip2(chain_id: u64) -> String {
    format!("eip155:{chain_id}")
}

/// x402 v1 network names of EVM chains and their chain ids (the TypeScript reference's v1 map).
/// Solana's v1 names (`solana`, `solana-devnet`) are not EVM networks and are not listed.
pub const V1_NETWORKS: &[(&str, u64)] = &[
    ("ethereum", 1),
    ("sepolia", 11_155_111),
    ("abstract", 2741),
    ("abstract-testnet", 11_124),
    ("base-sepolia", 84_532),
    ("base", 8453),
    ("avalanche-fuji", 43_113),
    ("avalanche", 43_114),
    ("iotex", 4689),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("polygon", 137),
    ("polygon-amoy", 80_002),
    ("peaq", 3338),
    ("story", 1514),
    ("educhain", 41_923),
    ("skale-base-sepolia", 324_705_682),
    ("megaeth", 4326),
    ("monad", 143),
    ("stable", 988),
    ("stable-testnet", 2201),
];

/// The chain id of an x402 v1 network name (exact, case-sensitive match).
pub fn v1_name_to_chain_id(name: &str) -> Option<u64> {
    V1_NETWORKS.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
}

/// The x402 v1 network name of a chain id, if it has one.
pub fn chain_id_to_v1_name(chain_id: u64) -> Option<&'static str> {
    V1_NETWORKS.iter().find(|(_, id)| *id == chain_id).map(|(n, _)| *n)
}

/// `base-sepolia` → `eip155:84532`.
pub fn v1_name_to_caip2(name: &str) -> Option<String> {
    v1_name_to_chain_id(name).map(caip2)
}

/// `eip155:84532` → `base-sepolia`; `None` for an invalid id or a chain without a v1 name.
pub fn caip2_to_v1_name(id: &str) -> Option<&'static str> {
    parse_caip2(id).ok().and_then(chain_id_to_v1_name)
}

/// A network farebox knows by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The x402 v1 network name, if the chain has one.
    pub v1_name: Option<&'static str>,
    /// A human-readable name.
    pub display_name: &'static str,
}

/// Base mainnet, `eip155:8453`.
pub const BASE: Network = Network { chain_id: 8453, v1_name: Some("base"), display_name: "Base" };
/// Base Sepolia, `eip155:84532`.
pub const BASE_SEPOLIA: Network =
    Network { chain_id: 84_532, v1_name: Some("base-sepolia"), display_name: "Base Sepolia" };
/// anvil's default chain, `eip155:31337` (no x402 v1 name; run anvil with `--chain-id 84532`
/// to test v1 payments locally).
pub const ANVIL: Network = Network { chain_id: 31_337, v1_name: None, display_name: "anvil" };

/// The known networks.
pub const KNOWN: &[Network] = &[BASE, BASE_SEPOLIA, ANVIL];

impl Network {
    /// The known network with this chain id.
    pub fn from_chain_id(chain_id: u64) -> Option<Self> {
        KNOWN.iter().copied().find(|n| n.chain_id == chain_id)
    }

    /// The known network with this CAIP-2 id.
    pub fn from_caip2(id: &str) -> Option<Self> {
        parse_caip2(id).ok().and_then(Self::from_chain_id)
    }

    /// The known network with this x402 v1 name.
    pub fn from_v1_name(name: &str) -> Option<Self> {
        KNOWN.iter().copied().find(|n| n.v1_name == Some(name))
    }

    /// `eip155:<chain id>`.
    pub fn caip2(&self) -> String {
        caip2(self.chain_id)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (eip155:{})", self.display_name, self.chain_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caip2_parsing() {
        assert_eq!(parse_caip2("eip155:8453"), Ok(8453));
        assert_eq!(parse_caip2("eip155:18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "eip155:",
            "eip155:0",
            "eip155:084532",
            "eip155:+1",
            "eip155:-1",
            "eip155: 1",
            "eip155:1 ",
            "eip155:18446744073709551616",
            "eip155:0x2105",
        ] {
            assert!(matches!(parse_caip2(bad), Err(NetworkError::InvalidChainId(_))), "{bad}");
        }
        for bad in ["base", "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp", "EIP155:1", ""] {
            assert!(matches!(parse_caip2(bad), Err(NetworkError::NotEip155(_))), "{bad}");
        }
        assert!(matches!(parse_caip2(&"9".repeat(100)), Err(NetworkError::TooLong(100))));
    }

    #[test]
    fn v1_names() {
        assert_eq!(v1_name_to_caip2("base-sepolia").as_deref(), Some("eip155:84532"));
        assert_eq!(caip2_to_v1_name("eip155:8453"), Some("base"));
        assert_eq!(caip2_to_v1_name("eip155:31337"), None);
        assert_eq!(v1_name_to_chain_id("Base"), None);
        for (name, id) in V1_NETWORKS {
            assert_eq!(chain_id_to_v1_name(*id), Some(*name));
        }
        assert_eq!(Network::from_v1_name("base"), Some(BASE));
        assert_eq!(Network::from_caip2("eip155:31337"), Some(ANVIL));
        assert_eq!(BASE_SEPOLIA.caip2(), "eip155:84532");
    }
}
