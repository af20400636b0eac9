//! Money on a payment path: an asset plus an integer amount in the asset's base unit.
//!
//! There are no floats anywhere on a money path. Amounts are `u128` base units (millisatoshi for
//! Bitcoin, the token's smallest unit for ERC-20s); arithmetic is checked, and amounts of
//! different assets never mix.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a [`Money`] value is denominated in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Asset {
    /// Bitcoin on Lightning. The base unit is the millisatoshi (1 sat = 1000 msat), the unit of
    /// a BOLT11 amount.
    Bitcoin,
    /// A fungible token on a chain, e.g. USDC on Base.
    Token(Token),
}

/// A token on a chain, identified by its CAIP-2 network and contract address.
///
/// Two `Token`s are the same asset when network and address match (the address compared
/// case-insensitively, as EVM checksums only change case). Symbol and decimals describe the token
/// for people and for parsing; they do not make a different asset, so a budget set for "USDC on
/// Base" applies whatever symbol a server writes in its offer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// CAIP-2 network id, e.g. `eip155:8453`.
    pub network: String,
    /// Contract address as written on the wire (`0x…`).
    pub address: String,
    /// Ticker for people, e.g. `USDC`.
    pub symbol: String,
    /// Number of decimals of the base unit (6 for USDC).
    pub decimals: u8,
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.network == other.network && self.address.eq_ignore_ascii_case(&other.address)
    }
}

impl Eq for Token {}

impl std::hash::Hash for Token {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.network.hash(state);
        self.address.to_ascii_lowercase().hash(state);
    }
}

impl Asset {
    /// Ticker for display.
    pub fn symbol(&self) -> &str {
        match self {
            Asset::Bitcoin => "sat",
            Asset::Token(t) => &t.symbol,
        }
    }
}

/// An amount of an asset, in base units.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub asset: Asset,
    /// Base units: msat for [`Asset::Bitcoin`], the token's smallest unit otherwise.
    pub amount: u128,
}

/// Arithmetic across two different assets, or past `u128`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("cannot combine {0} with {1}")]
    AssetMismatch(String, String),
    #[error("amount overflow")]
    Overflow,
    #[error("invalid amount {0:?}: {1}")]
    Parse(String, &'static str),
}

impl Money {
    /// `sats` satoshis (stored as millisatoshi).
    pub fn sats(sats: u64) -> Self {
        Money { asset: Asset::Bitcoin, amount: u128::from(sats) * 1000 }
    }

    /// `msat` millisatoshi.
    pub fn msats(msat: u64) -> Self {
        Money { asset: Asset::Bitcoin, amount: u128::from(msat) }
    }

    /// An amount of `asset` in base units.
    pub fn new(asset: Asset, amount: u128) -> Self {
        Money { asset, amount }
    }

    /// Zero of the same asset.
    pub fn zero(asset: Asset) -> Self {
        Money { asset, amount: 0 }
    }

    /// The amount in millisatoshi, when this is Bitcoin and fits a `u64`.
    pub fn as_msat(&self) -> Option<u64> {
        match self.asset {
            Asset::Bitcoin => u64::try_from(self.amount).ok(),
            _ => None,
        }
    }

    /// `self + other`, refusing to mix assets or overflow.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_asset(other)?;
        let amount = self.amount.checked_add(other.amount).ok_or(MoneyError::Overflow)?;
        Ok(Money { asset: self.asset.clone(), amount })
    }

    /// `self - other`, `None` if it would go below zero.
    pub fn checked_sub(&self, other: &Money) -> Result<Option<Money>, MoneyError> {
        self.same_asset(other)?;
        Ok(self
            .amount
            .checked_sub(other.amount)
            .map(|amount| Money { asset: self.asset.clone(), amount }))
    }

    fn same_asset(&self, other: &Money) -> Result<(), MoneyError> {
        if self.asset == other.asset {
            Ok(())
        } else {
            Err(MoneyError::AssetMismatch(self.asset.symbol().into(), other.asset.symbol().into()))
        }
    }

    /// Parses a human amount such as `21 sat`, `1500 msat`, `0.01 USDC` (with a given token).
    ///
    /// Bitcoin accepts `sat`/`sats`/`msat` suffixes; a bare integer is sats. Decimal points are
    /// only accepted where they resolve to a whole base unit (never rounded).
    pub fn parse_bitcoin(text: &str) -> Result<Money, MoneyError> {
        let t = text.trim();
        let err = |why| MoneyError::Parse(text.to_string(), why);
        let (num, mult) = if let Some(n) = t.strip_suffix("msat") {
            (n.trim(), 1u128)
        } else if let Some(n) = t.strip_suffix("sats").or_else(|| t.strip_suffix("sat")) {
            (n.trim(), 1000)
        } else {
            (t, 1000)
        };
        let units = parse_decimal(num, if mult == 1000 { 3 } else { 0 }).map_err(err)?;
        Ok(Money { asset: Asset::Bitcoin, amount: units })
    }

    /// Parses a decimal amount of `token` (`"0.01"` USDC is 10000 base units).
    pub fn parse_token(text: &str, token: Token) -> Result<Money, MoneyError> {
        let t = text.trim();
        let t = t.strip_suffix(token.symbol.as_str()).unwrap_or(t).trim();
        let amount = parse_decimal(t, token.decimals)
            .map_err(|why| MoneyError::Parse(text.to_string(), why))?;
        Ok(Money { asset: Asset::Token(token), amount })
    }
}

/// Parses `digits[.digits]` into base units with `decimals` fractional digits, exactly.
fn parse_decimal(s: &str, decimals: u8) -> Result<u128, &'static str> {
    if s.is_empty() || s.len() > 40 {
        return Err("expected a number");
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return Err("expected a number");
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected digits");
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > usize::from(decimals) {
        return Err("more decimals than the base unit allows");
    }
    let scale = 10u128.checked_pow(u32::from(decimals)).ok_or("too many decimals")?;
    let int: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| "too large")? };
    let mut frac_units: u128 =
        if frac.is_empty() { 0 } else { frac.parse().map_err(|_| "too large")? };
    frac_units *= 10u128.pow(u32::from(decimals) - frac.len() as u32);
    int.checked_mul(scale).and_then(|v| v.checked_add(frac_units)).ok_or("too large")
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.asset {
            Asset::Bitcoin => {
                if self.amount.is_multiple_of(1000) {
                    write!(f, "{} sat", self.amount / 1000)
                } else {
                    write!(f, "{} msat", self.amount)
                }
            }
            Asset::Token(t) => match 10u128.checked_pow(u32::from(t.decimals)) {
                // More decimals than a u128 can scale: show base units rather than guess.
                None => write!(f, "{} base units of {}", self.amount, t.symbol),
                Some(scale) => {
                    let (int, frac) = (self.amount / scale, self.amount % scale);
                    if frac == 0 {
                        write!(f, "{int} {}", t.symbol)
                    } else {
                        let frac = format!("{frac:0width$}", width = usize::from(t.decimals));
                        write!(f, "{int}.{} {}", frac.trim_end_matches('0'), t.symbol)
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usdc() -> Token {
        Token {
            network: "eip155:8453".into(),
            address: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
            symbol: "USDC".into(),
            decimals: 6,
        }
    }

    #[test]
    fn parses_bitcoin_amounts_exactly() {
        assert_eq!(Money::parse_bitcoin("21").unwrap(), Money::sats(21));
        assert_eq!(Money::parse_bitcoin("21 sat").unwrap(), Money::sats(21));
        assert_eq!(Money::parse_bitcoin("1500msat").unwrap(), Money::msats(1500));
        assert_eq!(Money::parse_bitcoin("1.5 sat").unwrap(), Money::msats(1500));
        assert!(Money::parse_bitcoin("1.0005 sat").is_err(), "sub-msat must not round");
        assert!(Money::parse_bitcoin("-1").is_err());
        assert!(Money::parse_bitcoin("1e3").is_err());
        assert!(Money::parse_bitcoin("").is_err());
    }

    #[test]
    fn parses_and_prints_tokens() {
        let m = Money::parse_token("0.01 USDC", usdc()).unwrap();
        assert_eq!(m.amount, 10_000);
        assert_eq!(m.to_string(), "0.01 USDC");
        assert!(Money::parse_token("0.0000001", usdc()).is_err());
        assert_eq!(Money::sats(3).to_string(), "3 sat");
        assert_eq!(Money::msats(3001).to_string(), "3001 msat");
    }

    #[test]
    fn absurd_decimals_neither_panic_nor_mislead() {
        let weird = Token { decimals: 200, ..usdc() };
        assert_eq!(Money::new(Asset::Token(weird.clone()), 5).to_string(), "5 base units of USDC");
        assert!(Money::parse_token("1", weird).is_err());
    }

    #[test]
    fn a_token_is_its_network_and_address() {
        let lower =
            Token { address: usdc().address.to_ascii_lowercase(), symbol: "X".into(), ..usdc() };
        assert_eq!(Asset::Token(lower), Asset::Token(usdc()));
        let other_chain = Token { network: "eip155:84532".into(), ..usdc() };
        assert_ne!(Asset::Token(other_chain), Asset::Token(usdc()));
    }

    #[test]
    fn never_mixes_assets() {
        let usd = Money::new(Asset::Token(usdc()), 5);
        assert!(matches!(Money::sats(1).checked_add(&usd), Err(MoneyError::AssetMismatch(..))));
        assert_eq!(Money::sats(1).checked_sub(&Money::sats(2)).unwrap(), None);
        let max = Money::new(Asset::Bitcoin, u128::MAX);
        assert_eq!(max.checked_add(&Money::msats(1)), Err(MoneyError::Overflow));
    }
}
