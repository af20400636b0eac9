//! Network identifiers: v1 names (`base`, `base-sepolia`, …) and v2 CAIP-2 ids
//! (`eip155:8453`, `solana:<genesis-hash>`).
//!
//! The table is the TS reference's v1 chain-id map (x402.md §1.2) plus Solana's two names.

/// v1 network name → CAIP-2 id.
pub const V1_NETWORKS: &[(&str, &str)] = &[
    ("ethereum", "eip155:1"),
    ("sepolia", "eip155:11155111"),
    ("abstract", "eip155:2741"),
    ("abstract-testnet", "eip155:11124"),
    ("base-sepolia", "eip155:84532"),
    ("base", "eip155:8453"),
    ("avalanche-fuji", "eip155:43113"),
    ("avalanche", "eip155:43114"),
    ("iotex", "eip155:4689"),
    ("sei", "eip155:1329"),
    ("sei-testnet", "eip155:1328"),
    ("polygon", "eip155:137"),
    ("polygon-amoy", "eip155:80002"),
    ("peaq", "eip155:3338"),
    ("story", "eip155:1514"),
    ("educhain", "eip155:41923"),
    ("skale-base-sepolia", "eip155:324705682"),
    ("megaeth", "eip155:4326"),
    ("monad", "eip155:143"),
    ("stable", "eip155:988"),
    ("stable-testnet", "eip155:2201"),
    ("solana", "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
    ("solana-devnet", "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"),
];

/// The CAIP-2 id of a v1 network name (exact, case-sensitive match), e.g. `base` →
/// `eip155:8453`.
pub fn v1_to_caip2(name: &str) -> Option<&'static str> {
    V1_NETWORKS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// The v1 name of a CAIP-2 id, e.g. `eip155:84532` → `base-sepolia`.
pub fn caip2_to_v1(caip2: &str) -> Option<&'static str> {
    V1_NETWORKS.iter().find(|(_, c)| *c == caip2).map(|(n, _)| *n)
}

/// The chain id of an `eip155:<decimal>` CAIP-2 id (no sign, no leading zeros, fits a `u64`).
pub fn eip155_chain_id(caip2: &str) -> Option<u64> {
    let reference = caip2.strip_prefix("eip155:")?;
    let ok = !reference.is_empty()
        && reference.len() <= 20
        && reference.bytes().all(|b| b.is_ascii_digit())
        && (reference == "0" || !reference.starts_with('0'));
    if !ok {
        return None;
    }
    reference.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_v1_names_both_ways() {
        assert_eq!(v1_to_caip2("base"), Some("eip155:8453"));
        assert_eq!(v1_to_caip2("base-sepolia"), Some("eip155:84532"));
        assert_eq!(v1_to_caip2("avalanche"), Some("eip155:43114"));
        assert_eq!(v1_to_caip2("Base"), None);
        assert_eq!(v1_to_caip2("kairos-testnet"), None);
        assert_eq!(caip2_to_v1("eip155:8453"), Some("base"));
        assert_eq!(caip2_to_v1("eip155:84532"), Some("base-sepolia"));
        assert_eq!(caip2_to_v1("eip155:31337"), None);
        for (name, caip2) in V1_NETWORKS {
            assert_eq!(caip2_to_v1(caip2), Some(*name));
            assert_eq!(v1_to_caip2(name), Some(*caip2));
        }
    }

    #[test]
    fn parses_eip155_chain_ids() {
        assert_eq!(eip155_chain_id("eip155:84532"), Some(84532));
        assert_eq!(eip155_chain_id("eip155:1"), Some(1));
        for bad in [
            "eip155:",
            "eip155:+1",
            "eip155:01",
            "eip155:1a",
            "eip155:99999999999999999999",
            "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
            "base",
        ] {
            assert_eq!(eip155_chain_id(bad), None, "{bad}");
        }
    }
}
